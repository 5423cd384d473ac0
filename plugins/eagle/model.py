"""The EAGLE-3 draft head in PyTorch (imported by export and training only: torch lives here).

Li et al., "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
Training-Time Test", NeurIPS 2025; the layout and the math as SafeAILab/EAGLE's
``eagle/model/cnets.py`` (inference) and ``eagle/traineagle3/cnets.py`` (training):

* ``fc``: Linear(3·hidden → hidden, no bias) fuses the target's hidden states entering layers
  2, L/2 and L−3 (concatenated in that order);
* ``midlayer``: one decoder layer whose attention reads [RMSNorm(embedding of the token) ‖
  RMSNorm(hidden)] (2·hidden wide: ``input_layernorm`` on the embedding, ``hidden_norm`` on the
  state), with the residual from the (unnormalised) hidden state; then the usual
  post-attention norm and SwiGLU MLP. Its attention has the target's heads, kv heads, head dim
  and RoPE;
* ``norm`` and ``lm_head`` (its own; ``draft_vocab_size`` rows, with ``d2t``: target id = draft
  id + d2t[draft id], and ``t2d``: which target ids the draft vocabulary holds);
* the token embedding is the target's own (not part of the head's checkpoint).

Checkpoint: the released EAGLE-3 heads' state_dict keys — ``fc.weight``, ``midlayer.*``,
``norm.weight``, ``lm_head.weight``, ``d2t``, ``t2d`` — which ``edgert train eagle`` writes
too (safetensors; the training setup in its metadata). Choice: ``edgert train eagle`` keeps the
target's full vocabulary (d2t all zero, t2d all true): on the small models edgert targets the
vocabulary projection is not what bounds a draft step, and a bundle then needs no id map; its
``norm`` and ``lm_head`` are the target's own, frozen while the rest trains.
Official heads with a reduced vocabulary are loaded as they are; the map goes to the manifest.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgert.exporters.checkpoints import check_keys
from edgert.exporters.llm.attention import attention
from edgert.exporters.llm.llama import RMSNorm, apply_rope, rope_tables
from edgert.runtime.errors import EdgertError, first_line


class EagleAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        hd, wide = cfg.head_dim, 2 * cfg.hidden_size
        self.q_proj = nn.Linear(wide, cfg.num_heads * hd, bias=False)
        self.k_proj = nn.Linear(wide, cfg.num_kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(wide, cfg.num_kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * hd, cfg.hidden_size, bias=False)

    def forward(self, x, rope, attend):
        hd = self.cfg.head_dim
        q, k = apply_rope(self.q_proj(x), rope, hd), apply_rope(self.k_proj(x), rope, hd)
        out, k, v = attend(q, k, self.v_proj(x))
        return self.o_proj(out), k, v


class EagleMLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class EagleLayer(nn.Module):
    """cnets.py's ``LlamaDecoderLayeremb``."""

    def __init__(self, cfg):
        super().__init__()
        self.self_attn = EagleAttention(cfg)
        self.mlp = EagleMLP(cfg)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, embedding, hidden, rope, attend):
        x = torch.cat([self.input_layernorm(embedding), self.hidden_norm(hidden)], dim=-1)
        attn, k, v = self.self_attn(x, rope, attend)
        hidden = hidden + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden)), k, v


class EagleDraft(nn.Module):
    def __init__(self, cfg, draft_vocab: int | None = None):
        super().__init__()
        self.cfg = cfg
        vocab = cfg.vocab_size if draft_vocab is None else draft_vocab
        self.fc = nn.Linear(3 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = EagleLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, vocab, bias=False)
        self.register_buffer("d2t", torch.zeros(vocab, dtype=torch.long))
        self.register_buffer("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool))

    @property
    def draft_vocab(self) -> int:
        return self.lm_head.weight.shape[0]

    def logits(self, hidden):
        return self.lm_head(self.norm(hidden))


class FuseGraph(nn.Module):
    """The exported ``eagle_fc`` graph: ``taps`` (B, S, 3·hidden), the target's three hidden
    states side by side -> ``hidden_states`` (B, S, hidden), the draft's input state."""

    def __init__(self, draft: EagleDraft):
        super().__init__()
        self.draft = draft

    def forward(self, taps):
        weight = self.draft.fc.weight
        return self.draft.fc(taps.to(weight.dtype)).float()


class DraftGraph(nn.Module):
    """The exported ``eagle`` graph, on the decoder contract with one layer:
    ``forward(input_ids, position_ids, attention_mask, logit_positions, hidden_states, past_key,
    past_value)`` -> ``(logits, eagle_hidden_states, present_key, present_value)``. At position t
    it reads the state of t (the fused target states, or the draft's own output at t's parent)
    with the embedding of the token that follows t, and its logits (over the draft vocabulary)
    score the token after that one."""

    def __init__(self, target, draft: EagleDraft):
        super().__init__()
        self.target, self.draft = target, draft

    def forward(self, input_ids, position_ids, attention_mask, logit_positions, hidden_states, past_key, past_value):
        return self.run(input_ids, position_ids, logit_positions, hidden_states,
                        lambda q, k, v: attention(q, k, v, attention_mask, past_key, past_value))

    def run(self, input_ids, position_ids, logit_positions, hidden_states, attend):
        """The body both flavours share; ``attend(q, k, v)``: the layer's attention over its cache."""
        embedding = self.target.embed(input_ids)
        hidden = hidden_states.to(embedding.dtype)
        rope = rope_tables(position_ids, self.target.inv_freq, hidden.dtype)
        hidden, k, v = self.draft.midlayer(embedding, hidden, rope, attend)
        picked = hidden.gather(1, logit_positions[..., None].expand(-1, -1, hidden.shape[-1]))
        return self.draft.logits(picked).float(), hidden.float(), k, v


class CacheDraftGraph(nn.Module):
    """The TensorRT flavour of :class:`DraftGraph`: ``forward(input_ids, position_ids,
    past_lengths, tree_mask, logit_positions, hidden_states, k_cache, v_cache)``, its attention
    edgert's plugin over a fixed-capacity, in-place cache (the decoder's own flavour)."""

    def __init__(self, draft_graph: DraftGraph):
        super().__init__()
        self.draft_graph = draft_graph  # not "graph": torch.export's module has its own

    def forward(self, input_ids, position_ids, past_lengths, tree_mask, logit_positions, hidden_states, k_cache, v_cache):
        from edgert.exporters.llm.trt_flavour import cache_attend

        return self.draft_graph.run(input_ids, position_ids, logit_positions, hidden_states,
                              cache_attend([k_cache, v_cache], past_lengths, tree_mask)(0))


def load_eagle(path: str | Path, cfg) -> EagleDraft:
    """An EAGLE-3 head from ``path`` (the released heads' safetensors layout, which ``edgert
    train eagle`` writes too), checked against the target's config ``cfg``."""
    path = Path(path)
    if not path.is_file():
        raise EdgertError(f"{path}: EAGLE head file not found")
    from edgert.exporters.checkpoints import read_state_dict

    state = read_state_dict(path)  # safetensors, or torch.load(weights_only=True): never code
    if "fc.weight" not in state or "lm_head.weight" not in state:
        raise EdgertError(f"{path}: not an EAGLE-3 head (expected fc.weight, midlayer.*, norm.weight, lm_head.weight, "
                          "d2t, t2d)")
    fc = state["fc.weight"]
    if tuple(fc.shape) != (cfg.hidden_size, 3 * cfg.hidden_size):
        raise EdgertError(f"{path}: an EAGLE head for hidden size {fc.shape[0]} (fc.weight {list(fc.shape)}); this model's "
                          f"hidden size is {cfg.hidden_size}, so fc.weight must be [{cfg.hidden_size}, {3 * cfg.hidden_size}]")
    draft = EagleDraft(cfg, state["lm_head.weight"].shape[0])
    state = dict(state)
    state.setdefault("d2t", torch.zeros(draft.draft_vocab, dtype=torch.long))  # a full-vocabulary head may omit the maps
    state.setdefault("t2d", torch.ones(cfg.vocab_size, dtype=torch.bool))
    state = {k: v for k, v in state.items() if k != "embed_tokens.weight"}  # some releases carry the target's
    check_keys(draft.state_dict(), state, path, "EAGLE head", f"this model (hidden {cfg.hidden_size}, heads "
               f"{cfg.num_heads}/{cfg.num_kv_heads}, vocab {cfg.vocab_size})", "tensors")
    d2t = state["d2t"].long()
    mapped = torch.arange(draft.draft_vocab) + d2t
    if mapped.min() < 0 or mapped.max() >= cfg.vocab_size:
        raise EdgertError(f"{path}: d2t maps draft ids outside the target's vocabulary (0..{cfg.vocab_size - 1})")
    try:
        draft.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    except RuntimeError as err:
        raise EdgertError(f"{path}: {first_line(err)}") from None
    return draft.eval()


def save_eagle(draft: EagleDraft, path: str | Path, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in draft.state_dict().items()}, str(path), metadata=metadata)
