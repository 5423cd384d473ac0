"""Speculative strategies against plain autoregressive decoding on a model that predicts something.

Nothing can be downloaded here, so the script trains its own models on text every machine has
offline: the Python standard library's top-level modules (every 10th file held out for the
prompts). Stages are cached under build/bench/spec/ (``--size medium``: build/bench/spec-medium/)
and skipped when present:

1. tokenizer: byte-level BPE, 4096 tokens (``tokenizers``);
2. target: a Llama (transformers LlamaForCausalLM, tied embeddings), trained from scratch for
   ``--target-minutes``: ``--size small`` 4 layers, hidden 256, 4 query / 2 kv heads, MLP 768
   (4.2 M parameters, 17 MB: it lives in the CPU's caches, a pass is compute-bound);
   ``--size medium`` 8 layers, hidden 512, 8 / 2 heads, MLP 1408 (25 M parameters, 100 MB: a
   pass reads the weights from memory, as an LLM's does);
3. draft: the same family, 1 layer, hidden 128, trained the same way for ``--draft-minutes``
   (medium: the small target, when it was trained before, is the draft);
4. Medusa heads (4), an MTP module and (medium: EAGLE-3 taps layers 2, L/2, L-3, so it needs
   at least 7 layers) an EAGLE-3 head: ``edgert train medusa`` / ``mtp`` / ``eagle`` on the
   target (self-distillation; EAGLE with its training-time test over 5 steps);
5. bundles: ``edgert export llama`` (the target with its heads and MTP graph, those two with
   int8 weights, ``--opt proposals=int8``; the draft). ``--precision int8|int4``: the target
   (heads and MTP graph included) and the draft with weight-only quantized weights instead.

Then, on held-out prompts (64 tokens of code each), 128 greedy new tokens per prompt with every
strategy on the same bundle in the same run, same threads, every prompt running every strategy
in turn: tokens per decoder pass, tokens/s, speedup over ``ar`` and whether the output equals
``ar``'s. The graphs run on ONNX Runtime with a clock around every run (a backend plugin, see
:func:`timed_backends`), so each row also says how much of its time the graph runs took and the
speedup it would have if the host code between them (numpy, the tree, binding) cost nothing:
the bound the runtime's own overhead leaves to a strategy on this machine.

    python benchmarks/bench_speculative.py [--size small|medium] [--prompts 20] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
from edgert.runtime.hookspecs import hookimpl

ROOT = Path("build/bench/spec")
SIZES = {"small": dict(layers=4, hidden=256, heads=4, mlp=768, batch=16),
         "medium": dict(layers=8, hidden=512, heads=8, mlp=1408, batch=8)}
# Training of the Medusa heads and the MTP module: (steps, continuations of the target to train
# on). A medium step costs ~5 small ones; the medium heads got 500 steps on 1024 continuations
# (250 on 512 made 3.04 tokens per pass with chain_4, 500 on 1024 made 3.24). An EAGLE step
# unrolls 5 draft steps and was still gaining ~4 points of top-1 per 100 steps at 300.
PARTS = {"small": {"medusa": (800, 512), "mtp": (800, 512)},
         "medium": {"medusa": (500, 1024), "mtp": (250, 512), "eagle": (600, 1024)}}
# --quick: fewer steps on fewer continuations (the continuations are most of the time: 1024 of 128
# tokens take the medium target ~5 min here); the heads are then weaker, alike.
QUICK = {"small": {"medusa": (300, 256), "mtp": (300, 256)},
         "medium": {"medusa": (300, 256), "mtp": (200, 256), "eagle": (300, 256)}}
STDLIB = Path(sysconfig.get_paths()["stdlib"])
SEQ = 256


def corpus_files() -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in STDLIB.glob("*.py") if p.stat().st_size > 2000)
    held_out = files[::10]
    return [f for f in files if f not in held_out], held_out


def tokenizer() -> Path:
    path = ROOT / "tokenizer.json"
    if not path.is_file():
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        ROOT.mkdir(parents=True, exist_ok=True)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        train, _ = corpus_files()
        trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<s>", "</s>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train([str(f) for f in train], trainer)
        tok.save(str(path))
    return path


def token_stream(files: list[Path]) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer()))
    ids = []
    for f in files:
        ids += tok.encode(f.read_text(encoding="utf-8", errors="replace")).ids + [1]
    return np.asarray(ids, np.int64)


def train_model(name: str, layers: int, hidden: int, heads: int, mlp: int, minutes: float, batch: int = 16) -> Path:
    """Train a LlamaForCausalLM from scratch for a fixed time; save it as a HF checkpoint."""
    out = ROOT / name
    if (out / "model.safetensors").is_file():
        return out
    import shutil

    import torch
    import transformers

    torch.manual_seed(0)
    data = torch.from_numpy(token_stream(corpus_files()[0]))
    config = transformers.LlamaConfig(vocab_size=4096, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                                      num_attention_heads=heads, num_key_value_heads=2, max_position_embeddings=1024,
                                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, betas=(0.9, 0.95))
    budget, t0, step = minutes * 60, time.perf_counter(), 0
    print(f"training {name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"{data.numel() / 1e6:.2f} M tokens, {minutes} min", file=sys.stderr)
    while (elapsed := time.perf_counter() - t0) < budget:
        lr = 2e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(1.0, elapsed / budget)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, data.numel() - SEQ - 1, (batch,))
        ids = torch.stack([data[s:s + SEQ] for s in starts])
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"  {name} step {step} loss {loss.item():.3f} ({elapsed:.0f} s)", file=sys.stderr, flush=True)
    model.save_pretrained(out)
    shutil.copyfile(tokenizer(), out / "tokenizer.json")
    return out


def speculative_part(kind: str, target: Path, steps: int, samples: int, suffix: str = "") -> Path:
    out = ROOT / f"{kind}{suffix}.safetensors"
    if not out.is_file():
        from edgert.exporters.llm.train import train

        files, _ = corpus_files()
        train(kind, str(target), [str(f) for f in files], str(out), options={"heads": 4} if kind == "medusa" else {},
              steps=steps, batch=8, samples=samples, prompt_len=64, new_tokens=128, lr=1e-3)
    return out


def bundle(name: str, checkpoint: Path, options: dict, precision: str = "fp32") -> Path:
    out = ROOT / f"{name}-bundle"
    if not (out / "manifest.json").is_file():
        from edgert.exporters.driver import export

        export("llama", out, options, checkpoint=str(checkpoint), precision=precision)
    return out


class TimedBackends:
    """A plugin (registered like any other, through ``edgert_register_backends``) with one
    backend: ONNX Runtime with a clock around every graph run, summed in ``seconds``."""

    name = "onnxruntime-timed"
    seconds = 0.0

    @hookimpl
    def edgert_register_backends(self):
        from edgert.runtime.backends.onnxruntime import IOBinding, OnnxRuntimeBackend

        plugin = self

        class TimedBinding(IOBinding):
            def run(self) -> None:
                t0 = time.perf_counter()
                try:
                    super().run()
                finally:
                    plugin.seconds += time.perf_counter() - t0

        class Timed(OnnxRuntimeBackend):
            name = plugin.name
            description = "ONNX Runtime, each run timed (benchmarks/bench_speculative.py)"

            def run(self, feeds):
                t0 = time.perf_counter()
                try:
                    return super().run(feeds)
                finally:
                    plugin.seconds += time.perf_counter() - t0

            def binding(self):
                return TimedBinding(self)

        return [Timed]


def timed_backends() -> TimedBackends:
    """Make this process's plugin host again with :class:`TimedBackends` as an in-process
    plugin (``build_host(extra_plugins=...)``, as the plugin tests do) and return it."""
    from edgert.runtime import host

    plugin = TimedBackends()
    host._HOST = host.build_host(extra_plugins={"bench-timed-backend": plugin})
    return plugin


def prompts(count: int, length: int = 64) -> list[list[int]]:
    _, held_out = corpus_files()
    stream = token_stream(held_out)
    rng = np.random.default_rng(0)
    return [[0] + stream[s:s + length].tolist() for s in rng.integers(0, stream.size - length, count)]


def _padded(values: list[float], length: int) -> list[float]:
    return (list(values) + [0.0] * length)[:length]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target-minutes", type=float, default=15)
    parser.add_argument("--draft-minutes", type=float, default=4)
    parser.add_argument("--prepare-only", action="store_true", help="train and export, do not time")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="target model size (see above)")
    parser.add_argument("--precision", choices=["fp32", "int8", "int4"], default="fp32",
                        help="the target's and the draft's weights (int8 / int4: every graph weight-only quantized)")
    parser.add_argument("--quick", action="store_true", help="train the heads on fewer continuations (see QUICK)")
    parser.add_argument("--out")
    args = parser.parse_args()
    global ROOT
    small = ROOT
    if args.size != "small":
        ROOT = ROOT.with_name(f"spec-{args.size}")
        ROOT.mkdir(parents=True, exist_ok=True)
        if (small / "tokenizer.json").is_file() and not (ROOT / "tokenizer.json").is_file():
            import shutil

            shutil.copyfile(small / "tokenizer.json", ROOT / "tokenizer.json")  # one tokenizer: the draft needs it
    target = train_model("target", **SIZES[args.size], minutes=args.target_minutes)
    if args.size != "small" and (small / "target" / "model.safetensors").is_file():
        draft = small / "target"
    else:
        draft = train_model("draft", 1, 128, 4, 256, args.draft_minutes)
    parts, suffix = (QUICK, "-quick") if args.quick else (PARTS, "")
    parts = parts[args.size]
    heads = speculative_part("medusa", target, *parts["medusa"], suffix)
    mtp = speculative_part("mtp", target, *parts["mtp"], suffix)
    eagle = {"eagle": str(speculative_part("eagle", target, *parts["eagle"], suffix))} if "eagle" in parts else {}
    # int8 proposal graphs: the heads and the MTP module only propose, and on a CPU reading their
    # fp32 weights every step cost a fifth of a decoder pass (measured: Medusa 1.6x -> 1.9x).
    if args.precision == "fp32":
        target_bundle = bundle("target-int8" + "-eagle" * bool(eagle) + suffix, target,
                               {"medusa": str(heads), "mtp": str(mtp), **eagle, "proposals": "int8"})
        draft_bundle = bundle("draft", draft, {})
    else:  # the quantized bundle's proposal graphs are quantized with it
        target_bundle = bundle(f"target-{args.precision}-weights" + "-eagle" * bool(eagle) + suffix, target,
                               {"medusa": str(heads), "mtp": str(mtp), **eagle}, args.precision)
        draft_bundle = bundle(f"draft-{args.precision}", draft, {}, args.precision)
    if args.prepare_only:
        return

    from edgert.runtime.llm.generator import Generator, SamplingParams

    clock = timed_backends()
    gen = Generator(target_bundle, threads=args.threads, backend=clock.name)
    gen.eos = set()  # every prompt runs the full length
    params = SamplingParams(max_new_tokens=args.new_tokens)
    cases = prompts(args.prompts)
    strategies = [("ar", {}), ("lookup", {}), ("draft", {"model": str(draft_bundle)}),
                  ("medusa", {"tree": "chain_4"}), ("medusa", {"tree": "mc_sim_7"}), ("medusa", {"tree": "mc_sim_15"}),
                  ("medusa", {"tree": "mc_sim_7b_63"}), ("mtp", {"depth": "2"}), ("mtp", {"depth": "3"}),
                  ("mtp", {"depth": "4"})]
    if eagle:
        strategies += [("eagle", {}), ("eagle", {"top_k": "4"}), ("eagle", {"top_k": "2", "total_tokens": "8"}),
                       ("eagle", {"tree": "static", "top_k": "2", "depth": "3"})]
    for name, options in strategies:  # warm-up: sessions, draft bundle, first-call allocations
        gen.generate(cases[0][:16], SamplingParams(max_new_tokens=8), strategy=name, strategy_options=options)
    # Interleaved: each prompt runs every strategy in turn, so that the machine's drift (up to 15 %
    # within a run here) weighs on all of them alike instead of on whichever ran at the time.
    totals = [{"seconds": 0.0, "graph_seconds": 0.0, "tokens": 0, "passes": 0, "per_verify": [], "by_depth": [], "same_as_ar": 0}
              for _ in strategies]
    for ids in cases:
        reference = None
        for total, (name, options) in zip(totals, strategies):
            t0, ran = time.perf_counter(), clock.seconds
            result = gen.generate(ids, params, strategy=name, strategy_options=options)
            total["seconds"] += time.perf_counter() - t0
            total["graph_seconds"] += clock.seconds - ran
            total["tokens"] += len(result.tokens)
            total["passes"] += result.stats.forward_calls + 1  # the prefill is a pass too
            total["per_verify"].append(result.stats.tokens_per_step)
            total["by_depth"].append(result.stats.acceptance_by_depth())
            reference = reference or result.tokens
            total["same_as_ar"] += result.tokens == reference
    base = totals[0]["tokens"] / totals[0]["seconds"]
    graphs_base = totals[0]["tokens"] / totals[0]["graph_seconds"]
    rows = []
    for total, (name, options) in zip(totals, strategies):
        label = name + "".join(f" ({k}={v})" for k, v in options.items() if k in ("tree", "depth", "total_tokens", "top_k"))
        speed = total["tokens"] / total["seconds"]
        rows.append({"strategy": label, "tokens_per_pass": total["tokens"] / total["passes"],
                     "mean_accepted_per_verify": float(np.mean(total["per_verify"])), "tokens_per_s": speed,
                     "acceptance_by_depth": [float(a) for a in np.mean([_padded(a, 8) for a in total["by_depth"]], axis=0)],
                     "speedup": speed / base, "same_as_ar": total["same_as_ar"],
                     "graph_share": total["graph_seconds"] / total["seconds"],
                     "graphs_only_speedup": total["tokens"] / total["graph_seconds"] / graphs_base})
        print(f"{label:<24} tokens/pass {rows[-1]['tokens_per_pass']:.2f}  tokens/s {speed:7.1f}  "
              f"speedup {speed / base:.2f}x  equal to ar: {total['same_as_ar']}/{len(cases)}  "
              f"graph runs {rows[-1]['graph_share']:.0%} of the time (graphs only: {rows[-1]['graphs_only_speedup']:.2f}x)")
    if args.out:
        Path(args.out).write_text(json.dumps({"prompts": len(cases), "new_tokens": args.new_tokens, "threads": args.threads,
                                              "precision": args.precision, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
