"""Built-in decoding strategy ``lookup``: prompt-lookup (n-gram) drafting, no extra model.

The draft is what followed the most recent earlier occurrence of the context's last n tokens
(n from ``ngram`` down to 1), as transformers' PromptLookupCandidateGenerator and
apoorvumang/prompt-lookup-decoding do; it pays off where the output repeats the input
(summaries, code edits, extraction). The draft is verified as a chain in one pass: greedy
verification is exact, sampling uses the deterministic-draft rule (accept with p(x), else
sample the rest of p), which keeps the target's distribution.
"""

from __future__ import annotations

import numpy as np

from edgert.runtime.detector import Option, positive_int
from edgert.runtime.hookspecs import hookimpl


def find_draft(tokens: list[int], ngram: int, length: int) -> list[int]:
    """Tokens that followed the latest earlier match of the last n-gram, longest n first."""
    seq = np.asarray(tokens, dtype=np.int64)
    for n in range(min(ngram, len(seq) - 1), 0, -1):
        tail = seq[-n:]
        windows = np.lib.stride_tricks.sliding_window_view(seq[:-1], n)  # every earlier n-gram, not the tail itself
        hits = np.flatnonzero((windows == tail).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return seq[start:start + length].tolist()
    return []


class PromptLookup:
    name = "lookup"
    description = "prompt lookup: drafts copied from earlier n-gram matches in the context, verified in one pass"
    options = {"ngram": Option(3, "longest n-gram to match", positive_int),
               "tokens": Option(8, "most draft tokens per step", positive_int)}

    def decode(self, d):
        root = d.sample(d.prefill())
        while True:  # nothing to copy (or no room) is an ordinary step
            draft = find_draft(d.tokens + [root], d.options["ngram"], min(d.options["tokens"], d.room - 1))
            root = yield from d.verify_chain(root, draft)


@hookimpl
def edgert_register_strategies():
    return [PromptLookup()]
