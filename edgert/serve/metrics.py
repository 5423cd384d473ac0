"""What ``GET /metrics`` shows (Prometheus' text format, through ``prometheus_client``).

Every request passes through the API deployment, one replica, so the series are recorded there:
what a request asked for, how it ended and how long it took, and what the model replica
reported back (a generation's time to first token, its tokens and decoder passes; the steps of
a stream request). One registry per API instance: nothing is global to the process. The series
and their meaning are listed in docs/serving.md ("Metrics and health").
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# request and step latencies from a millisecond (a feature step) to minutes (a long generation)
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0)
PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("edgert_requests", "Requests by route, model and HTTP status", ["route", "model", "status"],
                                registry=r)
        self.latency = Histogram("edgert_request_seconds", "Time from a request's arrival to its response's start "
                                 "(a streamed completion: to its first event)", ["route", "model"], buckets=SECONDS,
                                 registry=r)
        self.in_flight = Gauge("edgert_requests_in_flight", "Requests being served now, by model (a decoder's: the "
                               "sequences its replicas hold)", ["model"], registry=r)
        self.rejected = Counter("edgert_requests_rejected", "Requests refused with 429 because the model's queue "
                                "was full (--max-queued)", ["model"], registry=r)
        self.replica_failures = Counter("edgert_replica_failures", "Requests whose replica died under them (Serve "
                                        "restarts it)", ["model"], registry=r)
        self.ttft = Histogram("edgert_time_to_first_token_seconds", "A generation's time to its first token, on the "
                              "replica (prompt encoding and prefill)", ["model"], buckets=SECONDS, registry=r)
        self.tpot = Histogram("edgert_time_per_output_token_seconds", "A generation's decode time per token after "
                              "the first", ["model"], buckets=PER_TOKEN, registry=r)
        self.tokens = Counter("edgert_tokens", "Tokens by model and kind (prompt, generated)", ["model", "kind"],
                              registry=r)
        self.tokens_per_pass = Histogram("edgert_tokens_per_decoder_pass", "A generation's tokens per decoder pass "
                                         "after the prefill (1 for plain decoding; more when speculation is accepted)",
                                         ["model", "strategy"], buckets=(1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0),
                                         registry=r)
        self.batch = Histogram("edgert_detect_batch_size", "Clips per graph run of a detection replica",
                               ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.steps = Counter("edgert_stream_steps", "Stream steps (frames or feature chunks) predicted", ["model"],
                             registry=r)
        self.step_latency = Histogram("edgert_stream_step_seconds", "A stream request's time per step it held",
                                      ["model"], buckets=SECONDS, registry=r)
        self.sessions = Counter("edgert_stream_sessions_opened", "Stream sessions opened", ["model"], registry=r)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def generation(self, model: str, reply: dict) -> None:
        """What a decoder replica reported about one finished generation."""
        self.tokens.labels(model, "prompt").inc(reply.get("prompt_tokens", 0))
        self.tokens.labels(model, "generated").inc(reply.get("completion_tokens", 0))
        stats = reply.get("stats") or {}
        if "ttft_s" in stats:
            self.ttft.labels(model).observe(stats["ttft_s"])
        if stats.get("new_tokens", 0) > 1 and stats.get("decode_s"):
            self.tpot.labels(model).observe(stats["decode_s"] / (stats["new_tokens"] - 1))
        if stats.get("forward_calls"):
            self.tokens_per_pass.labels(model, stats.get("strategy", "")).observe(stats["tokens_per_pass"])
