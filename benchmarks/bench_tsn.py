"""TSN-ResNet50, 8 segments, 224x224: ONNX Runtime vs PyTorch eager on this machine's CPU.

Exports the bundle once (build/bench/tsn-r50, random weights: timing does not depend on
their values), then runs `edgert bench --compare torch` at batch 1 and 4 with all cores, so
both runtimes are measured in the same process with the same threads and inputs.

    python benchmarks/bench_tsn.py [--iters 20] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path

BUNDLE = Path("build/bench/tsn-r50")


def edgert(*args: str) -> None:
    print(f"$ edgert {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "edgert", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    if not (BUNDLE / "manifest.json").is_file():
        edgert("export", "tsn", "--out", str(BUNDLE), "--opt", "backbone=resnet50", "--opt", "segments=8",
               "--opt", "size=224")
    for batch in ("1", "4"):
        edgert("bench", str(BUNDLE), "--compare", "torch", "--threads", str(args.threads), "--iters", str(args.iters),
               "--batch", batch)


if __name__ == "__main__":
    main()
