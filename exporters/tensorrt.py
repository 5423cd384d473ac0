"""Optional TensorRT engine build at export time (``edgert export ... --trt-engine``).

Built with Polygraphy's loaders (ONNX parser -> builder config with an optimisation profile
-> serialized engine), where the ``tensorrt`` package is installed. Symbolic dims get the
profile min 1 / opt 1 / max ``max_batch``: for video models the only dynamic dim is the batch.
Engines are specific to the GPU and TensorRT version that built them, so they are built on the
target device; the ONNX file stays the portable artefact.
"""

from __future__ import annotations

from pathlib import Path

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import EdgertError


def require_tensorrt() -> None:
    try:
        import polygraphy  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError as err:
        raise EdgertError(f"--trt-engine needs the 'tensorrt' and 'polygraphy' packages (pip install 'edgert[trt]'): {err}") from None


def build_engine(onnx_path: Path, graph: GraphSpec, engine_path: Path, fp16: bool, max_batch: int) -> None:
    require_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    profile = Profile()
    for spec in graph.inputs:
        lo = [d if isinstance(d, int) else 1 for d in spec.dims]
        hi = [d if isinstance(d, int) else max_batch for d in spec.dims]
        profile.add(spec.name, min=lo, opt=lo, max=hi)
    try:
        SaveEngine(EngineFromNetwork(NetworkFromOnnxPath(str(onnx_path)),
                                     config=CreateConfig(fp16=fp16, profiles=[profile])), str(engine_path))()
    except Exception as err:
        raise EdgertError(f"{onnx_path.name}: TensorRT engine build failed: {str(err).strip().splitlines()[0]}") from None
