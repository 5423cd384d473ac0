"""The decoder contract: what a decoder graph takes and gives, and what the manifest's
``decoder`` section says about it. Defined once, here, and used by the exporters (which write
graphs to it), the sessions (which drive them) and the hookspec (which points plugin authors at
it). numpy only: the runtime never imports torch.

The graph (the ``onnx`` flavour; names as Optimum and onnxruntime-genai use them)::

    inputs   input_ids        int64  [batch, sequence_length]
             position_ids     int64  [batch, sequence_length]
             attention_mask   bool   [batch, sequence_length, total_sequence_length]  (past ‖ new)
             logit_positions  int64  [batch, num_logits]      which new tokens get logits
             <extra inputs>                                   e.g. an MTP module's hidden_states
             past_key_values.{i}.key / .value  kv  [batch, kv_heads, past_sequence_length, head_dim]
    outputs  logits           float32 [batch, num_logits, vocab]
             <hidden>         float32 [batch, sequence_length, hidden]   the final hidden states
             <extra outputs>
             present.{i}.key / .value  kv  [batch, kv_heads, total_sequence_length, head_dim]

With ``--opt kv_cache=in_place`` (the default) the caches' third dim is ``capacity``, in and
out: the graph (ONNX Runtime's GroupQueryAttention) reads the first ``total_sequence_length -
sequence_length`` positions of a past buffer of any capacity, writes the new tokens' keys and
values after them, and returns that buffer as the present; a session binds one buffer as both
(:class:`~edgert.runtime.llm.kvcache.InPlaceKVCache`). Fed a dense past it returns past ‖ new.
``kv_cache=concat`` keeps the dims above (ONNX Attention, for ONNX Runtime's CUDA and
TensorRT execution providers, which have no fp32 GroupQueryAttention).

The ``trt`` flavour (``edgert export --flavour trt``) keeps the names but takes the mask as
``past_lengths`` int32 [batch] plus a bit-packed ``tree_mask`` int32 [sequence_length,
mask_words] (:func:`edgert.runtime.llm.tree.pack_mask`), and its caches have a fixed ``capacity``
in and out (the plugin writes them in place).

A head's graph (an MTP module, an EAGLE draft layer) may follow the same contract with its own
layer count and extra inputs and outputs: :func:`layout` reads which from its spec. The decoder
itself carries extra outputs when a head of the bundle asks for the hidden states entering some
layers (``taps``, EAGLE-3 reads three): ``hidden_states.{i}`` after ``hidden_states``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..bundle import GraphSpec, TensorSpec

GRAPH = "decoder"          # the decoder graph's name in the manifest
TOTAL = "total_sequence_length"
KV_DTYPES = {"float32": np.float32, "float16": np.float16}
# The decoder graph's metadata_props key holding the positions it was exported for; the
# manifest's decoder.context may not exceed it (a hand-edited context ran past the model's).
CONTEXT_KEY = "edgert.context"
FLAVOURS = ("onnx", "trt")  # the manifest's spelling of the graph flavour (decoder.backend)
CORE_INPUTS = ("input_ids", "position_ids", "attention_mask", "logit_positions")
PAST, PRESENT = "past_key_values", "present"
CAPACITY = "capacity"      # the cache dim of a graph whose cache is updated in place


@dataclass(frozen=True)
class Geometry:
    """The shapes a decoder graph is built for."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    @classmethod
    def of(cls, config: Any) -> "Geometry":
        """From any object with these attributes (an exporter's model config)."""
        return cls(*(int(getattr(config, f)) for f in cls.__dataclass_fields__))


def tap_name(layer: int) -> str:
    """The decoder output holding the hidden states entering ``layer`` (transformers'
    ``hidden_states[layer]``: 0 is the embedding), exported when a head asks for it (``taps``)."""
    return f"hidden_states.{layer}"


def tap_outputs(geometry: Geometry, taps) -> tuple[TensorSpec, ...]:
    """The extra outputs of a decoder graph that carries ``taps``."""
    return tuple(TensorSpec(tap_name(i), "float32", ("batch", "sequence_length", geometry.hidden_size)) for i in taps)


def cache_names(num_layers: int, side: str = PAST) -> list[str]:
    """``past_key_values.{i}.key``, ``.value`` (or ``present.…``) for every layer, in graph order."""
    return [f"{side}.{i}.{part}" for i in range(num_layers) for part in ("key", "value")]


def decoder_graph(geometry: Geometry, kv_dtype: str, *, name: str = GRAPH, layers: int | None = None,
                  hidden: str = "hidden_states", extra_inputs: tuple[TensorSpec, ...] = (),
                  extra_outputs: tuple[TensorSpec, ...] = (), in_place: bool = False) -> GraphSpec:
    """The ``onnx`` flavour's I/O for ``geometry``: ``layers`` cached layers (default all),
    the final hidden states named ``hidden``, and any extra inputs (after ``logit_positions``)
    and outputs (after the hidden states); ``in_place``: caches of a fixed ``capacity``."""
    g, layers = geometry, geometry.num_layers if layers is None else layers
    kv = ("batch", g.num_kv_heads, CAPACITY if in_place else "past_sequence_length", g.head_dim)
    present = ("batch", g.num_kv_heads, CAPACITY if in_place else TOTAL, g.head_dim)
    inputs = [TensorSpec("input_ids", "int64", ("batch", "sequence_length")),
              TensorSpec("position_ids", "int64", ("batch", "sequence_length")),
              TensorSpec("attention_mask", "bool", ("batch", "sequence_length", TOTAL)),
              TensorSpec("logit_positions", "int64", ("batch", "num_logits")), *extra_inputs]
    outputs = [TensorSpec("logits", "float32", ("batch", "num_logits", g.vocab_size)),
               TensorSpec(hidden, "float32", ("batch", "sequence_length", g.hidden_size)), *extra_outputs]
    inputs += [TensorSpec(n, kv_dtype, kv) for n in cache_names(layers)]
    outputs += [TensorSpec(n, kv_dtype, present) for n in cache_names(layers, PRESENT)]
    return GraphSpec(name, f"{name}.onnx", tuple(inputs), tuple(outputs))


def cache_decoder_graph(spec: GraphSpec) -> GraphSpec:
    """The ``trt`` flavour of an ``onnx``-flavour spec: the mask replaced by past lengths and
    the packed tree mask, the caches at their fixed capacity in and out."""
    def flavour(tensors):
        out = []
        for t in tensors:
            if t.name == "attention_mask":
                out += [TensorSpec("past_lengths", "int32", ("batch",)),
                        TensorSpec("tree_mask", "int32", ("sequence_length", "mask_words"))]
            elif t.name.startswith((PAST + ".", PRESENT + ".")):
                out.append(replace(t, dims=(t.dims[0], t.dims[1], CAPACITY, t.dims[3])))
            else:
                out.append(t)
        return tuple(out)

    return replace(spec, inputs=flavour(spec.inputs), outputs=flavour(spec.outputs))


@dataclass(frozen=True)
class Layout:
    """How a session drives one graph of the contract, read from its spec."""

    num_layers: int
    hidden: str                     # the hidden-states output
    extra_inputs: tuple[str, ...]   # fed by the caller (e.g. an MTP module's hidden_states)
    extra_outputs: tuple[str, ...]  # returned to the caller as Outputs.extra
    vocab_size: int
    hidden_size: int
    in_place: bool = False          # past and present are one buffer of a fixed capacity


def in_place(spec: GraphSpec) -> bool:
    """Whether ``spec``'s cache is updated in place (its cache dim is ``capacity``)."""
    return any(t.name.startswith(PAST + ".") and t.dims[2] == CAPACITY for t in spec.inputs)


def layout(spec: GraphSpec) -> Layout:
    """The layer count, hidden-state output and extra tensors of a contract graph ``spec``."""
    inputs = [t.name for t in spec.inputs]
    outputs = {t.name: t for t in spec.outputs}
    layers = sum(1 for n in inputs if n.startswith(PAST + ".") and n.endswith(".key"))
    free = [t for t in spec.outputs if t.name != "logits" and not t.name.startswith(PRESENT + ".")]
    hidden = free[0].name  # the contract's second output
    return Layout(layers, hidden, tuple(n for n in inputs if n not in CORE_INPUTS and not n.startswith(PAST + ".")),
                  tuple(t.name for t in free[1:]), int(outputs["logits"].dims[-1]), int(outputs[hidden].dims[-1]),
                  in_place(spec))


def heads_of(info: dict) -> dict[str, dict]:
    """The speculative heads a decoder section lists: ``decoder.heads`` ({head name: entry with
    at least its ``graph``}); bundles written before heads were plugins name Medusa and MTP at
    ``decoder.medusa`` / ``decoder.mtp``, read the same way."""
    legacy = {name: info[name] for name in ("medusa", "mtp") if isinstance(info.get(name), dict)}
    return {**legacy, **(info.get("heads") or {})}


def decoder_section(geometry: Geometry, *, context: int, kv_dtype: str, flavour: str, generation: dict,
                    verify: dict[str, str], heads: dict[str, dict], tokenizer: str = "tokenizer.json",
                    graph: str = GRAPH, **extra) -> dict:
    """The manifest's ``decoder`` section: everything the runtime needs to drive the graph
    without torch (cache geometry and dtype, context, flavour, eos/bos ids and chat template from
    ``generation``, the verify graphs, the heads' entries)."""
    g = geometry
    return {"graph": graph, "tokenizer": tokenizer, "context": int(context), "kv_dtype": kv_dtype,
            "num_layers": g.num_layers, "num_kv_heads": g.num_kv_heads, "head_dim": g.head_dim,
            "vocab_size": g.vocab_size, "verify": verify, "backend": flavour, **extra, **generation, "heads": heads}
