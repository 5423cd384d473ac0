"""The KV cache: preallocated buffers the decoder graph reads as ``past_key_values.*`` and
writes as ``present.*`` through ONNX Runtime IO binding, so no step allocates or copies
beyond what the graph itself does.

The graph takes the past as a dense (B, H, P, D) tensor and returns past ‖ new as a dense
(B, H, P+S, D) one. A dense prefix of a (B, H, capacity, D) buffer is not contiguous, so each
tensor has two flat buffers of capacity size: step t reads the first B·H·P·D elements of one
as the past and has ONNX Runtime write the present into the other; the two swap roles after
every call. Cache edits that speculation needs (truncate to a length, keep a chosen subset of
positions after a tree verify) are one gather from the current buffer into the other.

A graph exported with ``--opt kv_cache=in_place`` (the default; its past and present dims are
``capacity``) takes :class:`InPlaceKVCache` instead: one (B, H, capacity, D) buffer per tensor,
bound as both the past and the present (ONNX Runtime's GroupQueryAttention writes the new
positions into it), so the binding outlives the step and nothing is copied per token.
"""

from __future__ import annotations

import numpy as np


class _Cache:
    """What both caches share: the tensors' names and shape, the length, and the checks of the
    edits speculation makes."""

    in_place = False

    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, dtype):
        self.num_layers, self.batch, self.heads, self.head_dim = num_layers, batch, heads, head_dim
        self.dtype = np.dtype(dtype)
        self.past_names = [f"past_key_values.{i}.{p}" for i in range(num_layers) for p in ("key", "value")]
        self.present_names = [f"present.{i}.{p}" for i in range(num_layers) for p in ("key", "value")]
        self.capacity = self.length = 0

    def _kept(self, positions) -> np.ndarray:
        positions = np.asarray(positions, dtype=np.int64)
        if positions.size and (positions.min() < 0 or positions.max() >= self.length):
            raise ValueError(f"KV cache keep: positions outside 0..{self.length - 1}")
        return positions

    def _check_length(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"KV cache truncate: length {length} outside 0..{self.length}")

    def _check_room(self, new: int) -> None:
        if self.length + new > self.capacity:
            raise ValueError(f"KV cache overflow: {self.length} + {new} positions > capacity {self.capacity}")


class KVCache(_Cache):
    """Two dense buffers per tensor that swap roles every step (the ``concat`` graphs)."""

    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, dtype, capacity: int):
        super().__init__(num_layers, batch, heads, head_dim, dtype)
        self._buffers: list[list[np.ndarray]] = []
        self._current = 0
        self.reserve(capacity)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for pair in self._buffers for b in pair)

    def reserve(self, capacity: int) -> None:
        """Grow to hold ``capacity`` positions, keeping the cached ones (no-op if big enough)."""
        if capacity <= self.capacity:
            return
        size = self.batch * self.heads * capacity * self.head_dim
        old = [self.view(pair[self._current], self.length) for pair in self._buffers] if self._buffers else None
        self._buffers = [[np.empty(size, self.dtype), np.empty(size, self.dtype)] for _ in self.past_names]
        self._current, self.capacity = 0, capacity
        if old is not None:
            for pair, values in zip(self._buffers, old):
                self.view(pair[0], self.length)[...] = values

    def view(self, flat: np.ndarray, length: int) -> np.ndarray:
        return flat[: self.batch * self.heads * length * self.head_dim].reshape(self.batch, self.heads, length, self.head_dim)

    def past(self) -> dict[str, np.ndarray]:
        """The cached positions, (B, H, length, D) per past input."""
        return {name: self.view(pair[self._current], self.length) for name, pair in zip(self.past_names, self._buffers)}

    def present(self, new: int) -> dict[str, np.ndarray]:
        """Where the graph writes past ‖ ``new`` positions, (B, H, length + new, D) per output."""
        self._check_room(new)
        return {name: self.view(pair[1 - self._current], self.length + new)
                for name, pair in zip(self.present_names, self._buffers)}

    def advance(self, new: int) -> None:
        """The graph wrote its present: it becomes the past."""
        self._current = 1 - self._current
        self.length += new

    def keep(self, positions) -> None:
        """Keep only ``positions`` (cache indices, in the order given), e.g. the prefix plus the
        accepted path of a verified tree; they become positions 0..len-1."""
        positions = self._kept(positions)
        contiguous_prefix = positions.size and np.array_equal(positions, np.arange(positions.size))
        for pair in self._buffers:
            src = self.view(pair[self._current], self.length)
            dst = self.view(pair[1 - self._current], positions.size)
            if contiguous_prefix:
                dst[...] = src[:, :, : positions.size]
            else:
                np.take(src, positions, axis=2, out=dst)
        self._current = 1 - self._current
        self.length = int(positions.size)

    def truncate(self, length: int) -> None:
        """Drop every position from ``length`` on (rejected draft tokens)."""
        self._check_length(length)
        if length < self.length:
            self.keep(np.arange(length))


class InPlaceKVCache(_Cache):
    """One (B, H, capacity, D) buffer per cache tensor, the past and the present at once: the
    graph reads the first ``length`` positions and writes the new ones after them. ``version``
    changes when the buffers are replaced (growth), so a session knows to bind them again."""

    in_place = True

    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, dtype, capacity: int):
        super().__init__(num_layers, batch, heads, head_dim, dtype)
        self.version = 0
        self._buffers: list[np.ndarray] = []
        self.reserve(capacity)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._buffers)

    def reserve(self, capacity: int) -> None:
        """Grow to hold ``capacity`` positions, keeping the cached ones (no-op if big enough)."""
        if capacity <= self.capacity:
            return
        old = self._buffers
        self._buffers = [np.empty((self.batch, self.heads, capacity, self.head_dim), self.dtype) for _ in self.past_names]
        for new, values in zip(self._buffers, old):
            new[:, :, : self.length] = values[:, :, : self.length]
        self.capacity, self.version = capacity, self.version + 1

    def past(self) -> dict[str, np.ndarray]:
        """The whole buffers, by past input name (the graph reads the first ``length`` positions)."""
        return dict(zip(self.past_names, self._buffers))

    def present(self, new: int) -> dict[str, np.ndarray]:
        """The same buffers, by present output name (the graph writes ``new`` positions at ``length``)."""
        self._check_room(new)
        return dict(zip(self.present_names, self._buffers))

    def advance(self, new: int) -> None:
        """The graph wrote ``new`` positions after the cached ones."""
        self.length += new

    def keep(self, positions) -> None:
        """Keep only ``positions`` (cache indices, in the order given), e.g. the prefix plus the
        accepted path of a verified tree; they become positions 0..len-1. A prefix moves nothing."""
        positions = self._kept(positions)
        if not np.array_equal(positions, np.arange(positions.size)):
            for buffer in self._buffers:
                buffer[:, :, : positions.size] = buffer[:, :, positions]  # the gather copies before it writes
        self.length = int(positions.size)

    def truncate(self, length: int) -> None:
        """Drop every position from ``length`` on (rejected draft tokens)."""
        self._check_length(length)
        self.length = length
