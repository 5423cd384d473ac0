"""The detection replica: clips from many clients, batched into one graph run.

Each request's clip is decoded and preprocessed on its own (in a worker thread); the prepared
inputs then meet in Ray Serve's batching (``@serve.batch``: up to ``max_batch`` requests, waiting
at most ``batch_wait_ms`` for more), run once on the graph's batch axis
(:meth:`edgert.runtime.model.Model.run_batch`) and are split back. A batched run computes what
the single runs compute, item by item. Every reply says the size of the batch it ran in, and the
replica logs each batch.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ray import serve

from edgert.runtime.inputs import check_inputs
from edgert.runtime.model import load

from .errors import user_errors
from .options import ServeOptions
from .uploads import clip_source

log = logging.getLogger("ray.serve")


class DetectorReplica:
    def __init__(self, name: str, path: str, options: ServeOptions):
        self.name, self.options = name, options
        self.model = load(path, backend=options.backend, device=options.device, threads=options.threads,
                          trusted_keys=options.keys)
        self._batched.set_max_batch_size(options.max_batch)
        self._batched.set_batch_wait_timeout_s(options.batch_wait_ms / 1000)

    def _prepare(self, data: bytes) -> dict:
        with clip_source(data, self.options.max_upload_bytes) as source:
            return check_inputs(self.model.graph(), self.model.prepare(source))

    @user_errors
    async def detect(self, data: bytes, top_k: int) -> dict:
        t0 = time.perf_counter()
        feeds = await asyncio.to_thread(self._prepare, data)
        t1 = time.perf_counter()
        outputs, size, infer_s = await self._batched(feeds)
        prediction = self.model.rank(outputs, top_k=top_k)
        return {"model": self.name,
                "top": [{"label": label, "probability": p} for label, p in prediction.top],
                "timings": {"prepare_s": t1 - t0, "infer_s": infer_s, "batch_size": size,
                            "total_s": time.perf_counter() - t0}}

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _batched(self, feeds: list[dict]) -> list[tuple]:
        t0 = time.perf_counter()
        outputs = await asyncio.to_thread(self.model.run_batch, feeds)
        seconds = time.perf_counter() - t0
        log.info("edgert: %s ran a batch of %d in %.1f ms", self.name, len(feeds), seconds * 1e3)
        return [(out, len(feeds), seconds) for out in outputs]
