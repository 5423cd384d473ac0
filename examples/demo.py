"""`make demo`: the main job end to end on the CPU with ONNX Runtime.

1. Train a small TSN (ResNet-18, K=3 segments as in the TSN paper's training) for a few
   dozen steps on synthetic action clips, since nothing can be downloaded here.
2. `edgert export tsn` with that checkpoint, 8 segments at test time (TSN tests with more
   segments than it trains with), parity checked against PyTorch.
3. Write a held-out clip as an .mp4 and `edgert run` the bundle on it: top-5 labels and
   the time per clip. Then `edgert info` and `edgert bench --compare torch`.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from edgert.exporters.finetune import train
from edgert.exporters.synthetic import CLASSES, render_clip, write_video
from edgert.plugins.tsn import TSNDetector

OUT = Path("build/demo")
SIZE = 64


def edgert(*args: str) -> None:
    print(f"\n$ edgert {' '.join(shlex.quote(a) for a in args)}", flush=True)
    subprocess.run([sys.executable, "-m", "edgert", *args], check=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    labels = OUT / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    checkpoint = OUT / "tsn_r18_synthetic.pt"

    print(f"training TSN-ResNet18 on synthetic clips ({len(CLASSES)} classes, {SIZE}x{SIZE}, CPU) ...", flush=True)
    detector = TSNDetector()
    opts = detector.resolve_options({"backbone": "resnet18", "segments": "3", "size": str(SIZE),
                                     "labels": str(labels), "dropout": "0.2"})
    torch.manual_seed(0)
    model = detector.build(opts, None)
    t0 = time.perf_counter()
    train(model, render_clip, len(CLASSES), 3, detector.preprocessing(opts), steps=60, log=lambda m: print("  " + m))
    print(f"  trained in {time.perf_counter() - t0:.0f} s")
    torch.save(model.state_dict(), checkpoint)

    rng = np.random.default_rng(2024)  # clips the model never saw
    clip_path = OUT / "spinning_square.mp4"
    write_video(clip_path, render_clip(CLASSES.index("spinning square"), rng, frames=48, height=240, width=320))

    bundle = OUT / "tsn-r18"
    edgert("export", "tsn", "--checkpoint", str(checkpoint), "--out", str(bundle), "--force",
           "--opt", "backbone=resnet18", "--opt", "segments=8", "--opt", f"size={SIZE}", "--opt", f"labels={labels}")
    edgert("info", str(bundle))
    edgert("run", str(bundle), "--input", str(clip_path))
    edgert("bench", str(bundle), "--compare", "torch", "--iters", "20")


if __name__ == "__main__":
    main()
