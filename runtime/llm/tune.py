"""``edgert tune-tree``: a Medusa tree for this model, these texts and this device.

1. Head accuracy, as Medusa's heads_accuracy.py measures it: the bundle decodes prompts cut
   from sample text greedily; at every step each head's top-k is compared with the token the
   model actually produced k + 2 positions later: acc[k, r] = how often rank r of head k hit.
2. The tree grows greedily by expected accepted length, as Medusa's gen_results.py derives its
   trees: E(path) = Π_d acc[d, rank_d] (depths taken as independent); from [0], repeatedly add
   the frontier node (next sibling or first child of a tree node) with the largest E.
3. What Medusa leaves out: the cost. Verify latency is measured on this bundle and backend for
   tree sizes 1..max_nodes (over a cache of typical length), and the tree size that maximises
   expected tokens per second, (1 + Σ E) / latency(size), is chosen: on a CPU a 64-node pass
   costs several single-token steps, on a GPU it is nearly free.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..progress import Bar
from .generator import Decoding, GenerationStats, Generator
from .sampling import Sampler, SamplingParams
from .contract import heads_of


@dataclass
class TreeChoice:
    choices: list[list[int]]
    expected_tokens: float       # per verify pass, root included
    latency_ms: float
    tokens_per_s: float
    table: list[tuple[int, float, float, float]]  # size, expected tokens, latency ms, tokens/s


def head_accuracy(gen: Generator, prompts: list[list[int]], new_tokens: int, top_k: int) -> np.ndarray:
    """acc[k, r]: fraction of steps where head k's rank-r candidate was the token k + 2 ahead."""
    if "medusa" not in heads_of(gen.session.info):
        raise InputError("tune-tree needs a bundle exported with Medusa heads (--opt medusa=...)")
    medusa = Decoding(gen.session, [0], Sampler(SamplingParams()), 1, GenerationStats(), resources=gen.resources).head("medusa")
    heads = medusa.num_heads
    hits, count = np.zeros((heads, top_k)), np.zeros(heads)
    bar = Bar("measuring head accuracy (greedy decoding of the samples)", len(prompts))
    for n, prompt in enumerate(prompts):
        d = Decoding(gen.session, prompt, Sampler(SamplingParams()), len(prompt) + new_tokens, GenerationStats())
        logits = d.prefill()
        produced, guesses = [], []
        for _ in range(new_tokens):
            guesses.append(np.argsort(-medusa(d.hidden[-1]), axis=1)[:, :top_k])  # (heads, k) at this position
            token = int(np.argmax(logits))
            produced.append(token)
            logits = d.step(token)
        for t, guess in enumerate(guesses):
            for k in range(heads):
                ahead = t + k + 1  # guess made after token t-1; head k aims at produced[t + k + 1]
                if ahead < len(produced):
                    count[k] += 1
                    hit = np.flatnonzero(guess[k] == produced[ahead])
                    if hit.size:
                        hits[k, hit[0]] += 1
        bar.update(n + 1)
    return hits / np.maximum(count, 1)[:, None]


def grow_tree(acc: np.ndarray, max_nodes: int) -> list[tuple[tuple[int, ...], float]]:
    """Nodes in the order Medusa's explore_graph adds them, with each node's E."""
    heads, top_k = acc.shape

    def expect(path):
        return float(np.prod([acc[d, r] for d, r in enumerate(path)]))

    frontier = [(-expect((0,)), (0,))]
    added: list[tuple[tuple[int, ...], float]] = []
    seen = {(0,)}
    while frontier and len(added) < max_nodes:
        neg, path = heapq.heappop(frontier)
        added.append((path, -neg))
        nexts = []
        if path[-1] + 1 < top_k:
            nexts.append(path[:-1] + (path[-1] + 1,))
        if len(path) < heads:
            nexts.append(path + (0,))
        for nxt in nexts:
            if nxt not in seen:
                seen.add(nxt)
                heapq.heappush(frontier, (-expect(nxt), nxt))
    return added


def verify_latency(session, sizes: list[int], prefix: int, repeats: int = 5) -> dict[int, float]:
    """Median seconds of one pass of the decoder ``session`` over ``size`` tree tokens after
    ``prefix`` cached ones."""
    rng = np.random.default_rng(0)
    out = {}
    prompt = rng.integers(0, session.vocab_size, prefix).tolist()
    for size in sizes:
        d = Decoding(session, prompt, Sampler(SamplingParams()), prefix + size + 1, GenerationStats())
        d.prefill()
        tokens = rng.integers(0, session.vocab_size, size)
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            d.forward(tokens, mask=np.tri(size, dtype=bool), logits_at=range(size))
            times.append(time.perf_counter() - t0)
            d.cache.truncate(prefix)
        out[size] = float(np.median(times[1:]))
    return out


def tune_tree(gen: Generator, prompts: list[list[int]], new_tokens: int = 64, top_k: int = 10, max_nodes: int = 63,
              prefix: int = 256) -> TreeChoice:
    acc = head_accuracy(gen, prompts, new_tokens, top_k)
    nodes = grow_tree(acc, max_nodes)
    sizes = sorted({1, *[n + 1 for n in range(1, len(nodes) + 1) if n + 1 in (2, 4, 8, 12, 16, 24, 32, 48, 64) or n == len(nodes)]})
    latency = verify_latency(gen.session, sizes, min(prefix, gen.context - max(sizes) - 1))
    measured = np.array(sorted(latency))
    table, best = [], None
    cumulative = np.cumsum([e for _, e in nodes])
    for n in range(0, len(nodes) + 1):
        size = n + 1  # tree tokens: root + n nodes
        expected = 1.0 + (cumulative[n - 1] if n else 0.0)
        seconds = float(np.interp(size, measured, [latency[s] for s in measured]))
        row = (size, expected, seconds * 1e3, expected / seconds)
        table.append(row)
        if best is None or row[3] > best[3]:
            best = row
    size = best[0]
    choices = [list(p) for p, _ in nodes[: size - 1]] or [[0]]
    return TreeChoice(choices, best[1], best[2], best[3], table)
