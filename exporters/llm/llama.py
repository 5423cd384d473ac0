"""Llama-family decoders in plain PyTorch, loaded from a local Hugging Face checkpoint directory
(config.json + model.safetensors or sharded safetensors with its index). transformers is not
needed here; it is the reference the tests compare against.

Architecture, as the configs describe it: token embedding; N pre-norm decoder layers of
grouped-query self-attention with rotary position embeddings (rope: default, linear, llama3,
longrope) and a gated MLP; RMSNorm (statistics in fp32); an LM head, tied to the embedding when
``tie_word_embeddings``. Qwen2 adds biases to q/k/v. Layers the config marks as sliding-window
attention (Mistral, Phi-3 and Qwen2/3 with ``use_sliding_window``: every layer or those past
``max_window_layers``; Gemma 3: its ``layer_types``) see only the last ``sliding_window``
positions: the window is enforced through the attention mask (:func:`sliding_mask`), so the KV
cache and its speculative edits stay the same for every layer. Parameter names are the
checkpoints' own (``model.layers.0.self_attn.q_proj.weight``...).

:class:`LlamaDecoder` is the base every family subclasses (onnxruntime-genai's builder works the
same way): a family says only how it differs — its layer, attention, MLP or norm classes, its
embedding and logit scaling, which rotary table each layer reads (:meth:`LlamaDecoder.rope_kind`)
— in :mod:`.families`. :data:`FAMILIES` maps each ``model_type`` to its class.
"""

from __future__ import annotations

import importlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgert.runtime.bundle import safe_relative
from edgert.runtime.errors import EdgertError, first_line
from edgert.runtime.inputs import read_json
from edgert.runtime.schema import Bool, Int, List, Num, Obj, Opt, SchemaError, Str

from ..checkpoints import check_keys
from .attention import attention
from .rotary import rotary

# model_type -> "module:class" (relative to this package), imported when a checkpoint names it.
FAMILIES = {"llama": ".llama:LlamaDecoder", "qwen2": ".llama:LlamaDecoder", "mistral": ".llama:LlamaDecoder",
            "qwen3": ".families:Qwen3Decoder", "smollm3": ".families:SmolLM3Decoder",
            "granite": ".families:GraniteDecoder", "phi3": ".families:Phi3Decoder",
            "gemma3_text": ".families:Gemma3Decoder", "gemma3": ".families:Gemma3Decoder"}
SUPPORTED = tuple(FAMILIES)
# config.json is the user's (or a download's): the fields read here, typed and bounded (a layer
# count of a billion would build a billion modules before any weight is checked).
_SIZE = Int(1, 1 << 20)
_MULTIPLIER = Num(1e-6, 1e6)
CONFIG = Obj({"model_type": Str(max_len=64), "vocab_size": Int(1, 1 << 24), "hidden_size": Int(1, 1 << 16),
              "intermediate_size": _SIZE, "num_hidden_layers": Int(1, 1024), "num_attention_heads": Int(1, 1024),
              "num_key_value_heads": Opt(Int(1, 1024)), "head_dim": Opt(Int(1, 1024)), "rms_norm_eps": Num(1e-12, 1),
              "rope_theta": Num(1, 1e12), "max_position_embeddings": Int(1, 1 << 24),
              "sliding_window": Opt(Int(1, 1 << 24)), "rope_scaling": Opt(Obj()), "rope_parameters": Opt(Obj()),
              "tie_word_embeddings": Bool(), "attention_bias": Bool(), "mlp_bias": Bool(),
              "use_sliding_window": Bool(), "max_window_layers": Int(0, 1024),
              "layer_types": List(Str(("full_attention", "sliding_attention", "chunked_attention")), max_len=1024),
              "no_rope_layers": List(Int(0, 1), max_len=1024), "partial_rotary_factor": Num(1e-3, 1),
              "original_max_position_embeddings": Int(1, 1 << 24), "query_pre_attn_scalar": Num(1e-6, 1e9),
              "rope_local_base_freq": Num(1, 1e12), "final_logit_softcapping": Opt(Num(1e-6, 1e9)),
              "attn_logit_softcapping": Opt(Num(1e-6, 1e9)), "embedding_multiplier": _MULTIPLIER,
              "residual_multiplier": _MULTIPLIER, "attention_multiplier": _MULTIPLIER, "logits_scaling": _MULTIPLIER,
              "hidden_act": Str(max_len=64), "hidden_activation": Opt(Str(max_len=64)),
              "use_bidirectional_attention": Opt(Bool())})


@dataclass
class DecoderConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    mlp_bias: bool
    sliding_window: int | None
    # "full" or "sliding" per layer (sliding: only the last sliding_window positions are seen)
    layer_types: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict, repr=False)  # config.json (a family reads its own fields)

    @property
    def sliding(self) -> bool:
        """Whether any layer attends over a sliding window."""
        return "sliding" in self.layer_types

    @classmethod
    def from_dir(cls, directory: str | Path) -> "DecoderConfig":
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise EdgertError(f"{path}: missing; a checkpoint directory needs config.json")
        cfg = read_json(path)
        if not isinstance(cfg, dict):
            raise EdgertError(f"{path}: expected a JSON object")
        if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), dict):
            cfg = {**cfg["text_config"], "model_type": "gemma3", "tie_word_embeddings":  # the multimodal checkpoint's text part
                   cfg["text_config"].get("tie_word_embeddings", cfg.get("tie_word_embeddings", True))}
        try:
            CONFIG.check(cfg, "")
        except SchemaError as err:
            raise EdgertError(f"{path}: {err}") from None
        model_type = cfg.get("model_type")
        if model_type not in SUPPORTED:
            raise EdgertError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED)})")
        try:
            heads = cfg["num_attention_heads"]
            rope_scaling = cfg.get("rope_scaling") or None
            params = cfg.get("rope_parameters")
            if rope_scaling is None and isinstance(params, dict) and "rope_type" in params:  # transformers >= 5 naming
                rope_scaling = params if params.get("rope_type", "default") != "default" else None
            if isinstance(params, dict) and "full_attention" in params:  # per layer type (Gemma 3): the global one
                params = params["full_attention"]
                rope_scaling = params if params.get("rope_type", "default") != "default" else None
            theta = cfg.get("rope_theta", (params or {}).get("rope_theta", 10000.0))
            kv_heads = cfg.get("num_key_value_heads") or heads
            if heads % kv_heads:
                raise EdgertError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
            window = cfg.get("sliding_window")
            config = cls(
                model_type=model_type, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
                num_kv_heads=kv_heads, head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=rope_scaling,
                max_position_embeddings=cfg.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", model_type in ("gemma3", "gemma3_text"))),
                qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)), sliding_window=window,
                layer_types=_layer_types(cfg, model_type, window, path), raw=cfg)
        except KeyError as err:
            raise EdgertError(f"{path}: missing field {err.args[0]!r}") from None
        if not config.sliding:
            config.sliding_window = None
        elif config.sliding_window is None:
            raise EdgertError(f"{path}: layer_types name sliding_attention layers but sliding_window is not set")
        elif config.sliding_window > config.max_position_embeddings:
            raise EdgertError(f"{path}: sliding_window {config.sliding_window} is larger than the context "
                              f"(max_position_embeddings {config.max_position_embeddings})")
        return config


def _layer_types(cfg: dict, model_type: str, window: int | None, path: Path) -> tuple[str, ...]:
    """"full" / "sliding" per layer: the config's layer_types, else as transformers derives them."""
    layers = cfg["num_hidden_layers"]
    given = cfg.get("layer_types")
    if given is not None:
        if len(given) != layers:
            raise EdgertError(f"{path}: layer_types has {len(given)} entries for {layers} layers")
        if "chunked_attention" in given:
            raise EdgertError(f"{path}: layer_types 'chunked_attention' is not supported (full_attention, "
                              "sliding_attention)")
        return tuple("sliding" if t == "sliding_attention" else "full" for t in given)
    if window is None:
        return ("full",) * layers
    if model_type in ("mistral", "phi3"):
        return ("sliding",) * layers
    if model_type in ("qwen2", "qwen3") and cfg.get("use_sliding_window", False):
        start = cfg.get("max_window_layers", layers)
        return tuple("sliding" if i >= start else "full" for i in range(layers))
    return ("full",) * layers


# ---- rotary tables -----------------------------------------------------------------------------

def rope_kind_of(scaling: dict | None) -> str:
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    return {"su": "longrope"}.get(kind, kind)  # Phi-3's first checkpoints call LongRoPE "su"


def rope_inverse_frequencies(cfg: DecoderConfig, scaling: dict | None = None, theta: float | None = None,
                             dim: int | None = None, supported: tuple[str, ...] = ("default", "linear", "llama3"),
                             long: bool = False) -> torch.Tensor:
    """Rotary inverse frequencies for ``dim`` rotated dims (default: the head), with the
    configured scaling: linear (positions / factor), Llama 3's frequency-dependent scaling, or
    LongRoPE's per-frequency factors (``long``: the long-context set, else the short one)."""
    scaling = cfg.rope_scaling if scaling is None else scaling
    theta = cfg.rope_theta if theta is None else theta
    dim = cfg.head_dim if dim is None else dim
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = rope_kind_of(scaling)
    if kind not in supported:
        raise EdgertError(f"rope_scaling type {kind!r} is not supported for {cfg.model_type} (supported: "
                          f"{', '.join(supported)})")
    if kind == "default":
        return inv_freq.float()
    if kind == "linear":
        return (inv_freq / float(scaling["factor"])).float()
    if kind == "longrope":
        factors = scaling["long_factor" if long else "short_factor"]
        if len(factors) != dim // 2:
            raise EdgertError(f"rope_scaling {'long' if long else 'short'}_factor has {len(factors)} entries; the "
                              f"rotated head dims need {dim // 2}")
        # transformers: 1 / (factor * base ** (2i / dim)), in fp32
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (torch.tensor(factors, dtype=torch.float32) * theta ** shape)
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled).float()


def exported_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` in ``dtype``, in eval mode, its rotary inverse frequencies (every
    ``*inv_freq`` buffer) left fp32 as transformers leaves them in an fp16 model: rounded to
    fp16 they turn a position in the thousands by up to 0.3 rad."""
    import copy

    out = copy.deepcopy(module).to(dtype).eval()
    for name, buffer in module.named_buffers():
        if name.endswith("inv_freq"):
            owner, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(owner), leaf, buffer.clone())
    return out


def rope_tables(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype, scale: float = 1.0):
    """cos and sin of each new token's rotary angles, (B, S, rotated dims / 2): what ``rotary``
    reads, times ``scale`` (LongRoPE's attention factor). The angles in fp32 whatever the
    weights' dtype (positions in the thousands)."""
    angles = position_ids[..., None].float() * inv_freq
    cos, sin = angles.cos(), angles.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    return cos.to(dtype), sin.to(dtype)


def apply_rope(x: torch.Tensor, rope, head_dim: int) -> torch.Tensor:
    """RoPE on the 3-D layout (B, S, H*D); a table narrower than the head rotates its first dims
    only (partial rotary, Phi-4-mini), the rest passes through."""
    cos, sin = rope
    rotated = 2 * cos.shape[-1]
    if rotated == head_dim:
        return rotary(x, cos, sin)
    b, s, width = x.shape
    heads = x.view(b, s, width // head_dim, head_dim)
    part = rotary(heads[..., :rotated].reshape(b, s, -1), cos, sin).view(b, s, -1, rotated)
    return torch.cat([part, heads[..., rotated:]], dim=-1).reshape(b, s, width)


def sliding_mask(mask: torch.Tensor, window: int) -> torch.Tensor:
    """``mask`` (B, S, P+S) restricted to each token's last ``window`` visible positions. The
    visible keys of a token are its own sequence (the past and, in a tree, its ancestors), whose
    positions are consecutive: keeping the last ``window`` of them is transformers'
    ``kv_idx > q_idx - sliding_window`` for a chain and the same rule along a tree path."""
    visible = mask.to(torch.int32)
    after = visible.sum(-1, keepdim=True) - visible.cumsum(-1) + visible  # visible keys at or after each key
    return mask & (after <= window)


# ---- modules -----------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def head_norm(norm: nn.Module, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """A norm over each head's dims of the 3-D layout (Qwen3's and Gemma 3's q/k norms)."""
    b, s, width = x.shape
    return norm(x.view(b, s, width // head_dim, head_dim)).view(b, s, width)


class Attention(nn.Module):
    """q/k/v projections, RoPE, the graph's attention op, the output projection. A family
    changes ``project`` (fused weights), ``normalize`` (q/k norms) or ``q_scale`` (a softmax
    scale other than 1/sqrt(head_dim), applied to q so that the op's contract stays one)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=self.output_bias(cfg))
        self.q_scale = 1.0

    @staticmethod
    def output_bias(cfg: DecoderConfig) -> bool:
        # attention_bias covers o_proj too, except in Qwen2 (biases on q/k/v only) and Mistral (none)
        return cfg.qkv_bias and cfg.model_type not in ("qwen2", "mistral")

    def project(self, x):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def normalize(self, q, k):
        return q, k

    def forward(self, x, rope, attend):
        """x (B, S, hidden); ``rope``: (cos, sin) of the layer's table, or None (no rotary);
        ``attend(q, k, v)`` -> (output (B, S, Hq*D), key state, value state): the attention op of
        the graph's flavour over its cache, on exporters/llm/attention.py's 3-D layout."""
        q, k, v = self.project(x)
        q, k = self.normalize(q, k)
        if rope is not None:
            q, k = apply_rope(q, rope, self.cfg.head_dim), apply_rope(k, rope, self.cfg.head_dim)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        out, k, v = attend(q, k, v)
        return self.o_proj(out), k, v


class MLP(nn.Module):
    """The gated MLP: down(act(gate(x)) * up(x)), act SiLU (SwiGLU) or tanh-GELU (GeGLU)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = activation(cfg)

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


def activation(cfg: DecoderConfig):
    name = cfg.raw.get("hidden_activation") or cfg.raw.get("hidden_act", "silu")
    if name == "silu":
        return F.silu
    if name in ("gelu_pytorch_tanh", "gelu_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    raise EdgertError(f"hidden activation {name!r} is not supported for {cfg.model_type} (silu, gelu_pytorch_tanh)")


class DecoderLayer(nn.Module):
    Attention, MLP, Norm = Attention, MLP, RMSNorm

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.self_attn = self.Attention(cfg)
        self.mlp = self.MLP(cfg)
        self.input_layernorm = self.Norm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = self.Norm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, attend):
        attn, k, v = self.self_attn(self.input_layernorm(x), rope, attend)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Backbone(nn.Module):
    def __init__(self, cfg: DecoderConfig, layer: type[nn.Module], norm: type[nn.Module]):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layer(cfg) for _ in range(cfg.num_layers))
        self.norm = norm(cfg.hidden_size, cfg.rms_norm_eps)


class LlamaDecoder(nn.Module):
    """``forward(input_ids, position_ids, attention_mask, logit_positions, *past)``
    -> ``(logits, hidden_states, *present)``; the bundle's decoder graph, one for prefill,
    decode and tree verification.

    ``attention_mask`` (B, S, P+S) bool: which past and new positions each new token sees.
    ``logit_positions`` (B, K) int64: the new-token positions whose logits are computed (the
    last one for prefill and decode, every node to verify a tree): a 32k-151k vocabulary head
    over a whole prompt would cost as much as the layers. ``hidden_states`` (B, S, hidden): the
    final-norm hidden state of every new token, for speculative heads. ``past``: 2 tensors per
    layer, (B, kv_heads, P, head_dim), key then value, P >= 0. Outputs are fp32 whatever the
    weights' dtype; the cache keeps the weights' dtype.

    A family subclass (:mod:`.families`) swaps ``Layer`` / ``Norm`` and overrides the hooks
    ``embed``, ``scale_logits``, ``rope_kind`` and ``tables``.
    """

    Layer, Norm = DecoderLayer, RMSNorm
    rope_types = ("default", "linear", "llama3")
    # layers whose input hidden states the graph also returns (after hidden_states), in this
    # order: what a speculative head asked for (contract.tap_name); none by default, at no cost
    taps: tuple[int, ...] = ()

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg, self.Layer, self.Norm)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.init_rope(cfg)

    def init_rope(self, cfg: DecoderConfig) -> None:
        """Register the inverse frequencies :meth:`tables` reads (``inv_freq``: the global table,
        the one speculative heads use too)."""
        self.register_buffer("inv_freq", rope_inverse_frequencies(cfg, supported=self.rope_types), persistent=False)

    def embed(self, input_ids):
        return self.model.embed_tokens(input_ids)

    def scale_logits(self, logits):
        return logits

    def rope_kind(self, layer: int) -> str | None:
        """Which rotary table layer ``layer`` reads (a key of :meth:`tables`), None for none."""
        return "global"

    def tables(self, position_ids, dtype) -> dict:
        """The rotary tables of this call, by kind."""
        return {"global": rope_tables(position_ids, self.inv_freq, dtype)}

    def forward(self, input_ids, position_ids, attention_mask, logit_positions, *past):
        masks = {"full": attention_mask}
        if self.cfg.sliding:
            masks["sliding"] = sliding_mask(attention_mask, self.cfg.sliding_window)
        types = self.cfg.layer_types

        def attend(i):  # past ‖ new in, present out: the ONNX Attention flavour
            mask = masks[types[i]]
            return lambda q, k, v: attention(q, k, v, mask, past[2 * i], past[2 * i + 1])

        return self.run(input_ids, position_ids, logit_positions, attend)

    def run(self, input_ids, position_ids, logit_positions, attend):
        """The body every flavour shares; ``attend(i)`` is layer i's attention over its cache."""
        x = self.embed(input_ids)
        tables = self.tables(position_ids, x.dtype)
        present, tapped = [], {}
        for i, layer in enumerate(self.model.layers):
            if i in self.taps:
                tapped[i] = x.float()
            kind = self.rope_kind(i)
            x, k, v = layer(x, None if kind is None else tables[kind], attend(i))
            present += [k, v]
        hidden = self.model.norm(x)
        picked = hidden.gather(1, logit_positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return (self.scale_logits(self.lm_head(picked).float()), hidden.float(), *[tapped[i] for i in self.taps],
                *present)

    def empty_cache(self, batch: int) -> list[torch.Tensor]:
        """A zero-length cache, the ``past`` of a prefill."""
        cfg, dtype = self.cfg, self.lm_head.weight.dtype
        return [torch.zeros(batch, cfg.num_kv_heads, 0, cfg.head_dim, dtype=dtype) for _ in range(2 * cfg.num_layers)]

    @classmethod
    def adapt_state(cls, state: dict) -> dict:
        """The checkpoint's tensors by this module's names (a family whose checkpoints nest the
        decoder, like Gemma 3's multimodal ones, renames here)."""
        return state


def family(cfg: DecoderConfig) -> type[LlamaDecoder]:
    """The decoder class of ``cfg.model_type``."""
    module, name = FAMILIES[cfg.model_type].split(":")
    return getattr(importlib.import_module(module, __package__), name)


def causal_mask(batch: int, new: int, past: int) -> torch.Tensor:
    """(B, new, past + new) bool: token i sees every past position and new tokens j <= i."""
    i = torch.arange(new)[:, None]
    j = torch.arange(past + new)[None, :]
    return (j <= i + past).expand(batch, new, past + new)


def load_decoder(directory: str | Path) -> LlamaDecoder:
    """Build the decoder of ``directory``'s family and load its safetensors, strictly."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg = DecoderConfig.from_dir(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise EdgertError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
        for shard in shards:  # names from the file: inside the checkpoint directory, nothing else
            if not safe_relative(shard) or not shard.endswith(".safetensors"):
                raise EdgertError(f"{index}: shard {shard!r} is not a .safetensors file name inside {directory}")
    elif (directory / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise EdgertError(f"{directory}: no weights (model.safetensors, or model.safetensors.index.json with its shards)")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not (directory / shard).is_file():
            raise EdgertError(f"{directory / shard}: shard listed in the index is missing")
        try:
            state.update(load_file(str(directory / shard)))
        except Exception as err:  # safetensors raises its own types for a damaged header
            raise EdgertError(f"{directory / shard}: not a readable safetensors file ({first_line(err)})") from None
    decoder = family(cfg)
    state = decoder.adapt_state(state)
    with torch.device("meta"):
        model = decoder(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    check_keys(expected, state, directory, "checkpoint", f"a {cfg.model_type} of its config.json", "tensors")
    model = decoder(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
