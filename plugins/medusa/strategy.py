"""Decoding strategy ``medusa``: Medusa heads propose a tree, the target verifies it in one pass
(Cai et al., 2024). Needs a bundle exported with the ``medusa`` head (``--opt medusa=HEADS``).

Each step: the root is the target's own next token; head k's top-k tokens fill depth k + 1 of
the tree given by ``medusa_choices`` (tree indices as Medusa computes them); one decoder pass
over the tree with its ancestor mask and depth positions; the verification op picks the path;
the cache keeps only that path; the next root is the bonus token and the heads' logits at the
path's last node (the bundle's small ``medusa`` graph, run on that one hidden state) propose
the next tree.

Verification: ``greedy`` (default at temperature 0) is lossless; ``typical`` (Medusa's typical
acceptance, default when sampling; ε = 0.09, δ = 0.3) accepts plausible tokens and is faster but
does NOT reproduce the target's distribution; ``sampling`` keeps the distribution exactly.
"""

from __future__ import annotations

import numpy as np

from edgert.runtime.errors import InputError
from edgert.runtime.llm.medusa_trees import TREES, load_choices
from edgert.runtime.llm.tree import medusa_buffers
from edgert.runtime.options import Option, positive_int


def _mode(text: str) -> str:
    if text not in ("auto", "greedy", "typical", "sampling"):
        raise ValueError(text)
    return text


_mode.__name__ = "auto, greedy, typical or sampling"


class Medusa:
    name = "medusa"
    description = "Medusa heads propose a token tree, verified in one pass (greedy: lossless; typical: faster)"
    options = {"tree": Option("mc_sim_7", "medusa_choices: a shipped tree name, a JSON file or a JSON list",
                              names="file", builtin=tuple(TREES)),
               "top_k": Option(10, "candidates per head (Medusa's TOPK)", positive_int),
               "verify": Option("auto", "greedy, typical or sampling (auto: greedy at temperature 0, else typical)", _mode)}

    def decode(self, d):
        medusa = d.head("medusa")
        heads = medusa.num_heads
        key = ("medusa-buffers", str(d.options["tree"]), d.options["top_k"], heads)
        buffers = d.resource(key, lambda: medusa_buffers(load_choices(d.options["tree"]), d.options["top_k"], heads))
        mode = d.options["verify"]
        if mode == "auto":
            mode = "greedy" if d.sampler.params.greedy else "typical"
        if mode != "greedy" and d.sampler.params.greedy:
            raise InputError(f"medusa verify={mode} needs sampling: give --temperature > 0")
        k, size = buffers.top_k, buffers.tree.size
        ranks = 1 + max(rank for path in buffers.choices for rank in path)  # candidates a head must rank
        if size >= d.context:
            raise InputError(f"medusa tree of {size} tokens does not fit the bundle's context of {d.context} positions")
        root = d.sample(d.prefill())
        while True:
            if d.room < size:  # the tree no longer fits the context: plain steps to the end
                root = yield from d.plain_step(root)
                continue
            scores = medusa(d.hidden[-1])  # (heads, vocab) at the last accepted token
            if ranks == 1:  # a chain uses each head's best token only: argmax, not a partial sort
                top = np.zeros((scores.shape[0], k), np.int64)
                top[:, 0] = scores.argmax(axis=1)
            else:
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]  # ranks 0..k-1 by score
                top = np.take_along_axis(top, order, axis=1)
            candidates = np.concatenate([[root], top[: max(map(len, buffers.choices))].reshape(-1)])
            tokens = candidates[buffers.tree_indices]
            verdict = d.verify(buffers.tree, tokens, mode=mode)
            yield [int(tokens[i]) for i in verdict.path]
            root = verdict.bonus
