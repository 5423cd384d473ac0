"""Decoding strategy ``mtp``: a DeepSeek-V3-style multi-token-prediction module drafts a chain,
the target verifies it in one pass. Needs a bundle exported with the ``mtp`` head (``--opt
mtp=MODULE``; ``edgert train mtp`` makes one for any checkpoint).

The module reads the target's hidden state h_j and the next token t_{j+1} and predicts t_{j+2};
depth k > 1 chains it on its own output (speculative entries in its cache, dropped after the
verify). Its KV cache holds only pairs (h_j, t_{j+1}) of accepted tokens with the target's own
h_j: after each verify the module catches up on the newly accepted tokens in one pass, which
also yields the first draft of the next step. Drafts are the module's argmax; the target's
verification makes greedy output exact and sampling exact in distribution.
"""

from __future__ import annotations

import numpy as np

from edgert.runtime.llm.tree import Tree
from edgert.runtime.options import Option, positive_int


class MultiTokenPrediction:
    name = "mtp"
    description = "DeepSeek-style MTP module drafts a chain from the target's hidden states, verified in one pass"
    options = {"depth": Option(3, "draft tokens per step (the module chained)", positive_int)}

    def decode(self, d):
        mtp = d.head("mtp")
        cache = mtp.new_cache(d.cache.capacity)
        root = d.sample(d.prefill())
        hidden = d.hidden  # the target's h_j for every j whose pair is not yet in the module's cache
        while True:
            depth = min(d.options["depth"], d.room - 1)
            if depth < 1:
                root = yield from d.plain_step(root)
                continue
            start = cache.length  # pairs (h_j, t_{j+1}) for j = start .. len(tokens) - 1, t_len = root
            nxt = d.tokens[start + 1:] + [root]
            out = mtp.extend(cache, nxt, hidden_states=hidden)
            drafts = [int(np.argmax(out.logits[-1]))]
            state = out.hidden[-1:]
            for _ in range(depth - 1):  # chained depths: speculative entries
                out = mtp.extend(cache, [drafts[-1]], hidden_states=state)
                drafts.append(int(np.argmax(out.logits[-1])))
                state = out.hidden[-1:]
            tokens = [root] + drafts
            verdict = d.verify(Tree.chain(len(tokens)), tokens)
            cache.truncate(start + len(nxt))  # keep the catch-up pairs, drop the chained guesses
            hidden = d.hidden                 # the target's h of the accepted tokens
            yield [tokens[i] for i in verdict.path]
            root = verdict.bonus
