"""Medusa heads (Cai et al., "Medusa: Simple LLM Inference Acceleration Framework with Multiple
Decoding Heads", 2024), as the authors' code builds them.

Head k reads the base model's last hidden state h_t (after the final norm) and predicts the
token at t + k + 2 (the base LM head predicts t + 1): ``n`` ResBlocks ``x + SiLU(W x + b)``
then a vocabulary projection without bias. Choices kept from the reference code: the ResBlock
weight starts at zero (the block is then near identity), the projection starts as a copy of the
base ``lm_head``, and the ResBlocks of one head are distinct modules (the reference's
``[ResBlock] * n`` shares one module n times; with the default n = 1 the two agree).

Checkpoint layout: Medusa's ``medusa_lm_head.safetensors`` keys — ``{k}.{j}.linear.weight`` /
``.bias`` for ResBlock j of head k and ``{k}.{n}.weight`` for its projection.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgert.runtime.errors import EdgertError


class ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x):
        return x + F.silu(self.linear(x))


class MedusaHeads(nn.ModuleList):
    """``forward(hidden (..., H)) -> (..., num_heads, vocab)``."""

    def __init__(self, hidden: int, vocab: int, num_heads: int, num_layers: int = 1, lm_head: nn.Linear | None = None):
        heads = []
        for _ in range(num_heads):
            proj = nn.Linear(hidden, vocab, bias=False)
            if lm_head is not None:
                proj.weight.data.copy_(lm_head.weight.data)
            heads.append(nn.Sequential(*[ResBlock(hidden) for _ in range(num_layers)], proj))
        super().__init__(heads)
        self.num_layers = num_layers

    def forward(self, hidden):
        return torch.stack([head(hidden) for head in self], dim=-2)


class MedusaGraph(nn.Module):
    """The exported ``medusa`` graph: ``hidden_states`` (B, N, H) -> ``medusa_logits`` (B, N,
    heads, vocab). A graph of its own rather than extra outputs of the decoder: the heads are
    needed at one position per step (the accepted path's last token), and K vocabulary
    projections at every node of a 64-node tree would cost more than the decoder itself."""

    def __init__(self, heads: MedusaHeads):
        super().__init__()
        self.heads = heads

    def forward(self, hidden_states):
        weight = self.heads[0][-1].weight
        return self.heads(hidden_states.to(weight.dtype)).float()


def load_medusa(path: str | Path, hidden: int, vocab: int) -> MedusaHeads:
    """Heads from a Medusa checkpoint file (.safetensors or .pt), checked against the base model."""
    path = Path(path)
    if not path.is_file():
        raise EdgertError(f"{path}: Medusa heads file not found")
    from edgert.exporters.checkpoints import check_keys, read_state_dict

    state = read_state_dict(path)  # safetensors, or torch.load(weights_only=True): never code
    keys = [k for k in state if re.fullmatch(r"\d+\.\d+\.(linear\.)?(weight|bias)", k)]
    if not keys or len(keys) != len(state):
        odd = sorted(set(state) - set(keys))[:3]
        raise EdgertError(f"{path}: not a Medusa heads checkpoint (expected keys like '0.0.linear.weight', '0.1.weight'"
                          + (f"; found {odd}" if odd else "") + ")")
    num_heads = 1 + max(int(k.split(".")[0]) for k in keys)
    num_layers = max(int(k.split(".")[1]) for k in keys)  # the last index is the projection
    heads = MedusaHeads(hidden, vocab, num_heads, num_layers)
    check_keys(heads.state_dict(), state, path, "Medusa heads file", f"this model (hidden {hidden}, vocab {vocab})",
               "tensors")
    heads.load_state_dict({k: v.float() for k, v in state.items()})
    return heads.eval()


def save_medusa(heads: MedusaHeads, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in heads.state_dict().items()}, str(path))
