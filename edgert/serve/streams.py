"""Streaming sessions: a detector's recurrent state, held on one replica.

A session's state (TSM's shift buffers, a recurrent network's hidden state) lives in the
memory of the replica that opened it, and every later request of that session must reach that
replica. The routing uses Ray Serve's own request routing:

* a session's id holds the unique id of the replica that holds it (``MODEL~REPLICA~TOKEN``);
* the API sends each request of a session with that replica id as the request's
  ``multiplexed_model_id`` (a routing key Serve carries with the request and matches pending
  requests by);
* :class:`SessionRouter`, the deployment's request router, sends a request with a key to the
  replica of that id, and only there (it waits while that replica is busy). Requests that open a
  session go round-robin, so sessions spread over the replicas.

When the holder is gone (killed, crashed, scaled away; Serve starts a replacement with a new
id), its sessions' state is gone with it. The router then hands the request to any replica,
which sees that the id is not its own and answers 410 "session lost, reopen": never a
prediction from a fresh or another session's state. A request in flight when its replica dies
gets the same answer from the API.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from ray import serve
from ray.serve.request_router import MultiplexMixin, RequestRouter

from edgert.runtime.chain import check_extractor, extract_features
from edgert.runtime.usage import usage_of
from edgert.runtime.errors import InputError
from edgert.runtime.model import load
from edgert.runtime.video import iter_frames

from .errors import NotFound, SessionLost, user_errors
from .options import ServeOptions
from .uploads import clip_source, read_features

OPEN = "open"            # the routing key of a request that opens a session
FORGOTTEN = 4096         # how many expired / closed ids a replica remembers, for the error's wording


def parse_stream_id(stream_id: str) -> tuple[str, str]:
    """(model, holder) of a stream id ``MODEL~REPLICA~TOKEN``: the served model it streams and
    the unique id of the replica that holds it (its routing key). '~' is in neither a model name
    nor a replica id nor the token."""
    parts = stream_id.split("~")
    if len(parts) != 3 or not all(parts):
        raise NotFound(f"no stream {stream_id!r} (ids are what POST /v1/streams/MODEL returned)")
    return parts[0], parts[1]


class SessionRouter(MultiplexMixin, RequestRouter):
    """Routes a session's requests to the replica that holds it (see the module's docstring)."""

    def initialize_state(self, **kwargs):
        self._turn = 0

    async def choose_replicas(self, candidate_replicas, pending_request=None):
        key = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if key and key != OPEN:
            holder = [r for r in candidate_replicas if r.replica_id.unique_id == key]
            return [holder] if holder else [list(candidate_replicas)]
        if not candidate_replicas:
            return []
        self._turn += 1
        first = candidate_replicas[self._turn % len(candidate_replicas)]
        return [[first], [r for r in candidate_replicas if r is not first]]


@dataclass
class Session:
    stream: Any                  # runtime StreamSession
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    used: float = field(default_factory=time.monotonic)
    steps: int = 0
    extractor: Any = None        # a feature extractor's Model, for a frames-to-features chain
    frames: list = field(default_factory=list)  # chain: frames waiting for a full chunk


class StreamReplica:
    def __init__(self, name: str, path: str, options: ServeOptions, extractors: dict[str, str]):
        self.name, self.options, self.extractor_paths = name, options, extractors
        self.model = load(path, backend=options.backend, device=options.device, threads=options.threads,
                          trusted_keys=options.keys)
        self.me = serve.get_replica_context().replica_id.unique_id
        self.sessions: dict[str, Session] = {}
        self.forgotten: OrderedDict[str, str] = OrderedDict()  # id -> why it is gone
        self.extractors: dict[str, Any] = {}

    # ---- bookkeeping ---------------------------------------------------------------------
    def _forget(self, stream_id: str, why: str) -> None:
        self.sessions.pop(stream_id, None)
        self.forgotten[stream_id] = why
        while len(self.forgotten) > FORGOTTEN:
            self.forgotten.popitem(last=False)

    def _expire(self) -> None:
        limit = time.monotonic() - self.options.session_ttl_s
        for stream_id in [s for s, session in self.sessions.items() if session.used < limit and not session.lock.locked()]:
            self._forget(stream_id, f"expired after {self.options.session_ttl_s:g} s idle")

    def _session(self, stream_id: str) -> Session:
        self._expire()
        if parse_stream_id(stream_id)[1] != self.me:
            raise SessionLost(f"stream {stream_id!r}: session lost (the replica that held its state is gone); "
                              "open a new stream")
        session = self.sessions.get(stream_id)
        if session is None:
            why = self.forgotten.get(stream_id)
            raise NotFound(f"stream {stream_id!r}: {why}; open a new stream" if why else f"no stream {stream_id!r}")
        session.used = time.monotonic()
        return session

    def _extractor(self, name: str):
        if name not in self.extractor_paths:
            raise NotFound(f"extractor {name!r}: not a feature extractor served here "
                           f"(served: {sorted(self.extractor_paths) or 'none'})")
        if name not in self.extractors:
            extractor = load(self.extractor_paths[name], backend=self.options.backend, device=self.options.device,
                             threads=self.options.threads, trusted_keys=self.options.keys)
            check_extractor(extractor, self.model)
            self.extractors[name] = extractor
        return self.extractors[name]

    # ---- the API ---------------------------------------------------------------------------
    @user_errors
    async def open(self, window: int | None = None, top_k: int = 5, extractor: str | None = None) -> dict:
        self._expire()
        if extractor is not None and "feature_dim" not in self.model.bundle.preprocessing:
            raise InputError(f"extractor: model {self.name!r} takes frames; an extractor is for feature-based models")
        chain = self._extractor(extractor) if extractor is not None else None
        stream = self.model.stream(window=window, top_k=top_k)
        stream_id = f"{self.name}~{self.me}~{secrets.token_urlsafe(18)}"
        self.sessions[stream_id] = Session(stream, extractor=chain)
        return {"id": stream_id, "model": self.name, "window": stream.window, "step": self.step_kind(chain),
                "expires_after_s": self.options.session_ttl_s}

    def step_kind(self, chain) -> str:
        return usage_of(self.model.bundle).step if chain is None else "frame"

    @user_errors
    async def push(self, stream_id: str, what: str, data: bytes) -> dict:
        """Feed a session ``frames`` (a video, frame archive, image or .npy of frames; a chain
        session turns each full chunk of frames into one feature step) or ``features`` (an
        .npy or JSON of feature vectors); one prediction per step, in order."""
        session = self._session(stream_id)
        wanted = self.step_kind(session.extractor)
        if what.rstrip("s") != wanted:
            raise InputError(f"stream {stream_id!r}: model {self.name!r} steps on {wanted}s"
                             f"{' (open it with an extractor to send frames)' if wanted == 'feature' else ''}; "
                             f"POST to /v1/streams/ID/{wanted}s")
        async with session.lock:
            if stream_id not in self.sessions:  # closed or expired while this request waited
                self._session(stream_id)  # raises the error that says which
            t0 = time.perf_counter()
            steps = await asyncio.to_thread(self._steps, session, what, data)
            session.used = time.monotonic()
        return {"id": stream_id, "model": self.name, "steps": steps, "seconds": time.perf_counter() - t0}

    def _steps(self, session: Session, what: str, data: bytes) -> list[dict]:
        out = []

        def step(item):
            prediction = session.stream.push(item)
            out.append({"index": session.steps, "top": [{"label": label, "probability": p} for label, p in prediction.top]})
            session.steps += 1

        if what == "features":
            for feature in read_features(data, int(self.model.bundle.preprocessing["feature_dim"])):
                step(feature)
            return out
        with clip_source(data, self.options.max_upload_bytes) as source:
            chunk = int(self.model.bundle.preprocessing.get("chunk_frames", 1))
            for frame in iter_frames(source):
                if session.extractor is None:
                    step(frame)
                    continue
                session.frames.append(frame)
                if len(session.frames) == chunk:
                    frames, session.frames = session.frames, []
                    step(extract_features(session.extractor, frames, "upload"))
        return out

    @user_errors
    async def close(self, stream_id: str) -> dict:
        session = self._session(stream_id)
        async with session.lock:
            self._forget(stream_id, "closed")
        return {"id": stream_id, "deleted": True, "steps": session.steps}

    def check_health(self) -> None:
        """Serve calls this every few seconds: idle sessions expire here too."""
        self._expire()
