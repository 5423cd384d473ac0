"""Every video recognizer, ONNX Runtime vs PyTorch eager, plus online-TSM streaming cost.

For each model at an edge size (8 segments, 224x224, ResNet-50 or MobileNetV2): export a
bundle (random weights: timing does not depend on them), then time the ONNX Runtime session
and the PyTorch module on the same inputs, in the same process, with the same thread count.
Online TSM: per-frame latency of the streaming graph against the offline clip graph's latency
divided by the number of frames.

    python benchmarks/bench_video.py [--iters 10] [--threads N] [--out docs/bench_video.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np

from edgert.exporters.compare import torch_runner
from edgert.exporters.driver import export
from edgert.runtime import load
from edgert.runtime.bench import measure

CASES = [
    ("tsn", {"backbone": "resnet50"}),
    ("tsn", {"backbone": "mobilenetv2"}),
    ("tsm", {"backbone": "resnet50"}),
    ("tsm", {"backbone": "mobilenetv2"}),
    ("trn", {"backbone": "resnet50"}),
    ("tdn", {"backbone": "resnet50"}),
    ("tam", {"backbone": "resnet50"}),
    ("two-stream", {"backbone": "resnet50", "modality": "flow"}),
    ("two-stream", {"backbone": "mobilenetv2", "modality": "flow"}),
]
COMMON = {"segments": "8", "size": "224"}
ROOT = Path("build/bench")


def bundle_for(name: str, opts: dict) -> Path:
    tag = "-".join([name] + [f"{v}" for k, v in sorted(opts.items())])
    path = ROOT / tag
    if not (path / "manifest.json").is_file():
        export(name, path, {**COMMON, **opts})
    return path


def random_feeds(graph, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {t.name: rng.standard_normal([d if isinstance(d, int) else batch for d in t.dims]).astype(t.dtype)
            for t in graph.inputs}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.threads} threads for both runtimes; "
             f"{args.iters} timed iterations after 2 warm-up; batch 1", "",
             "| model | backbone | ORT p50 | PyTorch p50 | ORT clips/s | PyTorch clips/s | ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, opts in CASES:
        model = load(bundle_for(name, opts), threads=args.threads)
        graph = model.graph()
        feeds = random_feeds(graph)
        ours = measure("ort", lambda: model.run(feeds), args.iters, 2, 1)
        run_torch, _ = torch_runner(model.bundle, graph, feeds, args.threads)
        theirs = measure("torch", run_torch, args.iters, 2, 1)
        lines.append(f"| {name} | {opts['backbone']} | {ours.p50_ms:.1f} ms | {theirs.p50_ms:.1f} ms | "
                     f"{ours.throughput:.2f} | {theirs.throughput:.2f} | **{ours.throughput / theirs.throughput:.2f}x** |")
        print(lines[-1], flush=True)

    # Online TSM: one frame of the streaming graph vs one eighth of the offline clip graph.
    online = load(bundle_for("tsm", {"backbone": "mobilenetv2", "online": "true"}), threads=args.threads)
    offline = load(bundle_for("tsm", {"backbone": "mobilenetv2", "shift": "unidirectional"}), threads=args.threads)
    session = online.stream()
    frame = random_feeds(online.graph())["frame"]
    per_frame = measure("online", lambda: session.step({"frame": frame}), args.iters * 8, 8, 1)
    clip_feeds = random_feeds(offline.graph())
    clip = measure("offline", lambda: offline.run(clip_feeds), args.iters, 2, 1)
    ratio = per_frame.p50_ms / (clip.p50_ms / 8)
    lines += ["", f"online TSM-MobileNetV2: {per_frame.p50_ms:.2f} ms per frame (p50; p90 {per_frame.p90_ms:.2f}); "
              f"offline 8-frame clip {clip.p50_ms:.2f} ms = {clip.p50_ms / 8:.2f} ms per frame; "
              f"per-frame / (clip / 8) = **{ratio:.2f}** (target <= 1.25)"]
    print(lines[-1])
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
