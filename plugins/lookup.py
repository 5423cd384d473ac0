"""Built-in decoding strategy ``lookup``: prompt-lookup (n-gram) drafting, no extra model.

The draft is what followed the most recent earlier occurrence of the context's last n tokens
(n from ``ngram`` down to 1), as transformers' PromptLookupCandidateGenerator and
apoorvumang/prompt-lookup-decoding do; it pays off where the output repeats the input
(summaries, code edits, extraction). The draft is verified as a chain in one pass: greedy
verification is exact, sampling uses the deterministic-draft rule (accept with p(x), else
sample the rest of p), which keeps the target's distribution.

How long a draft is (:class:`Pace`) is measured as it goes: what share of drafted tokens the
target accepts, and what a drafted token costs in a verify pass against a plain step. Where
drafts do not pay (a prompt they guess badly for, or a bundle whose verify pass is expensive:
SmolLM2 as stored at fp32 compute, whose several-row kernel costs twice its one-row one) it
drafts less or not at all, so that it never runs much slower than ``ar``; what drafts were
worth fades as plain steps go, so they are tried again. The cost is timed in greedy decoding
only: when sampling, the draft lengths decide which random numbers each token draws, so they
follow the acceptance alone and a seed gives the same text every run.
"""

from __future__ import annotations

import time

import numpy as np

from edgert.runtime.hookspecs import hookimpl
from edgert.runtime.llm.tree import Tree
from edgert.runtime.options import Option, positive_int


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


class Pace:
    """The draft length that pays: the most expected tokens per unit of time, with a drafted
    token accepted with probability p (each only if the ones before it were) and costing
    ``per_token`` plain steps in a verify pass. Both are measured from the passes so far."""

    def __init__(self, most: int, timed: bool = True):
        self.most, self.timed, self.accepted, self.tried = most, timed, 0.0, 0.0
        self.step_s: float | None = None  # a plain step's time (moving average)
        self.per_token = 0.1              # a drafted token's extra cost in plain steps (first guess)

    def acceptance(self) -> float:
        return (self.accepted + 1.0) / (self.tried + 2.0)  # the prior: one of two accepted

    def length(self) -> int:
        p = self.acceptance()
        return max(range(self.most + 1), key=lambda k: sum(p**i for i in range(k + 1)) / (1.0 + self.per_token * k))

    def stepped(self, seconds: float) -> None:
        self.step_s = seconds if self.step_s is None else 0.8 * self.step_s + 0.2 * seconds
        self.accepted, self.tried = 0.95 * self.accepted, 0.95 * self.tried  # old evidence fades

    def verified(self, drafted: int, accepted: int, seconds: float) -> None:
        self.accepted = 0.9 * self.accepted + accepted
        self.tried = 0.9 * self.tried + min(accepted + 1, drafted)  # a token is tried if all before it passed
        if self.timed and self.step_s:
            self.per_token = 0.8 * self.per_token + 0.2 * max(0.0, seconds / self.step_s - 1.0) / drafted


class PromptLookup:
    name = "lookup"
    description = "prompt lookup: drafts copied from earlier n-gram matches in the context, verified in one pass"
    options = {"ngram": Option(3, "longest n-gram to match", positive_int),
               "tokens": Option(8, "most draft tokens per step", positive_int)}

    def decode(self, d):
        pace = Pace(d.options["tokens"], timed=d.sampler.params.greedy)
        root = d.sample(d.prefill())
        while True:
            length = min(pace.length(), d.room - 1)
            draft = find_draft(d.tokens + [root], d.options["ngram"], length) if length > 0 else []
            if draft:
                tokens, started = [root, *draft], time.perf_counter()
                verdict = d.verify(Tree.chain(len(tokens)), tokens)
                pace.verified(len(draft), len(verdict.path) - 1, time.perf_counter() - started)
                yield [tokens[i] for i in verdict.path]
                root = verdict.bonus
            else:  # nothing to copy, no room, or drafts do not pay: an ordinary step
                yield [root]
                started = time.perf_counter()
                logits = d.step(root)
                pace.stepped(time.perf_counter() - started)
                root = d.sample(logits)


@hookimpl
def edgert_register_strategies():
    return [PromptLookup()]
