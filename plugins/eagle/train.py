"""EAGLE-3's training-time test (TTT), as SafeAILab/EAGLE's ``eagle/traineagle3/cnets.py``
unrolls it: the draft runs ``steps`` times over every position of a sequence, each step fed its
own previous outputs, with a loss on each step (weights 0.8^j, as its ``main.py``).

Step j at position t reads the token t + 1 + j (embedding) and, for j = 0, the target's fused
states of t (``fc`` over the three tapped layers), else the draft's own output of step j − 1 at
t; its RoPE position is t + j; it attends to step 0's keys of positions ≤ t and to its own
keys of steps 1..j at t — the prefix and the chain of speculative entries it sees at run time
(a node at depth j reading its ancestors). Its target is the base model's distribution of token
t + 2 + j (soft labels: cross-entropy against the base's softmax), counted where that token is
a continuation token (the prompt is data, not the base's words).

The base model is frozen; the sequences are its own greedy continuations (edgert's training
loop, :func:`edgert.exporters.llm.train.train`).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from edgert.exporters.llm.attention import heads, merge_heads
from edgert.exporters.llm.llama import causal_mask, rope_tables

DECAY = 0.8


def _ttt_attention(keys: list, values: list, causal: torch.Tensor, head_dim: int):
    """attend(q, k, v) for step j = len(keys) (it appends its own keys first): step 0's keys
    under ``causal``, and each later step's key at the query's own position."""
    def attend(q, k, v):
        n = q.shape[1]
        qh = heads(q, head_dim).float()
        keys.append(heads(k, head_dim))
        values.append(heads(v, head_dim))
        rep = qh.shape[1] // keys[0].shape[1]
        grouped = lambda t: t[:, :, :n].repeat_interleave(rep, dim=1).float()  # noqa: E731 - kv head per query head
        scale = 1.0 / math.sqrt(head_dim)
        scores = [(qh @ grouped(keys[0]).transpose(-2, -1) * scale).masked_fill(~causal[:n, :n], float("-inf"))]
        scores += [((qh * grouped(ki)).sum(-1) * scale)[..., None] for ki in keys[1:]]
        probs = torch.softmax(torch.cat(scores, dim=-1), dim=-1)
        out = probs[..., :n] @ grouped(values[0])
        for i, vi in enumerate(values[1:]):
            out = out + probs[..., n + i, None] * grouped(vi)
        return merge_heads(out.to(q.dtype)), k, v
    return attend


def ttt_losses(steps: int, layers: tuple[int, ...]):
    """The losses function of :class:`edgert.exporters.llm.train.Trainee` for ``steps`` unrolled
    draft steps over the hidden states entering ``layers``: ``(base, draft, seqs, prompt_len) ->
    (loss, top-1 accuracy per step)``."""

    def losses(base, draft, seqs: torch.Tensor, prompt_len: int):
        b, s = seqs.shape
        with torch.no_grad():
            every = torch.arange(s).expand(b, -1)
            base.taps = layers  # for this call only: the base serves the other steps of training untouched
            try:
                logits, _, *rest = base(seqs, every, causal_mask(b, s, 0), every, *base.empty_cache(b))
            finally:
                base.taps = ()
            taps = torch.cat(rest[:len(layers)], dim=-1)  # (b, s, 3·hidden), low / middle / high
            target = torch.softmax(logits.float(), dim=-1)   # target[t]: the base's distribution of token t + 1
        hidden = draft.fc(taps)
        keys: list = []
        values: list = []
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        total, accuracy = 0.0, []
        for j in range(steps):
            n = s - 2 - j  # positions t with a token t + 2 + j to predict
            if n < 1:
                break
            attend = _ttt_attention(keys, values, causal, base.cfg.head_dim)
            positions = (torch.arange(n) + j).expand(b, -1)
            out, _, _ = draft.midlayer(base.embed(seqs[:, 1 + j:1 + j + n]), hidden[:, :n],
                                       rope_tables(positions, base.inv_freq, hidden.dtype), attend)
            logp = F.log_softmax(draft.logits(out).float(), dim=-1)
            want = target[:, 1 + j:1 + j + n]
            counted = (torch.arange(n) + 2 + j >= prompt_len).expand(b, -1)
            loss = -(want * logp).sum(-1)[counted].mean()
            total = total + DECAY ** j * loss
            with torch.no_grad():
                accuracy.append(float((logp.argmax(-1) == want.argmax(-1))[counted].float().mean()))
            hidden = out  # the next step reads the draft's own output at the same position
        return total, accuracy

    return losses
