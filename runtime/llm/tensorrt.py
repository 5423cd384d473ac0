"""TensorRT engines for the TensorRT flavour of a decoder bundle (``--backend trt``).

Loads edgert's plugin library into TensorRT's plugin registry (the ONNX parser then finds
``EdgertAttention`` / ``EdgertTreeVerify`` / ``EdgertKVCompact`` by op type, plugin_version and
plugin_namespace), turns on aliased plugin I/O so the KV caches are updated in place, and
builds the decoder engine with one optimisation profile: batch 1..max_batch, new tokens
1..max_tokens (opt 1: decode), cache capacity fixed. tensorrt is imported lazily; it is the
``trt`` extra and absent on most machines.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgertError

_loaded: dict[str, object] = {}


def require_tensorrt():
    try:
        import tensorrt
    except ImportError as err:
        raise EdgertError(f"TensorRT decoder engines need the 'tensorrt' package (pip install 'edgert[trt]'): {err}") from None
    return tensorrt


def load_plugins(library: str | Path):
    """Register the plugin library's creators with TensorRT (once per process)."""
    trt = require_tensorrt()
    library = Path(library)
    if not library.is_file():
        raise EdgertError(f"{library}: plugin library not found; build it with `cmake -S . -B build/native && cmake "
                          "--build build/native` on a machine with TensorRT (trt_plugins/README.md)")
    key = str(library.resolve())
    if key not in _loaded:
        handle = trt.get_plugin_registry().load_library(key)
        if handle is None:
            raise EdgertError(f"{library}: TensorRT could not load the plugin library (already registered, or built "
                              "against another TensorRT)")
        _loaded[key] = handle
    return trt


def build_decoder_engine(bundle: str | Path, library: str | Path, max_batch: int = 1, max_tokens: int = 64,
                         capacity: int | None = None, fp16: bool = False):
    """Build the ICudaEngine of ``bundle``'s decoder graph with the plugins of ``library``."""
    bundle = Path(bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    info = manifest.get("decoder") or {}
    if info.get("backend") != "trt":
        raise EdgertError(f"{bundle}: not the TensorRT flavour of a decoder (export with --backend trt)")
    capacity = int(capacity or info["context"])
    trt = load_plugins(library)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(bundle / "decoder.onnx")):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EdgertError(f"{bundle / 'decoder.onnx'}: the TensorRT ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03, True)  # in-place KV cache
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    words = (max_tokens + 31) // 32
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        name, dims = tensor.name, list(tensor.shape)
        if name == "past_lengths":
            lo, opt, hi = [1], [1], [max_batch]
        elif name == "tree_mask":
            lo, opt, hi = [1, 1], [1, 1], [max_tokens, words]
        elif name.startswith("past_key_values."):
            fixed = [dims[1], capacity, dims[3]]
            lo, opt, hi = [1, *fixed], [1, *fixed], [max_batch, *fixed]
        else:  # input_ids, position_ids, logit_positions: [batch, tokens]
            lo, opt, hi = [1, 1], [1, 1], [max_batch, max_tokens]
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgertError(f"{bundle}: TensorRT failed to build the decoder engine (see the log above)")
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    if engine is None:
        raise EdgertError(f"{bundle}: TensorRT could not deserialize the engine it built")
    return engine
