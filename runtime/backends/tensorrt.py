"""Native TensorRT backend: runs a serialized engine (``.plan``) from a bundle.

TensorRT and Polygraphy are imported lazily, only when this backend is chosen: they are the
``trt`` extra and are absent on most machines. Polygraphy's ``TrtRunner`` owns the device
buffers and the execution context, so this file only adapts it to edgert's interface.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BundleError
from ..trt_build import require_tensorrt
from .base import Backend


class TensorRTBackend(Backend):
    name = "tensorrt"
    file_key = "engine"
    description = "TensorRT engine (.plan) through Polygraphy's TrtRunner; needs edgert[trt]"

    @classmethod
    def check_available(cls) -> None:
        require_tensorrt("the tensorrt backend")

    reads_bytes = True

    def __init__(self, path: Path, *, device: str = "cuda", threads: int | None = None, model: bytes | None = None):
        super().__init__(path, device=device, threads=threads)
        self.check_available()
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        if model is None and not self.path.is_file():
            raise BundleError(f"{self.path}: TensorRT engine missing")
        self.runner = TrtRunner(EngineFromBytes(model if model is not None else BytesFromPath(str(self.path))))
        try:
            self.runner.activate()
        except Exception as err:
            raise BundleError(f"{self.path}: TensorRT cannot deserialize this engine: {err}") from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.runner.infer(feeds, copy_outputs_to_host=True)
        return {name: np.asarray(value) for name, value in outputs.items()}

    def describe(self) -> str:
        import tensorrt

        return f"tensorrt {tensorrt.__version__} engine {self.path.name}"

    def __del__(self):
        runner = getattr(self, "runner", None)
        if runner is not None and getattr(runner, "is_active", False):
            runner.deactivate()
