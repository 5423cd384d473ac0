"""One graph of a bundle, opened on a backend: the file the backend consumes, handed over as
the bytes the bundle read and checked. Shared by video models (:mod:`edgert.runtime.model`) and
decoders (:mod:`edgert.runtime.llm.session`)."""

from __future__ import annotations

import inspect

from ..bundle import Bundle, GraphSpec
from ..errors import BundleError
from .base import Backend


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
    accepts = inspect.signature(backend_cls).parameters
    if interleaved and "interleaved" in accepts:
        extra["interleaved"] = True
    if not getattr(backend_cls, "reads_bytes", False):
        return backend_cls(bundle.checked_path(rel), device=device, threads=threads, **extra)
    if backend_cls.file_key != "file":
        return backend_cls(bundle.path(rel), device=device, threads=threads, model=bundle.read(rel), **extra)
    if spec.external_data and "external_folder" in accepts:
        # external weights: checked private copies the backend maps, not a heap copy it copies again
        try:
            with bundle.external_copies(spec) as folder:
                return backend_cls(bundle.path(rel), device=device, threads=threads, model=bundle.read(rel),
                                   external_folder=folder, **extra)
        except OSError:  # no room for the copies (a full or read-only temporary folder): from memory
            pass
    return backend_cls(bundle.path(rel), device=device, threads=threads, **bundle.onnx_sources(spec), **extra)
