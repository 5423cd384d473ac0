"""The EAGLE-3 draft head in PyTorch (imported by export and training only: torch lives here).

Li et al., "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
Training-Time Test", NeurIPS 2025; the layout and the math as SafeAILab/EAGLE's
``eagle/model/cnets.py`` (inference) and ``eagle/traineagle3/cnets.py`` (training):

* ``fc``: Linear(3·hidden → hidden, no bias) fuses the target's hidden states entering layers
  2, L/2 and L−3 (concatenated in that order);
* ``midlayer``: one decoder layer whose attention reads [RMSNorm(embedding of the token) ‖
  RMSNorm(hidden)] (2·hidden wide: ``input_layernorm`` on the embedding, ``hidden_norm`` on the
  state), with the residual from the (unnormalised) hidden state; then the usual
  post-attention norm and SwiGLU MLP. Its attention has the target's heads, kv heads and head
  dim, and the draft's own RoPE (below);
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

RoPE: the official draft layer builds its rotary embedding from the head's own ``config.json``
(``cnets.py`` ``_init_rope``: base ``rope_theta`` if the config has one, else 10000; a
``rope_scaling`` of type ``linear`` divides positions by its factor, at base 10000 whatever
``rope_theta`` says; ``dynamic`` NTK; nothing else), and ``traineagle3`` trains at 10000
unscaled. The released Llama-3.1 heads carry no ``rope_theta``, so they rotate at 10000
unscaled, not with the target's 500000 and Llama 3 scaling; read the same way here, from the
``config.json`` beside the head, the EAGLE default when there is none. Dynamic NTK changes
the frequencies with the sequence length and is refused. ``edgert train eagle`` trains with the
target's own table and says so in the file's metadata (``edgert_rope``), which then wins.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgert.exporters.checkpoints import check_keys
from edgert.exporters.llm.attention import attention
from edgert.exporters.llm.llama import RMSNorm, apply_rope, rope_inverse_frequencies, rope_tables
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
    """``rope``: the draft layer's rotary settings (see the module's docstring), ``None`` for
    the target's own table; its inverse frequencies are the ``inv_freq`` buffer (``None``: the
    target's)."""

    def __init__(self, cfg, draft_vocab: int | None = None, rope: dict | None = None):
        super().__init__()
        self.cfg, self.rope = cfg, rope
        self.register_buffer("inv_freq", None if rope is None else rope_inverse_frequencies(
            cfg, scaling=rope["scaling"] or {"rope_type": "default"}, theta=rope["theta"], supported=("default", "linear")),
                             persistent=False)
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
        inv_freq = self.target.inv_freq if self.draft.inv_freq is None else self.draft.inv_freq
        rope = rope_tables(position_ids, inv_freq, hidden.dtype)
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


EAGLE_ROPE_THETA = 10000.0  # cnets.py LlamaRotaryEmbedding's default base, and traineagle3's only one
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # a released head's directory


def head_files(path: Path) -> tuple[Path, Path | None]:
    """The weights and the ``config.json`` (or None) of a head named by its file or directory."""
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if len(found) != 1:
            raise EdgertError(f"{path}: an EAGLE head directory holds exactly one of {', '.join(WEIGHT_FILES)}; "
                              f"found {len(found) or 'none'}")
        path = found[0]
    elif not path.is_file():
        raise EdgertError(f"{path}: EAGLE head file not found")
    config = path.parent / "config.json"
    return path, (config if config.is_file() else None)


def _edgert_rope(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:  # read_state_dict has read it already
        return (f.metadata() or {}).get("edgert_rope")


def draft_rope(path: Path, config: Path | None, cfg) -> dict | None:
    """The draft layer's rotary settings as the official code builds them (module docstring):
    ``{"theta", "scaling", "from"}``, or None for a head ``edgert train eagle`` trained with the
    target's own table."""
    if _edgert_rope(path) == "target":
        return None
    if config is None:
        return {"theta": EAGLE_ROPE_THETA, "scaling": None,
                "from": f"EAGLE's default (no config.json beside {path.name})"}
    if config.stat().st_size > 1 << 20:
        raise EdgertError(f"{config}: {config.stat().st_size} bytes; an EAGLE head's config.json is a few hundred")
    try:
        head = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise EdgertError(f"{config}: not JSON: {first_line(err)}") from None
    if not isinstance(head, dict):
        raise EdgertError(f"{config}: expected a JSON object, got {type(head).__name__}")
    layers = head.get("num_hidden_layers", 1)
    if layers != 1:
        raise EdgertError(f"{config}: describes a model of {layers} layers, not an EAGLE head (1 layer); keep the head "
                          "in its own directory with its own config.json")
    heads, hidden = head.get("num_attention_heads"), head.get("hidden_size")
    if isinstance(heads, int) and isinstance(hidden, int) and heads > 0 and hidden // heads != cfg.head_dim:
        raise EdgertError(f"{config}: the draft rotates head dim hidden_size / num_attention_heads = {hidden}/{heads}; "
                          f"this model's head dim is {cfg.head_dim}")
    theta = head.get("rope_theta", EAGLE_ROPE_THETA)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 1:
        raise EdgertError(f"{config}: rope_theta must be a number above 1, got {theta!r}")
    scaling = head.get("rope_scaling")
    if scaling is None:
        return {"theta": float(theta), "scaling": None, "from": str(config.name)}
    kind = scaling.get("type") if isinstance(scaling, dict) else None
    if kind != "linear":
        raise EdgertError(f"{config}: rope_scaling {json.dumps(scaling)[:80]}: the EAGLE draft rotates unscaled or with "
                          "'type': 'linear' scaling; edgert cannot reproduce "
                          + ("dynamic NTK (its frequencies change with the sequence length)" if kind == "dynamic"
                             else "this (the official code refuses it too)"))
    factor = scaling.get("factor")
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor <= 0:
        raise EdgertError(f"{config}: rope_scaling factor must be a positive number, got {factor!r}")
    # cnets.py builds the linear-scaled embedding at its default base: rope_theta is not read then
    return {"theta": EAGLE_ROPE_THETA, "scaling": {"type": "linear", "factor": float(factor)}, "from": str(config.name)}


def load_eagle(path: str | Path, cfg) -> EagleDraft:
    """An EAGLE-3 head from ``path`` (the released heads' layout: a directory with its
    config.json, or the weights file beside it; or the one safetensors file ``edgert train
    eagle`` writes), checked against the target's config ``cfg``."""
    path, config = head_files(Path(path))
    from edgert.exporters.checkpoints import read_state_dict

    state = read_state_dict(path)  # safetensors, or torch.load(weights_only=True): never code
    if "fc.weight" not in state or "lm_head.weight" not in state:
        raise EdgertError(f"{path}: not an EAGLE-3 head (expected fc.weight, midlayer.*, norm.weight, lm_head.weight, "
                          "d2t, t2d)")
    fc = state["fc.weight"]
    if tuple(fc.shape) != (cfg.hidden_size, 3 * cfg.hidden_size):
        raise EdgertError(f"{path}: an EAGLE head for hidden size {fc.shape[0]} (fc.weight {list(fc.shape)}); this model's "
                          f"hidden size is {cfg.hidden_size}, so fc.weight must be [{cfg.hidden_size}, {3 * cfg.hidden_size}]")
    draft = EagleDraft(cfg, state["lm_head.weight"].shape[0], draft_rope(path, config, cfg))
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


def save_eagle(draft: EagleDraft, path: str | Path) -> None:
    """The released layout; a head that rotates with the target's table says so (``edgert_rope``)."""
    from safetensors.torch import save_file

    metadata = {"edgert_rope": "target"} if draft.rope is None else None
    save_file({k: v.detach().contiguous() for k, v in draft.state_dict().items()}, str(path), metadata=metadata)
