"""Loading a bundle and running it: the entry point for apps embedding edgert.

    from edgert.runtime import load
    model = load("tsn-bundle")               # verifies the manifest, and each file it uses as it reads it
    prediction = model.predict("clip.mp4")   # decode, sample, preprocess, run, rank
    outputs = model.run({"video": array})    # or feed arrays yourself (checked first)

Nothing here imports torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from .backends.base import Backend
from .backends.opener import open_backend
from .bundle import Bundle, GraphSpec
from .errors import InputError
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

    def run_batch(self, requests: list[dict[str, np.ndarray]], graph: str | None = None) -> list[dict[str, np.ndarray]]:
        """Several requests' feeds in one graph run on the batch axis (dim 0, symbolic in the
        manifest): each is checked on its own, they are concatenated, run once and the outputs
        split back, one dict per request. A server batching many clients' clips uses it."""
        spec = self.bundle.graph(graph)
        fixed = [t for t in spec.inputs if not t.dims or isinstance(t.dims[0], int)]
        if fixed and len(requests) > 1:
            raise InputError(f"graph {spec.name!r}: input {fixed[0].name!r} has no batch axis ({fixed[0].shape_text()}); "
                             "run its requests one at a time")
        checked = [check_inputs(spec, feeds) for feeds in requests]
        if len(checked) == 1:
            return [self.backends[spec.name].run(checked[0])]
        merged = check_inputs(spec, {name: np.concatenate([c[name] for c in checked]) for name in checked[0]})
        outputs = self.backends[spec.name].run(merged)
        cuts = np.cumsum([len(next(iter(c.values()))) for c in checked])[:-1]
        parts = {name: np.split(value, cuts) for name, value in outputs.items()}
        return [{name: pieces[i] for name, pieces in parts.items()} for i in range(len(checked))]

    def prepare(self, source: str | os.PathLike) -> dict[str, np.ndarray]:
        """A video file / frame folder / .npy clip -> the graph's inputs (the plugin's sampling and
        preprocessing)."""
        return self.plugin.prepare(self.bundle, str(source))

    def rank(self, outputs: dict[str, np.ndarray], top_k: int = 5):
        """The graph's outputs (of one clip) -> a Prediction: the plugin's top-k labels."""
        return self.plugin.postprocess(self.bundle, outputs, top_k=top_k)

    def predict(self, source: str | os.PathLike, top_k: int = 5):
        """Run a detector on a video file / frame folder / .npy clip; returns a Prediction."""
        t0 = time.perf_counter()
        feeds = self.prepare(source)
        t1 = time.perf_counter()
        outputs = self.run(feeds)
        t2 = time.perf_counter()
        self.last_timing = Timing(t1 - t0, t2 - t1)
        return self.rank(outputs, top_k=top_k)

    def stream(self, graph: str | None = None, window: int | None = None, top_k: int = 5):
        """A :class:`~edgert.runtime.stream.StreamSession` on this bundle's streaming graph."""
        from .stream import StreamSession

        return StreamSession(self, graph, window, top_k=top_k)

    def describe(self) -> str:
        return "; ".join(b.describe() for b in self.backends.values())


def load(path: str | os.PathLike, backend: str = "onnxruntime", device: str = "cpu",
         threads: int | None = None, verify: bool = True, trusted_keys=None) -> Model:
    """Verify and open a bundle on a backend. ``threads``: intra-op threads (None: backend default).
    ``trusted_keys``: public key files it must be signed by (None: the configured trust store)."""
    bundle = Bundle.load(path, verify="used" if verify else False, trusted_keys=trusted_keys)
    host = get_host()
    backend_cls = host.get("backend", backend).obj
    backend_cls.check_available()
    plugin = host.get(bundle.kind, bundle.plugin_name).obj
    backends = {name: open_backend(bundle, spec, backend_cls, device, threads) for name, spec in bundle.graphs.items()}
    return Model(bundle, backends, plugin)
