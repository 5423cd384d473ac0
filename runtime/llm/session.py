"""One graph of the decoder contract (:mod:`.contract`) on a backend: the bundle's decoder, or a
head's graph that follows the same contract (an MTP module, an EAGLE draft layer).

Runs through the :class:`~edgert.runtime.backends.base.Backend` interface, like every other
graph: the logits, hidden states and the cache's present are written where they lie in memory
(see :mod:`.kvcache`). ONNX Runtime does that with IO binding; a backend without that
capability gets the default, which copies. An in-place cache stays bound between steps (a
:class:`~edgert.runtime.backends.base.Binding`), so a step binds only its new tokens' tensors.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..bundle import Bundle
from ..errors import BundleError, EdgertError
from ..host import get_host
from ..backends.opener import open_backend
from .contract import CONTEXT_KEY, KV_DTYPES, layout
from .kvcache import InPlaceKVCache, KVCache


class Outputs(tuple):
    """``(logits, hidden)``: logits (B, K, vocab) at the requested positions and hidden states
    (B, S, hidden) of every new token; ``extra``: the graph's extra outputs by name
    (:attr:`.contract.Layout.extra_outputs`), outside the pair so that ``logits, hidden = out``."""

    def __new__(cls, logits: np.ndarray, hidden: np.ndarray, extra: dict | None = None):
        out = super().__new__(cls, (logits, hidden))
        out.extra = extra or {}
        return out

    @property
    def logits(self) -> np.ndarray:
        return self[0]

    @property
    def hidden(self) -> np.ndarray:
        return self[1]


class DecoderSession:
    """``graph`` (default: the bundle's decoder) of a decoder bundle on ``backend``; its layer
    count, hidden-state output and extra tensors are read from the graph's spec. One thread at a
    time: an in-place cache's binding is the session's state between steps."""

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None, graph: str | None = None,
                 backend: str = "onnxruntime"):
        self.bundle, self.manifest = bundle, bundle.manifest
        self.device, self.threads, self.backend_name = device, threads, backend
        self.info = bundle.manifest["decoder"]
        if self.info.get("backend", "onnx") != "onnx":
            raise EdgertError(f"{bundle.root}: this is the TensorRT flavour of the decoder (exported with --flavour "
                              "trt): its graph holds edgert's TensorRT plugin ops and an in-place cache, which "
                              "this session does not drive; export with --flavour onnx (in the previous release: --backend onnx)")
        self._backend_cls = get_host().get("backend", backend).obj
        self._backend_cls.check_available()
        self.graph = self._spec(graph or self.info["graph"])
        self.layout = layout(self.graph)
        self.backend = open_backend(bundle, self.graph, self._backend_cls, device, threads, interleaved=True)
        self.num_layers = self.layout.num_layers
        self.vocab_size, self.hidden_size = self.layout.vocab_size, self.layout.hidden_size
        self.context = int(self.info["context"])
        exported = self.backend.metadata().get(CONTEXT_KEY) if graph in (None, self.info["graph"]) else None
        if exported is not None and (not exported.isdigit() or self.context > int(exported)):
            raise BundleError(f"{bundle.root}: the manifest's decoder.context is {self.context} positions, but its graph "
                              f"{self.graph.file} was exported for {exported}")
        self.kv_dtype = KV_DTYPES[self.info["kv_dtype"]]
        self._extra_shapes = {t.name: t.dims[-1] for t in self.graph.outputs if t.name in self.layout.extra_outputs}
        self._extra_inputs = set(self.layout.extra_inputs)
        self._binding = None  # an in-place cache's binding: (weakref to the cache, its version, Binding)
        # The decoder's one-token steps as two rows (see extend); a head's graph only proposes.
        self.step_rows = int(self.info.get("step_rows", 1)) if graph in (None, self.info["graph"]) else 1

    def _spec(self, graph: str):
        if graph not in self.bundle.graphs:
            raise BundleError(f"{self.bundle.root}: no graph {graph!r} in this bundle (graphs: {', '.join(self.bundle.graphs)})")
        return self.bundle.graph(graph)

    def open_backend(self, graph: str):
        """Another graph of the bundle (a head's) on this session's backend, device and threads:
        a :class:`~edgert.runtime.backends.base.Backend` (``run`` / ``run_into``)."""
        return open_backend(self.bundle, self._spec(graph), self._backend_cls, self.device, self.threads,
                            interleaved=True)

    def open_graph(self, graph: str) -> "DecoderSession":
        """Another graph of the bundle that follows the decoder contract (a head's: an MTP module,
        an EAGLE draft layer) as a session of its own, on this session's backend, device and threads."""
        return DecoderSession(self.bundle, self.device, self.threads, graph=graph, backend=self.backend_name)

    def new_cache(self, capacity: int, batch: int = 1) -> KVCache | InPlaceKVCache:
        """A cache for this graph: in place if the graph updates it in place (contract.in_place),
        with room for a two-row step's copy row (see :meth:`extend`)."""
        info, kind = self.info, InPlaceKVCache if self.layout.in_place else KVCache
        return kind(self.num_layers, batch, info["num_kv_heads"], info["head_dim"], self.kv_dtype,
                    capacity + self.step_rows - 1)

    def _bound(self, cache: InPlaceKVCache):
        """The binding that holds ``cache``'s buffers as past and present, made again only when
        another cache comes or this one has grown."""
        held = self._binding
        if held is None or held[0]() is not cache or held[1] != cache.version:
            binding = self.backend.binding()
            binding.bind(cache.past(), cache.present(0))
            self._binding = held = (weakref.ref(cache), cache.version, binding)
        return held[2]

    def forward(self, cache: KVCache, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                logit_positions: np.ndarray, **extra_inputs: np.ndarray) -> Outputs:
        """Run new tokens (B, S) over the cache; returns logits (B, K, vocab) at
        ``logit_positions`` (B, K), hidden states (B, S, hidden) and the graph's extra outputs;
        the cache grows by S. ``extra_inputs``: the graph's own inputs (e.g. ``hidden_states``)."""
        batch, new = input_ids.shape
        if cache.length + new > self.context:
            raise EdgertError(f"context full: {cache.length} cached + {new} new positions > the bundle's context {self.context}")
        if extra_inputs.keys() != self._extra_inputs:
            raise EdgertError(f"graph {self.graph.name!r} takes the extra inputs {sorted(self._extra_inputs)}; "
                              f"given {sorted(extra_inputs)}")
        if cache.length + new > cache.capacity:  # grow by half again at least: an in-place cache re-binds on growth
            cache.reserve(min(self.context, max(cache.length + new, cache.capacity * 3 // 2)))
        feeds = {"input_ids": np.ascontiguousarray(input_ids), "position_ids": np.ascontiguousarray(position_ids),
                 "attention_mask": np.ascontiguousarray(attention_mask),
                 "logit_positions": np.ascontiguousarray(logit_positions)}
        for name, value in extra_inputs.items():
            feeds[name] = np.ascontiguousarray(value, np.float32)
        logits = np.empty((batch, logit_positions.shape[1], self.vocab_size), np.float32)
        hidden = np.empty((batch, new, self.hidden_size), np.float32)
        outputs = {"logits": logits, self.layout.hidden: hidden}
        extra = {}
        for name, dim in self._extra_shapes.items():
            outputs[name] = extra[name] = np.empty((batch, new, dim), np.float32)
        if cache.in_place:
            binding = self._bound(cache)
            binding.bind(feeds, outputs)
            binding.run()
        else:
            self.backend.run_into({**feeds, **cache.past()}, {**outputs, **cache.present(new)})
        cache.advance(new)
        return Outputs(logits, hidden, extra)

    def extend(self, cache: KVCache, tokens, mask: np.ndarray | None = None, positions=None, logits_at=None,
               **extra_inputs: np.ndarray) -> Outputs:
        """Batch 1: run ``tokens`` (1-D) after everything cached; causal among them unless a
        (S, S) ``mask`` is given (a tree); ``positions`` default to consecutive ones; logits at
        ``logits_at`` (default: the last token); ``extra_inputs`` as (S, dim) arrays. Returns row
        0's logits (K, vocab), hidden states (S, hidden) and extra outputs (S, dim).

        With ``step_rows`` 2, one token runs as two rows, itself and a copy at the same position
        that sees only the cache and itself, and the copy's cache row is dropped after: ONNX
        Runtime's CPU kernels take another path for one row than for several, and only the
        several-row path gives a token the numbers it gets inside a verify pass. That holds for
        every one-token call, a verify pass of a lone root included."""
        if len(tokens) == 1 and self.step_rows == 2:
            where = cache.length if positions is None else int(np.asarray(positions).reshape(-1)[0])
            copies = {k: np.repeat(np.asarray(v, np.float32).reshape(1, -1), 2, axis=0) for k, v in extra_inputs.items()}
            out = self.extend(cache, [tokens[0]] * 2, np.eye(2, dtype=bool), [where] * 2, [0], **copies)
            cache.truncate(cache.length - 1)
            return Outputs(out.logits, out.hidden[:1], {k: v[:1] for k, v in out.extra.items()})
        tokens = np.asarray(tokens, dtype=np.int64)[None]
        new, past = tokens.shape[1], cache.length
        positions = np.arange(past, past + new) if positions is None else positions
        mask = np.tri(new, dtype=bool) if mask is None else mask
        full = np.concatenate([np.ones((new, past), bool), mask], axis=1)[None]
        at = np.asarray([new - 1] if logits_at is None else logits_at, dtype=np.int64)[None]
        given = {k: np.asarray(v, np.float32).reshape(1, new, -1) for k, v in extra_inputs.items()}
        out = self.forward(cache, tokens, np.asarray(positions, np.int64)[None], full, at, **given)
        return Outputs(out.logits[0], out.hidden[0], {k: v[0] for k, v in out.extra.items()})
