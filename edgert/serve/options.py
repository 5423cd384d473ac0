"""The server's settings, one dataclass that the CLI, :func:`edgert.serve.app` and every
deployment share."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edgert.runtime.errors import EdgertError

API_KEY_ENV = "EDGERT_API_KEY"


@dataclass(frozen=True)
class ServeOptions:
    """``replicas``: replicas of each model's deployment (Ray places them over the cluster's
    nodes); ``replicas_of``: a different number for some models, by name. ``cpus_per_replica``: the CPUs each replica reserves from Ray, and its ONNX Runtime
    threads (rounded up). ``max_batch`` / ``batch_wait_ms``: detection requests batched on a
    replica into one graph run (1: off). ``max_upload_bytes``: the largest request body.
    ``session_ttl_s``: a stream idle this long is closed. ``strategy`` / ``strategy_options``:
    the decoding a request gets when it names none. ``drafts``: draft-model bundles by name, the
    only ones a request's ``strategy_options`` may pick (a served client names nothing on the
    server's disk). ``api_key``: when set, every request needs ``Authorization: Bearer <key>``.
    ``trusted_keys``: public key files every bundle must be signed by, drafts included (empty:
    the trust store configured on each node). ``max_queued``: requests a model's deployment holds
    waiting beyond those its replicas serve; past it a request is refused at once with 429 and
    ``Retry-After`` (-1: no bound)."""

    replicas: int = 1
    replicas_of: dict = field(default_factory=dict)
    cpus_per_replica: float = 1.0
    api_key: str | None = None
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    max_upload_bytes: int = 64 << 20
    session_ttl_s: float = 300.0
    strategy: str = "ar"
    strategy_options: dict = field(default_factory=dict)
    drafts: dict = field(default_factory=dict)
    backend: str = "onnxruntime"
    device: str = "cpu"
    trusted_keys: tuple[str, ...] = ()
    max_queued: int = 64

    def __post_init__(self):
        def bad(text: str):
            raise EdgertError(f"serve: {text}")

        if not isinstance(self.replicas, int) or self.replicas < 1:
            bad(f"replicas must be a positive integer, got {self.replicas!r}")
        for name, count in self.replicas_of.items():
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                bad(f"replicas of {name!r} must be a positive integer, got {count!r}")
        if not (isinstance(self.cpus_per_replica, (int, float)) and 0 < self.cpus_per_replica <= 1024):
            bad(f"cpus_per_replica must be in (0, 1024], got {self.cpus_per_replica!r}")
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= 1024:
            bad(f"max_batch must be an integer in [1, 1024], got {self.max_batch!r}")
        if not 0 <= self.batch_wait_ms <= 10_000:
            bad(f"batch_wait_ms must be in [0, 10000], got {self.batch_wait_ms!r}")
        if not isinstance(self.max_upload_bytes, int) or self.max_upload_bytes < 1:
            bad(f"max_upload_bytes must be a positive integer, got {self.max_upload_bytes!r}")
        if not self.session_ttl_s > 0:
            bad(f"session_ttl_s must be > 0, got {self.session_ttl_s!r}")
        if not isinstance(self.max_queued, int) or isinstance(self.max_queued, bool) or not (
                self.max_queued == -1 or 1 <= self.max_queued <= 1 << 20):
            bad(f"max_queued must be -1 (no bound) or an integer in [1, 1048576], got {self.max_queued!r}")
        if self.api_key is not None and not self.api_key.strip():
            bad("the API key is empty")
        for name, path in self.drafts.items():
            if not (isinstance(name, str) and name and "/" not in name and isinstance(path, str) and path):
                bad(f"draft {name!r}={path!r}: expected NAME=BUNDLE, a name without '/' and a bundle folder")

    def replicas_for(self, name: str) -> int:
        return self.replicas_of.get(name, self.replicas)

    @property
    def keys(self):
        """``trusted_keys`` as the runtime's loaders take them."""
        return list(self.trusted_keys) or None

    @property
    def threads(self) -> int:
        """ONNX Runtime intra-op threads of one replica: the CPUs it reserved."""
        return max(1, math.ceil(self.cpus_per_replica))
