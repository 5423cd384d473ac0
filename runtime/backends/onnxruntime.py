"""ONNX Runtime, the embedded default backend.

``device`` selects execution providers: ``cpu``; ``cuda`` (CUDA EP, then CPU); ``tensorrt-ep``
(ORT's TensorRT EP, then CUDA, then CPU; ``trt``, its previous name, still works and warns). A provider missing from the installed onnxruntime
build is a warning and a fallback, not an error, so the same app runs on a laptop and a board.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import BundleError, EdgertError, first_line
from .base import Backend, Binding

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt-ep": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    file_key = "file"
    description = "ONNX Runtime (CPU, or CUDA / TensorRT execution providers)"

    reads_bytes = True  # takes the bundle's verified bytes: nothing can swap the file after its check

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None, interleaved: bool = False,
                 model: bytes | None = None, external_data: dict[str, bytes] | None = None,
                 external_folder: Path | None = None):
        """``model``: the graph's bytes (read once and checked by the bundle); ``external_data``:
        its weight files' bytes by the name the graph gives them, likewise; or ``external_folder``:
        a folder of checked private copies of them, which ONNX Runtime memory-maps instead of
        copying (see :meth:`Bundle.external_copies`). ``interleaved``: this session takes turns with others on the same cores (a generation's
        decoder, Medusa heads, MTP module, draft). Its threads then stop spinning when a run ends:
        spinning idle threads took the cores from the session that ran next, which made Medusa's
        decoder pass 1.7x and its heads 2x slower on 2 cores (benchmarks/bench_speculative.py)."""
        super().__init__(path, device=device, threads=threads)
        import onnxruntime as ort

        if device == "trt":  # the previous release's name
            warnings.warn("device 'trt' is deprecated, use 'tensorrt-ep' (ONNX Runtime's TensorRT execution provider)",
                          DeprecationWarning, stacklevel=2)
            device = self.device = "tensorrt-ep"
        if device not in PROVIDERS:
            raise EdgertError(f"unknown device {device!r} for onnxruntime; expected one of {list(PROVIDERS)}")
        available = set(ort.get_available_providers())
        wanted = PROVIDERS[device]
        providers = [p for p in wanted if p in available]
        if providers != wanted:
            missing = [p for p in wanted if p not in available]
            print(f"edgert: warning: {', '.join(missing)} not available in this onnxruntime build "
                  f"(available: {', '.join(sorted(available))}); falling back to {providers[0]}", file=sys.stderr)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # ORT's own warnings go to its log, not the user's terminal
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if interleaved:
            options.add_session_config_entry("session.force_spinning_stop", "1")
        if model is not None:  # anything not given resolves in the graph's folder (ONNX Runtime refuses escapes), never the cwd
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(external_folder or self.path.parent))
        if external_data:
            names = list(external_data)
            options.add_external_initializers_from_files_in_memory(
                names, [external_data[n] for n in names], [len(external_data[n]) for n in names])
        try:
            self.session = ort.InferenceSession(str(self.path) if model is None else model, sess_options=options,
                                                providers=providers)
        except Exception as err:  # ORT raises its own Fail/InvalidGraph/... types
            raise BundleError(f"{self.path}: onnxruntime cannot load this graph: {first_line(err)}") from None
        self._ort = ort
        self.providers = self.session.get_providers()
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(self.output_names, feeds)
        except Exception as err:
            raise EdgertError(f"{self.path.name}: onnxruntime failed to run the graph: {first_line(err)}") from None
        return dict(zip(self.output_names, values))

    def run_into(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """IO binding: inputs are read and outputs written where they lie in memory."""
        binding = self.binding()
        binding.bind(feeds, outputs)
        binding.run()

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def binding(self) -> "IOBinding":
        return IOBinding(self)

    def describe(self) -> str:
        threads = self.threads or "default"
        return f"onnxruntime {__import__('onnxruntime').__version__} [{self.providers[0]}], intra-op threads: {threads}"


class IOBinding(Binding):
    """One ONNX Runtime IO binding kept across runs: rebinding a name replaces its tensor, and
    everything else (a decoder's in-place KV cache) stays bound at no cost per run. The
    OrtValues (each keeps its numpy array alive) are held here, since ONNX Runtime only points
    at their memory."""

    def __init__(self, backend: OnnxRuntimeBackend):
        super().__init__(backend)
        self._session, self._ort = backend.session, backend._ort
        self._io = backend.session.io_binding()
        self._held: dict[tuple[str, str], object] = {}  # (side, name) -> the OrtValue bound there

    def bind(self, feeds: dict[str, np.ndarray] | None = None, outputs: dict[str, np.ndarray] | None = None) -> None:
        # OrtValues over the arrays' own memory, inputs too: an in-place cache is one buffer bound
        # as a past input and a present output, and ONNX Runtime shares it only if the pointers match.
        wrap = self._ort.OrtValue.ortvalue_from_numpy
        for name, value in (feeds or {}).items():
            self._held["in", name] = held = wrap(np.ascontiguousarray(value))
            self._io.bind_ortvalue_input(name, held)
        for name, value in (outputs or {}).items():
            self._held["out", name] = held = wrap(value)
            self._io.bind_ortvalue_output(name, held)

    def run(self) -> None:
        try:
            self._session.run_with_iobinding(self._io)
        except Exception as err:
            raise EdgertError(f"{self.backend.path.name}: onnxruntime failed to run the graph: {first_line(err)}") from None
