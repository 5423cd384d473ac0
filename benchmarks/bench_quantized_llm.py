"""Decoder weights at fp32, int8 and int4 against onnxruntime-genai's own int4 export, on the CPU.

Model: bench_llm.py's random-weights Qwen2 with Qwen2.5-0.5B's configuration (494M parameters,
tied embeddings). edgert exports it at fp32, int8 and int4 (``--precision``, defaults: RTN,
blocks of 32, symmetric, accuracy_level 4; int4 embedding as GatherBlockQuantized); and
onnxruntime-genai's builder exports the same checkpoint (``python -m
onnxruntime_genai.models.builder -i CKPT -o OUT -p int4 -e cpu``, its defaults), run from its own
environment (``--genai-python``: a venv with onnxruntime-genai, torch and transformers; never a
dependency of edgert). Random weights: their accuracy figures mean nothing, so the exports lower
the accuracy bounds (the defaults come from a trained model, docs/benchmarks.md); the work per
token is the same as a trained model's.

A fifth runner, ``int4-concat``, is the int4 export with ``--opt kv_cache=concat`` (ONNX
Attention returning past ‖ new, the cache re-bound every step) against the default in-place
cache (GroupQueryAttention, bound once).

Each measurement is a fresh process (for its peak RSS, VmHWM): a 128-token prompt's prefill and
64 greedy tokens, same prompt ids, same threads, the runners taking turns in each of
``--rounds`` rounds, in reverse order every other round (drift within a round cancels);
medians reported, and the decode ratios also paired within each round (their medians are the
figures that survive this machine's drift, which moves every runner by up to ±25 % between
rounds). ``--runners`` picks a subset. The memory-bandwidth bound: weight bytes
read per decoded token (every initializer but the embedding table, of which a step reads one
row) over the machine's copy bandwidth, measured here (numpy, ``--threads`` parallel copies of
256 MB).

    python benchmarks/bench_quantized_llm.py --genai-python /path/to/venv/bin/python [--rounds 3] [--out FILE]
                                             [--runners int4,genai-int4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm import NEW, PROMPT, QWEN25_05B, ROOT, bundle, checkpoint, write_report  # noqa: E402

LOOSE = {"min_agreement": "0", "max_perplexity_ratio": "1e6", "near_tie": "0"}  # random weights: see above
WORKER = Path(__file__).with_name("genai_worker.py")


def edgert_bundle(ckpt: Path, runner: str) -> Path:
    """``fp32``, ``int8``, ``int4`` (in-place KV cache, the default) or ``int4-concat`` (the
    ``--opt kv_cache=concat`` cache: ONNX Attention, past ‖ new each step)."""
    if runner == "fp32":
        return bundle(ckpt)
    precision, _, kv_cache = runner.partition("-")
    out = ROOT / f"bundle-{runner}"
    if not (out / "manifest.json").is_file():
        from edgert.exporters.driver import export

        t0 = time.perf_counter()
        export("llama", out, {"context": "2048", "kv_cache": kv_cache or "in_place"}, checkpoint=str(ckpt),
               precision=precision, quant=LOOSE)
        print(f"export {runner}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return out


def genai_model(ckpt: Path, python: str) -> Path:
    out = ROOT / "genai-int4"
    if not (out / "genai_config.json").is_file():
        subprocess.run([python, "-m", "onnxruntime_genai.models.builder", "-i", str(ckpt), "-o", str(out), "-p", "int4",
                        "-e", "cpu", "-c", str(ROOT / "genai-cache")], check=True)
    return out


def set_genai_threads(folder: Path, threads: int) -> None:
    config = json.loads((folder / "genai_config.json").read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = threads
    options["inter_op_num_threads"] = 1
    (folder / "genai_config.json").write_text(json.dumps(config, indent=2))


EDGERT_WORKER = """
import json, sys
from edgert.runtime.llm.generator import Generator, SamplingParams
path, prompt, new, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gen = Generator(path, threads=threads)
gen.eos = set()
gen.generate(prompt[:16], SamplingParams(max_new_tokens=4))
result = gen.generate(prompt, SamplingParams(max_new_tokens=new))
rss = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
print(json.dumps({"prefill_s": result.stats.prefill_s, "decode_tokens_per_s": result.stats.decode_tokens_per_s,
                  "tokens": result.tokens, "peak_rss_mb": rss}))
"""


def run_worker(command: list[str]) -> dict:
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def weights_read_per_token(path: Path) -> int:
    """Bytes of every initializer except tables only gathered from (a step reads one row)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, set()).add(node.op_type if i == 0 else "other")
    total = 0
    for init in model.graph.initializer:
        if consumers.get(init.name, set()) <= {"Gather", "GatherBlockQuantized"} and init.name in consumers:
            continue
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next(e.value for e in init.external_data if e.key == "length"))
        else:
            total += len(init.raw_data) or init.ByteSize()
    return total


def copy_bandwidth(threads: int) -> float:
    """GB/s moved (read + write) by ``threads`` numpy copies of 256 MB running at once (numpy
    releases the GIL while copying), best of 5."""
    n = 256 << 20
    pairs = [(np.ones(n // 8), np.empty(n // 8)) for _ in range(threads)]
    best = 0.0
    for _ in range(5):
        workers = [threading.Thread(target=np.copyto, args=(dst, src)) for src, dst in pairs]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, 2 * n * threads / (time.perf_counter() - t0) / 1e9)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genai-python", help="python of an environment with onnxruntime-genai (and torch, transformers)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--runners", default="fp32,int8,int4,int4-concat,genai-int4",
                        type=lambda text: text.split(","), help="which runners, comma-separated (default: all five)")
    args = parser.parse_args()
    ckpt = checkpoint()
    runners = {p: edgert_bundle(ckpt, p) for p in ("fp32", "int8", "int4", "int4-concat") if p in args.runners}
    prompt = np.random.default_rng(0).integers(0, QWEN25_05B["vocab_size"], PROMPT).tolist()
    commands = {p: [sys.executable, "-c", EDGERT_WORKER, str(path), json.dumps(prompt), str(NEW), str(args.threads)]
                for p, path in runners.items()}
    files = {p: path / "decoder.onnx" for p, path in runners.items()}
    if args.genai_python and "genai-int4" in args.runners:
        genai = genai_model(ckpt, args.genai_python)
        set_genai_threads(genai, args.threads)
        commands["genai-int4"] = [args.genai_python, str(WORKER), str(genai), json.dumps(prompt), str(NEW)]
        files["genai-int4"] = genai / "model.onnx"
    samples: dict[str, list[dict]] = {k: [] for k in commands}
    for r in range(args.rounds):
        order = list(commands.items())
        for key, command in order if r % 2 == 0 else order[::-1]:  # ABBA: drift within a round cancels
            samples[key].append(run_worker(command))
            print(f"round {r + 1} {key}: {samples[key][-1]['decode_tokens_per_s']:.2f} tokens/s", file=sys.stderr)
    bandwidth = copy_bandwidth(args.threads)
    rows = {}
    for key, runs in samples.items():
        decode = float(np.median([s["decode_tokens_per_s"] for s in runs]))
        read = weights_read_per_token(files[key])
        rows[key] = {"decode_tokens_per_s": decode,
                     "prefill_tokens_per_s": float(np.median([PROMPT / s["prefill_s"] for s in runs])),
                     "peak_rss_mb": float(np.median([s["peak_rss_mb"] for s in runs])),
                     "weights_read_per_token_mb": read / 1e6,
                     "bandwidth_bound_tokens_per_s": bandwidth * 1e9 / read,
                     "fraction_of_bound": decode / (bandwidth * 1e9 / read)}
    report = {
        "model": "Qwen2.5-0.5B config, random weights (494M parameters)", "threads": args.threads, "rounds": args.rounds,
        "prompt_tokens": PROMPT, "new_tokens": NEW, "copy_bandwidth_gb_s": bandwidth, "runners": rows,
        "machine": f"{os.cpu_count()} cores, onnxruntime {__import__('onnxruntime').__version__}",
    }

    def ratio(a: str, b: str, what: str = "decode_tokens_per_s") -> None:
        """a's figure over b's: of the medians, and paired within each round (the figure that
        survives this machine's drift)."""
        if a in rows and b in rows:
            paired = [x[what] / y[what] for x, y in zip(samples[a], samples[b])]
            report[f"{a}_vs_{b}_decode"] = rows[a][what] / rows[b][what]
            report[f"{a}_vs_{b}_decode_per_round"] = paired
            report[f"{a}_vs_{b}_decode_paired_median"] = float(np.median(paired))

    for a, b in (("int4", "fp32"), ("int8", "fp32"), ("int4", "int4-concat"), ("int4", "genai-int4")):
        ratio(a, b)
    for p in ("int8", "int4"):
        if p in runners:
            q = json.loads((runners[p] / "manifest.json").read_text())["quantization"]["decoder"]
            report[f"{p}_accuracy"], report[f"{p}_weight_bytes_ratio"] = q["accuracy"], q["weight_bytes"] / q["fp32_weight_bytes"]
    if "int4" in rows and "genai-int4" in rows:
        report["int4_vs_genai_int4_prefill"] = rows["int4"]["prefill_tokens_per_s"] / rows["genai-int4"]["prefill_tokens_per_s"]
        report["genai_version"] = samples["genai-int4"][0].get("version")
        report["int4_greedy_equal_to_genai_tokens"] = next(
            (i for i, (a, b) in enumerate(zip(samples["int4"][0]["tokens"], samples["genai-int4"][0]["tokens"])) if a != b),
            NEW)
    write_report(report, args.out)


if __name__ == "__main__":
    main()
