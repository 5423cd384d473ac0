"""Decoding strategy ``eagle``: the EAGLE-3 draft head grows a dynamic tree (EAGLE-2), the target
verifies it in one pass. Needs a bundle exported with the ``eagle`` head (``--opt
eagle=HEAD``; ``edgert train eagle`` makes one).

Each step:

1. catch-up: the draft runs once over the positions accepted since its last step, position t
   reading the target's fused hidden states of t (the three tapped layers through ``fc``) and
   the token after t; its cache keeps these entries (its stable part);
2. the draft's distribution after the last of them gives depth 1 of the tree; ``depth`` more
   draft passes expand the ``top_k`` best nodes of each level (:mod:`.tree`), a node at depth d
   reading the draft's own output at its parent, at position (stable − 1 + d), seeing the
   stable part and its ancestors;
3. the root and the ``total_tokens`` best nodes go through the target in one pass with the
   tree's ancestor mask; the verification op accepts a path (greedy: lossless; sampling: the
   drafts are deterministic, so each sibling is accepted with p(x), else p(x) is zeroed and p
   renormalised before the next sibling — the target's distribution is kept); the draft's
   speculative entries are dropped.

``total_tokens=auto`` (the default) sizes each step's tree on the device: the target's verify
time is measured once per size (:func:`measure`, as ``edgert tune-tree`` does for Medusa), the
draft's confidence stands in for the nodes' acceptance — calibrated by the acceptance observed
so far per depth and sibling rank (:class:`.tree.Calibration`), which also orders the nodes —
and the step verifies the number of best nodes with the most expected tokens per second (at
most ``max_tokens``): a confident draft gets a big tree, a doubtful one a small tree.
``tree=static`` verifies a fixed shape instead: every level expands only the best node of the
previous one, and all the k·(depth + 1) nodes made are verified.

Because auto sizing reads the clock and what earlier generations taught, a seed reproduces a
sampled generation only with a fixed size (``total_tokens=N`` or ``tree=static``); under auto
the tokens a seed draws may differ from run to run, their distribution never does (greedy
output is ``ar``'s either way).
"""

from __future__ import annotations

import time

import numpy as np

from edgert.runtime.errors import InputError
from edgert.runtime.llm.tree import Tree
from edgert.runtime.llm.tune import verify_latency
from edgert.runtime.options import Option, positive_int

from .tree import Calibration, DraftTree, best_size, grow, select


def _size(text: str):
    if text == "auto":
        return text
    return positive_int(text)


_size.__name__ = "auto or a positive integer"


def _shape(text: str) -> str:
    if text not in ("dynamic", "static"):
        raise ValueError(text)
    return text


_shape.__name__ = "dynamic or static"


class Eagle:
    name = "eagle"
    description = "EAGLE-3 draft head growing EAGLE-2's dynamic tree, verified in one pass (lossless)"
    # Defaults tuned on this project's CPU benchmark (docs/benchmarks.md): there a verify pass
    # turns compute-bound past a few tokens, so one node a level (a chain whose length the
    # calibrated confidence and the measured latency set) beat every wider tree; where a pass of
    # 20-60 tokens costs little more than one (GPUs), raise top_k (EAGLE-2 used 10).
    options = {"depth": Option(4, "draft passes after the first: the tree has up to depth + 1 levels", positive_int),
               "top_k": Option(1, "children per expanded node, and nodes expanded per level", positive_int),
               "total_tokens": Option("auto", "draft nodes verified per step (the root comes on top); auto: each step, "
                                              "the number with the most expected tokens per second, from the draft's "
                                              "confidence and this device's verify latency (measured once)", _size),
               "max_tokens": Option(32, "auto: the most nodes a step may verify", positive_int),
               "tree": Option("dynamic", "dynamic (EAGLE-2) or static (a fixed shape)", _shape)}

    def decode(self, d):
        head = d.head("eagle")
        depth, k, total, static = d.options["depth"], d.options["top_k"], d.options["total_tokens"], \
            d.options["tree"] == "static"
        auto = total == "auto"
        if static:
            total, auto = k * (depth + 1), False
        elif auto:
            total = d.options["max_tokens"]
        elif total < depth:
            raise InputError(f"eagle total_tokens={total} is smaller than depth={depth}: the deepest level could never "
                             "be verified")
        if total + 1 >= d.context:
            raise InputError(f"eagle total_tokens={total} does not fit the bundle's context of {d.context} positions")
        cache = head.new_cache(d.cache.capacity + depth * k + 1)
        latency = d.resource(("verify-latency", str(d.session.bundle.root), total), lambda: measure(d, total)) if auto else None
        # what the verifications taught about the draft, kept across generations of this bundle
        calibration = d.resource(("eagle-calibration", str(d.session.bundle.root), depth, k), lambda: Calibration(depth, k))
        root = d.sample(d.prefill())
        states = head.fuse(d.extra)  # the fused target states of the positions without a draft entry yet
        while d.room >= max(total, depth * k) + 1:  # the tree and the draft's speculative entries fit
            t0 = time.perf_counter()
            following = d.tokens[cache.length + 1:] + [root]  # position t reads the token after t
            out = head.draft.extend(cache, following, hidden_states=states)
            stable = cache.length
            tree = grow(root, out.logits[-1], self._expander(head, cache, stable, out.hidden[-1]), depth, k, static,
                        head.ids)
            scores = None if static else calibration.path_scores(tree)
            size = best_size(tree, latency, time.perf_counter() - t0, total, scores) if auto else total
            nodes, parents = select(tree, size, scores)
            tokens = [tree.tokens[n] for n in nodes]
            verdict = d.verify(Tree(np.asarray(parents, np.int64)), tokens)
            calibration.learn(tree, nodes, verdict.path)
            cache.truncate(stable)
            yield [tokens[i] for i in verdict.path]
            states = head.fuse(d.extra)  # of the accepted path: root and the accepted drafts
            root = verdict.bonus
        while True:  # the tree no longer fits the context: plain steps to the end
            root = yield from d.plain_step(root)

    @staticmethod
    def _expander(head, cache, stable: int, root_state: np.ndarray):
        """``expand(tree, frontier)`` for :func:`.tree.grow`: one draft pass over the frontier,
        appended to the draft cache, each node seeing the stable part, its ancestors' entries and
        itself; returns its children's logits (over the draft's vocabulary)."""
        states = {0: root_state}  # node -> the draft's output at that node: what its children read

        def expand(tree: DraftTree, frontier: list[int]) -> np.ndarray:
            base, new = cache.length, len(frontier)
            mask = np.zeros((new, base + new), bool)
            mask[:, :stable] = True
            for i, node in enumerate(frontier):
                mask[i, [tree.slots[a] for a in tree.ancestors(node)]] = True
                mask[i, base + i] = True
                tree.slots[node] = base + i
            out = head.draft.forward(
                cache, np.asarray([[tree.tokens[n] for n in frontier]], np.int64),
                np.asarray([[stable - 1 + tree.depths[n] for n in frontier]], np.int64), mask[None],
                np.arange(new, dtype=np.int64)[None],
                hidden_states=np.stack([states[tree.parents[n]] for n in frontier])[None])
            for i, node in enumerate(frontier):
                states[node] = out.hidden[0, i]
            return out.logits[0]
        return expand


SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def measure(d, largest: int):
    """seconds(size): the target's verify time for ``size`` tree tokens on this device (median
    of a few passes after 128 cached positions, interpolated between the sizes measured)."""
    sizes = [s for s in SIZES if s <= largest + 1] + ([largest + 1] if largest + 1 not in SIZES else [])
    prefix = max(1, min(128, d.context - max(sizes) - 1))
    table = verify_latency(d.session, sorted(set(sizes)), prefix, repeats=3)
    measured = np.array(sorted(table))
    seconds = np.array([table[s] for s in measured])
    return lambda size: float(np.interp(size, measured, seconds))
