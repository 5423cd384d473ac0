"""KV-cache compaction after a tree verify, in Triton, in place, with the outputs of the tree
verification as its inputs: for batch row b, the accepted path's nodes ``path[b, :length[b]]``
(tree node indices, increasing from the root 0; node i sits at cache position P_b + i) move to
cache positions P_b, P_b + 1, ..., where P is the int32 array [B] of past lengths.

The naive parallel copy races: with path [0, 2, 3], slot P+2 is one element's destination and
another's source. Here each program owns a disjoint (batch, head, head_dim block) slice and
copies the path in increasing order: destination j is below every later source (the path
increases and path[j] >= j), so no read sees a value written in this pass. Parallelism comes
from batch x heads x head_dim blocks, which is plenty for the <= 64 nodes of a path. Elements
are moved as bits: the build compiles one kernel per element size, not per dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _compact(Cache, Path, Length, PastLen, s_cb, s_ch, s_cs, s_pb, H, C, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = offs < HEAD_D
    base = Cache + b * s_cb + h * s_ch
    past = tl.load(PastLen + b)
    for j in range(0, tl.load(Length + b)):
        src = past + tl.load(Path + b * s_pb + j)
        dst = past + j
        keep = ok & ((src + offs * 0) < C)
        values = tl.load(base + src * s_cs + offs, mask=keep)
        tl.store(base + dst * s_cs + offs, values, mask=keep)


def kv_compact(cache, path, length, past, block_d: int = 32) -> None:
    """cache [B, H, C, D] (last dim contiguous); path [B, n] int32 (-1 padded); length [B]; past int or [B]."""
    import torch

    batch, heads, capacity, dim = cache.shape
    past_len = (past.to(torch.int32) if torch.is_tensor(past)
                else torch.full((batch,), past, dtype=torch.int32, device=cache.device))
    for b in range(batch):
        n = int(length[b])
        nodes = path[b, :n]
        if n and (int(nodes[0]) != 0 or (n > 1 and not bool((nodes[1:] > nodes[:-1]).all()))):
            raise ValueError(f"kv_compact: row {b}: a path starts at the root 0 and strictly increases, got {nodes.tolist()}")
        if n and int(past_len[b]) + int(nodes[-1]) >= capacity:
            raise ValueError(f"kv_compact: row {b}: node {int(nodes[-1])} after past {int(past_len[b])} is beyond the capacity {capacity}")
    _compact[(batch * heads, triton.cdiv(dim, block_d))](cache, path, length, past_len, cache.stride(0), cache.stride(1),
                                                        cache.stride(2), path.stride(0), heads, capacity,
                                                        HEAD_D=dim, BLOCK_D=block_d)
