"""Online action detection: per-chunk cost at paper size, TeSTra against recomputing its memory,
flat cost and memory over a long stream, the video chain.

1. Paper sizes, random weights, fp32 and int8 (calibrated QDQ on random feature streams; the
   accuracy gate is lowered to 0 since random weights decide nothing), 3072-d input:
   miniroad (embedding 2048, GRU 1024), testra box and Laplace (long memory 512 samples every 4
   chunks = 2,048 chunks, work 32, d 1024), oadtr (window 64, 1024-d, 3 + 5 layers), oad-trn
   (hidden 4096, 8 decoder steps). Per chunk: p50 / p99 of the step graph on ONNX Runtime, and
   of the PyTorch step in the same run, same threads; the bundle's size and the state a stream
   carries. Real time at 4 chunks/s (THUMOS: 6 frames at 24 fps) needs under 250 ms.
2. TeSTra's step against LSTR's way (the paper's "6x faster than sliding-window LSTR with
   2,048 frames"): the same model's window graph, which re-reads the 512-sample long memory and
   re-encodes it at every chunk (its feature head, projections and attention), on the same
   runtime. And the step's cost before the memory is full (chunks 100-300) and after it slides
   (chunks 2,100-2,300).
3. Over 50,000 streamed chunks (smaller widths, the paper's memory lengths, so it ends in
   minutes): per-chunk time at chunk 100 and at 50,000, RSS growth after warm-up (< 5 %), and
   for TeSTra the streaming update's largest difference from recomputing the window, sampled
   every 1,000 chunks.
4. Chain: decode a 320x240 video -> TSN-ResNet50 features (1 centre frame per 6-frame chunk,
   2048-d) -> oadtr with 2048-d input: chunks per second end to end.

    python benchmarks/bench_oad.py [--chunks 40] [--stream-chunks 50000] [--out FILE]
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
from edgert.runtime.metrics import softmax

ROOT = Path("build/bench")
QUANT = {"min_agreement": "0", "near_tie": "0"}  # random weights: see above
PAPER = {
    "miniroad": ("miniroad", {}),
    "testra box": ("testra", {"kernel": "box"}),
    "testra laplace": ("testra", {"kernel": "laplace"}),
    "oadtr": ("oadtr", {}),
    "oad-trn": ("oad-trn", {}),
}


def bundle(name: str, tag: str, opts: dict, **kwargs) -> Path:
    path = ROOT / tag
    if not (path / "manifest.json").is_file():
        export(name, path, {k: str(v) for k, v in opts.items()}, **kwargs)
    return path


def calibration_streams(dim: int) -> Path:
    path = ROOT / f"oad-calibration-{dim}"
    if not path.is_dir():
        path.mkdir(parents=True)
        rng = np.random.default_rng(1)
        for i in range(4):
            np.save(path / f"stream{i}.npy", rng.standard_normal((24, dim)).astype(np.float32))
    return path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50) * 1e3), float(np.percentile(samples, 99) * 1e3)


def time_steps(step, feeds, count: int, warmup: int = 3) -> list[float]:
    out = []
    for i in range(count + warmup):
        t0 = time.perf_counter()
        step(feeds[i % len(feeds)])
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def torch_stepper(model, threads: int):
    """The bundle's PyTorch step module (same plugin, options, seed), its state carried."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    built = model.plugin.build(dict(model.bundle.manifest["model"]["options"]), None)
    module = built["main"] if isinstance(built, dict) else built
    graph = model.graph()
    names = [t.name for t in graph.inputs if t.name != "features"]
    state = {t.name: torch.zeros([d if isinstance(d, int) else 1 for d in t.dims],
                                 dtype=torch.int64 if t.dtype == "int64" else torch.float32)
             for t in graph.inputs if t.name != "features"}
    outputs = [t.name for t in graph.outputs]

    def step(f):
        with torch.inference_mode():
            out = dict(zip(outputs, module(torch.from_numpy(f), *(state[n] for n in names))))
        for n in names:
            state[n] = out[f"next_{n}"]

    params = sum(p.numel() for p in module.parameters())
    return step, params


def state_size(model) -> str:
    size = sum(int(np.prod([d if isinstance(d, int) else 1 for d in t.dims])) * (8 if t.dtype == "int64" else 4)
               for t in model.graph().inputs if t.name != "features")
    return f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"


def paper_sizes(args, lines: list[str]) -> None:
    lines += ["| detector | precision | params | bundle | state per stream | ORT p50 / p99 | PyTorch p50 | "
              "ORT vs PyTorch | chunks/s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((1, 3072)).astype(np.float32) for _ in range(8)]
    for label, (name, opts) in PAPER.items():
        tag = label.replace(" ", "-")
        fp32 = bundle(name, f"{tag}-paper", opts)
        int8 = bundle(name, f"{tag}-paper-int8", opts, precision="int8", calibration=str(calibration_streams(3072)),
                      quant=QUANT)
        model = load(fp32, threads=args.threads)
        torch_step, params = torch_stepper(model, args.threads)
        theirs = percentiles(time_steps(torch_step, feats, args.chunks))[0]
        for precision, path in (("fp32", fp32), ("int8", int8)):
            m = model if precision == "fp32" else load(path, threads=args.threads)
            session = m.stream(window=1)
            (o50, o99) = percentiles(time_steps(lambda f: session.step({"features": f}), feats, args.chunks))
            lines.append(f"| {label} | {precision} | {params / 1e6:.1f} M | {size_mb(path):.0f} MB | {state_size(m)} "
                         f"| {o50:.1f} / {o99:.1f} ms | {theirs:.1f} ms | **{theirs / o50:.2f}x** | {1e3 / o50:.0f} |")
            print(lines[-1], flush=True)


def testra_against_recompute(args, lines: list[str]) -> None:
    """The step graph against the window graph (LSTR's per-chunk recomputation), paper size."""
    from edgert.exporters.graph import export_graph
    from edgert.plugins.testra.model import TeSTra
    from edgert.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgert.runtime.bundle import GraphSpec, TensorSpec

    rng = np.random.default_rng(0)
    lines += ["", "| TeSTra, paper size, fp32 | kernel | per chunk p50 / p99 | vs the window graph |", "| --- | --- | --- | --- |"]
    for kernel in ("box", "laplace"):
        torch.manual_seed(0)
        window = TeSTra(kernel=kernel).eval()
        path = ROOT / f"testra-window-{kernel}.onnx"
        spec = GraphSpec("window", path.name, inputs=(TensorSpec("long", "float32", ("batch", 512, 3072)),
                                                      TensorSpec("mask", "float32", ("batch", 512)),
                                                      TensorSpec("work", "float32", ("batch", 32, 3072))),
                         outputs=(TensorSpec("scores", "float32", ("batch", 32, 22)),))
        feeds = {"long": rng.standard_normal((1, 512, 3072)).astype(np.float32), "mask": np.zeros((1, 512), np.float32),
                 "work": rng.standard_normal((1, 32, 3072)).astype(np.float32)}
        if not path.is_file():
            export_graph(window, spec, feeds, path, {})
        backend = OnnxRuntimeBackend(path, threads=args.threads)
        recompute = percentiles(time_steps(lambda _: backend.run(feeds), [None], max(8, args.chunks // 4)))
        session = load(ROOT / f"testra-{kernel}-paper", threads=args.threads).stream(window=1)
        chunks = [rng.standard_normal((1, 3072)).astype(np.float32) for _ in range(8)]
        for i in range(100):
            session.step({"features": chunks[i % 8]})
        early = percentiles(time_steps(lambda f: session.step({"features": f}), chunks, 200, 0))
        for i in range(1800):
            session.step({"features": chunks[i % 8]})
        late = percentiles(time_steps(lambda f: session.step({"features": f}), chunks, 200, 0))
        lines.append(f"| step graph, chunks 100-300 (memory filling) | {kernel} | {early[0]:.1f} / {early[1]:.1f} ms | "
                     f"**{recompute[0] / early[0]:.2f}x** faster |")
        lines.append(f"| step graph, chunks 2,100-2,300 (memory sliding) | {kernel} | {late[0]:.1f} / {late[1]:.1f} ms | "
                     f"**{recompute[0] / late[0]:.2f}x** faster |")
        lines.append(f"| window graph (LSTR: the 2,048-chunk memory re-read every chunk) | {kernel} | "
                     f"{recompute[0]:.1f} / {recompute[1]:.1f} ms | 1.00x |")
        for line in lines[-3:]:
            print(line, flush=True)


def long_streams(args, lines: list[str]) -> None:
    """50,000 chunks: time per chunk early and late, RSS growth, TeSTra's drift from recomputing."""
    from edgert.plugins.testra.model import TeSTra

    n = args.stream_chunks
    small = {
        "miniroad": ("miniroad", {"feature_dim": 256, "embedding": 128, "hidden": 128}),
        "testra box": ("testra", {"feature_dim": 256, "d_model": 64, "heads": 4, "ff": 64, "kernel": "box"}),
        "testra laplace": ("testra", {"feature_dim": 256, "d_model": 64, "heads": 4, "ff": 64, "kernel": "laplace"}),
        "oadtr": ("oadtr", {"feature_dim": 256, "dim": 64, "heads": 4, "dec_heads": 4, "window": 16, "mlp_dim": 64}),
        "oad-trn": ("oad-trn", {"feature_dim": 256, "hidden": 128}),
    }
    lines += ["", f"| detector (small widths) | per chunk at 100 | at {n:,} | RSS after warm-up -> after {n:,} | "
                  "streaming vs recomputing (max abs probability difference) |", "| --- | --- | --- | --- | --- |"]
    rng = np.random.default_rng(2)
    feats = rng.standard_normal((n + 1200, 256)).astype(np.float32)
    for label, (name, opts) in small.items():
        path = bundle(name, f"{label.replace(' ', '-')}-small", opts)
        model = load(path, threads=args.threads)
        session = model.stream(window=1)
        reference = None
        if name == "testra":
            torch.manual_seed(0)
            built = model.plugin.build(dict(model.bundle.manifest["model"]["options"]), None).model
            reference = built if isinstance(built, TeSTra) else None
        times, drift = [], 0.0
        for i in range(1000):
            session.step({"features": feats[i][None]})
        before = rss_mb()
        t_early = t_late = 0.0
        for i in range(1000, n + 1000):
            t0 = time.perf_counter()
            scores = session.step({"features": feats[i][None]})["scores"]
            dt = time.perf_counter() - t0
            if 1000 <= i < 1200:
                times.append(dt)
            if i == 1200:
                t_early, times = float(np.median(times)), []
            if i >= n + 800:
                times.append(dt)
            if reference is not None and i % 1000 == 999:
                drift = max(drift, float(np.abs(softmax(scores[0]) - softmax(recompute(reference, feats, i))).max()))
        t_late = float(np.median(times))
        after = rss_mb()
        lines.append(f"| {label} | {t_early * 1e3:.2f} ms | {t_late * 1e3:.2f} ms | {before:.0f} -> {after:.0f} MB "
                     f"(**{(after - before) / before * 100:+.2f} %**) | "
                     f"{f'{drift:.1e}' if reference is not None else '-'} |")
        print(lines[-1], flush=True)


def recompute(model, feats: np.ndarray, t: int) -> np.ndarray:
    """Chunk ``t``'s scores from the window computation (the official batch inference)."""
    from bisect import bisect_right

    n, rate, work = model.long, 4, model.work
    start = t - work + 1
    first = start - n * rate if start - n * rate >= 0 else start % rate
    indices = np.arange(first, start)[::rate]
    indices = np.sort(np.concatenate([np.zeros(n - len(indices), np.int64), indices])).clip(0)
    mask = np.zeros(n, np.float32)
    last_zero = bisect_right(indices, 0) - 1
    if last_zero > 0:
        mask[:last_zero] = -np.inf
    x = torch.from_numpy(feats)
    with torch.inference_mode():
        return model(x[indices][None], torch.from_numpy(mask)[None], x[start:t + 1][None])[0, -1].numpy()


def chain(args, lines: list[str]) -> None:
    rng = np.random.default_rng(0)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--stream-chunks", type=int, default=50_000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--parts", default="paper,testra,stream,chain", help="which parts to run, comma separated")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = [f"{os.cpu_count()} cores, {args.threads} threads for both runtimes", ""]
    parts = set(args.parts.split(","))
    for part, run in (("paper", paper_sizes), ("testra", testra_against_recompute), ("stream", long_streams),
                      ("chain", chain)):
        if part in parts:
            run(args, lines)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
