"""Fused decoder attention in Triton, FlashAttention-2 style, with the contract of the decoder
graph's ``edgert::attention`` op (exporters/llm/attention.py) over a fixed-capacity KV cache.

* ``q`` [B, Hq, T, D]: the T new tokens (RoPE applied); ``k_cache`` / ``v_cache``
  [B, Hkv, C, D] hold row b's past at positions 0 .. P_b-1, with the past lengths P an int32
  device array [B] (rows of a batch may differ; the kernel reads them, so a TensorRT plugin
  never synchronises to learn them). ``_append`` writes the new tokens' K/V at P_b .. P_b+T-1
  (in place, the cache is the plugin's aliased input/output); ``_attention_fwd`` then reads
  past ‖ new from the cache. Positions at or past the capacity C are never read or written.
* Visibility: the P past positions are always visible; among the new tokens either causal
  (token i sees j <= i) or a tree, given as the bit-packed int32 mask ``[T, ceil(T/32)]``
  (bit j of row i set when new token i sees new token j) of TensorRT-LLM / Edge-LLM and
  runtime/llm/tree.py. Nodes come in topological order (a parent before its children), so a
  row never sees a later token, which lets a tile skip the keys past its last row.
* Grouped-query heads: query head h reads kv head h // (Hq / Hkv).
* Online softmax per row over KV tiles, running max / sum / accumulator in fp32 whatever the
  input dtype (fp16, bf16, fp32); a row with no visible key gives zeros, not NaN (the running
  max is guarded before it is subtracted).
* Split-KV (Flash-Decoding): with ``num_splits`` > 1 each program covers one KV range and
  writes a normalised partial output and its log-sum-exp; ``_merge`` combines them
  (LSE = log Σ exp(LSE_s), O = Σ exp(LSE_s − LSE) O_s), for few queries over a long cache.
  Splits cover the capacity C (known from shapes); a split that starts past P_b + T does no
  work and writes LSE = −inf, which the merge weighs 0.

Run on the CPU with ``TRITON_INTERPRET=1`` (CI does); the build AOT-compiles the same source.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl


@triton.jit
def _append(New, Cache, PastLen, s_nb, s_nh, s_nt, s_cb, s_ch, s_cc, T, H, C,
            HEAD_D: tl.constexpr, BLOCK_T: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, HEAD_D)
    dst = tl.load(PastLen + b) + offs_t
    ok = (offs_t < T) & (dst < C)
    x = tl.load(New + b * s_nb + h * s_nh + offs_t[:, None] * s_nt + offs_d[None, :], mask=ok[:, None])
    tl.store(Cache + b * s_cb + h * s_ch + dst[:, None] * s_cc + offs_d[None, :], x, mask=ok[:, None])


@triton.jit
def _attention_fwd(Q, K, V, Out, Lse, Mask, PastLen,
                   s_qb, s_qh, s_qt, s_kb, s_kh, s_kc, s_vb, s_vh, s_vc, s_ob, s_oh, s_os, s_ot,
                   s_mt, s_lb, s_lh, s_ls,
                   sm_scale, T, C, HQ, GROUP, KV_PER_SPLIT,
                   TREE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // HQ
    h = pid_bh % HQ
    kvh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    q = tl.load(Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    P = tl.load(PastLen + b)
    start = pid_s * KV_PER_SPLIT
    # New token i sees new tokens j <= i at most (causal, and a tree's nodes come in topological
    # order): keys past this tile's last row are never visible, so the loop stops there.
    last_row = tl.minimum((pid_m + 1) * BLOCK_M, T)
    end = tl.minimum(tl.minimum(start + KV_PER_SPLIT, P + last_row), C)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        col_ok = offs_n < end
        k = tl.load(K + b * s_kb + kvh * s_kh + offs_n[None, :] * s_kc + offs_d[:, None], mask=col_ok[None, :], other=0.0)
        s = tl.dot(q, k, out_dtype=tl.float32) * sm_scale
        new_j = offs_n - P  # index among the new tokens, < 0 for the past
        if TREE:
            j = tl.where(new_j >= 0, new_j, 0)
            word = tl.load(Mask + offs_m[:, None] * s_mt + (j // 32)[None, :],
                           mask=row_ok[:, None] & (new_j >= 0)[None, :] & col_ok[None, :], other=0)
            visible = (new_j < 0)[None, :] | (((word >> (j % 32)[None, :]) & 1) != 0)
        else:
            visible = new_j[None, :] <= offs_m[:, None]
        visible = visible & col_ok[None, :] & row_ok[:, None]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # an all-masked row so far: no -inf - -inf
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * s_vb + kvh * s_vh + offs_n[:, None] * s_vc + offs_d[None, :], mask=col_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
        m_i = m_new
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_ptr = Out + b * s_ob + h * s_oh + pid_s * s_os + offs_m[:, None] * s_ot + offs_d[None, :]
    tl.store(o_ptr, out.to(Out.dtype.element_ty), mask=row_ok[:, None])
    if SPLIT:
        lse = tl.where(seen, m_i + tl.log(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(Lse + b * s_lb + h * s_lh + pid_s * s_ls + offs_m, lse, mask=row_ok)


@triton.jit
def _merge(Parts, Lse, Out, s_pb, s_ph, s_ps, s_pt, s_lb, s_lh, s_ls, s_ob, s_oh, s_ot,
           T, HQ, SPLITS, BLOCK_M: tl.constexpr, HEAD_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_D)
    row_ok = offs_m < T
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(0, SPLITS):
        top = tl.maximum(top, tl.load(Lse + b * s_lb + h * s_lh + s * s_ls + offs_m, mask=row_ok, other=float("-inf")))
    safe = tl.where(top == float("-inf"), 0.0, top)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_D], tl.float32)
    for s in range(0, SPLITS):
        w = tl.exp(tl.load(Lse + b * s_lb + h * s_lh + s * s_ls + offs_m, mask=row_ok, other=float("-inf")) - safe)
        part = tl.load(Parts + b * s_pb + h * s_ph + s * s_ps + offs_m[:, None] * s_pt + offs_d[None, :],
                       mask=row_ok[:, None], other=0.0)
        acc += w[:, None] * part.to(tl.float32)
        total += w
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    tl.store(Out + b * s_ob + h * s_oh + offs_m[:, None] * s_ot + offs_d[None, :], out.to(Out.dtype.element_ty),
             mask=row_ok[:, None])


def attention(q, k_cache, v_cache, past, tree_mask=None, num_splits: int = 1, k_new=None, v_new=None,
              block_m: int = 16, block_n: int = 16):
    """Launch on torch tensors (CPU under TRITON_INTERPRET=1, or CUDA); returns [B, Hq, T, D].

    ``past``: an int, or an int32 tensor [B] of per-row past lengths. With ``k_new`` / ``v_new``
    [B, Hkv, T, D] the new tokens' K/V are first appended to the caches at the past lengths (as
    the TensorRT plugin does); without them the caches must already hold them.
    """
    import torch

    batch, hq, new, dim = q.shape
    hkv, capacity = k_cache.shape[1], k_cache.shape[2]
    past_len = (past.to(torch.int32) if torch.is_tensor(past)
                else torch.full((batch,), past, dtype=torch.int32, device=q.device))
    if hq % hkv or dim & (dim - 1) or dim < 16:
        raise ValueError(f"attention: q {tuple(q.shape)}, cache {tuple(k_cache.shape)}: "
                         "heads must group and head_dim be a power of two >= 16")
    if int(past_len.max()) + new > capacity:
        raise ValueError(f"attention: past {int(past_len.max())} + {new} new tokens exceed the cache capacity {capacity}")
    for t in (q, k_cache, v_cache):
        if t.stride(-1) != 1:
            raise ValueError("attention: the last dimension must be contiguous")
    if tree_mask is not None and tuple(tree_mask.shape) != (new, (new + 31) // 32):
        raise ValueError(f"attention: tree mask {tuple(tree_mask.shape)}, expected ({new}, {(new + 31) // 32})")
    if k_new is not None:
        for src, cache in ((k_new, k_cache), (v_new, v_cache)):
            _append[(triton.cdiv(new, block_m), batch * hkv)](
                src, cache, past_len, src.stride(0), src.stride(1), src.stride(2),
                cache.stride(0), cache.stride(1), cache.stride(2), new, hkv, capacity, HEAD_D=dim, BLOCK_T=block_m)
    per_split = triton.cdiv(triton.cdiv(capacity, num_splits), block_n) * block_n
    splits = triton.cdiv(capacity, per_split)
    mask = tree_mask if tree_mask is not None else torch.zeros(1, 1, dtype=torch.int32, device=q.device)
    out = torch.empty_like(q)
    parts = torch.empty(batch, hq, splits, new, dim, dtype=torch.float32, device=q.device) if splits > 1 else out.unsqueeze(2)
    lse = torch.empty(batch, hq, splits, new, dtype=torch.float32, device=q.device)
    grid = (triton.cdiv(new, block_m), batch * hq, splits)
    _attention_fwd[grid](
        q, k_cache, v_cache, parts, lse, mask, past_len,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        parts.stride(0), parts.stride(1), parts.stride(2), parts.stride(3), mask.stride(0),
        lse.stride(0), lse.stride(1), lse.stride(2),
        1.0 / math.sqrt(dim), new, capacity, hq, hq // hkv, per_split,
        TREE=tree_mask is not None, SPLIT=splits > 1, BLOCK_M=block_m, BLOCK_N=block_n, HEAD_D=dim)
    if splits > 1:
        _merge[(triton.cdiv(new, block_m), batch * hq)](
            parts, lse, out, parts.stride(0), parts.stride(1), parts.stride(2), parts.stride(3),
            lse.stride(0), lse.stride(1), lse.stride(2), out.stride(0), out.stride(1), out.stride(2),
            new, hq, splits, BLOCK_M=block_m, HEAD_D=dim)
    return out
