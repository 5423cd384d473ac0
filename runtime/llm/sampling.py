"""Choosing the next token from logits: greedy, or sampling with temperature / top-k / top-p,
after a repetition penalty; seeded so that a run can be repeated. The order and semantics are
transformers' (repetition penalty, temperature, top-k, top-p), so the same settings mean the
same thing in both."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0       # 0: greedy (argmax); > 0: sample
    top_k: int = 0                 # 0: off
    top_p: float = 1.0             # 1: off
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in the context (CTRL)
    seed: int | None = None
    stop: tuple[str, ...] = ()     # stop strings: generation ends before the first one

    def __post_init__(self):
        def bad(what: str):
            raise InputError(f"invalid sampling value: {what}")

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            bad(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not np.isfinite(self.temperature) or self.temperature < 0:
            bad(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        if 0 < self.temperature < MIN_TEMPERATURE:  # logits / 1e-300 overflow; anything this cold is greedy anyway
            bad(f"temperature {self.temperature!r} is below {MIN_TEMPERATURE}; use 0 for greedy decoding")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not (0 < self.top_p <= 1):
            bad(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            bad("stop strings must be non-empty")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**63):
            bad(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")  # numpy's generator takes no other

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    def __init__(self, params: SamplingParams):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def adjust(self, logits: np.ndarray, context) -> np.ndarray:
        """Logits after the repetition penalty (a copy when one applies)."""
        penalty = self.params.repetition_penalty
        if penalty == 1.0 or len(context) == 0:
            return logits
        logits = logits.astype(np.float32, copy=True)
        seen = np.unique(np.asarray(context, dtype=np.int64))
        values = logits[seen]
        logits[seen] = np.where(values > 0, values / penalty, values * penalty)
        return logits

    def probabilities(self, logits: np.ndarray, context) -> np.ndarray:
        """The distribution sampling draws from (full vocabulary, zeros outside top-k/top-p);
        speculative sampling compares these between draft and target."""
        p = self.params
        logits = self.adjust(logits, context).astype(np.float64) / p.temperature
        if p.top_k and p.top_k < logits.size:
            kth = np.partition(logits, -p.top_k)[-p.top_k]
            logits = np.where(logits < kth, -np.inf, logits)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        if p.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = int(np.searchsorted(cumulative, p.top_p)) + 1  # smallest set reaching top_p
            cut = np.zeros_like(probs)
            cut[order[:keep]] = probs[order[:keep]]
            probs = cut / cut.sum()
        return probs

    def draw(self, probs: np.ndarray) -> int:
        cumulative = np.cumsum(probs)
        return int(min(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"), probs.size - 1))

    def __call__(self, logits: np.ndarray, context) -> int:
        if self.params.greedy:
            return int(np.argmax(self.adjust(logits, context)))
        return self.draw(self.probabilities(logits, context))
