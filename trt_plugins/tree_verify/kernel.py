"""Tree verification in Triton, entirely on the device: the contract of runtime/llm/verify.py
(greedy and Medusa's typical acceptance; speculative sampling stays with the numpy op).

``_node_stats`` (one program per node and batch row) streams the node's vocabulary row once
or twice: argmax (first index on ties), log-sum-exp of logits / T and, for typical acceptance,
the threshold min(ε, δ·exp(−H)) with Medusa's H = −Σ p·log(p + 1e-5). ``_accept`` (one program
per batch row) walks the nodes in topological order — a node is accepted when its parent is
and its token is the parent's argmax (greedy) or plausible at the parent (typical) —, picks
the deepest accepted node (ties: larger Σ log p, then the first), writes the root-to-node path
and draws the bonus token: the argmax, or by inverse CDF with uniform u0 from the last node's
plausible tokens. Scratch arrays (accepted, depth, score) live in global memory: T is small
(≤ 64 for the trees in use) and one program walks them.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _node_stats(Logits, Best, Lse, Threshold, s_lb, s_lt, V, T, inv_temperature, epsilon, delta,
                TYPICAL: tl.constexpr, BLOCK_V: tl.constexpr):
    node = tl.program_id(0)
    b = tl.program_id(1)
    row = Logits + b * s_lb + node * s_lt
    m = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    best = tl.zeros([], tl.int32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temperature
        tile_max = tl.max(x, 0)
        tile_arg = tl.argmax(x, 0)
        best = tl.where(tile_max > m, (v0 + tile_arg).to(tl.int32), best)  # strict: the first index wins ties
        m_new = tl.maximum(m, tile_max)
        total = total * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), 0)
        m = m_new
    lse = m + tl.log(total)
    tl.store(Best + b * T + node, best)
    tl.store(Lse + b * T + node, lse)
    if TYPICAL:
        entropy = tl.zeros([], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            x = tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temperature
            p = tl.exp(x - lse)
            entropy -= tl.sum(tl.where(offs < V, p * tl.log(p + 1e-5), 0.0), 0)
        tl.store(Threshold + b * T + node, tl.minimum(epsilon, delta * tl.exp(-entropy)))


@triton.jit
def _accept(Tokens, Parents, Logits, Best, Lse, Threshold, Accepted, Depth, Score, Path, Length, Bonus, Uniform,
            s_lb, s_lt, V, T, inv_temperature, TYPICAL: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0)
    base = b * T
    tl.store(Accepted + base, 1)
    tl.store(Depth + base, 0)
    tl.store(Score + base, 0.0)
    last = 0
    last_depth = 0
    last_score = 0.0
    for i in range(1, T):
        parent = tl.load(Parents + base + i)
        token = tl.load(Tokens + base + i)
        parent_ok = tl.load(Accepted + base + parent)
        if TYPICAL:
            x = tl.load(Logits + b * s_lb + parent * s_lt + token).to(tl.float32) * inv_temperature
            prob = tl.exp(x - tl.load(Lse + base + parent))
            ok = prob > tl.load(Threshold + base + parent)
            score = tl.load(Score + base + parent) + tl.log(tl.maximum(prob, 1e-30))
        else:
            ok = token == tl.load(Best + base + parent)
            score = 0.0
        accepted = (parent_ok != 0) & ok
        depth = tl.load(Depth + base + parent) + 1
        tl.store(Accepted + base + i, accepted.to(tl.int32))
        tl.store(Depth + base + i, depth)
        tl.store(Score + base + i, score)
        better = accepted & ((depth > last_depth) | ((depth == last_depth) & (score > last_score)))
        last = tl.where(better, i, last)
        last_depth = tl.where(better, depth, last_depth)
        last_score = tl.where(better, score, last_score)
    length = last_depth + 1
    tl.store(Length + b, length)
    node = last
    for k in range(0, length):
        tl.store(Path + base + length - 1 - k, node)
        node = tl.load(Parents + base + node)
    if TYPICAL:  # inverse CDF over the last node's plausible tokens
        lse = tl.load(Lse + base + last)
        threshold = tl.load(Threshold + base + last)
        row = Logits + b * s_lb + last * s_lt
        mass = tl.zeros([], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            p = tl.exp(tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temperature - lse)
            mass += tl.sum(tl.where(p > threshold, p, 0.0), 0)
        target = tl.load(Uniform + b) * mass
        below = tl.zeros([], tl.int32)  # tokens whose cumulative mass is <= target
        running = tl.zeros([], tl.float32)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + tl.arange(0, BLOCK_V)
            p = tl.exp(tl.load(row + offs, mask=offs < V, other=float("-inf")).to(tl.float32) * inv_temperature - lse)
            allowed = tl.where(p > threshold, p, 0.0)
            cdf = running + tl.cumsum(allowed, 0)
            below += tl.sum(((cdf <= target) & (offs < V)).to(tl.int32), 0)
            running += tl.sum(allowed, 0)
        tl.store(Bonus + b, tl.minimum(below, V - 1))
    else:
        tl.store(Bonus + b, tl.load(Best + base + last))


def tree_verify(tokens, parents, logits, mode: str = "greedy", temperature: float = 1.0, epsilon: float = 0.09,
                delta: float = 0.3, uniform=None, block_v: int = 128):
    """tokens / parents [B, T] int32, logits [B, T, V] -> (path [B, T] int32, -1 padded; length [B]; bonus [B])."""
    import torch

    batch, nodes, vocab = logits.shape
    if mode not in ("greedy", "typical"):
        raise ValueError(f"tree_verify: mode {mode!r}; the kernel does greedy and typical")
    device = logits.device
    i32 = dict(dtype=torch.int32, device=device)
    f32 = dict(dtype=torch.float32, device=device)
    best, lse, threshold = torch.empty(batch, nodes, **i32), torch.empty(batch, nodes, **f32), torch.empty(batch, nodes, **f32)
    typical = mode == "typical"
    inv_t = 1.0 / temperature if typical else 1.0
    _node_stats[(nodes, batch)](logits, best, lse, threshold, logits.stride(0), logits.stride(1), vocab, nodes, inv_t,
                                epsilon, delta, TYPICAL=typical, BLOCK_V=block_v)
    accepted, depth, score = torch.empty(batch, nodes, **i32), torch.empty(batch, nodes, **i32), torch.empty(batch, nodes, **f32)
    path = torch.full((batch, nodes), -1, **i32)
    length, bonus = torch.empty(batch, **i32), torch.empty(batch, **i32)
    u = uniform if uniform is not None else torch.zeros(batch, **f32)
    _accept[(batch,)](tokens, parents, logits, best, lse, threshold, accepted, depth, score, path, length, bonus, u,
                      logits.stride(0), logits.stride(1), vocab, nodes, inv_t, TYPICAL=typical, BLOCK_V=block_v)
    return path, length, bonus
