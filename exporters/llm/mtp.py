"""Multi-token prediction module in the style of DeepSeek-V3 (DeepSeek-AI, "DeepSeek-V3 Technical
Report", 2024, §2.2), trained on a frozen base model and used as its draft.

One module: ``h' = eh_proj([enorm(Emb(t_{i+1})); hnorm(h_i)])`` (embedding first, as vLLM's
DeepSeekMultiTokenPredictorLayer), one full transformer block (the base model's own block type:
RMSNorm, GQA attention with RoPE, SwiGLU) over h', and the shared output head
(``shared_head.norm`` then the base model's lm_head, as in the released weights). Position i
reads the base model's final hidden state h_i and the next token t_{i+1}; it predicts t_{i+2}.
Deeper drafts chain the module on its own output hidden state (as vLLM does when more drafts
are asked than there are MTP layers); the embedding and the head are the base model's.

The block has its own KV cache, so the exported ``mtp`` graph has the decoder graph's I/O with
one layer, plus the ``hidden_states`` input; its ``hidden_states`` output is the block's output
(before ``shared_head.norm``), the h of the next depth.

Checkpoint keys follow DeepSeek-V3's layer-61 layout without the prefix: ``enorm.weight``,
``hnorm.weight``, ``eh_proj.weight``, ``self_attn.*``, ``mlp.*``, ``input_layernorm.weight``,
``post_attention_layernorm.weight``, ``shared_head.norm.weight``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgert.runtime.errors import EdgertError

from ..checkpoints import check_keys
from .attention import attention
from .llama import DecoderConfig, DecoderLayer, LlamaDecoder, RMSNorm, rope_tables


class SharedHead(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPModule(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        block = DecoderLayer(cfg)  # the block's parameters live at the top level, as in DeepSeek's layout
        self.self_attn, self.mlp = block.self_attn, block.mlp
        self.input_layernorm, self.post_attention_layernorm = block.input_layernorm, block.post_attention_layernorm
        self.shared_head = SharedHead(cfg)

    def block(self, x, cos, sin, mask, past_key, past_value):
        attn, k, v = self.self_attn(self.input_layernorm(x), (cos, sin),
                                    lambda q, k, v: attention(q, k, v, mask, past_key, past_value))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class MTPGraph(nn.Module):
    """The exported graph: ``forward(input_ids, position_ids, attention_mask, logit_positions,
    hidden_states, past_key, past_value)`` -> ``(logits, hidden_states, present_key,
    present_value)``; ``input_ids`` are the next tokens t_{i+1}, ``hidden_states`` the h_i."""

    def __init__(self, base: LlamaDecoder, mtp: MTPModule):
        super().__init__()
        self.base, self.mtp = base, mtp

    def forward(self, input_ids, position_ids, attention_mask, logit_positions, hidden_states, past_key, past_value):
        base, mtp = self.base, self.mtp
        emb = base.model.embed_tokens(input_ids)
        x = mtp.eh_proj(torch.cat([mtp.enorm(emb), mtp.hnorm(hidden_states.to(emb.dtype))], dim=-1))
        cos, sin = rope_tables(position_ids, base.inv_freq, x.dtype)
        x, k, v = mtp.block(x, cos, sin, attention_mask, past_key, past_value)
        picked = x.gather(1, logit_positions[..., None].expand(-1, -1, x.shape[-1]))
        return base.lm_head(mtp.shared_head.norm(picked)).float(), x.float(), k, v


def load_mtp(path: str | Path, cfg: DecoderConfig) -> MTPModule:
    path = Path(path)
    if not path.is_file():
        raise EdgertError(f"{path}: MTP module file not found")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a damaged header
        raise EdgertError(f"{path}: not a safetensors file ({err})") from None
    module = MTPModule(cfg)
    check_keys(module.state_dict(), state, path, "MTP module", "this model", "tensors")
    module.load_state_dict({k: v.float() for k, v in state.items()})
    return module.eval()


def save_mtp(module: MTPModule, path: str | Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
