"""One decoder graph on ONNX Runtime, called with IO binding: inputs and the cache's past are
bound where they lie in memory, and the graph writes its present straight into the cache's
other buffer (see :mod:`.kvcache`)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..backends.onnxruntime import OnnxRuntimeBackend, _first_line
from ..bundle import Bundle
from ..errors import EdgertError
from .kvcache import KVCache

DTYPES = {"float32": np.float32, "float16": np.float16}


class Outputs(NamedTuple):
    logits: np.ndarray  # (B, K, vocab) at the requested positions
    hidden: np.ndarray  # (B, S, hidden) of every new token


class DecoderSession:
    """The bundle's decoder graph, or (``graph="mtp"``) its MTP module's graph, which has the
    same I/O with one layer plus a ``hidden_states`` input."""

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None, graph: str | None = None):
        import onnxruntime as ort

        self._ort = ort
        self.bundle, self.manifest = bundle, bundle.manifest
        self.device, self.threads = device, threads
        self.info = bundle.manifest["decoder"]
        if self.info.get("backend", "onnx") != "onnx":
            raise EdgertError(f"{bundle.root}: this is the TensorRT flavour of the decoder (exported with --backend "
                              f"{self.info['backend']}): its graph holds edgert's TensorRT plugin ops, which ONNX Runtime "
                              "cannot run; export with --backend onnx for onnxruntime")
        self.graph = bundle.graph(graph or self.info["graph"])
        self.num_layers = 1 if graph == "mtp" else int(self.info["num_layers"])
        self.hidden_name = "mtp_hidden_states" if graph == "mtp" else "hidden_states"
        self.backend = OnnxRuntimeBackend(bundle.path(self.graph.file), device=device, threads=threads, interleaved=True,
                                          **bundle.onnx_sources(self.graph))
        self.session = self.backend.session
        outputs = {t.name: t for t in self.graph.outputs}
        self.vocab_size = int(outputs["logits"].dims[-1])
        self.hidden_size = int(outputs[self.hidden_name].dims[-1])
        self.context = int(self.info["context"])
        self.kv_dtype = DTYPES[self.info["kv_dtype"]]

    def new_cache(self, capacity: int, batch: int = 1) -> KVCache:
        info = self.info
        return KVCache(self.num_layers, batch, info["num_kv_heads"], info["head_dim"], self.kv_dtype, capacity)

    def forward(self, cache: KVCache, input_ids: np.ndarray, position_ids: np.ndarray, attention_mask: np.ndarray,
                logit_positions: np.ndarray, hidden_states: np.ndarray | None = None) -> Outputs:
        """Run new tokens (B, S) over the cache; returns logits (B, K, vocab) at
        ``logit_positions`` (B, K) and hidden states (B, S, hidden); the cache grows by S."""
        batch, new = input_ids.shape
        if cache.length + new > self.context:
            raise EdgertError(f"context full: {cache.length} cached + {new} new positions > the bundle's context {self.context}")
        cache.reserve(cache.length + new)
        extra = {} if hidden_states is None else {"hidden_states": np.ascontiguousarray(hidden_states, np.float32)}
        ort = self._ort
        binding = self.session.io_binding()
        for name, value in (("input_ids", input_ids), ("position_ids", position_ids),
                            ("attention_mask", attention_mask), ("logit_positions", logit_positions), *extra.items()):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name, value in cache.past().items():
            binding.bind_cpu_input(name, value)
        logits = np.empty((batch, logit_positions.shape[1], self.vocab_size), np.float32)
        hidden = np.empty((batch, new, self.hidden_size), np.float32)
        outputs = {"logits": logits, self.hidden_name: hidden, **cache.present(new)}
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(value))
        try:
            self.session.run_with_iobinding(binding)
        except Exception as err:
            raise EdgertError(f"{self.graph.file}: onnxruntime failed to run the decoder: {_first_line(err)}") from None
        cache.advance(new)
        return Outputs(logits, hidden)


    def extend(self, cache: KVCache, tokens, mask: np.ndarray | None = None, positions=None, logits_at=None,
               hidden_states: np.ndarray | None = None) -> Outputs:
        """Batch 1: run ``tokens`` (1-D) after everything cached; causal among them unless a
        (S, S) ``mask`` is given (a tree); ``positions`` default to consecutive ones; logits at
        ``logits_at`` (default: the last token). Returns row 0's logits (K, vocab) and hidden
        states (S, hidden)."""
        tokens = np.asarray(tokens, dtype=np.int64)[None]
        new, past = tokens.shape[1], cache.length
        positions = np.arange(past, past + new) if positions is None else positions
        mask = np.tri(new, dtype=bool) if mask is None else mask
        full = np.concatenate([np.ones((new, past), bool), mask], axis=1)[None]
        at = np.asarray([new - 1] if logits_at is None else logits_at, dtype=np.int64)[None]
        hidden = None if hidden_states is None else np.asarray(hidden_states, np.float32).reshape(1, new, -1)
        out = self.forward(cache, tokens, np.asarray(positions, np.int64)[None], full, at, hidden)
        return Outputs(out.logits[0], out.hidden[0])


class MedusaSession:
    """The bundle's ``medusa`` graph: final hidden states -> every head's logits."""

    def __init__(self, bundle: Bundle, device: str = "cpu", threads: int | None = None):
        info = bundle.manifest["decoder"].get("medusa")
        if not info:
            raise EdgertError(f"{bundle.root}: no Medusa heads in this bundle "
                              "(edgert export llama --opt medusa=medusa_lm_head.safetensors)")
        self.num_heads = int(info["num_heads"])
        self.graph = bundle.graph(info["graph"])
        self.backend = OnnxRuntimeBackend(bundle.path(self.graph.file), device=device, threads=threads, interleaved=True,
                                          **bundle.onnx_sources(self.graph))

    def __call__(self, hidden: np.ndarray) -> np.ndarray:
        """hidden (H,) -> (heads, vocab)."""
        feeds = {"hidden_states": np.ascontiguousarray(hidden, np.float32).reshape(1, 1, -1)}
        return self.backend.run(feeds)["medusa_logits"][0, 0]
