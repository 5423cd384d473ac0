"""Optional TensorRT engine build at export time (``edgert export ... --engine``).

Built with Polygraphy's loaders (:mod:`edgert.runtime.trt_build`: strongly typed on TensorRT 10
and 11, the graph's own precision), where the ``tensorrt`` package is installed. Symbolic dims get
the profile min 1 / opt 1 / max ``max_batch``: for video models the only dynamic dim is the batch.
Engines are specific to the GPU and TensorRT version that built them, so they are built on the
target device; the ONNX file stays the portable artefact.
"""

from __future__ import annotations

from pathlib import Path

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.trt_build import build_serialized, require_tensorrt


def check_available() -> None:
    """Before minutes of export, not after."""
    require_tensorrt("--engine")


def build_engine(onnx_path: Path, graph: GraphSpec, engine_path: Path, fp16: bool, max_batch: int) -> None:
    shapes = {}
    for spec in graph.inputs:
        lo = [d if isinstance(d, int) else 1 for d in spec.dims]
        hi = [d if isinstance(d, int) else max_batch for d in spec.dims]
        shapes[spec.name] = (lo, lo, hi)
    engine_path.write_bytes(build_serialized(onnx_path, shapes, fp16=fp16))
