"""GGUF checkpoints (llama.cpp's format) as decoder checkpoints: ``--checkpoint FILE.gguf``.

The file is read with the ``gguf`` package (llama.cpp's own reader, numpy only). What it holds
becomes what a Hugging Face checkpoint directory would hold, so that everything downstream
(the family modules, parity, heads, ``edgert train``) sees one kind of checkpoint:

* ``config.json`` from the ``<arch>.*`` metadata (block count, widths, heads, RoPE base, norm
  epsilon, context), ``tie_word_embeddings`` when the file has no ``output.weight``;
* ``tokenizer.json`` from ``tokenizer.ggml.*`` (vocabulary, merges, control and user-defined
  tokens as added tokens) with the pre-tokenizer the model was trained with, chosen by
  ``tokenizer.ggml.pre`` (:data:`PRE_TOKENIZERS`: the Hugging Face original of each name, e.g.
  SmolLM's individual digits before byte-level BPE);
* ``tokenizer_config.json`` / ``generation_config.json``: the chat template, BOS / EOS and
  whether BOS is added;
* the weights, dequantized to fp32 by the ``gguf`` package and renamed to the Hugging Face
  names (:data:`TENSOR_NAMES`); llama.cpp's q/k row permutation for Llama-architecture files
  (its converter reorders rows for its interleaved RoPE) is undone.

:func:`materialize` writes that folder (a temporary one the caller owns); :class:`GGUFFile`
also keeps each weight's original blocks, which :mod:`.stored` turns into ONNX Runtime's
block-quantized ops without a second rounding.

A GGUF is untrusted input. Before the ``gguf`` reader sees it, :func:`check_header` walks the
header and metadata and checks every declared count and length against the bytes left in the
file (the reader itself loops over a declared array length, so an absurd one would hang it).
Architectures, tensor types and tokenizer models edgert cannot reproduce are refused in one
line naming them.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgert.runtime.errors import EdgertError, first_line

# general.architecture -> the model_type it becomes (Mistral files say "llama").
ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "granite": "granite", "phi3": "phi3",
                 "smollm3": "smollm3", "gemma3": "gemma3_text"}
# Architectures whose converter (a LlamaModel subclass in llama.cpp) permuted the q/k rows.
PERMUTED = ("llama", "granite", "smollm3")
# Granite's multipliers: llama.cpp's converter renames them *_scale and writes each only when
# it is non-zero (the Hugging Face defaults, 1.0, stand for a missing key).
GRANITE_SCALES = {"embedding_scale": "embedding_multiplier", "residual_scale": "residual_multiplier",
                  "attention.scale": "attention_multiplier", "logit_scale": "logits_scaling"}
# Types whose blocks edgert stores exactly (see .stored), those it re-rounds, and plain floats.
EXACT_TYPES = ("Q4_0", "Q4_1", "Q4_K", "Q8_0")
REROUNDED_TYPES = ("Q5_0", "Q5_1", "Q5_K", "Q6_K")
FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED_TYPES = FLOAT_TYPES + EXACT_TYPES + REROUNDED_TYPES

# GGUF tensor name (per layer: blk.N.<part>) -> Hugging Face name.
TENSOR_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}
LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
               "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
               "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
               "attn_q.bias": "self_attn.q_proj.bias", "attn_k.bias": "self_attn.k_proj.bias",
               "attn_v.bias": "self_attn.v_proj.bias", "attn_q_norm.weight": "self_attn.q_norm.weight",
               "attn_k_norm.weight": "self_attn.k_norm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
               "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight"}
# Phi-3 keeps Hugging Face's fused projections: attn_qkv is qkv_proj, ffn_up is gate_up_proj
# (gate rows first; llama.cpp splits it at run time).
PHI3_NAMES = {**LAYER_NAMES, "attn_qkv.weight": "self_attn.qkv_proj.weight", "ffn_up.weight": "mlp.gate_up_proj.weight"}
# Gemma 3's four norms a layer: ffn_norm is the one before the feed-forward there.
GEMMA3_NAMES = {**LAYER_NAMES, "post_attention_norm.weight": "post_attention_layernorm.weight",
                "ffn_norm.weight": "pre_feedforward_layernorm.weight",
                "post_ffw_norm.weight": "post_feedforward_layernorm.weight"}
LAYER_NAMES_OF = {"phi3": PHI3_NAMES, "gemma3": GEMMA3_NAMES}

# tokenizer.ggml.pre -> the pre-tokenizer of the Hugging Face tokenizer the model was trained
# with (llama.cpp's converter names it by hashing that tokenizer's output; its regexes in
# llama-vocab.cpp are these). Byte-level BPE in every case.
_GPT2 = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")


def _split_then_bytes(pattern: str) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {**_GPT2, "use_regex": False}]}


PRE_TOKENIZERS = {
    "default": _GPT2, "gpt-2": _GPT2,
    # StarCoder's tokenizer and those trained like it split every digit, then GPT-2's regex.
    **{name: {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _GPT2]}
       for name in ("smollm", "starcoder", "refact", "codeshell")},
    "qwen2": _split_then_bytes(_QWEN2), "llama-bpe": _split_then_bytes(_LLAMA3),
}

# Bounds on what a header may declare, checked before anything is allocated.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 16
MAX_STRING = 1 << 26          # a chat template or a merge list entry; far above any real one
MAX_DIMS = 4
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY = 8, 9


def check_header(path: Path) -> None:
    """Walk the header and metadata of ``path`` and refuse, in one line, a file whose declared
    counts or lengths do not fit in it (truncated, or absurd), before any reader allocates."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read(min(size, 1 << 30))  # the metadata of a real file is a few MB at the start

    def fail(what: str):
        raise EdgertError(f"{path}: not a readable GGUF file ({what})")

    def take(offset: int, count: int) -> int:
        if count < 0 or offset + count > len(data):
            fail(f"it ends inside its header, at byte {len(data)}" if len(data) == size
                 else "its header is larger than 1 GiB")
        return offset + count

    def uint(offset: int, width: int) -> tuple[int, int]:
        end = take(offset, width)
        return int.from_bytes(data[offset:end], "little"), end

    def string(offset: int, what: str) -> int:
        length, offset = uint(offset, 8)
        if length > MAX_STRING:
            fail(f"{what} declares a string of {length} bytes")
        return take(offset, length)

    def value(offset: int, kind: int, what: str, depth: int = 0) -> int:
        if kind in _SCALARS:
            return take(offset, _SCALARS[kind])
        if kind == _STRING:
            return string(offset, what)
        if kind != _ARRAY or depth:
            fail(f"{what} has value type {kind}")
        item, offset = uint(offset, 4)
        count, offset = uint(offset, 8)
        least = _SCALARS.get(item, 8)  # each element takes at least this many bytes
        if count * least > len(data) - offset:
            fail(f"{what} declares an array of {count} elements, more than the file holds")
        if item in _SCALARS:
            return take(offset, count * least)
        for _ in range(count):
            offset = value(offset, item, what, depth + 1)
        return offset

    if data[:4] != b"GGUF":
        fail("no GGUF magic at its start")
    version, offset = uint(4, 4)
    if version not in (2, 3):
        fail(f"version {version}; edgert reads GGUF versions 2 and 3")
    tensors, offset = uint(offset, 8)
    kvs, offset = uint(offset, 8)
    if tensors > MAX_TENSORS or kvs > MAX_KV:
        fail(f"it declares {tensors} tensors and {kvs} metadata entries (at most {MAX_TENSORS} and {MAX_KV})")
    for i in range(kvs):
        start = offset
        offset = string(offset, f"metadata key {i}")
        key = data[start + 8:offset].decode("utf-8", "replace")
        kind, offset = uint(offset, 4)
        offset = value(offset, kind, f"metadata {key!r}")
    for i in range(tensors):
        start = offset
        offset = string(offset, f"tensor info {i}")
        name = data[start + 8:offset].decode("utf-8", "replace")
        dims, offset = uint(offset, 4)
        if not 1 <= dims <= MAX_DIMS:
            fail(f"tensor {name!r} declares {dims} dimensions")
        offset = take(offset, 8 * dims + 4 + 8)


@dataclass
class Tensor:
    """One weight as the file stores it: ``blocks`` (rows, bytes per row) for block types, the
    float array for F32/F16/BF16; ``shape`` in PyTorch order (out, in)."""

    name: str
    type: str
    shape: tuple[int, ...]
    raw: np.ndarray
    rows: np.ndarray | None = None  # a row permutation to apply (undoing llama.cpp's q/k order)
    offset: float = 0.0             # added to the values (Gemma's norms: llama.cpp stored 1 + weight)

    def dequantize(self) -> np.ndarray:
        from gguf.quants import dequantize

        values = np.asarray(dequantize(self.raw, _type(self.type)), dtype=np.float32).reshape(self.shape)
        if self.offset:
            values = values + np.float32(self.offset)
        return values[self.rows] if self.rows is not None else values

    def row_blocks(self) -> np.ndarray:
        """The blocks by row, in the model's row order (``raw`` reordered)."""
        blocks = self.raw.reshape(self.shape[0], -1)
        return blocks[self.rows] if self.rows is not None else blocks


def _type(name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name]


@dataclass
class GGUFFile:
    """A GGUF read into what an export needs: the Hugging Face config, tokenizer and files, and
    the tensors by Hugging Face name."""

    path: Path
    architecture: str
    config: dict[str, Any]
    tokenizer: dict[str, Any]
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any]
    tensors: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def file_type(self) -> str:
        """The types of the file's 2-D weights, most common first (e.g. ``Q4_1+Q8_0``)."""
        counts: dict[str, int] = {}
        for t in self.tensors.values():
            if len(t.shape) == 2:
                counts[t.type] = counts.get(t.type, 0) + 1
        return "+".join(sorted(counts, key=lambda k: -counts[k]))


def read(path: str | Path) -> GGUFFile:
    """Read and check ``path``; every problem is one :class:`EdgertError` line naming it."""
    path = Path(path)
    if not path.is_file():
        raise EdgertError(f"{path}: no such GGUF file")
    check_header(path)
    try:
        from gguf import GGUFReader
    except ImportError:
        raise EdgertError(f"{path}: reading GGUF files needs the 'gguf' package (pip install edgert[export])") from None
    try:
        reader = GGUFReader(str(path), "r")
    except Exception as err:  # the reader raises ValueError/IndexError/... of its own on damaged data
        raise EdgertError(f"{path}: not a readable GGUF file ({first_line(err)})") from None
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                                              "tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
            continue
        meta[key] = f.contents()
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise EdgertError(f"{path}: general.architecture {arch!r} is not supported (supported: "
                          f"{', '.join(ARCHITECTURES)}; Mistral files say llama)")
    config = _config(path, arch, meta)
    tensors = _tensors(path, reader, arch, config)
    config["tie_word_embeddings"] = "lm_head.weight" not in tensors
    tokenizer, tok_config, gen_config = _tokenizer(path, reader, meta, config)
    return GGUFFile(path, arch, config, tokenizer, tok_config, gen_config, tensors, meta)


def _config(path: Path, arch: str, meta: dict) -> dict[str, Any]:
    def get(key: str, default: Any = KeyError):
        value = meta.get(f"{arch}.{key}", default)
        if value is KeyError:
            raise EdgertError(f"{path}: metadata {arch}.{key} is missing")
        return value

    def count(key: str, default: Any = KeyError) -> int:
        value = get(key, default)
        if isinstance(value, list) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise EdgertError(f"{path}: metadata {arch}.{key} must be one positive integer (given {value!r}; per-layer "
                              "values are not supported)")
        return int(value)

    if f"{arch}.rope.scaling.type" in meta and meta[f"{arch}.rope.scaling.type"] not in ("none", "linear"):
        raise EdgertError(f"{path}: rope scaling {meta[f'{arch}.rope.scaling.type']!r} in the metadata is not "
                          "supported yet (export from the Hugging Face checkpoint)")
    hidden, heads = count("embedding_length"), count("attention.head_count")
    head_dim = count("attention.key_length", hidden // heads)
    if count("attention.value_length", head_dim) != head_dim:
        raise EdgertError(f"{path}: key_length {head_dim} and value_length differ; edgert's attention takes one head size")
    rope_dims = count("rope.dimension_count", head_dim)
    if rope_dims != head_dim and arch != "phi3":
        raise EdgertError(f"{path}: rope.dimension_count {rope_dims} rotates part of a {head_dim}-dim head; partial "
                          f"rotary is not supported for {arch} files")
    config = {"model_type": ARCHITECTURES[arch], "architectures": [f"{ARCHITECTURES[arch].capitalize()}ForCausalLM"],
              "hidden_size": hidden, "intermediate_size": count("feed_forward_length"),
              "num_hidden_layers": count("block_count"), "num_attention_heads": heads,
              "num_key_value_heads": count("attention.head_count_kv", heads), "head_dim": head_dim,
              "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
              "rope_theta": float(get("rope.freq_base", 10000.0)),
              "max_position_embeddings": count("context_length"), "hidden_act": "silu"}
    if arch == "qwen2":
        config["attention_bias"] = False  # Qwen2's q/k/v biases are implied by its model_type
    if meta.get(f"{arch}.rope.scaling.type") == "linear":
        factor = get("rope.scaling.factor")
        if not isinstance(factor, (int, float, np.floating, np.integer)) or not 1 <= factor <= 1024:
            raise EdgertError(f"{path}: metadata {arch}.rope.scaling.factor must be a number in [1, 1024] (given "
                              f"{factor!r})")
        config["rope_scaling"] = {"rope_type": "linear", "factor": float(factor)}
    if arch == "gemma3":
        config.update(_gemma3(path, config, meta, count))
    if arch == "smollm3":  # llama.cpp writes no NoPE key: every 4th layer skips RoPE, as in SmolLM3's config
        config.update(architectures=["SmolLM3ForCausalLM"], no_rope_layer_interval=4)
    if arch == "phi3":
        config["architectures"] = ["Phi3ForCausalLM"]
        config["partial_rotary_factor"] = rope_dims / head_dim
        config["sliding_window"] = count("attention.sliding_window", config["max_position_embeddings"])
    if arch == "granite":
        for key, name in GRANITE_SCALES.items():
            value = get(key, 1.0)
            if not isinstance(value, (int, float, np.floating, np.integer)) or not np.isfinite(value) or value == 0:
                raise EdgertError(f"{path}: metadata {arch}.{key} must be a finite non-zero number (given {value!r})")
            config[name] = float(value)
    return config


def _gemma3(path: Path, config: dict, meta: dict, count) -> dict[str, Any]:
    """What a Gemma 3 file leaves to llama.cpp's code (src/llama-model.cpp): local layers on a
    RoPE base of 10000, five local to one global (``sliding_window_pattern`` when the file has
    it), the softmax scale 1/sqrt(head_dim) except on the 27B (62 layers: 1/sqrt(hidden/heads),
    Gemma 3 27B's query_pre_attn_scalar 168)."""
    layers = config["num_hidden_layers"]
    pattern = meta.get("gemma3.attention.sliding_window_pattern", 6)
    if isinstance(pattern, list):
        if len(pattern) != layers or not all(isinstance(v, (bool, int, np.integer)) for v in pattern):
            raise EdgertError(f"{path}: metadata gemma3.attention.sliding_window_pattern has {len(pattern)} entries "
                              f"for {layers} layers")
        sliding = [bool(v) for v in pattern]
    elif isinstance(pattern, (int, np.integer)) and pattern > 0:
        sliding = [(i + 1) % int(pattern) != 0 for i in range(layers)]
    else:
        raise EdgertError(f"{path}: metadata gemma3.attention.sliding_window_pattern must be a positive integer or one "
                          f"flag per layer (given {pattern!r})")
    scalar = config["hidden_size"] // config["num_attention_heads"] if layers == 62 else config["head_dim"]
    out = {"architectures": ["Gemma3ForCausalLM"], "hidden_activation": "gelu_pytorch_tanh",
           "hidden_act": "gelu_pytorch_tanh", "sliding_window": count("attention.sliding_window"),
           "layer_types": ["sliding_attention" if s else "full_attention" for s in sliding],
           "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": scalar}
    softcap = meta.get("gemma3.final_logit_softcapping")
    if softcap is not None:
        out["final_logit_softcapping"] = float(softcap)
    return out


def _permutation(rows: int, heads: int) -> np.ndarray:
    """The row order that undoes llama.cpp's ``permute(weights, n_head)`` (convert_hf_to_gguf.py):
    it wrote ``W_hf[order]`` with ``order = arange.reshape(heads, 2, d/2).swapaxes(1, 2)``."""
    order = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
    return np.argsort(order)


def _tensors(path: Path, reader, arch: str, config: dict) -> dict[str, Tensor]:
    layers, out = config["num_hidden_layers"], {}
    expected = _expected_shapes(arch, config)
    for t in reader.tensors:
        name = t.name
        if name in TENSOR_NAMES:
            hf = TENSOR_NAMES[name]
        elif name.startswith("blk.") and name.count(".") >= 2:
            _, index, part = name.split(".", 2)
            names = LAYER_NAMES_OF.get(arch, LAYER_NAMES)
            if not index.isdigit() or int(index) >= layers or part not in names:
                raise EdgertError(f"{path}: tensor {name!r} is not part of a {arch} model of {layers} layers")
            hf = f"model.layers.{int(index)}.{names[part]}"
        elif name == "rope_freqs.weight":
            raise EdgertError(f"{path}: tensor rope_freqs.weight (Llama 3.1-style frequency factors) is not supported yet")
        elif name in ("rope_factors_long.weight", "rope_factors_short.weight"):
            raise EdgertError(f"{path}: tensor {name} (LongRoPE factors) is not supported yet; export a LongRoPE Phi "
                              "model from its Hugging Face checkpoint")
        else:
            raise EdgertError(f"{path}: tensor {name!r} is not part of a {arch} model")
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise EdgertError(f"{path}: tensor {name!r} has type {kind}; supported: {', '.join(SUPPORTED_TYPES)}")
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGUF lists the fastest dimension first
        if hf not in expected:
            raise EdgertError(f"{path}: tensor {name!r} is not part of a {arch} model of this configuration")
        if not _shape_matches(shape, expected[hf]):
            implied = ["vocab" if d is None else d for d in expected[hf]]
            raise EdgertError(f"{path}: tensor {name!r} has shape {list(shape)}; the metadata implies {implied}")
        rows = None
        if arch in PERMUTED and hf.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config["num_attention_heads"] if "q_proj" in hf else config["num_key_value_heads"]
            rows = _permutation(shape[0], heads)
        # llama.cpp's Gemma converter stores every norm as 1 + weight (its RMSNorm multiplies by
        # the weight); Gemma's own RMSNorm, edgert's and transformers', takes the weight.
        offset = -1.0 if arch == "gemma3" and hf.endswith("norm.weight") else 0.0
        out[hf] = Tensor(name, kind, shape, np.asarray(t.data), rows, offset)
    missing = [k for k in expected if k not in out and k != "lm_head.weight" and not k.endswith(".bias")
               and not k.endswith(("q_norm.weight", "k_norm.weight"))]
    if arch == "qwen2":
        missing += [k for k in expected if k.endswith(".bias") and k not in out]
    if arch in ("qwen3", "gemma3"):
        missing += [k for k in expected if k.endswith(("q_norm.weight", "k_norm.weight")) and k not in out]
    if missing:
        raise EdgertError(f"{path}: the file lacks {len(missing)} tensors of a {arch} model, e.g. {missing[0]}")
    return out


def _expected_shapes(arch: str, c: dict) -> dict[str, tuple[int, ...]]:
    h, hd, inter = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    vocab = None  # the vocabulary's size is the tokenizer's: checked against it in _tokenizer
    shapes: dict[str, tuple] = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h),
                                "model.norm.weight": (h,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        if arch == "phi3":
            shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                           p + "self_attn.qkv_proj.weight": (q + 2 * kv, h), p + "self_attn.o_proj.weight": (h, q),
                           p + "mlp.gate_up_proj.weight": (2 * inter, h), p + "mlp.down_proj.weight": (h, inter)})
            continue
        shapes.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                       p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                       p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter)})
        if arch == "qwen2":
            shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                           p + "self_attn.v_proj.bias": (kv,)})
        if arch in ("qwen3", "gemma3"):
            shapes.update({p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)})
        if arch == "gemma3":
            shapes.update({p + "pre_feedforward_layernorm.weight": (h,), p + "post_feedforward_layernorm.weight": (h,)})
    return shapes


def _shape_matches(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def _tokenizer(path: Path, reader, meta: dict, config: dict) -> tuple[dict, dict, dict]:
    model = meta.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise EdgertError(f"{path}: tokenizer.ggml.model {model!r} is not supported (supported: 'gpt2', byte-level "
                          "BPE; 'llama', SentencePiece)")
    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        raise EdgertError(f"{path}: the file has no tokenizer.ggml.tokens")
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents() if "tokenizer.ggml.token_type" in fields else []
    if not all(isinstance(t, str) for t in tokens):
        raise EdgertError(f"{path}: tokenizer.ggml.tokens is not a list of strings")
    vocab = {}
    for i, token in enumerate(tokens):
        vocab.setdefault(token, i)
    if len(vocab) != len(tokens):
        raise EdgertError(f"{path}: tokenizer.ggml.tokens repeats a token ({len(tokens) - len(vocab)} duplicates)")
    if types and len(types) != len(tokens):
        raise EdgertError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    for t in reader.tensors:
        if t.name in ("token_embd.weight", "output.weight") and int(t.shape[-1]) != len(tokens):
            raise EdgertError(f"{path}: {t.name} has {int(t.shape[-1])} rows for {len(tokens)} tokens")
    config["vocab_size"] = len(tokens)
    # CONTROL (3) and USER_DEFINED (4) tokens are matched whole before the model, as in the original.
    added = [{"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": int(types[i]) == 3} for i in range(len(types)) if int(types[i]) in (3, 4)]

    def token_id(key: str) -> int | None:
        value = meta.get(f"tokenizer.ggml.{key}")
        if value is None:
            return None
        if not isinstance(value, (int, np.integer)) or not 0 <= value < len(tokens):
            raise EdgertError(f"{path}: tokenizer.ggml.{key} {value!r} is not a token id (vocabulary of {len(tokens)})")
        return int(value)

    bos, eos, pad = token_id("bos_token_id"), token_id("eos_token_id"), token_id("padding_token_id")
    eot = token_id("eot_token_id")
    if eos is None:
        raise EdgertError(f"{path}: tokenizer.ggml.eos_token_id is missing; generation could not stop")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")) and bos is not None
    if model == "gpt2":
        parts = _byte_level(path, meta, fields, vocab)
    else:
        parts = _sentencepiece(path, meta, fields, tokens, types, vocab, token_id("unknown_token_id"))
    if add_bos:
        parts["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos], "tokens": [tokens[bos]]}}}
    tokenizer = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, **parts}
    template = meta.get("tokenizer.chat_template")
    tok_config = {"bos_token": tokens[bos] if bos is not None else None, "eos_token": tokens[eos],
                  "add_bos_token": add_bos, "chat_template": template if isinstance(template, str) else None}
    eos_ids = [eos] + ([eot] if eot is not None and eot != eos else [])
    gen_config = {"bos_token_id": bos, "eos_token_id": eos_ids if len(eos_ids) > 1 else eos, "pad_token_id": pad}
    config.update(bos_token_id=bos, eos_token_id=eos)
    return tokenizer, tok_config, gen_config


def _byte_level(path: Path, meta: dict, fields, vocab: dict[str, int]) -> dict:
    """GPT-2-style byte-level BPE: the file's merges, the pre-tokenizer its ``pre`` names."""
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise EdgertError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported (supported: "
                          f"{', '.join(sorted(PRE_TOKENIZERS))})")
    if "tokenizer.ggml.merges" not in fields:
        raise EdgertError(f"{path}: the file has no tokenizer.ggml.merges (a byte-level BPE needs them)")
    merges = fields["tokenizer.ggml.merges"].contents()
    if not all(isinstance(m, str) and m.count(" ") == 1 for m in merges):
        raise EdgertError(f"{path}: tokenizer.ggml.merges is not a list of 'a b' strings")
    return {"normalizer": None, "pre_tokenizer": PRE_TOKENIZERS[pre],
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges}}


def _sentencepiece(path: Path, meta: dict, fields, tokens: list[str], types: list, vocab: dict[str, int],
                   unk: int | None) -> dict:
    """A SentencePiece vocabulary (``tokenizer.ggml.model`` 'llama': Llama 2, Mistral v0.1-0.3,
    Phi-3, Gemma) as the BPE it encodes like. llama.cpp's SentencePiece tokenizer starts from
    the characters of the text (spaces as "▁", one in front when ``add_space_prefix``, the
    default, and again after every special token) and keeps merging the neighbouring pair whose
    joined text is a token of the highest score; a character outside the vocabulary becomes its
    UTF-8 bytes' <0xXX> tokens. That is a BPE whose merges are every split of a normal token
    into two tokens, best joined score first, with byte fallback: what is written here."""
    if "tokenizer.ggml.scores" not in fields:
        raise EdgertError(f"{path}: the file has no tokenizer.ggml.scores (a SentencePiece vocabulary needs them)")
    scores = fields["tokenizer.ggml.scores"].contents()
    if len(scores) != len(tokens) or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in scores):
        raise EdgertError(f"{path}: tokenizer.ggml.scores must be one finite number per token ({len(scores)} for "
                          f"{len(tokens)} tokens)")
    if not types:
        raise EdgertError(f"{path}: the file has no tokenizer.ggml.token_type (a SentencePiece vocabulary needs them)")
    normal = [int(t) == 1 for t in types]
    candidates = []
    for i, token in enumerate(tokens):
        if normal[i]:
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in vocab and right in vocab:
                    candidates.append((-float(scores[i]), i, cut, left, right))
    candidates.sort(key=lambda c: c[:3])
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    space = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
    normalizer = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"}, space]} if prefix else space
    decoders = [{"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}] + ([{"type": "Strip", "content": " ", "start": 1, "stop": 0}] if prefix else [])
    return {"normalizer": normalizer, "pre_tokenizer": None, "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": decoders},
            "model": {"type": "BPE", "dropout": None, "unk_token": tokens[unk] if unk is not None else None,
                      "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                      "byte_fallback": True, "ignore_merges": False, "vocab": vocab,
                      "merges": [[c[3], c[4]] for c in candidates]}}


def write_checkpoint(gguf: GGUFFile, directory: Path) -> None:
    """``directory`` becomes the Hugging Face checkpoint of ``gguf`` (dequantized fp32 weights)."""
    import torch
    from safetensors.torch import save_file

    state = {name: torch.from_numpy(np.array(t.dequantize(), dtype=np.float32, order="C"))  # a writable copy
             for name, t in gguf.tensors.items()}
    save_file(state, str(directory / "model.safetensors"))
    for name, content in (("config.json", gguf.config), ("tokenizer.json", gguf.tokenizer),
                          ("tokenizer_config.json", gguf.tokenizer_config),
                          ("generation_config.json", gguf.generation_config)):
        (directory / name).write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


def is_gguf(path: str | Path | None) -> bool:
    return path is not None and str(path).lower().endswith(".gguf")


@contextlib.contextmanager
def checkpoint_directory(path: str | Path) -> Iterator[tuple[Path, GGUFFile | None]]:
    """``(directory, gguf)``: a Hugging Face checkpoint directory as given, or for a ``.gguf``
    file a temporary one written from it (removed on exit) with the file read."""
    if not is_gguf(path):
        yield Path(path), None
        return
    from edgert.runtime.progress import step

    with step(f"reading {path} (GGUF)"):
        gguf = read(path)
    with tempfile.TemporaryDirectory(prefix="edgert-gguf-") as tmp:
        with step(f"dequantizing its {len(gguf.tensors)} tensors ({gguf.file_type}) for the PyTorch module"):
            write_checkpoint(gguf, Path(tmp))
        yield Path(tmp), gguf
