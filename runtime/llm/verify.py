"""Tree verification: which of the proposed tokens the target model accepts, and the next token.

The contract, the same for this numpy reference, the ONNX subgraph (:mod:`.verify_onnx`) and
the CUDA kernel / TensorRT plugin (trt_plugins):

inputs
    ``tokens`` (T,) int: the tree's tokens, node 0 the root (already the target's choice);
    ``parents`` (T,) int: topological, ``parents[0] = -1`` (see :mod:`.tree`);
    ``logits`` (T, V) float: the target's scores at every node, row i scoring node i's children
    (already processed for sampling: repetition penalty applied, -inf outside top-k / top-p);
    ``mode``: ``greedy`` | ``typical`` (ε, δ, temperature) | ``sampling`` (temperature, and the
    draft's probabilities ``draft_probs`` (T, V), row i being the distribution node i's children
    were drawn from; ``None`` for deterministic drafts such as prompt lookup or top-k heads);
    ``seed``: expanded to T uniforms by :func:`uniforms`, so every implementation draws the same.
outputs
    ``path`` the accepted nodes, root first; ``length`` = len(path) (>= 1: the root); ``bonus``
    the token that follows the path, chosen from the target's distribution at the last node.

Rules
    greedy: a node is accepted when its token is the argmax at its parent and its parent is
    accepted; the deepest accepted node ends the path (ties: the first); bonus = argmax. Lossless.
    typical (Medusa): p = softmax(logits / T); a child is plausible when p(token) >
    min(ε, δ·exp(−H(p))); the longest plausible path wins, ties to the larger Σ log p; bonus
    sampled from p restricted to plausible tokens. Faster, not lossless (defaults ε = 0.09,
    δ = 0.3, Medusa's published settings).
    sampling (Leviathan et al. 2023; Chen et al. 2023; SpecInfer's multi-candidate form): at a
    node, try its children in order; accept child x when u_x < p(x) / q(x); on rejection
    p ← norm(max(0, p − q)) and try the next sibling; when no child is accepted (or the node is
    a leaf) the bonus is drawn from the current p with u_0. Preserves the target's distribution
    exactly (for a chain, and for siblings drawn independently from q).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .tree import Tree

MODES = ("greedy", "typical", "sampling")
TYPICAL_EPSILON, TYPICAL_DELTA = 0.09, 0.3


@dataclass(frozen=True)
class Verdict:
    path: list[int]
    bonus: int

    @property
    def length(self) -> int:
        return len(self.path)


def uniforms(seed: int, count: int) -> np.ndarray:
    """The uniforms a verification step uses: Philox, counter-based, so a GPU kernel can
    reproduce them; u[i] decides node i, u[0] draws the bonus."""
    return np.random.Generator(np.random.Philox(key=int(seed) & (2**64 - 1))).random(count)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def draw(probs: np.ndarray, u: float) -> int:
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf / cdf[-1], u, side="right"), probs.size - 1))


def verify(tokens, parents, logits, mode: str = "greedy", *, temperature: float = 1.0, epsilon: float = TYPICAL_EPSILON,
           delta: float = TYPICAL_DELTA, draft_probs: np.ndarray | None = None, seed: int = 0) -> Verdict:
    """The op (see the module docstring): checks the arguments, then the mode's rule."""
    tree = parents if isinstance(parents, Tree) else Tree(np.asarray(parents))
    tokens = np.asarray(tokens, dtype=np.int64)
    logits = np.asarray(logits)
    if mode not in MODES:
        raise InputError(f"verify: mode {mode!r}, expected one of {list(MODES)}")
    if tokens.shape != (tree.size,) or logits.ndim != 2 or logits.shape[0] != tree.size:
        raise InputError(f"verify: {tree.size} nodes need tokens ({tree.size},) and logits ({tree.size}, vocab); "
                         f"got {tokens.shape} and {logits.shape}")
    if mode != "greedy" and not temperature > 0:
        raise InputError(f"verify: {mode} mode needs temperature > 0, got {temperature}")
    if mode == "greedy":
        return verify_greedy(tokens, tree, logits)
    if mode == "typical":
        return verify_typical(tokens, tree, logits, temperature, epsilon, delta, seed)
    if draft_probs is not None and draft_probs.shape != logits.shape:
        raise InputError(f"verify: draft_probs {draft_probs.shape} must match logits {logits.shape}")
    return verify_sampling(tokens, tree, logits, temperature, draft_probs, seed)


def verify_greedy(tokens: np.ndarray, tree: Tree, logits: np.ndarray) -> Verdict:
    """A node is accepted when its token is its parent's argmax and its parent is accepted; the
    deepest accepted node (ties: the first) ends the path; the bonus is its argmax."""
    best = logits.argmax(axis=1)
    depth = tree.depths()
    accepted = np.zeros(tree.size, bool)
    accepted[0] = True
    for i in range(1, tree.size):
        accepted[i] = accepted[tree.parents[i]] and tokens[i] == best[tree.parents[i]]
    last = max(np.flatnonzero(accepted), key=lambda i: (depth[i], -i))  # longest, then first
    return Verdict(tree.path(int(last)), int(best[last]))


def verify_typical(tokens: np.ndarray, tree: Tree, logits: np.ndarray, temperature: float, epsilon: float,
                   delta: float, seed: int) -> Verdict:
    """Medusa's typical acceptance: plausible children (p > min(ε, δ·exp(−H))) along the
    longest path (ties: larger Σ log p, then first); bonus from p restricted to plausible tokens."""
    depth = tree.depths()
    p = softmax(logits, temperature)
    entropy = -(p * np.log(p + 1e-5)).sum(axis=1)
    threshold = np.minimum(epsilon, delta * np.exp(-entropy))
    plausible = np.zeros(tree.size, bool)
    plausible[0] = True
    score = np.zeros(tree.size)
    for i in range(1, tree.size):
        parent = tree.parents[i]
        prob = p[parent, tokens[i]]
        plausible[i] = plausible[parent] and prob > threshold[parent]
        score[i] = score[parent] + np.log(max(prob, 1e-30))
    last = max(np.flatnonzero(plausible), key=lambda i: (depth[i], score[i], -i))  # longest, most likely, first
    u = uniforms(seed, tree.size)
    allowed = np.where(p[last] > threshold[last], p[last], 0.0)  # never empty: max p >= exp(-H) > threshold
    return Verdict(tree.path(int(last)), draw(allowed, u[0]))


def verify_sampling(tokens: np.ndarray, tree: Tree, logits: np.ndarray, temperature: float,
                    draft_probs: np.ndarray | None, seed: int) -> Verdict:
    """Speculative sampling, multi-candidate: at a node try its children in order, accept x when
    u_x < p(x)/q(x), else p <- norm(max(0, p − q)) and try the next; the bonus is drawn from
    the p left at the last accepted node (q one-hot at the token for deterministic drafts)."""
    kids = tree.children()
    p_all = softmax(logits, temperature)
    u = uniforms(seed, tree.size)
    node = 0
    while True:
        p = p_all[node].copy()
        accepted = None
        for child in kids[node]:
            x = tokens[child]
            if draft_probs is None:
                q = np.zeros_like(p)
                q[x] = 1.0
            else:
                q = draft_probs[node].astype(np.float64)
            if q[x] > 0 and u[child] * q[x] < p[x]:
                accepted = child
                break
            residual = np.maximum(p - q, 0.0)
            if residual.sum() <= 0:  # p == q: nothing left to correct, keep p
                continue
            p = residual / residual.sum()
        if accepted is None:
            return Verdict(tree.path(node), draw(p, u[0]))
        node = accepted


class OnnxVerifier:
    """The same op on ONNX Runtime: the bundle's verify_<mode>.onnx graphs (written by the
    exporter), fed the ancestor mask and the seed's uniforms."""

    def __init__(self, directory, files: dict[str, str], threads: int | None = 1, read=None):
        """``read(name) -> bytes``: the bundle's checked bytes of each file (else the files are opened)."""
        from ..backends.onnxruntime import OnnxRuntimeBackend

        self.sessions = {mode: OnnxRuntimeBackend(Path(directory) / name, threads=threads,
                                                  model=read(name) if read else None)
                         for mode, name in files.items()}

    def __call__(self, tokens, parents, logits, mode: str = "greedy", *, temperature: float = 1.0,
                 epsilon: float = TYPICAL_EPSILON, delta: float = TYPICAL_DELTA, draft_probs: np.ndarray | None = None,
                 seed: int = 0) -> Verdict:
        tree = parents if isinstance(parents, Tree) else Tree(np.asarray(parents))
        if mode not in self.sessions:
            raise InputError(f"verify: mode {mode!r}, expected one of {sorted(self.sessions)}")
        feeds = {"tokens": np.asarray(tokens, np.int64), "parents": tree.parents, "ancestors": tree.ancestor_mask(),
                 "logits": np.asarray(logits, np.float32)}
        scalar = lambda v: np.array([v], np.float32)  # noqa: E731
        if mode == "typical":
            feeds.update(temperature=scalar(temperature), epsilon=scalar(epsilon), delta=scalar(delta),
                         uniforms=uniforms(seed, tree.size).astype(np.float32))
        elif mode == "sampling":
            if any(len(k) > 1 for k in tree.children()):
                raise InputError("verify (onnx): sampling mode takes chains; a tree with siblings needs the numpy verifier")
            if draft_probs is None:  # a deterministic draft: q is one-hot at each proposed token
                draft_probs = np.zeros_like(feeds["logits"])
                draft_probs[tree.parents[1:], feeds["tokens"][1:]] = 1.0
            feeds.update(temperature=scalar(temperature), draft_probs=np.asarray(draft_probs, np.float32),
                         uniforms=uniforms(seed, tree.size).astype(np.float32))
        path, _, bonus = self.sessions[mode].run(feeds).values()
        return Verdict([int(i) for i in path], int(np.asarray(bonus).reshape(-1)[0]))
