"""Serving on Ray Serve (``edgert.serve``), over loopback, against the runtime in-process.

1. Decoder (``--part decoder``): the Qwen2.5-0.5B-configured checkpoint of bench_llm.py (random
   weights, fp32) with a word-level tokenizer over its whole vocabulary. N concurrent streaming clients (1, 2, 4, 8) against 1 and 2 replicas, each
   replica one ONNX Runtime thread; each client asks /v1/completions for 32 greedy tokens after a
   64-token prompt (token ids), ``stream: true``. Time to first token p50 / p99, tokens/s per
   client and in total. Baseline: ``Generator.stream`` in this process, one thread, the same
   prompt and tokens: the serving overhead per token is the server's time per token at one
   client against it.
2. Detection (``--part detect``): TSN ResNet-18 (8 segments, 112 px, random weights), 16
   clients each sending 8 clips (.npy, 8 x 128 x 160 frames) to /v1/detect, one replica of 2
   threads, batching off (max batch 1) and on (max batch 4, 8; wait 10 ms): clips/s and latency
   p50 / p99.
3. Streams (``--part streams``): online TSM ResNet-18 (112 px), K concurrent sessions (1, 4, 8)
   over 2 replicas of one thread, each pushing 40 frames one request at a time: frames/s
   sustained and per-frame latency p50 / p99; baseline: ``StreamSession.push`` in this process,
   one thread.

The machine is shared by the clients, Ray and the replicas: on a 2-core machine the numbers
say what the serving path costs, not what a server box does.

    python benchmarks/bench_serve.py [--part decoder,detect,streams] [--out build/bench/serve/report.json]
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import os
import platform
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path("build/bench/serve")
PROMPT, NEW = 64, 32


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: bytes, headers: dict | None = None) -> dict:
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


class Server:
    """One application on the local Ray instance, redeployed per configuration."""

    def __init__(self):
        import ray
        from ray import serve

        ray.init(address="local", num_cpus=16, include_dashboard=False, log_to_driver=False)
        self.port = _port()
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"

    def deploy(self, bundles: list[str], **options) -> None:
        from ray import serve

        from edgert.serve import ServeOptions, app

        serve.run(app(bundles, ServeOptions(**options)), name="edgert", route_prefix="/")

    def close(self) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


# ---- decoder -------------------------------------------------------------------------------
def stream_completion(url: str, prompt: list[int]) -> dict:
    body = json.dumps({"model": "qwen", "prompt": prompt, "max_tokens": NEW, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return {"ttft_s": first - t0, "total_s": end - t0, "tokens": tokens,
            "decode_tokens_per_s": (tokens - 1) / (end - first) if tokens > 1 and end > first else float("nan")}


def decoder_bundle() -> Path:
    """bench_llm's Qwen2.5-0.5B checkpoint with a word-level tokenizer that names every one of
    its 151936 ids (its own small BPE leaves random weights' tokens without text, so nothing would
    stream until the end)."""
    import bench_llm

    out = ROOT / "qwen-bundle"
    if (out / "manifest.json").is_file():
        return out
    from tokenizers import Tokenizer, models, pre_tokenizers

    source = bench_llm.checkpoint("qwen2.5-0.5b")
    ckpt = ROOT / "qwen-ckpt"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "generation_config.json"):
        if (source / name).is_file() and not (ckpt / name).exists():
            (ckpt / name).symlink_to((source / name).resolve())
    vocab = bench_llm.QWEN25_05B["vocab_size"]
    tokenizer = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"bos_token": "w151643", "eos_token": "w151645"}))
    from edgert.exporters.driver import export

    export("llama", out, {"context": "2048"}, checkpoint=str(ckpt))
    return out


def bench_decoder(server: Server, report: dict) -> None:
    from edgert.runtime.llm.generator import Generator, SamplingParams

    bundle = decoder_bundle()
    prompt = np.random.default_rng(0).integers(0, 300, PROMPT).tolist()
    gen = Generator(bundle, threads=1)
    gen.generate(prompt[:8], SamplingParams(max_new_tokens=2))
    local = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = gen.generate(prompt, SamplingParams(max_new_tokens=NEW))
        local.append({"ttft_s": result.stats.ttft_s, "total_s": time.perf_counter() - t0, "tokens": len(result.tokens),
                      "decode_tokens_per_s": result.stats.decode_tokens_per_s})
    del gen
    base = {k: float(np.median([r[k] for r in local])) for k in ("ttft_s", "total_s", "decode_tokens_per_s")}
    base["tokens"] = local[0]["tokens"]
    report["decoder"] = {"bundle": str(bundle), "in_process": base, "served": []}
    print(f"in-process: ttft {base['ttft_s'] * 1e3:.0f} ms, decode {base['decode_tokens_per_s']:.1f} tok/s, "
          f"{base['tokens']} tokens in {base['total_s']:.2f} s", flush=True)
    for replicas in (1, 2):
        server.deploy([f"qwen={bundle}"], replicas=replicas, cpus_per_replica=1)
        stream_completion(server.url, prompt[:8])  # warm-up: every replica's first run
        stream_completion(server.url, prompt[:8])
        for clients in (1, 2, 4, 8):
            rounds = 3 if clients == 1 else 1
            t0 = time.perf_counter()
            runs = []
            for _ in range(rounds):
                with ThreadPoolExecutor(clients) as pool:
                    runs += list(pool.map(lambda _: stream_completion(server.url, prompt), range(clients)))
            wall = time.perf_counter() - t0
            row = {"replicas": replicas, "clients": clients,
                   "ttft_p50_s": pct([r["ttft_s"] for r in runs], 50), "ttft_p99_s": pct([r["ttft_s"] for r in runs], 99),
                   "tokens_per_s_per_client": float(np.median([r["tokens"] / r["total_s"] for r in runs])),
                   "decode_tokens_per_s_p50": float(np.median([r["decode_tokens_per_s"] for r in runs])),
                   "total_tokens_per_s": sum(r["tokens"] for r in runs) / wall,
                   "total_s_p50": float(np.median([r["total_s"] for r in runs]))}
            if clients == 1:
                row["overhead_per_token"] = base["decode_tokens_per_s"] / row["decode_tokens_per_s_p50"] - 1
                row["overhead_end_to_end"] = row["total_s_p50"] / base["total_s"] - 1
            report["decoder"]["served"].append(row)
            print(json.dumps(row), flush=True)


# ---- detection -----------------------------------------------------------------------------
def bench_detect(server: Server, report: dict) -> None:
    from edgert.exporters.driver import export

    bundle = ROOT / "tsn-r18"
    if not (bundle / "manifest.json").is_file():
        export("tsn", bundle, {"backbone": "resnet18", "segments": "8", "size": "112", "num_classes": "10"})
    rng = np.random.default_rng(1)
    clips = [_npy(rng.integers(0, 256, (8, 128, 160, 3), dtype=np.uint8)) for _ in range(8)]
    clients, per_client = 16, 8
    report["detect"] = []
    for max_batch in (1, 4, 8):
        server.deploy([f"tsn={bundle}"], cpus_per_replica=2, max_batch=max_batch, batch_wait_ms=10)
        _post(server.url + "/v1/detect/tsn", clips[0])

        def client(i):
            out = []
            for j in range(per_client):
                t0 = time.perf_counter()
                body = _post(server.url + "/v1/detect/tsn", clips[(i + j) % len(clips)])
                timings = body["timings"]
                out.append((time.perf_counter() - t0, timings["batch_size"], timings["prepare_s"], timings["infer_s"]))
            return out

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = [r for rs in pool.map(client, range(clients)) for r in rs]
        wall = time.perf_counter() - t0
        latencies = [r[0] for r in results]
        row = {"max_batch": max_batch, "clips_per_s": len(results) / wall, "latency_p50_s": pct(latencies, 50),
               "latency_p99_s": pct(latencies, 99), "mean_batch": float(np.mean([r[1] for r in results])),
               "prepare_s_p50": pct([r[2] for r in results], 50), "batch_run_s_p50": pct([r[3] for r in results], 50)}
        report["detect"].append(row)
        print(json.dumps(row), flush=True)


# ---- streams -------------------------------------------------------------------------------
def bench_streams(server: Server, report: dict) -> None:
    from edgert.exporters.driver import export

    bundle = ROOT / "tsm-online"
    if not (bundle / "manifest.json").is_file():
        export("tsm", bundle, {"backbone": "resnet18", "segments": "8", "size": "112", "num_classes": "10",
                               "online": "true"})
    from edgert.runtime import load

    frames = np.random.default_rng(2).integers(0, 256, (40, 128, 160, 3), dtype=np.uint8)
    local = load(bundle, threads=1).stream()
    for frame in frames[:5]:
        local.push(frame)
    t0 = time.perf_counter()
    for frame in frames:
        local.push(frame)
    per_frame = (time.perf_counter() - t0) / len(frames)
    report["streams_in_process"] = {"frames_per_s": 1 / per_frame, "latency_s": per_frame}
    print(json.dumps(report["streams_in_process"]), flush=True)
    server.deploy([f"tsm={bundle}"], replicas=2, cpus_per_replica=1)
    payloads = [_npy(frames[i:i + 1]) for i in range(len(frames))]
    report["streams"] = []
    for sessions in (1, 4, 8):
        def session(_):
            opened = _post(server.url + "/v1/streams/tsm", b"{}")
            out = []
            for data in payloads:
                t0 = time.perf_counter()
                _post(server.url + f"/v1/streams/{opened['id']}/frames", data)
                out.append(time.perf_counter() - t0)
            return out

        session(0)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(sessions) as pool:
            latencies = [x for xs in pool.map(session, range(sessions)) for x in xs]
        wall = time.perf_counter() - t0
        row = {"sessions": sessions, "frames_per_s": len(latencies) / wall, "latency_p50_s": pct(latencies, 50),
               "latency_p99_s": pct(latencies, 99)}
        report["streams"].append(row)
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="decoder,detect,streams")
    parser.add_argument("--out", default=str(ROOT / "report.json"))
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}}
    server = Server()
    try:
        for part in args.part.split(","):
            {"decoder": bench_decoder, "detect": bench_detect, "streams": bench_streams}[part](server, report)
    finally:
        server.close()
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
