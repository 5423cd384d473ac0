"""Online action detection: per-chunk latency at paper size, the video chain, memory over a long stream.

1. oad-trn (3072-d input, hidden 4096, 8 decoder steps: 358M parameters) and oadtr (window
   64, 1024-d, 3+5 layers: 75M) at paper size, random weights: per-chunk latency p50/p99 of
   the streaming graph on ONNX Runtime and of the PyTorch step in the same run, same threads.
   Real time at 4 chunks/s (THUMOS: 6 frames at 24 fps) needs under 250 ms per chunk.
2. Chain: decode a 320x240 video -> TSN-ResNet50 features (1 centre frame per 6-frame chunk,
   2048-d) -> oadtr with 2048-d input: chunks per second end to end.
3. Memory: RSS over 100,000 streamed chunks (small models, so it finishes in minutes): growth
   after warm-up must stay under 5 %.

    python benchmarks/bench_oad.py [--chunks 40] [--stream-chunks 100000] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from edgert.exporters.driver import export
from edgert.exporters.synthetic import render_clip, write_video
from edgert.runtime import load
from edgert.runtime.chain import feature_chunks

ROOT = Path("build/bench")


def bundle(name: str, tag: str, opts: dict) -> Path:
    path = ROOT / tag
    if not (path / "manifest.json").is_file():
        export(name, path, opts)
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50) * 1e3), float(np.percentile(samples, 99) * 1e3)


def time_stream(step, feeds, count: int) -> list[float]:
    out = []
    for i in range(count + 3):
        t0 = time.perf_counter()
        step(feeds[i % len(feeds)])
        if i >= 3:
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--stream-chunks", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"{os.cpu_count()} cores, {args.threads} threads for both runtimes", "",
             "| detector | params | ORT p50 / p99 | PyTorch p50 / p99 | ratio (p50) | real time at 4 chunks/s |",
             "| --- | --- | --- | --- | --- | --- |"]
    rng = np.random.default_rng(0)
    for name in ("oad-trn", "oadtr"):
        model = load(bundle(name, f"{name}-paper", {}), threads=args.threads)
        feats = [rng.standard_normal((1, 3072)).astype(np.float32) for _ in range(8)]
        session = model.stream(window=1)
        ours = time_stream(lambda f: session.step({"features": f}), feats, args.chunks)

        plugin = model.plugin
        torch.manual_seed(0)
        module = plugin.build(dict(model.bundle.manifest["model"]["options"]), None)
        params = sum(p.numel() for p in module.parameters())
        state = {spec.name: torch.zeros([d if isinstance(d, int) else 1 for d in spec.dims])
                 for spec in model.graph().inputs if spec.name != "features"}
        names = list(state)

        def torch_step(f):
            with torch.inference_mode():
                out = module(torch.from_numpy(f), *state.values())
            for key, value in zip(names, out[2:]):
                state[key] = value

        theirs = time_stream(torch_step, feats, args.chunks)
        (o50, o99), (t50, t99) = percentiles(ours), percentiles(theirs)
        lines.append(f"| {name} | {params / 1e6:.1f} M | {o50:.1f} / {o99:.1f} ms | {t50:.1f} / {t99:.1f} ms | "
                     f"**{t50 / o50:.2f}x** | {'yes' if o99 < 250 else 'no'} ({1e3 / o50:.1f} chunks/s) |")
        print(lines[-1], flush=True)

    # chain: video -> TSN-R50 features -> OadTR
    extractor = load(bundle("tsn", "tsn-r50-features-1seg", {"backbone": "resnet50", "segments": "1", "size": "224",
                                                            "output": "features"}), threads=args.threads)
    detector = load(bundle("oadtr", "oadtr-2048", {"feature_dim": "2048"}), threads=args.threads)
    video = ROOT / "chain.mp4"
    write_video(video, render_clip(0, rng, frames=240, height=240, width=320))
    session = detector.stream(window=1)
    t0 = time.perf_counter()
    chunks = 0
    for feature in feature_chunks(extractor, str(video), 6):
        session.push(feature)
        chunks += 1
    rate = chunks / (time.perf_counter() - t0)
    lines += ["", f"chain video (320x240) -> TSN-ResNet50 features -> OadTR (paper size, 2048-d input): "
              f"{chunks} chunks at **{rate:.2f} chunks/s** ({'real time' if rate >= 4 else 'slower than real time'} "
              f"at 4 chunks/s)"]
    print(lines[-1], flush=True)

    # memory over a long stream
    for name, opts in (("oad-trn", {"feature_dim": "256", "hidden": "128"}),
                       ("oadtr", {"feature_dim": "256", "dim": "64", "heads": "4", "dec_heads": "4", "window": "16",
                                  "mlp_dim": "64"})):
        model = load(bundle(name, f"{name}-small", opts), threads=args.threads)
        session = model.stream(window=1)
        feats = [rng.standard_normal((1, 256)).astype(np.float32) for _ in range(16)]
        for i in range(1000):
            session.step({"features": feats[i % 16]})
        before = rss_mb()
        t0 = time.perf_counter()
        for i in range(args.stream_chunks):
            session.step({"features": feats[i % 16]})
        after = rss_mb()
        lines.append(f"{name} (small) over {args.stream_chunks} chunks: RSS {before:.1f} -> {after:.1f} MB "
                     f"(**{(after - before) / before * 100:+.2f} %**), {args.stream_chunks / (time.perf_counter() - t0):.0f} chunks/s")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
