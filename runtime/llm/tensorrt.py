"""TensorRT engines for the TensorRT flavour of a decoder bundle (``--flavour trt``).

Loads edgert's plugin library into TensorRT's plugin registry (the ONNX parser then finds
``EdgertAttention`` / ``EdgertTreeVerify`` / ``EdgertKVCompact`` by op type, plugin_version and
plugin_namespace), turns on aliased plugin I/O so the KV caches are updated in place, and
builds the decoder engine strongly typed (the graph is fp16; :mod:`edgert.runtime.trt_build`)
with one optimisation profile: batch 1..max_batch, new tokens 1..max_tokens (opt 1: decode),
cache capacity fixed. Building and deserializing go through Polygraphy's loaders
(:mod:`edgert.runtime.trt_build`, ``EngineFromBytes``). tensorrt is imported lazily; it is the ``trt`` extra and absent on most
machines.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import EdgertError, first_line
from ..trt_build import build_serialized, require_tensorrt

_loaded: dict[str, object] = {}


def load_plugins(library: str | Path):
    """Register the plugin library's creators with TensorRT (once per process).

    Through the plugin registry's ``load_library``, not Polygraphy's ``LoadPlugins``: that one
    only ``dlopen``s a library, which registers plugins that register themselves statically;
    edgert's library exports ``getCreators`` (IPluginV3, and nothing else is visible), which only
    the registry calls."""
    trt = require_tensorrt("building a TensorRT decoder engine")
    library = Path(library)
    if not library.is_file():
        raise EdgertError(f"{library}: plugin library not found; build it with `cmake -S . -B build/native && cmake "
                          "--build build/native` on a machine with TensorRT (trt_plugins/README.md)")
    key = str(library.resolve())
    if key not in _loaded:
        handle = trt.get_plugin_registry().load_library(key)
        if handle is None:
            raise EdgertError(f"{library}: TensorRT could not load the plugin library (already registered, or built "
                              f"against another TensorRT than {trt.__version__}: see the line above)")
        _loaded[key] = handle
    return trt


def decoder_profile(graph: dict, max_batch: int, max_tokens: int, capacity: int) -> dict:
    """(min, opt, max) per input of the manifest's decoder graph."""
    words = (max_tokens + 31) // 32
    shapes = {}
    for spec in graph["inputs"]:
        name, dims = spec["name"], spec["dims"]
        if name == "past_lengths":
            shapes[name] = ([1], [1], [max_batch])
        elif name == "tree_mask":
            shapes[name] = ([1, 1], [1, 1], [max_tokens, words])
        elif name.startswith("past_key_values."):
            fixed = [dims[1], capacity, dims[3]]
            shapes[name] = ([1, *fixed], [1, *fixed], [max_batch, *fixed])
        else:  # input_ids, position_ids, logit_positions: [batch, tokens]
            shapes[name] = ([1, 1], [1, 1], [max_batch, max_tokens])
    return shapes


def build_decoder_engine(bundle: str | Path, library: str | Path, max_batch: int = 1, max_tokens: int = 64,
                         capacity: int | None = None):
    """Build the ICudaEngine of ``bundle``'s decoder graph with the plugins of ``library``."""
    from ..bundle import Bundle

    bundle = Bundle.load(bundle, verify="used")  # confined like any bundle; the parser gets checked bytes or files
    info = bundle.manifest.get("decoder") or {}
    if info.get("backend") != "trt":
        raise EdgertError(f"{bundle.root}: not the TensorRT flavour of a decoder (export with --flavour trt)")
    capacity = int(capacity or info["context"])
    trt = load_plugins(library)
    graph = bundle.manifest["graphs"][info["graph"]]
    # With weights in external files the parser must read them beside the graph: the path (checked at load).
    if graph.get("external_data"):
        onnx = bundle.checked_path(graph["file"])
        for rel in graph["external_data"]:
            bundle.checked_path(rel)
    else:
        onnx = bundle.read(graph["file"])
    serialized = build_serialized(onnx, decoder_profile(graph, max_batch, max_tokens, capacity),
                                  preview_features=(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03,),  # in-place KV cache
                                  name=graph["file"])
    from polygraphy.backend.trt import EngineFromBytes

    try:
        return EngineFromBytes(serialized)()
    except Exception as err:  # Polygraphy raises its own error with TensorRT's log
        raise EdgertError(f"{bundle.root}: TensorRT could not deserialize the engine it built: {first_line(err)}") from None
