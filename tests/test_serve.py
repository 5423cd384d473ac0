"""edgert serve on Ray Serve: the OpenAI client against a decoder bundle, batched detection,
streaming sessions pinned to their replica (and lost with it), errors, the key, over a Ray
cluster of two nodes on this machine. One cluster and one application serve the whole module."""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")
openai = pytest.importorskip("openai", reason="the dev extra (openai) is not installed")

from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from edgert.runtime import load  # noqa: E402
from edgert.runtime.llm.generator import Generator  # noqa: E402
from edgert.runtime.llm.sampling import SamplingParams  # noqa: E402
from edgert.serve import ServeOptions, app  # noqa: E402

from conftest import TINY_TSN, edgert, free_port  # noqa: E402
from llm_checkpoints import make_llama  # noqa: E402

KEY = "test-key-0123456789"
TTL = 8.0
OADTR = ["--opt", "feature_dim=512", "--opt", "num_classes=5", "--opt", "window=6", "--opt", "dim=32", "--opt", "layers=2",
         "--opt", "heads=4", "--opt", "dec_layers=2", "--opt", "dec_heads=4", "--opt", "queries=3", "--opt", "mlp_dim=32",
         "--opt", "chunk_frames=4"]
MINIROAD = ["--opt", "feature_dim=512", "--opt", "num_classes=5", "--opt", "embedding=32", "--opt", "hidden=16"]
# the long memory slides from chunk 25 on (6 samples every 3 chunks after a work window of 5)
TESTRA = ["--opt", "feature_dim=512", "--opt", "num_classes=5", "--opt", "d_model=16", "--opt", "heads=4", "--opt", "ff=24",
          "--opt", "long=6", "--opt", "rate=3", "--opt", "work=5", "--opt", "compressed=4", "--opt", "compressed2=6",
          "--opt", "kernel=laplace"]


def _export(*args) -> None:
    result = edgert("export", *map(str, args))
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    make_llama(root / "ckpt")
    _export("llama", "--checkpoint", root / "ckpt", "--out", root / "llama")
    _export("tsn", "--out", root / "tsn", *TINY_TSN)
    _export("tsm", "--out", root / "tsm", "--opt", "online=true", *TINY_TSN[:2], "--opt", "segments=4", "--opt", "size=32",
            "--opt", "num_classes=5")
    _export("tsn", "--out", root / "features", "--opt", "backbone=resnet18", "--opt", "segments=2", "--opt", "size=32",
            "--opt", "output=features")
    _export("oadtr", "--out", root / "oadtr", *OADTR)
    _export("miniroad", "--out", root / "miniroad", *MINIROAD)
    _export("testra", "--out", root / "testra", *TESTRA)
    return {name: root / name for name in ("llama", "tsn", "tsm", "features", "oadtr", "miniroad", "testra")}


@pytest.fixture(scope="module")
def server(bundles):
    """The application on a two-node Ray cluster; its base URL."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    cluster.add_node(num_cpus=3)
    ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = ServeOptions(replicas=1, replicas_of={"tsm": 2}, cpus_per_replica=0.5, api_key=KEY, max_batch=8,
                               batch_wait_ms=100, max_upload_bytes=2 << 20, session_ttl_s=TTL,
                               drafts={"itself": str(bundles["llama"])})
        serve.run(app([str(p) for p in bundles.values()], options), name="edgert", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def call(server: str, method: str, path: str, body=None, data: bytes | None = None, key: str | None = KEY,
         headers: dict | None = None) -> tuple[int, dict]:
    headers = dict(headers or {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    if body is not None:
        data = json.dumps(body).encode()
    request = urllib.request.Request(server + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def error_of(status_body, status: int, *fragments: str) -> None:
    got, body = status_body
    assert got == status, body
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str), body
    for fragment in fragments:
        assert fragment in body["error"]["message"], body


def test_a_request_names_no_file_on_the_server(server, tmp_path):
    """A draft model is picked by the name the server gave it (--draft NAME=BUNDLE); a path, an
    existing folder or not, gets the same answer; a Medusa tree is a built-in name or inline
    JSON, never a file."""
    post = lambda options, strategy="draft": call(server, "POST", "/v1/completions", {  # noqa: E731
        "model": "llama", "prompt": "hi there", "max_tokens": 6, "temperature": 0, "strategy": strategy,
        "strategy_options": options})
    status, body = post({"model": "itself"})
    assert status == 200, body
    assert body["choices"][0]["text"] == post(None, "ar")[1]["choices"][0]["text"]
    answers = []
    for path in ("/etc", str(tmp_path / "nonexistent"), str(tmp_path)):
        status, body = post({"model": path})
        error_of((status, body), 400, "is not a draft model this server offers", "itself")
        answers.append(body["error"]["message"].replace(path[:64], "PATH"))
    assert len(set(answers)) == 1  # nothing tells a client which folders exist
    error_of(post({"tree": "/etc/passwd"}, "medusa"), 400, "strategy_options.tree", "never a file on the server")


# ---- decoders: the official openai client --------------------------------------------------
def test_openai_client_completions_and_chat(server, bundles):
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    assert {m.id for m in client.models.list()} == set(bundles)
    prompt = "The quick brown fox"
    cli = edgert("generate", str(bundles["llama"]), "--prompt", prompt, "--max-new-tokens", "12", "--json")
    assert cli.returncode == 0, cli.stderr
    expected = json.loads(cli.stdout)

    done = client.completions.create(model="llama", prompt=prompt, max_tokens=12, temperature=0)
    assert done.choices[0].text == expected["text"]
    assert done.usage.prompt_tokens == expected["prompt_tokens"] and done.usage.completion_tokens == expected["new_tokens"]
    assert done.choices[0].finish_reason == ("length" if expected["stop_reason"] == "max_new_tokens" else "stop")

    pieces = client.completions.create(model="llama", prompt=prompt, max_tokens=12, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(pieces)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected["text"]
    assert chunks[-1].usage.completion_tokens == expected["new_tokens"]

    for strategy in ("lookup", "ar"):  # speculative decoding per request: the same greedy text
        again = client.completions.create(model="llama", prompt=prompt, max_tokens=12, temperature=0,
                                          extra_body={"strategy": strategy})
        assert again.choices[0].text == expected["text"]

    generator = Generator(bundles["llama"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Edge devices run"}]
    reference = generator.generate(generator.encode_messages(messages), SamplingParams(max_new_tokens=10))
    chat = client.chat.completions.create(model="llama", messages=messages, max_tokens=10, temperature=0)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == reference.text
    streamed = client.chat.completions.create(model="llama", messages=messages, max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == reference.text

    seeded = [client.completions.create(model="llama", prompt=prompt, max_tokens=8, temperature=0.9, seed=7).choices[0].text
              for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seed makes a sampled completion repeatable


def test_decoder_bad_requests_are_4xx_and_the_server_keeps_serving(server):
    post = lambda body: call(server, "POST", "/v1/completions", body)  # noqa: E731
    error_of(call(server, "POST", "/v1/completions", data=b"{not json"), 400, "malformed JSON")
    error_of(call(server, "POST", "/v1/completions", data=b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"), 400,
             "nested too deeply")
    error_of(post({"model": "llama", "prompt": "x", "max_tokens": -3}), 400, "max_tokens", "-3")
    error_of(post({"model": "llama", "prompt": "x", "stream": True, "n": 2}), 400, "n: only 1")
    error_of(post({"model": "llama", "prompt": "x", "temperature": 7}), 400, "temperature")
    error_of(post({"model": "llama", "prompt": "x", "top_p": 0}), 400, "top_p")
    error_of(post({"model": "llama", "prompt": "x", "seed": -1}), 400, "seed must be an integer from 0")
    error_of(post({"model": "llama", "prompt": "a\ud800b"}), 400, "lone surrogate (U+D800 at character 1)")
    error_of(call(server, "POST", "/v1/chat/completions", {"model": "llama", "messages": [
        {"role": "user", "content": "\udfff"}]}), 400, "lone surrogate")
    error_of(post({"model": "nope", "prompt": "x"}), 404, "'nope' is not served")
    error_of(post({"model": "tsn", "prompt": "x"}), 400, "detector model")
    error_of(post({"model": "llama", "prompt": list(range(3, 303))}), 400, "context")
    error_of(post({"model": "llama", "prompt": "x", "strategy": "nope"}), 400, "nope")
    error_of(post({"model": "llama", "prompt": "x", "stream": True, "strategy": "nope"}), 400, "nope")
    error_of(call(server, "POST", "/v1/chat/completions", {"model": "llama", "messages": []}), 400, "messages")
    status, body = post({"model": "llama", "prompt": "hi", "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["usage"]["completion_tokens"] == 2


def test_api_key(server):
    error_of(call(server, "GET", "/v1/models", key=None), 401, "API key")
    error_of(call(server, "GET", "/v1/models", key=KEY + "x"), 401, "API key")
    assert call(server, "GET", "/v1/models")[0] == 200
    error_of(call(server, "GET", "/v2/nothing"), 404, "no route")


# ---- detection ---------------------------------------------------------------------------------
def test_concurrent_detection_is_batched_and_equals_local_runs(server, bundles):
    rng = np.random.default_rng(3)
    clips = [rng.integers(0, 256, (6 + i % 5, 40, 48, 3), dtype=np.uint8) for i in range(16)]
    local = load(bundles["tsn"])
    folder = bundles["tsn"].parent / "clips"
    folder.mkdir(exist_ok=True)
    expected = []
    for i, clip in enumerate(clips):
        np.save(folder / f"{i}.npy", clip)
        expected.append(local.predict(folder / f"{i}.npy", top_k=5).top)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda clip: call(server, "POST", "/v1/detect/tsn?top_k=5", data=npy(clip)), clips))
    for (status, body), want in zip(replies, expected):
        assert status == 200, body
        got = {t["label"]: t["probability"] for t in body["top"]}
        assert set(got) == {label for label, _ in want}
        np.testing.assert_allclose([got[label] for label, _ in want], [p for _, p in want], rtol=1e-5, atol=1e-7)
    assert max(body["timings"]["batch_size"] for _, body in replies) > 1  # clients' clips shared graph runs

    # a multipart form upload, as browsers and requests send files
    boundary = "edgertboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"c.npy\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + npy(clips[0]) + f"\r\n--{boundary}--\r\n".encode()
    status, body = call(server, "POST", "/v1/detect/tsn?top_k=5", data=form,
                        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and body["top"][0]["label"] == expected[0][0][0], body


def test_detection_bad_uploads(server):
    error_of(call(server, "POST", "/v1/detect/tsn", data=b"this is not a video"), 415, "not a video")
    error_of(call(server, "POST", "/v1/detect/tsn", data=b"\0" * (3 << 20)), 413, "limit")
    error_of(call(server, "POST", "/v1/detect/tsn", data=npy(np.zeros((4, 8, 8), np.float64))), 400, "uint8")
    error_of(call(server, "POST", "/v1/detect/tsn?top_k=0", data=b"x"), 400, "top_k")
    error_of(call(server, "POST", "/v1/detect/tsm", data=b"x"), 400, "stream model")
    status, _ = call(server, "POST", "/v1/detect/tsn", data=npy(np.zeros((3, 16, 16, 3), np.uint8)))
    assert status == 200


# ---- streaming sessions ------------------------------------------------------------------------
def _replica_actors(deployment: str) -> dict[str, object]:
    """unique replica id -> its Ray actor, for one deployment of the application."""
    found = {}
    for entry in ray.util.list_named_actors(all_namespaces=True):
        name = entry["name"]
        if entry["namespace"] == "serve" and f"edgert#{deployment}#" in name:
            found[name.rsplit("#", 1)[1]] = ray.get_actor(name, namespace="serve")
    return found


def test_streams_stay_on_their_replica_and_are_lost_with_it(server, bundles):
    clips = [np.random.default_rng(10 + i).integers(0, 256, (5, 36, 40, 3), dtype=np.uint8) for i in range(6)]
    ids = []
    for _ in clips:
        status, body = call(server, "POST", "/v1/streams/tsm", {"top_k": 5})
        assert status == 200, body
        ids.append(body["id"])
    holders = [i.split("~")[1] for i in ids]
    assert len(set(holders)) == 2  # six sessions over the two replicas
    actors = _replica_actors("stream-tsm")
    nodes = {h: ray.get(actors[h].__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
             for h in set(holders)}
    assert len(set(nodes.values())) == 2  # the replicas run on different nodes of the cluster

    local = load(bundles["tsm"])
    sessions = [local.stream(top_k=5) for _ in clips]
    for t in range(5):  # interleaved: frame t of every clip, then frame t + 1
        for stream_id, clip, session in zip(ids, clips, sessions):
            status, body = call(server, "POST", f"/v1/streams/{stream_id}/frames", data=npy(clip[t:t + 1]))
            assert status == 200, body
            want = session.push(clip[t])
            assert [s["index"] for s in body["steps"]] == [t]
            got = {x["label"]: x["probability"] for x in body["steps"][0]["top"]}
            np.testing.assert_allclose([got[label] for label, _ in want.top], [p for _, p in want.top], rtol=1e-6)

    victim = holders[0]
    ray.kill(actors[victim], no_restart=True)  # Ray's own kill; Serve starts a replacement
    for stream_id, holder in zip(ids, holders):
        reply = call(server, "POST", f"/v1/streams/{stream_id}/frames", data=npy(clips[0][:1]))
        if holder == victim:
            error_of(reply, 410, "session lost")
        else:
            assert reply[0] == 200, reply  # the other replica's sessions go on
    deadline = time.monotonic() + 90
    while True:  # the replacement comes up: new sessions land on both replicas again
        opened = [call(server, "POST", "/v1/streams/tsm", {}) for _ in range(2)]
        ready = all(s == 200 for s, _ in opened) and len({b["id"].split("~")[1] for _, b in opened}) == 2
        if ready or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert ready, opened
    assert victim not in {b["id"].split("~")[1] for _, b in opened}
    for _, body in opened:
        assert call(server, "POST", f"/v1/streams/{body['id']}/frames", data=npy(clips[1][:2]))[0] == 200
    error_of(call(server, "POST", f"/v1/streams/{ids[holders.index(victim)]}/frames", data=npy(clips[0][:1])), 410)


def test_feature_streams_and_the_extractor_chain(server, bundles):
    from edgert.runtime.chain import extract_features

    rng = np.random.default_rng(5)
    features = rng.standard_normal((7, 512)).astype(np.float32)
    status, opened = call(server, "POST", "/v1/streams/oadtr", {"top_k": 5})
    assert status == 200 and opened["step"] == "feature", opened
    status, body = call(server, "POST", f"/v1/streams/{opened['id']}/features", data=npy(features))
    assert status == 200, body
    session = load(bundles["oadtr"]).stream(top_k=5)
    for step, feature in zip(body["steps"], features):
        want = session.push(feature)
        assert step["top"][0]["label"] == want.top[0][0] and abs(step["top"][0]["probability"] - want.top[0][1]) < 1e-6
    error_of(call(server, "POST", f"/v1/streams/{opened['id']}/frames", data=b"x"), 400, "steps on features")
    error_of(call(server, "POST", f"/v1/streams/{opened['id']}/features", data=npy(features[:, :8])), 400, "512")

    # frames through a served feature extractor: a step per full chunk of 4 frames
    frames = rng.integers(0, 256, (10, 40, 40, 3), dtype=np.uint8)
    status, chain = call(server, "POST", "/v1/streams/oadtr", {"extractor": "features"})
    assert status == 200 and chain["step"] == "frame", chain
    first = call(server, "POST", f"/v1/streams/{chain['id']}/frames", data=npy(frames[:6]))[1]["steps"]
    second = call(server, "POST", f"/v1/streams/{chain['id']}/frames", data=npy(frames[6:]))[1]["steps"]
    assert [s["index"] for s in first + second] == [0, 1]
    extractor, session = load(bundles["features"]), load(bundles["oadtr"]).stream()
    for step, chunk in zip(first + second, (frames[:4], frames[4:8])):
        want = session.push(extract_features(extractor, list(chunk)))
        assert step["top"][0]["label"] == want.top[0][0] and abs(step["top"][0]["probability"] - want.top[0][1]) < 1e-6
    error_of(call(server, "POST", "/v1/streams/oadtr", {"extractor": "tsn"}), 404, "not a feature extractor")
    assert call(server, "DELETE", f"/v1/streams/{chain['id']}")[0] == 200


@pytest.mark.parametrize("name", ["miniroad", "testra"])
def test_recurrent_and_kernel_state_is_carried_between_requests(server, bundles, name):
    """MiniROAD's GRU state and TeSTra's memory and running sums (an int64 step count among them)
    stay on the replica between a session's requests: 40 chunks sent in three requests give the
    scores of one local stream over the 40."""
    features = np.random.default_rng(8).standard_normal((40, 512)).astype(np.float32)
    status, opened = call(server, "POST", f"/v1/streams/{name}", {"top_k": 3})
    assert status == 200 and opened["step"] == "feature", opened
    steps = []
    for part in (features[:7], features[7:29], features[29:]):
        status, body = call(server, "POST", f"/v1/streams/{opened['id']}/features", data=npy(part))
        assert status == 200, body
        steps += body["steps"]
    session = load(bundles[name]).stream(top_k=3)
    for step, feature in zip(steps, features, strict=True):
        want = session.push(feature)
        assert step["top"][0]["label"] == want.top[0][0] and abs(step["top"][0]["probability"] - want.top[0][1]) < 1e-6
    error_of(call(server, "POST", f"/v1/streams/{opened['id']}/features", data=npy(features[:, :100])), 400, "512")
    assert call(server, "DELETE", f"/v1/streams/{opened['id']}")[0] == 200


def test_stream_bad_requests_and_expiry(server):
    error_of(call(server, "POST", "/v1/streams/nope~abc~def/frames", data=b"x"), 404, "no stream")
    error_of(call(server, "POST", "/v1/streams/garbage/frames", data=b"x"), 404, "no stream")
    error_of(call(server, "POST", "/v1/streams/tsn", {}), 400, "detector model")
    error_of(call(server, "POST", "/v1/streams/tsm", {"window": 0}), 400, "window")
    status, opened = call(server, "POST", "/v1/streams/tsm", {})
    stream_id = opened["id"]
    holder = stream_id.split("~")[1]
    error_of(call(server, "POST", f"/v1/streams/tsm~{holder}~madeup/frames", data=b"x"), 404, "no stream")
    error_of(call(server, "POST", f"/v1/streams/{stream_id}/frames", data=b"junk that is no video"), 415)
    error_of(call(server, "POST", f"/v1/streams/{stream_id}/audio", data=b"x"), 404)
    time.sleep(TTL + 2.5)
    error_of(call(server, "POST", f"/v1/streams/{stream_id}/frames", data=npy(np.zeros((1, 8, 8, 3), np.uint8))), 404,
             "expired")
    error_of(call(server, "DELETE", f"/v1/streams/{stream_id}"), 404, "expired")


def test_probes_and_metrics(server):
    """The probes answer without the key; /metrics needs it and holds, in Prometheus' format, the
    series of what was asked: a completion, a detection, a stream's steps, a refused key."""
    from prometheus_client.parser import text_string_to_metric_families

    assert call(server, "POST", "/v1/completions", {"model": "llama", "prompt": "the", "max_tokens": 4})[0] == 200
    clip = np.random.default_rng(9).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    assert call(server, "POST", "/v1/detect/tsn", data=npy(clip))[0] == 200
    opened = call(server, "POST", "/v1/streams/oadtr", {})[1]
    features = np.random.default_rng(9).standard_normal((7, 512)).astype(np.float32)
    assert call(server, "POST", f"/v1/streams/{opened['id']}/features", data=npy(features))[0] == 200
    assert call(server, "GET", "/v1/models", key="wrong")[0] == 401
    assert call(server, "GET", "/health/live", key=None) == (200, {"status": "live"})
    assert call(server, "GET", "/health/ready", key=None) == (200, {"status": "ready"})
    error_of(call(server, "GET", "/metrics", key=None), 401, "API key")
    request = urllib.request.Request(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(f.name, s.name): s for f in families.values() for s in f.samples}

    def value(name: str, **labels) -> float:
        """A counter's or gauge's value summed over the samples with ``labels``."""
        return sum(s.value for s in families[name].samples
                   if s.name in (name, name + "_total") and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("edgert_requests", route="completions", status="200") >= 1
    assert value("edgert_requests", route="detect", model="tsn", status="200") >= 1
    assert value("edgert_requests", route="models", status="401") >= 1
    assert value("edgert_tokens", model="llama", kind="generated") >= 1
    assert value("edgert_stream_steps", model="oadtr") >= 7
    count = [s for s in families["edgert_time_to_first_token_seconds"].samples
             if s.name.endswith("_count") and s.labels["model"] == "llama"]
    assert count and count[0].value >= 1
    batches = [s for s in families["edgert_detect_batch_size"].samples if s.name.endswith("_bucket")]
    assert batches and ("edgert_request_seconds", "edgert_request_seconds_bucket") in samples
    assert value("edgert_requests_in_flight", model="llama") == 0  # nothing left held


def test_a_full_queue_is_refused_at_once_with_retry_after(server, bundles):
    """A decoder deployment that queues 1 request (--max-queued 1): of 10 sent at once, those
    past its queue are 429 with Retry-After at once, and those served are whole completions."""
    options = ServeOptions(replicas=1, cpus_per_replica=0.5, api_key=KEY, max_queued=1)
    serve.run(app([f"busy={bundles['llama']}"], options), name="edgert-busy", route_prefix="/busy")
    try:
        body = {"model": "busy", "prompt": "the", "max_tokens": 200, "temperature": 0}
        with ThreadPoolExecutor(10) as pool:
            replies = list(pool.map(lambda _: call(server + "/busy", "POST", "/v1/completions", body), range(10)))
        statuses = sorted(status for status, _ in replies)
        # how many get in depends on when Serve's router has probed the replica: at least one
        assert statuses.count(200) >= 1 and statuses.count(429) >= 1 and set(statuses) <= {200, 429}, statuses
        for status, reply in replies:
            if status == 429:
                error_of((status, reply), 429, "busy", "queue is full")
                assert reply["error"]["code"] == "queue_full"
            else:
                assert reply["object"] == "text_completion" and reply["usage"]["completion_tokens"] >= 1
        request = urllib.request.Request(server + "/busy/v1/completions", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {KEY}"})
        with ThreadPoolExecutor(6) as pool:  # the header too, on one refused request
            futures = [pool.submit(urllib.request.urlopen, request, timeout=60) for _ in range(6)]
            headers = []
            for future in futures:
                try:
                    future.result().read()
                except urllib.error.HTTPError as err:
                    headers.append(err.headers.get("Retry-After"))
        assert headers and set(headers) == {"1"}, headers
    finally:
        serve.delete("edgert-busy")
