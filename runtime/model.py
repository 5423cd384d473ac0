"""Loading a bundle and running it: the entry point for apps embedding edgert.

    from edgert.runtime import load
    model = load("tsn-bundle")               # verifies the manifest and every file hash
    prediction = model.predict("clip.mp4")   # decode, sample, preprocess, run, rank
    outputs = model.run({"video": array})    # or feed arrays yourself (checked first)

Nothing here imports torch.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend
from .bundle import Bundle, GraphSpec
from .errors import BundleError
from .host import get_host
from .inputs import check_inputs


@dataclass
class Timing:
    prepare_s: float
    infer_s: float


class Model:
    def __init__(self, bundle: Bundle, backends: dict[str, Backend], plugin):
        self.bundle = bundle
        self.backends = backends
        self.plugin = plugin
        self.last_timing: Timing | None = None

    def graph(self, name: str | None = None) -> GraphSpec:
        return self.bundle.graph(name)

    def run(self, feeds: dict[str, np.ndarray], graph: str | None = None) -> dict[str, np.ndarray]:
        spec = self.bundle.graph(graph)
        return self.backends[spec.name].run(check_inputs(spec, feeds))

    def predict(self, source: str | os.PathLike, top_k: int = 5):
        """Run a detector on a video file / frame folder / .npy clip; returns a Prediction."""
        t0 = time.perf_counter()
        feeds = self.plugin.prepare(self.bundle, str(source))
        t1 = time.perf_counter()
        outputs = self.run(feeds)
        t2 = time.perf_counter()
        self.last_timing = Timing(t1 - t0, t2 - t1)
        return self.plugin.postprocess(self.bundle, outputs, top_k=top_k)

    def stream(self, graph: str | None = None, window: int | None = None):
        """A :class:`~edgert.runtime.stream.StreamSession` on this bundle's streaming graph."""
        from .stream import StreamSession

        return StreamSession(self, graph, window)

    def describe(self) -> str:
        return "; ".join(b.describe() for b in self.backends.values())


def load(path: str | os.PathLike, backend: str = "onnxruntime", device: str = "cpu",
         threads: int | None = None, verify: bool = True, trusted_keys=None) -> Model:
    """Verify and open a bundle on a backend. ``threads``: intra-op threads (None: backend default).
    ``trusted_keys``: public key files it must be signed by (None: the configured trust store)."""
    bundle = Bundle.load(path, verify=verify, trusted_keys=trusted_keys)
    host = get_host()
    backend_cls = host.get("backend", backend).obj
    backend_cls.check_available()
    plugin = host.get(bundle.kind, bundle.plugin_name).obj
    backends = {name: open_backend(bundle, spec, backend_cls, device, threads) for name, spec in bundle.graphs.items()}
    return Model(bundle, backends, plugin)


def open_backend(bundle: Bundle, spec: GraphSpec, backend_cls: type[Backend], device: str = "cpu",
                 threads: int | None = None, interleaved: bool = False) -> Backend:
    """One graph of ``bundle`` on ``backend_cls``: the file the backend consumes (``file_key``),
    handed over as the bytes the bundle read and checked where the backend takes bytes.
    ``interleaved``: a hint for backends that accept it (ONNX Runtime), this graph takes turns
    with others on the same cores (a generation's decoder and its heads)."""
    rel = getattr(spec, backend_cls.file_key, None)
    if not rel:
        raise BundleError(f"{bundle.root}: graph {spec.name!r} has no {backend_cls.file_key} for the {backend_cls.name} "
                          "backend" + (" (export with --engine where TensorRT is installed)"
                                       if backend_cls.file_key == "engine" else ""))
    extra: dict = {}
    if getattr(backend_cls, "reads_bytes", False):
        extra = bundle.onnx_sources(spec) if backend_cls.file_key == "file" else {"model": bundle.read(rel)}
    if interleaved and "interleaved" in inspect.signature(backend_cls).parameters:
        extra["interleaved"] = True
    return backend_cls(bundle.path(rel), device=device, threads=threads, **extra)
