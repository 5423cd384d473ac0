"""EAGLE-2's dynamic draft tree (Li et al., "EAGLE-2: Faster Inference of Language Models with
Dynamic Draft Trees", EMNLP 2024), as SafeAILab/EAGLE's ``topK_genrate`` builds it, in numpy:

1. depth 1: the top-k tokens of the draft's distribution after the root, scored by their
   log-probability;
2. each further level: the frontier (the k best nodes of the previous level) is expanded in one
   draft pass; each frontier node's top-k children are scored by the cumulative log-probability
   (parent's score + their own), and the k best of those k² become the next frontier;
3. the tree verified is the root plus the ``total_tokens`` best nodes of all levels by score.
   A child never scores above its parent (log-probabilities are ≤ 0), so taking nodes in order of
   score (ties: the earlier-made first, a parent always is) keeps every chosen node's parent.

The draft's confidence (its cumulative probability) stands in for the acceptance rate: the tree
grows where the draft is sure and stays small where it is not, which on a CPU, where every
verified node costs time, matters more than on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class DraftTree:
    """The nodes of one step's expansion, root first (node 0: the target's own next token).
    ``slots[i]`` is the draft-cache slot node i was run at (−1: not expanded)."""

    tokens: list[int]
    parents: list[int]
    scores: list[float]
    depths: list[int]
    slots: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)  # among its siblings, by the draft's probability (0: best)

    def add(self, token: int, parent: int, score: float, rank: int = 0) -> int:
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        self.scores.append(float(score))
        self.depths.append(self.depths[parent] + 1)
        self.slots.append(-1)
        self.ranks.append(int(rank))
        return len(self.tokens) - 1

    def ancestors(self, node: int) -> list[int]:
        """node's ancestors below the root, nearest last."""
        out = []
        node = self.parents[node]
        while node > 0:
            out.append(node)
            node = self.parents[node]
        return out[::-1]


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best (ids, log-probabilities) of each row of ``logits`` (unnormalised: the softmax
    is taken here, over the k chosen only), best first (ties: the lower id)."""
    k = min(k, logits.shape[-1])
    if k == 1:  # a chain: the argmax (the first of equal maxima: the lower id), no partial sort
        ids = logits.argmax(axis=-1)[..., None]
    else:
        ids = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
        order = np.lexsort((ids, -np.take_along_axis(logits, ids, axis=-1)), axis=-1)
        ids = np.take_along_axis(ids, order, axis=-1)
    top = logits.max(axis=-1, keepdims=True)
    normaliser = top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))
    return ids, np.take_along_axis(logits, ids, axis=-1) - normaliser


def grow(root: int, first: np.ndarray, expand: Callable[[DraftTree, list[int]], np.ndarray], depth: int, k: int,
         static: bool = False, ids: np.ndarray | None = None) -> DraftTree:
    """Expand a tree below ``root``. ``first``: the draft's logits (vocab,) of the token after
    the root (log-probabilities or unnormalised); ``expand(tree, frontier)`` runs the draft on
    those nodes (each seeing its ancestors) and returns their children's logits (len(frontier),
    vocab). ``ids``: the token each draft id stands for (a reduced draft vocabulary's map; None:
    the same id).
    ``depth``: draft passes after the first distribution (up to depth + 1 levels below the root).
    ``static``: every level expands only the best node of the previous one (a fixed shape: k
    candidates a level along the draft's best chain) instead of the k best."""
    tree = DraftTree([int(root)], [-1], [0.0], [0], [-1], [0])
    def best(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # top_k, in the target's ids
        chosen, values = top_k(logits, k)
        return (chosen if ids is None else ids[chosen]), values

    tokens, values = best(first[None])
    frontier = [tree.add(t, 0, v, r) for r, (t, v) in enumerate(zip(tokens[0], values[0]))]
    for _ in range(depth):
        if static:
            frontier = frontier[:1]
        children = expand(tree, frontier)
        tokens, values = best(children)
        scores = np.asarray([tree.scores[n] for n in frontier])[:, None] + values  # (frontier, k) cumulative
        made = [[tree.add(tokens[i, j], node, scores[i, j], j) for j in range(tokens.shape[1])]
                for i, node in enumerate(frontier)]
        flat = np.asarray(made).reshape(-1)
        order = np.lexsort((flat, -scores.reshape(-1)))[:k]  # the k best of the k², ties to the earlier made
        frontier = [int(n) for n in flat[order]]
    return tree


def select(tree: DraftTree, total_tokens: int, scores=None) -> tuple[list[int], list[int]]:
    """The root and the ``total_tokens`` best nodes (by ``scores``, default the draft's
    cumulative log-probabilities; ties to the earlier made), in the order they were made (so
    parents come first): their node ids and their parents as indices into that list (the
    root's −1). Scores must not rise along a path, so that a node's parent is always chosen."""
    scores = tree.scores if scores is None else scores
    order = sorted(range(1, len(tree.tokens)), key=lambda n: (-scores[n], n))
    chosen = {0}
    for node in order:
        if len(chosen) > total_tokens:
            break
        if tree.parents[node] in chosen:  # always true but for exact ties across subtrees
            chosen.add(node)
    nodes = sorted(chosen)
    index = {node: i for i, node in enumerate(nodes)}
    return nodes, [-1] + [index[tree.parents[n]] for n in nodes[1:]]


class Calibration:
    """How often the target accepts a draft node, by depth and sibling rank, learnt from the
    verifications so far (a node counts when its parent was accepted): the draft's confidence
    stands in for acceptance (EAGLE-2), and this corrects it where the draft is right more (or
    less) often than its probabilities say — a draft trained on a flat target is accurate with
    low probabilities. Each rate starts at the draft's own probability, as a prior of weight 2."""

    def __init__(self, depth: int, k: int):
        self.proposed = np.zeros((depth + 2, k))
        self.accepted = np.zeros((depth + 2, k))

    def path_scores(self, tree: DraftTree) -> list[float]:
        """log of each node's estimated chance to be on the accepted path."""
        out = [0.0]
        for node in range(1, len(tree.tokens)):
            parent, d, r = tree.parents[node], tree.depths[node], tree.ranks[node]
            p = float(np.exp(tree.scores[node] - tree.scores[parent]))  # the draft's own conditional
            rate = (self.accepted[d, r] + 2 * p) / (self.proposed[d, r] + 2)
            out.append(out[parent] + float(np.log(max(rate, 1e-9))))
        return out

    def learn(self, tree: DraftTree, nodes: list[int], path: list[int]) -> None:
        """``nodes``: the node ids verified (root first); ``path``: the accepted indices into them."""
        accepted = {nodes[i] for i in path}
        for node in nodes[1:]:
            if tree.parents[node] in accepted:
                d, r = tree.depths[node], tree.ranks[node]
                self.proposed[d, r] += 1
                self.accepted[d, r] += node in accepted


def best_size(tree: DraftTree, seconds, fixed: float = 0.0, largest: int | None = None, scores=None) -> int:
    """How many nodes to verify (below the root) for the most expected tokens per second: the
    k best nodes are expected to add the sum of their chances to be accepted (exp of their
    ``scores``; default the draft's cumulative log-probabilities) to the one token a pass always
    gives; ``seconds(size)``: the target's verify time for ``size`` tree tokens (root included),
    ``fixed``: what the step costs besides (the draft's passes)."""
    scores = tree.scores if scores is None else scores
    best = np.sort(np.asarray(scores[1:]))[::-1][:largest]
    expected = 1.0 + np.concatenate([[0.0], np.cumsum(np.exp(best))])
    rates = [expected[n] / (seconds(n + 1) + fixed) for n in range(len(expected))]
    return int(np.argmax(rates))
