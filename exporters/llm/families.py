"""The decoder families beyond Llama / Qwen2 / Mistral, each a small subclass of
:class:`~.llama.LlamaDecoder` that says only how it differs, faithful to transformers 5.x's
implementation of the same ``model_type``:

* **Qwen3** (``qwen3``; Yang et al., Qwen3 Technical Report, 2025): per-head RMSNorm on q and k
  before RoPE (``q_norm``, ``k_norm``), no q/k/v bias by default, ``head_dim`` from the config
  independent of hidden / heads; tied embeddings on the small sizes come from the config.
* **SmolLM3** (``smollm3``; Hugging Face, SmolLM3, 2025): Llama with RoPE skipped on the layers
  ``no_rope_layers`` marks 0 (every 4th by default: NoPE layers).
* **Granite** (``granite``; IBM, Granite 3.0 language models, 2024): Llama with an embedding
  multiplier, a residual multiplier on both branches, ``attention_multiplier`` as the softmax
  scale, and logits divided by ``logits_scaling``.
* **Phi-3 / Phi-4-mini** (``phi3``; Abdin et al., Phi-3 Technical Report, 2024; Microsoft,
  Phi-4-Mini, 2025): fused ``qkv_proj`` and ``gate_up_proj``; LongRoPE (``longrope``, first
  called ``su``): short and long per-frequency factors, the long ones for a whole call once
  its largest position reaches past ``original_max_position_embeddings`` (transformers' rule);
  the bundle records that switch (``rope_switch``) and the runtime computes the cache again
  when a call first crosses it, as transformers' Phi-3 generation does; cos and sin scaled by
  the attention factor sqrt(1 + ln(factor) / ln(original)); ``partial_rotary_factor`` rotates
  the first part of each head only; the sliding window on every layer when the config sets one.
* **Gemma 3** (``gemma3_text``, and the text part of ``gemma3`` checkpoints; Gemma Team, Gemma 3
  Technical Report, 2025): embeddings times sqrt(hidden) in the model's dtype, RMSNorm of the
  (1 + weight) form computed in fp32, four norms per layer (around attention and around the
  feed-forward), GeGLU (tanh GELU), q/k norms, softmax scale ``query_pre_attn_scalar``^-1/2,
  local sliding-window layers (``layer_types``) with their own RoPE base interleaved with global
  ones (whose RoPE may be linearly scaled), tied LM head, optional final logit soft-capping.

Choices that hold for all: a softmax scale other than 1/sqrt(head_dim) multiplies q before the
attention op (the op's contract, and the TensorRT plugin's, stay one); sliding windows are
masked, the cache keeps every position (see :func:`~.llama.sliding_mask`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgert.runtime.errors import EdgertError

from .llama import (MLP, Attention, DecoderConfig, DecoderLayer, LlamaDecoder, RMSNorm, activation, head_norm,
                    rope_inverse_frequencies, rope_kind_of, rope_tables)


# ---- Qwen3 ---------------------------------------------------------------------------------------

class QKNormAttention(Attention):
    """q and k normalised per head before RoPE (Qwen3, Gemma 3)."""

    Norm = RMSNorm

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.q_norm = self.Norm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = self.Norm(cfg.head_dim, cfg.rms_norm_eps)

    def normalize(self, q, k):
        return head_norm(self.q_norm, q, self.cfg.head_dim), head_norm(self.k_norm, k, self.cfg.head_dim)


class Qwen3Layer(DecoderLayer):
    Attention = QKNormAttention


class Qwen3Decoder(LlamaDecoder):
    Layer = Qwen3Layer


# ---- SmolLM3 -------------------------------------------------------------------------------------

class SmolLM3Decoder(LlamaDecoder):
    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        interval = int(cfg.raw.get("no_rope_layer_interval", 4))
        uses = cfg.raw.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(cfg.num_layers)]
        if len(uses) != cfg.num_layers:
            raise EdgertError(f"no_rope_layers has {len(uses)} entries for {cfg.num_layers} layers")
        self.uses_rope = [bool(u) for u in uses]

    def rope_kind(self, layer: int):
        return "global" if self.uses_rope[layer] else None


# ---- Granite -------------------------------------------------------------------------------------

class GraniteAttention(Attention):
    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.q_scale = float(cfg.raw.get("attention_multiplier", 1.0)) * math.sqrt(cfg.head_dim)


class GraniteLayer(DecoderLayer):
    Attention = GraniteAttention

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.residual_multiplier = float(cfg.raw.get("residual_multiplier", 1.0))

    def forward(self, x, rope, attend):
        attn, k, v = self.self_attn(self.input_layernorm(x), rope, attend)
        x = x + attn * self.residual_multiplier
        return x + self.mlp(self.post_attention_layernorm(x)) * self.residual_multiplier, k, v


class GraniteDecoder(LlamaDecoder):
    Layer = GraniteLayer

    def embed(self, input_ids):
        return self.model.embed_tokens(input_ids) * float(self.cfg.raw.get("embedding_multiplier", 1.0))

    def scale_logits(self, logits):
        return logits / float(self.cfg.raw.get("logits_scaling", 1.0))


# ---- Phi-3 / Phi-4-mini --------------------------------------------------------------------------

class Phi3Attention(Attention):
    def __init__(self, cfg: DecoderConfig):
        nn.Module.__init__(self)
        self.cfg, self.q_scale = cfg, 1.0
        hd = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def project(self, x):
        hd = self.cfg.head_dim
        return self.qkv_proj(x).split([self.cfg.num_heads * hd, self.cfg.num_kv_heads * hd, self.cfg.num_kv_heads * hd],
                                      dim=-1)


class Phi3MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = activation(cfg)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * self.act(gate))


class Phi3Layer(DecoderLayer):
    Attention, MLP = Phi3Attention, Phi3MLP


class Phi3Decoder(LlamaDecoder):
    Layer = Phi3Layer
    rope_types = ("default", "longrope")

    def init_rope(self, cfg: DecoderConfig) -> None:
        raw, scaling = cfg.raw, cfg.rope_scaling or {}
        factor = (raw.get("rope_parameters") or {}).get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
        dim = int(cfg.head_dim * float(factor))
        if dim < 2 or dim % 2:
            raise EdgertError(f"partial_rotary_factor {factor} leaves {dim} rotated dims of {cfg.head_dim}; expected an "
                              "even number")
        self.register_buffer("inv_freq", rope_inverse_frequencies(cfg, dim=dim, supported=self.rope_types),
                             persistent=False)
        self.long, self.attention_factor = rope_kind_of(scaling) == "longrope", 1.0
        if self.long:
            self.switch = int(scaling.get("original_max_position_embeddings") or raw["original_max_position_embeddings"])
            self.register_buffer("long_inv_freq", rope_inverse_frequencies(cfg, dim=dim, supported=self.rope_types,
                                                                           long=True), persistent=False)
            scale = scaling.get("factor") or cfg.max_position_embeddings / self.switch
            self.attention_factor = float(scaling.get("attention_factor") or
                                          (1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(self.switch))))

    def tables(self, position_ids, dtype) -> dict:
        inv_freq = self.inv_freq
        if self.long:  # one set for the whole call, chosen by its largest position (transformers' rule)
            inv_freq = torch.where(position_ids.max() + 1 > self.switch, self.long_inv_freq, self.inv_freq)
        return {"global": rope_tables(position_ids, inv_freq, dtype, self.attention_factor)}


# ---- Gemma 3 -------------------------------------------------------------------------------------

class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), all in fp32, then back to x's dtype (Gemma's form)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        h = x.float()
        square = h.pow(2).mean(-1, keepdim=True) + self.eps
        # Below fp32 written with a division: the exporter's RMSNormalization fusion turns the
        # rsqrt form of this fp32-inside norm into one node with an fp16 input and a float
        # output, which ONNX rejects; the division (1 ulp of fp32 apart) is left as it is.
        h = h * torch.rsqrt(square) if x.dtype == torch.float32 else h / torch.sqrt(square)
        return (h * (1.0 + self.weight.float())).type_as(x)


class Gemma3Attention(QKNormAttention):
    Norm = GemmaRMSNorm

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.q_scale = float(cfg.raw.get("query_pre_attn_scalar", cfg.head_dim)) ** -0.5 * math.sqrt(cfg.head_dim)


class Gemma3Layer(DecoderLayer):
    Attention, MLP, Norm = Gemma3Attention, MLP, GemmaRMSNorm

    def __init__(self, cfg: DecoderConfig):
        super().__init__(cfg)
        self.pre_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, attend):
        attn, k, v = self.self_attn(self.input_layernorm(x), rope, attend)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x))), k, v


class Gemma3Decoder(LlamaDecoder):
    Layer, Norm = Gemma3Layer, GemmaRMSNorm
    rope_types = ("default", "linear")

    def __init__(self, cfg: DecoderConfig):
        raw = cfg.raw
        if raw.get("use_bidirectional_attention"):
            raise EdgertError("use_bidirectional_attention: this Gemma 3 is an encoder (bidirectional), not a decoder")
        if raw.get("attn_logit_softcapping") is not None:
            raise EdgertError("attn_logit_softcapping is not supported (Gemma 3 checkpoints do not use it)")
        super().__init__(cfg)
        self.register_buffer("embed_scale", torch.tensor(cfg.hidden_size ** 0.5), persistent=False)
        self.softcap = raw.get("final_logit_softcapping")

    def init_rope(self, cfg: DecoderConfig) -> None:
        super().init_rope(cfg)  # the global layers': rope_theta, with its scaling (linear on the 4B-27B)
        local = (cfg.raw.get("rope_parameters") or {}).get("sliding_attention") or {}
        theta = float(local.get("rope_theta", cfg.raw.get("rope_local_base_freq", 10000.0)))
        scaling = local if local.get("rope_type", "default") != "default" else {}
        self.register_buffer("local_inv_freq", rope_inverse_frequencies(cfg, scaling=scaling, theta=theta,
                                                                        supported=self.rope_types), persistent=False)

    def embed(self, input_ids):
        return self.model.embed_tokens(input_ids) * self.embed_scale.to(self.model.embed_tokens.weight.dtype)

    def scale_logits(self, logits):
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap

    def rope_kind(self, layer: int):
        return "local" if self.cfg.layer_types[layer] == "sliding" else "global"

    def tables(self, position_ids, dtype) -> dict:
        return {"global": rope_tables(position_ids, self.inv_freq, dtype),
                "local": rope_tables(position_ids, self.local_inv_freq, dtype)}

    @classmethod
    def adapt_state(cls, state: dict) -> dict:
        """A multimodal ``gemma3`` checkpoint's text part, under the text model's names; its
        vision tower and projector are left out."""
        renamed = {}
        for key, value in state.items():
            for old, new in (("model.language_model.", "model."), ("language_model.model.", "model."),
                             ("language_model.lm_head.", "lm_head.")):
                if key.startswith(old):
                    key = new + key[len(old):]
                    break
            else:
                if key.startswith(("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
                                   "model.multi_modal_projector.")):
                    continue
            renamed[key] = value
        return renamed
