"""A real model end to end: SmolLM2-135M-Instruct's Q4_1 GGUF through edgert at every precision,
against llama.cpp on the same file and onnxruntime-genai's int4, on the CPU.

Sides (``--sides``, default all that can run):

* ``stored``: ``edgert export llama --checkpoint FILE.gguf`` (the file's own blocks, the default);
  ``stored-level4`` the same with ``--quant accuracy_level=4`` (int8 activations in every block;
  it fails the stored gate here, held-out perplexity 1.022x the fp32 graph's, so it is exported
  with the gate opened as the int4 sides are);
* ``fp32``, ``int8``, ``int4`` (RTN), ``int4-hqq``: the same file dequantized, then edgert's own
  ``--precision``; the int4 sides fail edgert's accuracy gate on this model (that is the issue's
  point), so they are exported with the gate opened and its measurements reported;
* ``llama.cpp``: llama-cpp-python on the same GGUF, from its own environment (``--llama-python``:
  a venv where ``pip install llama-cpp-python`` built it from its sdist; never edgert's);
* ``genai-int4``: onnxruntime-genai's model builder (``-p int4 -e cpu``, its defaults) on the
  file's dequantized Hugging Face checkpoint, from its own environment (``--genai-python``); its
  perplexity is computed here on its model.onnx with plain ONNX Runtime.

Every edgert bundle has a context of 2048 (llama.cpp ``n_ctx`` 2048). Figures per side:

* export time (a fresh ``edgert export`` process; the genai builder likewise) and files on disk;
* speed, fresh processes, the sides taking turns in each of ``--rounds`` rounds (reversed every
  other round), 2 threads: load time, the prefill of a 128-token chat prompt (a summary request of
  a GPL-3 passage, the same ids everywhere) as tokens/s and time to first token, 64 greedy tokens
  (tokens/s first to last), peak RSS (VmHWM); medians, and decode ratios paired per round;
* quality: perplexity on real English (default: the GPL-3 text Debian's base-files installs;
  ``--text FILE``), non-overlapping windows of 512 tokens, every token but a window's first
  scored, the same ids on every side; teacher-forced top-1 agreement with ``fp32`` on those
  positions; whether the 64 greedy tokens equal ``fp32``'s.

The text's ids come from the bundle's tokenizer; with ``--llama-python`` the report says whether
llama.cpp's tokenizer gives the same ids (it did: 7,639 of 7,639 on the GPL-3 text).

``--speculation``: on 20 grounded prompts (rewrite or summarise a given GPL-3 paragraph, edit a
given standard-library function) and 20 open chat questions, through the chat template, on each
edgert side of ``--sides`` (``--rounds 0`` skips the speed rounds): every strategy the bundle can
run against ``ar``, ``--new-tokens`` greedy tokens each, interleaved per prompt: tokens per pass,
acceptance by depth, speed-up over ``ar``, and whether every output equals ``ar``'s. Without
heads that is ``lookup``; ``--heads STEPS`` first trains Medusa, MTP and EAGLE-3 heads on the
GGUF (``edgert train``, STEPS steps each on the GPL-3 text, at most 8 x STEPS continuations,
cached) and exports each side again
with all three, adding ``medusa``, ``mtp``, ``eagle`` and ``draft`` (the int4 side's bundle as
the draft model). A short budget gives weak heads: it proves the verify pass lossless at every
strategy, not the speed trained heads reach.

    python benchmarks/bench_real_model.py [--llama-python PY] [--genai-python PY] [--rounds 3] [--out FILE]
                                          [--sides stored,fp32,...] [--speculation [--heads STEPS]] [--text FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
sys.path.insert(0, str(HERE))
import smollm2  # noqa: E402
from bench_llm import write_report  # noqa: E402
from bench_quantized_llm import run_worker, set_genai_threads  # noqa: E402

ROOT = Path("build/bench/real-model")
OPEN_GATE = ["--quant", "min_agreement=0", "--quant", "max_perplexity_ratio=1e6"]  # measured, reported, not enforced
EDGERT_SIDES = {"stored": [], "stored-level4": ["--quant", "accuracy_level=4", *OPEN_GATE], "fp32": ["--precision", "fp32"],
                "int8": ["--precision", "int8"],
                "int4": ["--precision", "int4", *OPEN_GATE],
                "int4-hqq": ["--precision", "int4", "--quant", "method=hqq", *OPEN_GATE]}
CONTEXT, PROMPT, NEW, WINDOW = 2048, 128, 64, 512

EDGERT_SPEED = """
import json, sys, time
t0 = time.perf_counter()
from edgert.runtime.llm.generator import Generator, SamplingParams
path, prompt, new, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gen = Generator(path, threads=threads)
load = time.perf_counter() - t0
gen.eos = set()
gen.generate(prompt[:16], SamplingParams(max_new_tokens=4))
result = gen.generate(prompt, SamplingParams(max_new_tokens=new))
rss = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
print(json.dumps({"load_s": load, "prefill_s": result.stats.prefill_s, "decode_tokens_per_s": result.stats.decode_tokens_per_s,
                  "tokens": result.tokens, "peak_rss_mb": rss}))
"""

LLAMA_SPEED = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
import llama_cpp
path, prompt, new, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model = llama_cpp.Llama(path, n_ctx=%d, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
load = time.perf_counter() - t0
def greedy(ids, steps):
    model.reset()
    t0 = time.perf_counter()
    model.eval(ids)
    prefill = time.perf_counter() - t0
    out, stamps = [], []
    for _ in range(steps):
        out.append(int(np.argmax(model.scores[model.n_tokens - 1])))
        stamps.append(time.perf_counter())
        if len(out) < steps:
            model.eval([out[-1]])
    return prefill, out, stamps
greedy(prompt[:16], 4)
prefill, tokens, stamps = greedy(prompt, new)
rss = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
print(json.dumps({"load_s": load, "prefill_s": prefill, "decode_tokens_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                  "tokens": tokens, "peak_rss_mb": rss, "version": llama_cpp.__version__}))
""" % CONTEXT

LLAMA_QUALITY = """
import json, sys
import numpy as np
import llama_cpp
path, windows, threads, text = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = llama_cpp.Llama(path, n_ctx=%d, n_batch=%d, n_threads=threads, n_threads_batch=threads, logits_all=True,
                        verbose=False)
nll, top1 = [], []
for ids in windows:
    model.reset()
    model.eval(ids)
    logits = np.asarray(model.scores[:len(ids) - 1], np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll.append(float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()))
    top1.append(logits.argmax(-1).tolist())
ids = model.tokenize(open(text, encoding='utf-8').read().encode(), add_bos=False, special=False)
print(json.dumps({"nll": nll, "top1": top1, "text_ids": ids}))
""" % (WINDOW, WINDOW)


# ---- preparing the sides -----------------------------------------------------------------------

def export_side(gguf: Path, side: str) -> tuple[Path, float | None]:
    """The side's bundle and its export time (None: exported by an earlier run, time recorded then)."""
    out = ROOT / side
    record = ROOT / f"{side}.export.json"
    if (out / "manifest.json").is_file() and record.is_file():
        return out, json.loads(record.read_text())["seconds"]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgert", "export", "llama", "--checkpoint", str(gguf), "--out", str(out),
                    "--opt", f"context={CONTEXT}", *EDGERT_SIDES[side]], check=True)
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"seconds": seconds}))
    print(f"export {side}: {seconds:.0f} s", file=sys.stderr)
    return out, seconds


HEADS = ("medusa", "mtp", "eagle")


def train_heads(gguf: Path, text: Path, steps: int) -> dict[str, Path]:
    """Each head trained for ``steps`` steps on ``text`` (cached: the file and its step count)."""
    heads = {}
    for kind in HEADS:
        out = ROOT / f"{kind}-{steps}.safetensors"
        if not out.is_file():
            t0 = time.perf_counter()
            # a batch of 8 draws from the continuations: more of them than 8 per step would go unseen
            subprocess.run([sys.executable, "-m", "edgert", "train", kind, "--checkpoint", str(gguf), "--data", str(text),
                            "--out", str(out), "--steps", str(steps), "--samples", str(min(256, 8 * steps))], check=True)
            print(f"train {kind}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        heads[kind] = out
    return heads


def export_with_heads(gguf: Path, side: str, heads: dict[str, Path]) -> Path:
    out = ROOT / f"{side}+heads"
    record = out / "heads.json"
    wanted = {k: str(v) for k, v in heads.items()}
    if (out / "manifest.json").is_file() and record.is_file() and json.loads(record.read_text()) == wanted:
        return out
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "edgert", "export", "llama", "--checkpoint", str(gguf), "--out", str(out),
                    "--opt", f"context={CONTEXT}", *EDGERT_SIDES[side],
                    *[a for k, v in heads.items() for a in ("--opt", f"{k}={v}")]], check=True)
    record.write_text(json.dumps(wanted))
    return out


def genai_side(gguf: Path, python: str, threads: int) -> tuple[Path, float]:
    """onnxruntime-genai's int4 from the GGUF's dequantized Hugging Face checkpoint (the one
    edgert's own fp32 export starts from), built by its model builder in its own environment."""
    out, record = ROOT / "genai-int4", ROOT / "genai-int4.export.json"
    if not (out / "genai_config.json").is_file() or not record.is_file():
        from edgert.exporters.llm import gguf as reader

        shutil.rmtree(out, ignore_errors=True)
        with reader.checkpoint_directory(gguf) as (ckpt, _):
            t0 = time.perf_counter()
            subprocess.run([python, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out),
                            "-p", "int4", "-e", "cpu", "-c", str(ROOT / "genai-cache")], check=True)
            record.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    set_genai_threads(out, threads)
    return out, json.loads(record.read_text())["seconds"]


def disk_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def gpl_text() -> Path:
    listed = subprocess.run(["dpkg", "-L", "base-files"], capture_output=True, text=True).stdout.split()
    found = [p for p in listed if p.endswith("GPL-3")]
    if not found:
        raise SystemExit("no GPL-3 text from base-files here; give --text FILE")
    return Path(found[0])


# ---- quality -----------------------------------------------------------------------------------

def _scores(logits: np.ndarray, ids: list[int]) -> tuple[float, list[int]]:
    """Summed negative log-likelihood of ids[1:] and the top-1 ids, from logits (positions, vocab)."""
    z = logits[:len(ids) - 1].astype(np.float64)
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].sum()), z.argmax(-1).tolist()


def cached_quality(side: str, windows: list[list[int]], compute) -> dict:
    """A side's scores on these windows, kept under ROOT (they do not depend on the machine's
    speed, and a rerun for the timings need not wait for them again)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(windows).encode()).hexdigest()
    cache = ROOT / f"{side}.quality.json"
    manifest = ROOT / side / "manifest.json"  # a bundle exported after the scores makes them stale
    if cache.is_file() and (not manifest.is_file() or manifest.stat().st_mtime <= cache.stat().st_mtime):
        kept = json.loads(cache.read_text())
        if kept.get("windows") == digest:
            return kept["scores"]
    scores = compute()
    cache.write_text(json.dumps({"windows": digest, "scores": scores}))
    return scores


def edgert_quality(bundle: Path, windows: list[list[int]]) -> dict:
    from edgert.exporters.llm.weights import _logits, _session

    session = _session(bundle / "decoder.onnx")
    nll, top1 = zip(*(_scores(_logits(session, np.asarray(w, np.int64)), w) for w in windows))
    return {"nll": list(nll), "top1": list(top1)}


def genai_quality(folder: Path, windows: list[list[int]], threads: int) -> dict:
    """Its model.onnx on each window from an empty cache (GroupQueryAttention takes the mask's
    sums for the lengths)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    decoder = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]
    kv_shape = (1, decoder["num_key_value_heads"], 0, decoder["head_size"])
    nll, top1 = [], []
    for w in windows:
        ids = np.asarray([w], np.int64)
        feeds = {}
        for i in session.get_inputs():
            if i.name == "input_ids":
                feeds[i.name] = ids
            elif i.name == "attention_mask":
                feeds[i.name] = np.ones_like(ids)
            elif i.name == "position_ids":
                feeds[i.name] = np.arange(ids.shape[1], dtype=np.int64)[None]
            else:  # past_key_values.N.key / .value: (batch, kv heads, 0, head size)
                feeds[i.name] = np.zeros(kv_shape, np.float32)
        logits = session.run(["logits"], feeds)[0][0]
        a, b = _scores(logits, w)
        nll.append(a)
        top1.append(b)
    return {"nll": nll, "top1": top1}


# ---- speculation -------------------------------------------------------------------------------

CHAT = ["What is the capital of Australia, and why was it chosen?", "Give me three tips for sleeping better.",
        "Explain photosynthesis to a ten-year-old.", "What is the difference between weather and climate?",
        "Write a short poem about autumn leaves.", "How do vaccines train the immune system?",
        "Suggest a name for a bakery that sells only bread.", "Why is the sky blue?",
        "What are the main causes of inflation?", "Describe a good morning routine for a student.",
        "How does a bicycle stay upright when it moves?", "Write a friendly reminder email about a team meeting.",
        "What should I pack for a weekend hiking trip?", "Explain what a black hole is.",
        "Give me a recipe idea for a quick vegetarian dinner.", "What is machine learning, in simple words?",
        "How can I become better at public speaking?", "Why do cats purr?",
        "Tell me a fun fact about the ocean.", "What is the difference between a virus and a bacterium?"]


def grounded_prompts(text: Path) -> list[str]:
    """10 GPL-3 paragraphs to rewrite or summarise, 10 standard-library functions to edit."""
    import ast

    paragraphs = [p.strip() for p in text.read_text(encoding="utf-8").split("\n\n") if 400 <= len(p.strip()) <= 900]
    picks = [paragraphs[i * len(paragraphs) // 10] for i in range(10)]
    asks = ["Rewrite the following paragraph in plain English, keeping its meaning:",
            "Summarise the following paragraph in two sentences:"]
    out = [f"{asks[i % 2]}\n\n{p}" for i, p in enumerate(picks)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    functions = []
    for name in ("textwrap.py", "shlex.py", "fnmatch.py", "colorsys.py", "bisect.py", "heapq.py", "glob.py",
                 "string.py", "calendar.py", "ntpath.py", "posixpath.py", "genericpath.py"):
        source = (stdlib / name).read_text(encoding="utf-8")
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef):
                body = ast.get_source_segment(source, node)
                if body and 300 <= len(body) <= 900:
                    functions.append(body)
                    break
    edits = ["Add type hints to this Python function and return the whole function:",
             "Rename the variables of this Python function to clearer names and return the whole function:"]
    out += [f"{edits[i % 2]}\n\n```python\n{f}\n```" for i, f in enumerate(functions[:10])]
    return out


def speculation(bundles: dict[str, Path], text: Path, new: int, threads: int, draft: Path | None = None) -> dict:
    """``draft``: a bundle for the ``draft`` strategy (with heads trained, bundles hold all three)."""
    from edgert.runtime.llm.generator import Generator, SamplingParams

    sets = {"grounded": grounded_prompts(text), "chat": CHAT}
    report = {}
    for side, bundle in bundles.items():
        gen = Generator(bundle, threads=threads)
        gen.eos = set()  # every prompt runs the full length
        heads = json.loads((bundle / "manifest.json").read_text())["decoder"].get("heads", {})
        strategies = ["ar", "lookup", *[h for h in HEADS if h in heads], *(["draft"] if draft else [])]
        options = {"draft": {"model": str(draft)}}
        for name in strategies:
            gen.generate([1, 2, 3, 4], SamplingParams(max_new_tokens=8), strategy=name, strategy_options=options.get(name))
        for kind, texts in sets.items():
            totals = {s: {"seconds": 0.0, "tokens": 0, "passes": 0, "by_depth": [], "same_as_ar": 0} for s in strategies}
            for question in texts:
                ids = gen.encode_messages([{"role": "user", "content": question}])
                reference = None
                for name in strategies:
                    t0 = time.perf_counter()
                    result = gen.generate(ids, SamplingParams(max_new_tokens=new), strategy=name,
                                          strategy_options=options.get(name))
                    total = totals[name]
                    total["seconds"] += time.perf_counter() - t0
                    total["tokens"] += len(result.tokens)
                    total["passes"] += result.stats.forward_calls + 1
                    total["by_depth"].append((list(result.stats.acceptance_by_depth()) + [0.0] * 8)[:8])
                    reference = reference or result.tokens
                    total["same_as_ar"] += result.tokens == reference
            base = totals["ar"]["tokens"] / totals["ar"]["seconds"]
            for name, total in totals.items():
                speed = total["tokens"] / total["seconds"]
                row = {"tokens_per_pass": total["tokens"] / total["passes"], "tokens_per_s": speed,
                       "speedup": speed / base, "same_as_ar": f"{total['same_as_ar']}/{len(texts)}",
                       "acceptance_by_depth": [round(float(a), 3) for a in np.mean(total["by_depth"], axis=0)]}
                report[f"{side} {kind} {name}"] = row
                print(f"{side:<12} {kind:<9} {name:<7} tokens/pass {row['tokens_per_pass']:.2f}  "
                      f"{speed:6.1f} tokens/s  {row['speedup']:.2f}x  equal to ar {row['same_as_ar']}", file=sys.stderr)
    return report


# ---- the run -----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, help="the GGUF (default: SmolLM2-135M-Instruct Q4_1, fetched and cached)")
    parser.add_argument("--text", type=Path, help="text for perplexity (default: Debian's GPL-3 text)")
    parser.add_argument("--llama-python", help="python of an environment with llama-cpp-python")
    parser.add_argument("--genai-python", help="python of an environment with onnxruntime-genai (and torch, transformers)")
    parser.add_argument("--sides", type=lambda s: s.split(","),
                        default=[*EDGERT_SIDES, "llama.cpp", "genai-int4"], help="comma-separated (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--speculation", action="store_true", help="also time lookup against ar (see above)")
    parser.add_argument("--new-tokens", type=int, default=128, help="--speculation: greedy tokens per prompt")
    parser.add_argument("--heads", type=int, default=0, metavar="STEPS",
                        help="--speculation: train Medusa, MTP and EAGLE-3 heads for STEPS steps and run every strategy")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    gguf = args.gguf or smollm2.fetch()
    text = args.text or gpl_text()
    exported = {s: export_side(gguf, s) for s in EDGERT_SIDES if s in args.sides}
    if "fp32" not in exported:
        exported["fp32"] = export_side(gguf, "fp32")  # the reference every side is held to
    bundles = {s: path for s, (path, _) in exported.items()}
    sides = {s: {"export_s": seconds, "disk_mb": disk_mb(path)} for s, (path, seconds) in exported.items()}

    from edgert.runtime.llm.generator import Generator

    gen = Generator(bundles["fp32"])
    prompt = gen.encode_messages([{"role": "user", "content": "Summarise this passage:\n\n" + text.read_text()[2000:6000]}])
    prompt = prompt[:PROMPT]
    commands = {s: [sys.executable, "-c", EDGERT_SPEED, str(p), json.dumps(prompt), str(NEW), str(args.threads)]
                for s, p in bundles.items() if s in args.sides}
    ids = gen.tokenizer.encode(text.read_text(encoding="utf-8"), add_special_tokens=False)
    windows = [ids[i:i + WINDOW] for i in range(0, len(ids) - WINDOW + 1, WINDOW)]
    quality = {s: cached_quality(s, windows, lambda p=p: edgert_quality(p, windows)) for s, p in bundles.items()}
    report: dict = {"model": f"{gguf.name} ({smollm2.LICENSE})", "threads": args.threads, "rounds": args.rounds,
                    "text": str(text), "text_tokens": len(ids), "scored_tokens": sum(len(w) - 1 for w in windows),
                    "prompt_tokens": len(prompt), "new_tokens": NEW,
                    "machine": f"{os.cpu_count()} cores, onnxruntime {__import__('onnxruntime').__version__}"}
    if args.llama_python and "llama.cpp" in args.sides:
        commands["llama.cpp"] = [args.llama_python, "-c", LLAMA_SPEED, str(gguf), json.dumps(prompt), str(NEW),
                                 str(args.threads)]
        out = cached_quality("llama.cpp", windows, lambda: run_worker(
            [args.llama_python, "-c", LLAMA_QUALITY, str(gguf), json.dumps(windows), str(args.threads), str(text)]))
        report["llama_cpp_tokenizer_equal"] = out.pop("text_ids") == ids
        quality["llama.cpp"] = out
        sides["llama.cpp"] = {"export_s": 0.0, "disk_mb": disk_mb(gguf)}
    if args.genai_python and "genai-int4" in args.sides:
        folder, seconds = genai_side(gguf, args.genai_python, args.threads)
        commands["genai-int4"] = [args.genai_python, str(HERE / "genai_worker.py"), str(folder), json.dumps(prompt),
                                  str(NEW)]
        quality["genai-int4"] = cached_quality("genai-int4", windows, lambda: genai_quality(folder, windows, args.threads))
        sides["genai-int4"] = {"export_s": seconds, "disk_mb": disk_mb(folder)}
    samples: dict[str, list[dict]] = {k: [] for k in commands}
    for r in range(args.rounds):
        order = list(commands.items())
        for key, command in order if r % 2 == 0 else order[::-1]:
            samples[key].append(run_worker(command))
            print(f"round {r + 1} {key}: {samples[key][-1]['decode_tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    scored = report["scored_tokens"]
    reference = quality["fp32"]
    for side, q in quality.items():
        row = sides.setdefault(side, {})
        row["perplexity"] = float(np.exp(sum(q["nll"]) / scored))
        agree = [a == b for x, y in zip(q["top1"], reference["top1"]) for a, b in zip(x, y)]
        row["top1_agreement_with_fp32"] = float(np.mean(agree))
        runs = samples.get(side)
        if runs:
            row.update({
                "decode_tokens_per_s": float(np.median([s["decode_tokens_per_s"] for s in runs])),
                "prefill_tokens_per_s": float(np.median([len(prompt) / s["prefill_s"] for s in runs])),
                "time_to_first_token_ms": float(np.median([s["prefill_s"] for s in runs])) * 1e3,
                "load_s": float(np.median([s.get("load_s", np.nan) for s in runs])),
                "peak_rss_mb": float(np.median([s["peak_rss_mb"] for s in runs])),
                "greedy_tokens_equal_to_fp32": next((i for i, (a, b) in enumerate(
                    zip(runs[0]["tokens"], samples["fp32"][0]["tokens"])) if a != b), NEW) if "fp32" in samples else None,
            })
            if "version" in runs[0]:
                row["version"] = runs[0]["version"]
    for side in bundles:
        if side != "fp32":
            q = json.loads((bundles[side] / "manifest.json").read_text())["quantization"]["decoder"]
            sides[side]["gate"] = {k: q["accuracy"][k] for k in ("greedy_agreement", "perplexity_ratio")}
    report["sides"] = sides

    def ratio(a: str, b: str) -> None:
        if a in samples and b in samples:
            paired = [x["decode_tokens_per_s"] / y["decode_tokens_per_s"] for x, y in zip(samples[a], samples[b])]
            report[f"decode {a} / {b}"] = {"paired_median": float(np.median(paired)), "per_round": paired}

    for a, b in (("stored", "llama.cpp"), ("stored-level4", "llama.cpp"), ("stored", "genai-int4"),
                 ("stored-level4", "genai-int4"), ("stored", "fp32"), ("int4", "genai-int4")):
        ratio(a, b)
    for a, b in (("stored", "fp32"), ("stored", "llama.cpp"), ("stored-level4", "fp32"), ("stored-level4", "llama.cpp")):
        if a in sides and b in sides:
            report[f"perplexity {a} / {b}"] = sides[a]["perplexity"] / sides[b]["perplexity"]
    if args.speculation:
        chosen, draft = {s: p for s, p in bundles.items() if s in args.sides}, None
        if args.heads:
            heads = train_heads(gguf, text, args.heads)
            chosen = {f"{s}+heads": export_with_heads(gguf, s, heads) for s in chosen}
            draft = export_side(gguf, "int4")[0]
            report["speculation_heads"] = {"steps": args.heads, "draft": "int4"}
        report["speculation"] = speculation(chosen, text, args.new_tokens, args.threads, draft)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
