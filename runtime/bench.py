"""Latency measurement shared by ``edgert bench`` and benchmarks/."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class Stats:
    label: str
    latencies_s: list[float]
    batch: int

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 50) * 1e3)

    @property
    def p90_ms(self) -> float:
        return float(np.percentile(self.latencies_s, 90) * 1e3)

    @property
    def throughput(self) -> float:
        """Items (clips) per second at this batch size, from the mean latency."""
        return self.batch / float(np.mean(self.latencies_s))

    def line(self) -> str:
        return (f"{self.label:<44} p50 {self.p50_ms:9.2f} ms   p90 {self.p90_ms:9.2f} ms   "
                f"{self.throughput:8.2f} clips/s")


def measure(label: str, fn: Callable[[], object], iters: int, warmup: int, batch: int) -> Stats:
    for _ in range(warmup):
        fn()
    latencies = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - t0)
    return Stats(label, latencies, batch)
