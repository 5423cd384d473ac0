"""KV-cache compaction after a tree verify, in Triton, in place: the accepted path's entries
(cache positions ``select``, increasing, the first at or after ``dst_start``) move to
positions dst_start, dst_start + 1, ... of the same cache.

The naive parallel copy races: with select [0, 2, 3] -> [0, 1, 2], slot 2 is one element's
destination and another's source. Here each program owns a disjoint (batch, head, head_dim
block) slice and copies the path in increasing order: destination j is below every later
source (sources increase and each is >= its destination), so no read sees a value written in
this pass. Parallelism comes from batch x heads x head_dim blocks, which is plenty for the
≤ 64 positions of a path.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _compact(Cache, Select, s_cb, s_ch, s_cs, n, dst_start, H, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = offs < HEAD_D
    base = Cache + b * s_cb + h * s_ch
    for j in range(0, n):
        src = tl.load(Select + j)
        values = tl.load(base + src * s_cs + offs, mask=ok)
        tl.store(base + (dst_start + j) * s_cs + offs, values, mask=ok)


def kv_compact(cache, select, dst_start: int, block_d: int = 32) -> None:
    """cache [B, H, C, D] (last dim contiguous), select [n] int32 increasing cache positions."""
    batch, heads, capacity, dim = cache.shape
    n = select.numel()
    if n and (int(select.min()) < dst_start or int(select.max()) >= capacity):
        raise ValueError(f"kv_compact: select must lie in [{dst_start}, {capacity})")
    if n > 1 and not bool((select[1:] > select[:-1]).all()):
        raise ValueError("kv_compact: select must be strictly increasing")
    _compact[(batch * heads, triton.cdiv(dim, block_d))](cache, select, cache.stride(0), cache.stride(1), cache.stride(2),
                                                        n, dst_start, heads, HEAD_D=dim, BLOCK_D=block_d)
