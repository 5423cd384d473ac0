"""Video models at int8 (calibrated static QDQ) against fp32 on ONNX Runtime's CPU provider.

For TSN, TSM and TDN with ResNet-50 and MobileNetV2 (TDN: ResNet-50) at 8 segments x 224x224,
and online TSM per frame: an fp32 bundle and an int8 bundle (``--precision int8``, calibrated
on 16 synthetic clips, min-max, a quarter held out), then clips/s of both on the same inputs, in
the same process, same threads, in interleaved rounds (fp32, int8, fp32, int8, ...) so that a
machine's drift hits both alike. Weights are random (nothing can be downloaded): timing does
not depend on them, and the agreement a random model shows says nothing (its scores are nearly
flat), so the benchmark lowers min_agreement to 0 and reports the figures as measured; the
accuracy claims come from the trained models of tests/test_precision.py.

    python benchmarks/bench_int8.py [--rounds 3] [--iters 3] [--threads 2] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from edgert.exporters.driver import export
from edgert.exporters.synthetic import render_clip
from edgert.runtime import load

ROOT = Path("build/bench/int8")
CASES = [("tsn", "resnet50"), ("tsn", "mobilenetv2"), ("tsm", "resnet50"), ("tsm", "mobilenetv2"), ("tdn", "resnet50")]
ONLINE = [("tsm", "mobilenetv2"), ("tsm", "resnet50")]
COMMON = {"segments": "8", "size": "224", "num_classes": "400"}
QUANT = {"min_agreement": "0", "near_tie": "0"}  # random weights: see above


def calibration() -> Path:
    data = ROOT / "calibration"
    if not data.is_dir():
        data.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(16):
            np.save(data / f"clip{i:02d}.npy", render_clip(i % 5, rng, frames=8, height=240, width=320))
    return data


def bundles(name: str, backbone: str, online: bool = False) -> tuple[Path, Path, float]:
    tag = f"{name}-{backbone}{'-online' if online else ''}"
    opts = {**COMMON, "backbone": backbone, **({"online": "true"} if online else {})}
    fp32, int8 = ROOT / f"{tag}-fp32", ROOT / f"{tag}-int8"
    if not (fp32 / "manifest.json").is_file():
        export(name, fp32, opts)
    t0 = time.perf_counter()
    if not (int8 / "manifest.json").is_file():
        export(name, int8, opts, precision="int8", calibration=str(calibration()), quant=QUANT)
    return fp32, int8, time.perf_counter() - t0


def interleaved(runs: dict, rounds: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each runner, over ``rounds`` rounds of ``iters`` calls each,
    the runners taking turns within every round."""
    for fn in runs.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, fn in runs.items():
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args()
    import onnxruntime

    lines = [f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores; onnxruntime "
             f"{onnxruntime.__version__}, CPUExecutionProvider, {args.threads} threads; batch 1; median of "
             f"{args.rounds} interleaved rounds x {args.iters} runs", "",
             "| model | backbone | fp32 ms/clip | int8 ms/clip | int8 speed-up | fp32 MB | int8 MB | held-out top-1 agreement (random weights) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    results = []
    for name, backbone in CASES:
        fp32_path, int8_path, took = bundles(name, backbone)
        fp32, int8 = load(fp32_path, threads=args.threads), load(int8_path, threads=args.threads)
        feeds = {t.name: np.random.default_rng(0).standard_normal([1 if isinstance(d, str) else d for d in t.dims])
                 .astype(np.float32) for t in fp32.graph().inputs}
        med = interleaved({"fp32": lambda: fp32.run(feeds), "int8": lambda: int8.run(feeds)}, args.rounds, args.iters)
        accuracy = json.loads((int8_path / "manifest.json").read_text())["quantization"]["main"]["accuracy"]
        row = {"model": name, "backbone": backbone, "fp32_ms": med["fp32"] * 1e3, "int8_ms": med["int8"] * 1e3,
               "speedup": med["fp32"] / med["int8"], "fp32_mb": size_mb(fp32_path), "int8_mb": size_mb(int8_path),
               "agreement": accuracy["top1_agreement"]}
        results.append(row)
        lines.append(f"| {name} | {backbone} | {row['fp32_ms']:.0f} | {row['int8_ms']:.0f} | **{row['speedup']:.2f}x** | "
                     f"{row['fp32_mb']:.0f} | {row['int8_mb']:.0f} | {row['agreement']:.0%} |")
        print(lines[-1], flush=True)
    lines += ["", "| online model | backbone | fp32 ms/frame | int8 ms/frame | int8 speed-up |", "| --- | --- | --- | --- | --- |"]
    for name, backbone in ONLINE:
        fp32_path, int8_path, _ = bundles(name, backbone, online=True)
        sessions = {k: load(p, threads=args.threads).stream() for k, p in (("fp32", fp32_path), ("int8", int8_path))}
        frame = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        med = interleaved({k: (lambda s=s: s.step({"frame": frame})) for k, s in sessions.items()}, args.rounds, args.iters * 8)
        row = {"model": f"{name}-online", "backbone": backbone, "fp32_ms": med["fp32"] * 1e3, "int8_ms": med["int8"] * 1e3,
               "speedup": med["fp32"] / med["int8"]}
        results.append(row)
        lines.append(f"| {name} online | {backbone} | {row['fp32_ms']:.1f} | {row['int8_ms']:.1f} | **{row['speedup']:.2f}x** |")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
