"""LLM decoding on the CPU: edgert (ONNX Runtime) against transformers eager, same threads, same run.

Models (``--model``), random weights with the real configuration, fp32, exported with ``edgert
export llama`` (context 2048); random weights decode as fast as trained ones (the work per token
is the same):

* ``qwen2.5-0.5b`` (default): Qwen2, 24 layers, hidden 896, 14 query / 2 kv heads, head 64,
  MLP 4864, vocab 151936, tied embeddings, qkv bias: 494M parameters;
* ``qwen3-0.6b``: Qwen3, 28 layers, hidden 1024, 16 / 8 heads, head 128, MLP 3072, q/k norms,
  tied: 596M parameters;
* ``gemma3-1b``: Gemma 3 text, 26 layers, hidden 1152, 4 / 1 heads, head 256, MLP 6912, vocab
  262144, local (window 512) and global layers 5:1, tied: 1000M parameters.

1. Prefill: a 128-token prompt, time to the first token's logits (edgert computes the head
   for the last position only, as transformers' generate does since 4.45).
2. Decode: 64 greedy tokens after that prompt; tokens/s from the first to the last new token.
   transformers: ``generate(do_sample=False, min_new_tokens=64)``, DynamicCache, sdpa attention.
3. Peak RSS (fresh processes): ``edgert generate`` for 64 tokens, and the runtime alone
   (import + Generator load).

    python benchmarks/bench_llm.py [--model qwen2.5-0.5b|qwen3-0.6b|gemma3-1b] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path("build/bench/qwen2.5-0.5b-random")
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
# model -> (transformers config and model class names, the configuration, a description)
MODELS = {
    "qwen2.5-0.5b": ("Qwen2", QWEN25_05B, "Qwen2.5-0.5B config, random weights, fp32 (494M parameters)"),
    "qwen3-0.6b": ("Qwen3", dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                                 rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                                 eos_token_id=151645), "Qwen3-0.6B config, random weights, fp32 (596M parameters)"),
    "gemma3-1b": ("Gemma3Text", dict(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                     num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                     max_position_embeddings=32768, sliding_window=512, query_pre_attn_scalar=256,
                                     rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
                                     pad_token_id=0), "Gemma-3-1B config, random weights, fp32 (1000M parameters)"),
}
PROMPT, NEW = 128, 64


def checkpoint(model: str = "qwen2.5-0.5b") -> Path:
    ckpt = root(model) / "ckpt"
    if not (ckpt / "model.safetensors").is_file():
        import torch
        import transformers

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from llm_checkpoints import make_tokenizer

        name, config, _ = MODELS[model]
        ckpt.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        module = getattr(transformers, f"{name}ForCausalLM" if name != "Gemma3Text" else "Gemma3ForCausalLM")
        module(getattr(transformers, f"{name}Config")(**config)).save_pretrained(ckpt)
        make_tokenizer(ckpt)  # a small byte-level BPE: the benchmark feeds token ids
    return ckpt


def root(model: str) -> Path:
    return ROOT if model == "qwen2.5-0.5b" else ROOT.with_name(f"{model}-random")


def bundle(ckpt: Path) -> Path:
    out = ckpt.parent / "bundle"
    if not (out / "manifest.json").is_file():
        from edgert.exporters.driver import export

        t0 = time.perf_counter()
        export("llama", out, {"context": "2048"}, checkpoint=str(ckpt))
        print(f"export: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def bench_transformers(ckpt: Path, prompt: list[int], threads: int) -> dict:
    import torch
    import transformers

    torch.set_num_threads(threads)
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model.generate(ids[:, :16], attention_mask=mask[:, :16], do_sample=False, max_new_tokens=4, pad_token_id=0)  # warm-up
        t0 = time.perf_counter()
        out = model(ids, attention_mask=mask, logits_to_keep=1, use_cache=True)
        prefill = time.perf_counter() - t0
        stamps = []

        class Clock(transformers.generation.streamers.BaseStreamer):
            def put(self, value):
                stamps.append(time.perf_counter())

            def end(self):
                pass

        tokens = model.generate(ids, attention_mask=mask, do_sample=False, min_new_tokens=NEW, max_new_tokens=NEW,
                                pad_token_id=0, streamer=Clock())
    del out
    # stamps[0] is the prompt itself, stamps[1] the first new token
    return {"prefill_s": prefill, "decode_tokens_per_s": (NEW - 1) / (stamps[-1] - stamps[1]),
            "tokens": tokens[0, len(prompt):].tolist()}


def bench_edgert(path: Path, prompt: list[int], threads: int) -> dict:
    from edgert.runtime.llm.generator import Generator, SamplingParams

    gen = Generator(path, threads=threads)
    gen.eos = set()  # random weights: run the full 64 tokens, as transformers does with min_new_tokens
    gen.generate(prompt[:16], SamplingParams(max_new_tokens=4))  # warm-up
    result = gen.generate(prompt, SamplingParams(max_new_tokens=NEW))
    return {"prefill_s": result.stats.prefill_s, "ttft_s": result.stats.ttft_s,
            "decode_tokens_per_s": result.stats.decode_tokens_per_s, "tokens": result.tokens}


def peak_rss(code: str) -> float:
    """Peak RSS (MB) of a fresh Python process running ``code``: VmHWM, because Linux carries
    getrusage's ru_maxrss over from the parent across fork and exec."""
    script = code + ("\nprint('RSS', int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return float(out.split("RSS")[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="qwen2.5-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    ckpt = checkpoint(args.model)
    path = bundle(ckpt)
    prompt = np.random.default_rng(0).integers(0, MODELS[args.model][1]["vocab_size"], PROMPT).tolist()

    ours = bench_edgert(path, prompt, args.threads)
    hf = bench_transformers(ckpt, prompt, args.threads)
    same = next((i for i, (a, b) in enumerate(zip(ours["tokens"], hf["tokens"])) if a != b), NEW)
    gen_rss = peak_rss(f"import sys; from edgert.cli import main; sys.argv = ['edgert']; "
                       f"import contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()): "
                       f"main(['generate', {str(path)!r}, '--prompt', 'The quick brown fox', '--max-new-tokens', '64', "
                       f"'--threads', '{args.threads}'])")
    load_rss = peak_rss(f"from edgert.runtime.llm.generator import Generator; Generator({str(path)!r}, threads={args.threads})")
    size = sum(f.stat().st_size for f in path.iterdir()) / 1e9
    rows = {
        "model": MODELS[args.model][2], "threads": args.threads,
        "prompt_tokens": PROMPT, "new_tokens": NEW, "bundle_gb": round(size, 2),
        "edgert_prefill_tokens_per_s": PROMPT / ours["prefill_s"], "hf_prefill_tokens_per_s": PROMPT / hf["prefill_s"],
        "edgert_ttft_ms": ours["ttft_s"] * 1e3,
        "edgert_decode_tokens_per_s": ours["decode_tokens_per_s"], "hf_decode_tokens_per_s": hf["decode_tokens_per_s"],
        "decode_ratio": ours["decode_tokens_per_s"] / hf["decode_tokens_per_s"],
        "prefill_ratio": hf["prefill_s"] / ours["prefill_s"],
        "greedy_tokens_equal_before_first_difference": same,
        "peak_rss_mb_edgert_generate": gen_rss, "peak_rss_mb_runtime_load": load_rss,
        "machine": f"{os.cpu_count()} cores, onnxruntime {__import__('onnxruntime').__version__}, "
                   f"torch {__import__('torch').__version__}, transformers {__import__('transformers').__version__}",
    }
    write_report(rows, args.out)


def write_report(report: dict, out: str | None) -> None:
    """Print the results as JSON, and write them to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


if __name__ == "__main__":
    main()
