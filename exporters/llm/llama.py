"""Llama-family decoders (Llama, Qwen2, Mistral) in plain PyTorch, loaded from a local
Hugging Face checkpoint directory (config.json + model.safetensors or sharded safetensors with
its index). transformers is not needed here; it is the reference the tests compare against.

Architecture, as the configs describe it: token embedding; N pre-norm decoder layers of
grouped-query self-attention with rotary position embeddings (rope_scaling: none/default or
llama3) and a SwiGLU MLP; RMSNorm (statistics in fp32); an LM head, tied to the embedding when
``tie_word_embeddings``. Qwen2 adds biases to q/k/v. Mistral's sliding window only matters
beyond ``sliding_window`` tokens and is not applied (contexts longer than it are refused).
Parameter names are the checkpoints' own (``model.layers.0.self_attn.q_proj.weight``...).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgert.runtime.bundle import safe_relative
from edgert.runtime.errors import EdgertError, first_line
from edgert.runtime.schema import Bool, Int, Num, Obj, Opt, SchemaError, Str

from ..checkpoints import check_keys
from .attention import attention
from .rotary import rotary

SUPPORTED = ("llama", "qwen2", "mistral")
# config.json is the user's (or a download's): the fields read here, typed and bounded (a layer
# count of a billion would build a billion modules before any weight is checked).
_SIZE = Int(1, 1 << 20)
CONFIG = Obj({"model_type": Str(max_len=64), "vocab_size": Int(1, 1 << 24), "hidden_size": Int(1, 1 << 16),
              "intermediate_size": _SIZE, "num_hidden_layers": Int(1, 1024), "num_attention_heads": Int(1, 1024),
              "num_key_value_heads": Opt(Int(1, 1024)), "head_dim": Opt(Int(1, 1024)), "rms_norm_eps": Num(1e-12, 1),
              "rope_theta": Num(1, 1e12), "max_position_embeddings": Int(1, 1 << 24),
              "sliding_window": Opt(Int(1, 1 << 24)), "rope_scaling": Opt(Obj()), "rope_parameters": Opt(Obj()),
              "tie_word_embeddings": Bool(), "attention_bias": Bool(), "mlp_bias": Bool(),
              "use_sliding_window": Bool()})


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

    @classmethod
    def from_dir(cls, directory: str | Path) -> "DecoderConfig":
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise EdgertError(f"{path}: missing; a checkpoint directory needs config.json")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EdgertError(f"{path}: not valid JSON ({err})") from None
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
            if rope_scaling is None and isinstance(cfg.get("rope_parameters"), dict):  # transformers >= 5 naming
                params = cfg["rope_parameters"]
                rope_scaling = params if params.get("rope_type", "default") != "default" else None
            theta = cfg.get("rope_theta", (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0))
            kv_heads = cfg.get("num_key_value_heads") or heads
            if heads % kv_heads:
                raise EdgertError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
            return cls(
                model_type=model_type, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                intermediate_size=cfg["intermediate_size"], num_layers=cfg["num_hidden_layers"], num_heads=heads,
                num_kv_heads=cfg.get("num_key_value_heads") or heads,
                head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=rope_scaling,
                max_position_embeddings=cfg.get("max_position_embeddings", 2048),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)),
                sliding_window=cfg.get("sliding_window") if cfg.get("use_sliding_window", model_type == "mistral") else None,
            )
        except KeyError as err:
            raise EdgertError(f"{path}: missing field {err.args[0]!r}") from None


def rope_inverse_frequencies(cfg: DecoderConfig) -> torch.Tensor:
    """Rotary inverse frequencies, with Llama 3's frequency-dependent scaling when configured."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = cfg.rope_scaling
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq.float()
    if kind != "llama3":
        raise EdgertError(f"rope_scaling type {kind!r} is not supported (supported: default, llama3)")
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_context = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled).float()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_tables(position_ids: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos and sin of each new token's rotary angles, (B, S, head_dim/2): what ``rotary`` reads.
    The angles in fp32 whatever the weights' dtype (positions in the thousands)."""
    angles = position_ids[..., None].float() * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=cfg.model_type == "llama" and cfg.qkv_bias)

    def forward(self, x, cos, sin, attend):
        """x (B, S, hidden); ``attend(q, k, v)`` -> (output (B, S, Hq*D), key state, value state):
        the attention op of the graph's flavour over its cache, on exporters/llm/attention.py's
        3-D layout. Returns output and the states."""
        q = rotary(self.q_proj(x), cos, sin)
        k = rotary(self.k_proj(x), cos, sin)
        out, k, v = attend(q, k, self.v_proj(x))
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, attend):
        attn, k, v = self.self_attn(self.input_layernorm(x), cos, sin, attend)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Backbone(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


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
    """

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inverse_frequencies(cfg), persistent=False)

    def forward(self, input_ids, position_ids, attention_mask, logit_positions, *past):
        def attend(i):  # past ‖ new in, present out: the ONNX Attention flavour
            return lambda q, k, v: attention(q, k, v, attention_mask, past[2 * i], past[2 * i + 1])

        return self.run(input_ids, position_ids, logit_positions, attend)

    def run(self, input_ids, position_ids, logit_positions, attend):
        """The body every flavour shares; ``attend(i)`` is layer i's attention over its cache."""
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_tables(position_ids, self.inv_freq, x.dtype)
        present = []
        for i, layer in enumerate(self.model.layers):
            x, k, v = layer(x, cos, sin, attend(i))
            present += [k, v]
        hidden = self.model.norm(x)
        picked = hidden.gather(1, logit_positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return (self.lm_head(picked).float(), hidden.float(), *present)

    def empty_cache(self, batch: int) -> list[torch.Tensor]:
        """A zero-length cache, the ``past`` of a prefill."""
        cfg, dtype = self.cfg, self.lm_head.weight.dtype
        return [torch.zeros(batch, cfg.num_kv_heads, 0, cfg.head_dim, dtype=dtype) for _ in range(2 * cfg.num_layers)]


def causal_mask(batch: int, new: int, past: int) -> torch.Tensor:
    """(B, new, past + new) bool: token i sees every past position and new tokens j <= i."""
    i = torch.arange(new)[:, None]
    j = torch.arange(past + new)[None, :]
    return (j <= i + past).expand(batch, new, past + new)


def load_decoder(directory: str | Path) -> LlamaDecoder:
    """Build the decoder from ``directory`` and load its safetensors, strictly."""
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
    with torch.device("meta"):
        model = LlamaDecoder(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    check_keys(expected, state, directory, "checkpoint", f"a {cfg.model_type} of its config.json", "tensors")
    model = LlamaDecoder(cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
