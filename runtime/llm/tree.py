"""Speculation trees: the layout every strategy and kernel shares.

A tree has T nodes in topological order (a parent before its children); node 0 is the root,
the token the target model already chose, and ``parents[0] = -1``. Verification runs all T
nodes through the decoder in one pass: node i sees the cached prefix, its ancestors and itself
(``ancestor_mask``), at position prefix + depth(i); the logits at node i score node i's
children. A linear draft is the tree whose parents are [-1, 0, 1, 2, ...].

``packed_mask`` is the same visibility in the bit-packed int32 layout of TensorRT-LLM and
TensorRT Edge-LLM (``[T, ceil(T/32)]``, bit j of row i set when node i sees node j), which the
TensorRT attention plugin takes as is.

:func:`medusa_buffers` turns Medusa's ``medusa_choices`` (a list of top-k rank paths) into a
tree exactly as Medusa's ``generate_medusa_buffers`` does: paths sorted by (depth, ranks),
tree indices into [root, top-k of head 0, top-k of head 1, ...], position ids, retrieve paths.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Tree:
    """Immutable: the arrays it returns are read-only and computed once, as a generation verifies
    the same tree (or chain length) at every step."""

    parents: np.ndarray  # (T,) int64, -1 for the root
    _derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def chain(cls, length: int) -> "Tree":
        return _chain(int(length))

    def __post_init__(self):
        p = np.array(self.parents, dtype=np.int64)
        p.flags.writeable = False
        object.__setattr__(self, "parents", p)
        if p.ndim != 1 or p.size == 0 or p[0] != -1:
            raise InputError("tree: parents must be a non-empty 1-D list starting with -1 (the root)")
        if np.any(p[1:] < 0) or np.any(p[1:] >= np.arange(1, p.size)):
            raise InputError("tree: every node's parent must come before it (topological order), only node 0 is a root")

    @property
    def size(self) -> int:
        return int(self.parents.size)

    def _once(self, key: str, make):
        if key not in self._derived:
            value = make()
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
            self._derived[key] = value
        return self._derived[key]

    def depths(self) -> np.ndarray:
        def make():
            depth = np.zeros(self.size, np.int64)
            for i in range(1, self.size):
                depth[i] = depth[self.parents[i]] + 1
            return depth
        return self._once("depths", make)

    def ancestor_mask(self) -> np.ndarray:
        """(T, T) bool: node i sees node j when j is i or one of its ancestors."""
        def make():
            mask = np.eye(self.size, dtype=bool)
            for i in range(1, self.size):
                mask[i] |= mask[self.parents[i]]
            return mask
        return self._once("ancestor_mask", make)

    def packed_mask(self) -> np.ndarray:
        """(T, ceil(T/32)) int32, bit j % 32 of word j // 32 in row i = node i sees node j."""
        return pack_mask(self.ancestor_mask())

    def children(self) -> tuple[tuple[int, ...], ...]:
        """Each node's children, in node order."""
        def make():
            kids: list[list[int]] = [[] for _ in range(self.size)]
            for i in range(1, self.size):
                kids[self.parents[i]].append(i)
            return tuple(map(tuple, kids))
        return self._once("children", make)

    def depth_first(self) -> tuple["Tree", np.ndarray]:
        """This tree with its nodes depth first, each node's children in node order, and each
        node's index in it: the first chain (the root, its first child, that child's first
        child, ...) comes first, a causal prefix. A chain is its own depth-first order."""
        def make():
            kids, order, stack = self.children(), [], [0]
            while stack:
                node = stack.pop()
                order.append(node)
                stack.extend(reversed(kids[node]))
            order = np.asarray(order, np.int64)
            row = np.empty_like(order)
            row[order] = np.arange(order.size)
            row.flags.writeable = False
            if np.array_equal(order, np.arange(order.size)):
                return self, row
            return Tree(np.concatenate([[-1], row[self.parents[order[1:]]]])), row
        return self._once("depth_first", make)

    def path(self, node: int) -> list[int]:
        """Root ... node."""
        out = [int(node)]
        while self.parents[out[-1]] >= 0:
            out.append(int(self.parents[out[-1]]))
        return out[::-1]


@lru_cache(maxsize=256)
def _chain(length: int) -> Tree:
    return Tree(np.arange(-1, length - 1, dtype=np.int64))


def pack_mask(mask: np.ndarray) -> np.ndarray:
    rows, cols = mask.shape
    words = (cols + 31) // 32
    padded = np.zeros((rows, words * 32), bool)
    padded[:, :cols] = mask
    bits = padded.reshape(rows, words, 32).astype(np.uint64) << np.arange(32, dtype=np.uint64)
    return bits.sum(axis=2).astype(np.uint32).view(np.int32)


def unpack_mask(packed: np.ndarray, cols: int) -> np.ndarray:
    words = packed.view(np.uint32).astype(np.uint64)
    bits = (words[:, :, None] >> np.arange(32, dtype=np.uint64)) & 1
    return bits.reshape(packed.shape[0], -1)[:, :cols].astype(bool)


@dataclass(frozen=True)
class MedusaBuffers:
    choices: list[tuple[int, ...]]  # sorted by (depth, ranks)
    tree: Tree                      # slot 0 = root, slot k = choices[k-1]
    tree_indices: np.ndarray        # (T,) index into [root, head0 top-k, head1 top-k, ...]
    position_ids: np.ndarray        # (T,) depth of each slot
    retrieve_indices: np.ndarray    # (leaves, max_depth + 1) slots of each root-to-leaf path, -1 padded
    top_k: int


def medusa_buffers(choices, top_k: int = 10, num_heads: int | None = None) -> MedusaBuffers:
    """Medusa's buffers for ``choices`` (e.g. ``[[0], [0, 0], [1]]``), checked first."""
    try:
        paths = [tuple(int(r) for r in c) for c in choices]
    except (TypeError, ValueError):
        raise InputError("medusa_choices: expected a list of lists of ranks, e.g. [[0], [0, 0], [1]]") from None
    if not paths or any(len(p) == 0 for p in paths):
        raise InputError("medusa_choices: expected a non-empty list of non-empty rank paths")
    if len(set(paths)) != len(paths):
        dup = next(p for p in paths if paths.count(p) > 1)
        raise InputError(f"medusa_choices: path {list(dup)} appears twice")
    known = set(paths)
    for p in paths:
        if any(r < 0 or r >= top_k for r in p):
            raise InputError(f"medusa_choices: path {list(p)} has a rank outside 0..{top_k - 1} (top-k is {top_k})")
        if len(p) > 1 and p[:-1] not in known:
            raise InputError(f"medusa_choices: path {list(p)} skips a level: its parent {list(p[:-1])} is not in the tree")
        if num_heads is not None and len(p) > num_heads:
            raise InputError(f"medusa_choices: path {list(p)} is {len(p)} deep but the bundle has {num_heads} Medusa heads")
    paths.sort(key=lambda p: (len(p), p))
    slot = {p: i + 1 for i, p in enumerate(paths)}
    parents = np.array([-1] + [slot[p[:-1]] if len(p) > 1 else 0 for p in paths], np.int64)
    tree_indices = np.array([0] + [p[-1] + top_k * (len(p) - 1) + 1 for p in paths], np.int64)
    position_ids = np.array([0] + [len(p) for p in paths], np.int64)
    # Leaves, walking the sorted paths backwards as Medusa does (so rows come out in its order).
    rows, seen = [], set()
    for p in reversed(paths):
        if p in seen:
            continue
        rows.append([0] + [slot[p[:d]] for d in range(1, len(p) + 1)])
        seen.update(p[:d] for d in range(1, len(p) + 1))
    depth = max(map(len, rows))
    retrieve = np.array([r + [-1] * (depth - len(r)) for r in rows], np.int64)
    return MedusaBuffers(paths, Tree(parents), tree_indices, position_ids, retrieve, top_k)
