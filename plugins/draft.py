"""Built-in decoding strategy ``draft``: a smaller model of the same tokenizer proposes γ tokens,
the target verifies them in one pass (Leviathan et al., ICML 2023; Chen et al., 2023).

Greedy decoding: the draft proposes its argmax tokens and the target keeps the longest prefix
that equals its own argmax, then adds its own next token: the output is the target's greedy
output. Sampling: the draft samples from its processed distribution q (same temperature /
top-k / top-p) and each token is accepted with min(1, p/q), else the next token is drawn from
norm(max(0, p − q)): the output follows the target's distribution exactly.

γ adapts as in transformers' assisted generation: +2 after a step that accepted every draft
token, −1 otherwise (``adaptive=false`` keeps it fixed). ``confidence`` (0.4, transformers'
``assistant_confidence_threshold`` default) ends a draft at a token the draft itself gives less
probability: such a token is rarely the target's, and every further draft token costs a draft
pass (on the benchmark of docs/benchmarks.md it took the draft strategy from 0.94x to 1.01x).
"""

from __future__ import annotations

import numpy as np

from edgert.runtime.errors import InputError
from edgert.runtime.hookspecs import hookimpl
from edgert.runtime.llm.sampling import Sampler
from edgert.runtime.llm.tree import Tree
from edgert.runtime.llm.verify import softmax
from edgert.runtime.options import Option, boolean, positive_int, probability


class DraftModel:
    name = "draft"
    description = "speculative decoding with a smaller draft bundle (same tokenizer), lossless"
    options = {"model": Option(None, "the draft bundle (required; served: a draft's name, edgert serve --draft)", str,
                               names="bundle"),
               "gamma": Option(4, "draft tokens per step (the start value when adaptive)", positive_int),
               "adaptive": Option(True, "adapt gamma to the acceptance", boolean),
               "confidence": Option(0.4, "end a draft at a token the draft gives less probability (0: never)", probability)}

    def decode(self, d):
        path = d.options["model"]
        if not path:
            raise InputError("strategy 'draft' needs its draft bundle: --strategy-opt model=DRAFT_BUNDLE")
        draft = d.open_bundle(path)
        cache = draft.new_cache(d.cache.capacity)
        sampler = Sampler(d.sampler.params)
        sampler.rng = np.random.default_rng(d.sampler.rng.integers(2**63))  # its own stream, derived from the seed
        gamma, confidence = d.options["gamma"], d.options["confidence"]
        root = d.sample(d.prefill())
        while True:
            context = d.tokens + [root]
            room = min(gamma, d.room - 1)
            if room < 1:
                root = yield from d.plain_step(root)
                continue
            logits = draft.extend(cache, context[cache.length:]).logits[-1]
            proposals, qs = [], []
            for j in range(room):
                if sampler.params.greedy:
                    adjusted = sampler.adjust(logits, context + proposals)
                    token = int(np.argmax(adjusted))
                    sure = not confidence or softmax(adjusted)[token] >= confidence
                else:
                    q = sampler.probabilities(logits, context + proposals)
                    token = sampler.draw(q)
                    qs.append(q)
                    sure = q[token] >= confidence
                proposals.append(token)
                if j + 1 == room or not sure:  # a token the draft doubts ends the draft
                    break
                logits = draft.extend(cache, [token]).logits[-1]
            tokens = [root] + proposals
            draft_probs = np.stack(qs + [np.zeros_like(qs[0])]) if qs else None
            verdict = d.verify(Tree.chain(len(tokens)), tokens, draft_probs=draft_probs)
            yield [tokens[i] for i in verdict.path]
            cache.truncate(min(cache.length, len(d.tokens)))  # drop the draft's rejected tokens
            if d.options["adaptive"]:
                gamma = gamma + 2 if verdict.length == len(tokens) else max(1, gamma - 1)
            root = verdict.bonus


@hookimpl
def edgert_register_strategies():
    return [DraftModel()]
