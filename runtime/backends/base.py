"""The one interface every backend implements (in the manner of Polygraphy's runners)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


class Backend:
    """Runs one graph file. Subclasses set ``name`` and ``file_key`` and implement ``run``.

    ``file_key`` says which file of a manifest graph entry the backend consumes: ``"file"``
    (the ONNX model) or ``"engine"`` (a serialized TensorRT engine). Inputs reach ``run``
    already checked against the manifest, so a backend only executes.
    """

    name: str = ""
    file_key: str = "file"
    description: str = ""
    # True: the constructor takes ``model=bytes``, the file's content as the bundle read and
    # checked it, and uses those bytes rather than opening ``path`` again; an ONNX ("file")
    # backend also gets ``external_data={name: bytes}`` when the graph keeps weights outside.
    reads_bytes: bool = False

    @classmethod
    def check_available(cls) -> None:
        """Raise EdgertError (one line) when the backend's library is not installed."""

    def __init__(self, path: Path, *, device: str = "cpu", threads: int | None = None):
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024):
            raise InputError(f"threads {threads!r}: expected an integer from 1 to 1024 (or None: the backend's default)")
        if not isinstance(device, str):
            raise InputError(f"device {device!r}: expected a name such as 'cpu' or 'cuda'")
        self.path = Path(path)
        self.device = device
        self.threads = threads

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_into(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Run with each named output written into the array given for it (its exact shape and
        dtype; views into a larger buffer allowed). A decoder's KV cache is such a buffer: a
        backend that can bind memory (ONNX Runtime's IO binding) writes there directly, and this
        default, for every other backend, copies the results in."""
        results = self.run(feeds)
        for name, target in outputs.items():
            target[...] = results[name]

    def binding(self) -> "Binding":
        """Inputs and outputs that stay bound across runs (:class:`Binding`): a decoder binds its
        in-place KV cache once, then re-binds only the new tokens' tensors each step."""
        return Binding(self)

    def describe(self) -> str:
        """A short line for logs and ``bench``: backend, device/provider, threads."""
        return self.name

    def metadata(self) -> dict[str, str]:
        """The graph file's own key-value metadata (ONNX ``metadata_props``), where the format
        has any: what the exporter recorded in the graph, to check the manifest against."""
        return {}


class Binding:
    """Named inputs and output buffers kept between runs; binding a name again replaces it.
    ``run`` writes each output into its buffer. This default goes through ``run_into`` (which
    copies); ONNX Runtime's keeps one IO binding, so a tensor bound once costs nothing per run."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.feeds: dict[str, np.ndarray] = {}
        self.outputs: dict[str, np.ndarray] = {}

    def bind(self, feeds: dict[str, np.ndarray] | None = None, outputs: dict[str, np.ndarray] | None = None) -> None:
        self.feeds.update(feeds or {})
        self.outputs.update(outputs or {})

    def run(self) -> None:
        self.backend.run_into(self.feeds, self.outputs)
