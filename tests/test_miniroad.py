"""MiniROAD: the official checkpoint layout loads and equals the official forward, streaming
equals the offline graph, detection is real and holds at int8, bad input is refused."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgert.exporters.synthetic import untrimmed_stream
from edgert.plugins.miniroad.model import MiniROAD, MiniROADStep
from edgert.runtime import load
from edgert.runtime.metrics import perframe_metrics, softmax

from conftest import assert_user_error, edgert
from test_official_layouts import official_state

TINY = ["--opt", "feature_dim=16", "--opt", "embedding=24", "--opt", "hidden=32", "--opt", "layers=2",
        "--opt", "num_classes=5"]


def official_forward(state: dict, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """MiniROAD's ``MROAD.forward`` in eval mode (jbistanbul/MiniROAD 8307131, model/rnn/rnn.py),
    restated on a state_dict: cat(rgb, flow) -> layer1 (Linear, LayerNorm, ReLU, Dropout = identity)
    -> GRU from h0 = 0 -> ReLU -> f_classification -> softmax."""
    embedding, hidden = state["layer1.0.weight"].shape[0], state["gru.weight_hh_l0"].shape[1]
    layers = sum(1 for k in state if k.startswith("gru.weight_hh_l"))
    x = torch.cat((rgb, flow), 2)
    x = F.linear(x, state["layer1.0.weight"], state["layer1.0.bias"])
    x = F.relu(F.layer_norm(x, (embedding,), state["layer1.1.weight"], state["layer1.1.bias"]))
    gru = nn.GRU(embedding, hidden, layers, batch_first=True).to(x.dtype)
    gru.load_state_dict({k[len("gru."):]: v for k, v in state.items() if k.startswith("gru.")})
    ht, _ = gru(x, torch.zeros(layers, x.shape[0], hidden, dtype=x.dtype))
    logits = F.linear(F.relu(ht), state["f_classification.0.weight"], state["f_classification.0.bias"])
    return F.softmax(logits, dim=-1)


def stream_scores(bundle, features: np.ndarray) -> np.ndarray:
    session = load(bundle).stream()
    return np.stack([session.step({"features": f[None]})["scores"][0] for f in features])


def test_official_checkpoint_at_paper_size_equals_the_official_forward(tmp_path):
    """The released THUMOS'14 layout (random tensors under its exact keys and shapes): export
    reads every size off it, and over a 200-chunk stream both graphs give the official
    per-chunk probabilities (fp32, ONNX Runtime against PyTorch)."""
    state = official_state("miniroad_thumos_official_keys.txt")
    torch.save(state, tmp_path / "best.pth")
    out = tmp_path / "miniroad"
    result = edgert("export", "miniroad", "--out", out, "--checkpoint", tmp_path / "best.pth")
    assert result.returncode == 0, result.stderr
    options = json.loads((out / "manifest.json").read_text())["model"]["options"]
    assert {k: options[k] for k in ("feature_dim", "embedding", "hidden", "layers", "num_classes")} == \
        {"feature_dim": 3072, "embedding": 2048, "hidden": 1024, "layers": 1, "num_classes": 22}

    rng = np.random.default_rng(0)
    rgb, flow = rng.standard_normal((200, 2048)), rng.standard_normal((200, 1024))
    # the official forward in float64 is the reference: in float32 it is itself 1.5e-5 (relative)
    # away from it after 200 chunks, further than either graph here is
    with torch.no_grad():
        expected = official_forward({k: v.double() for k, v in state.items()}, torch.from_numpy(rgb)[None],
                                    torch.from_numpy(flow)[None])[0].numpy()
    features = np.concatenate([rgb, flow], axis=1).astype(np.float32)  # the feature files' layout: RGB ‖ flow
    streamed = softmax(stream_scores(out, features).astype(np.float64))
    np.testing.assert_allclose(streamed, expected, rtol=1e-5, atol=1e-8)
    offline = load(out).run({"features": features[None]}, "offline")["scores"][0]
    np.testing.assert_allclose(softmax(offline.astype(np.float64)), expected, rtol=1e-5, atol=1e-8)


def test_stream_equals_offline_and_restarts_cleanly(tmp_path):
    """Two GRU layers: the step graph over T chunks is the offline graph over the same chunks,
    and the PyTorch step module is the offline module; a reset starts from the zero state."""
    torch.manual_seed(0)
    model = MiniROAD(16, 5, 24, 32, 2).eval()
    features = np.random.default_rng(1).standard_normal((200, 16)).astype(np.float32)
    with torch.no_grad():
        offline = model(torch.from_numpy(features)[None])[0]
        h = torch.zeros(1, 2, 32)
        steps = []
        for f in torch.from_numpy(features):
            scores, h = MiniROADStep(model)(f[None], h)
            steps.append(scores[0])
    torch.testing.assert_close(torch.stack(steps), offline, rtol=1e-5, atol=1e-6)

    torch.save(model.state_dict(), tmp_path / "m.pth")
    out = tmp_path / "b"
    assert edgert("export", "miniroad", "--out", out, "--checkpoint", tmp_path / "m.pth").returncode == 0
    bundle = load(out)
    whole = bundle.run({"features": features[None]}, "offline")["scores"][0]
    np.testing.assert_allclose(whole, offline.numpy(), rtol=1e-5, atol=1e-5)
    session = bundle.stream()
    streamed = np.stack([session.step({"features": f[None]})["scores"][0] for f in features])
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-5)
    session.reset()
    again = np.stack([session.step({"features": f[None]})["scores"][0] for f in features[:5]])
    np.testing.assert_array_equal(again, streamed[:5])


def test_bad_checkpoints_and_inputs(tmp_path):
    torch.manual_seed(0)
    torch.save(MiniROAD(16, 5, 24, 32, 2).state_dict(), tmp_path / "m.pth")
    assert_user_error(edgert("export", "miniroad", "--out", tmp_path / "x", "--checkpoint", tmp_path / "m.pth",
                             "--opt", "num_classes=7"),
                      "num_classes=7", "f_classification.0.weight is [5, 32]")
    assert_user_error(edgert("export", "miniroad", "--out", tmp_path / "y", "--checkpoint", tmp_path / "m.pth",
                             "--opt", "layers=1"), "layers=1", "gru.weight_hh_l0..l1")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    other = {k: v for k, v in torch.load(tmp_path / "m.pth").items() if not k.startswith("f_classification")}
    torch.save({"model": other}, tmp_path / "partial.pth")
    assert_user_error(edgert("export", "miniroad", "--out", tmp_path / "z", "--checkpoint", tmp_path / "partial.pth",
                             "--opt", "num_classes=5"), "missing keys: f_classification.0.weight, f_classification.0.bias")

    out = tmp_path / "b"
    assert edgert("export", "miniroad", "--out", out, *TINY).returncode == 0
    np.save(tmp_path / "wide.npy", np.zeros((5, 20), np.float32))
    assert_user_error(edgert("run", out, "--input", tmp_path / "wide.npy", "--stream"),
                      "feature dimension 20, the bundle expects 16")
    np.save(tmp_path / "labels.npy", np.zeros(5, np.int64))
    assert_user_error(edgert("eval", out, "--features", tmp_path / "wide.npy", "--labels", tmp_path / "labels.npy"),
                      "feature dimension 20, the bundle expects 16")
    session = load(out).stream()
    with pytest.raises(Exception, match="hidden"):  # a state of the wrong shape is refused, not run
        session.model.run({"features": np.zeros((1, 16), np.float32), "hidden": np.zeros((1, 1, 32), np.float32)})


def _train(model: MiniROAD, streams, steps: int, rng) -> MiniROAD:
    """MiniROAD's training in short: random windows of the streams (batch first, h0 = 0), cross
    entropy on every chunk of the window."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    model.train()
    for _ in range(steps):
        batch, targets = [], []
        for _ in range(8):
            features, labels = streams[int(rng.integers(len(streams)))]
            start = int(rng.integers(0, len(labels) - 64))
            batch.append(features[start:start + 64])
            targets.append(labels[start:start + 64])
        logits = model(torch.from_numpy(np.stack(batch)))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(np.stack(targets)).reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_detection_is_real_and_holds_at_int8(tmp_path):
    """Trained for seconds on synthetic untrimmed streams, exported, evaluated on a held-out
    stream with `edgert eval` (the offline graph, the paper's protocol): per-frame mAP far above
    chance, equal to the streamed scores'; int8 (calibrated on whole streams and steps) within
    the gate."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    num_classes, dim = 4, 32
    streams = [untrimmed_stream(rng, 400, num_classes, dim) for _ in range(6)]
    model = _train(MiniROAD(dim, num_classes, 64, 64, 1), streams, 150, rng)
    torch.save(model.state_dict(), tmp_path / "model.pth")
    out = tmp_path / "bundle"
    assert edgert("export", "miniroad", "--out", out, "--checkpoint", tmp_path / "model.pth").returncode == 0

    features, labels = untrimmed_stream(np.random.default_rng(99), 600, num_classes, dim)
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    streamed = perframe_metrics(softmax(stream_scores(out, features)), labels)
    chance = np.mean([np.mean(labels == c) for c in range(1, num_classes)])
    assert streamed.map > max(0.6, 3 * chance), (streamed.map, chance)
    cli = edgert("eval", out, "--features", tmp_path / "features.npy", "--labels", tmp_path / "labels.npy")
    assert cli.returncode == 0, cli.stderr
    assert "(offline graph, one run)" in cli.stdout and f"mAP  {streamed.map * 100:.2f}" in cli.stdout

    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, (stream, _) in enumerate(streams[:4]):
        np.save(calibration / f"stream{i}.npy", stream[:120])
    int8 = tmp_path / "int8"
    result = edgert("export", "miniroad", "--out", int8, "--checkpoint", tmp_path / "model.pth",
                    "--precision", "int8", "--calibration", calibration)
    assert result.returncode == 0, result.stderr
    # the bundle holds its graphs and their weights only (the quantizer's folded copy stays outside)
    assert sorted(f.name for f in int8.iterdir()) == ["manifest.json", "model.onnx", "model.onnx.data", "offline.onnx",
                                                     "offline.onnx.data"]
    quantization = json.loads((int8 / "manifest.json").read_text())["quantization"]
    for graph in ("main", "offline"):  # both graphs, each checked on the held-out stream's 120 chunks
        assert quantization[graph]["accuracy"]["compared"] == 120, quantization[graph]
        assert quantization[graph]["accuracy"]["decisive_agreement"] >= 0.98, quantization[graph]
    assert perframe_metrics(softmax(stream_scores(int8, features)), labels).map > streamed.map - 0.03
    cli8 = edgert("eval", int8, "--features", tmp_path / "features.npy", "--labels", tmp_path / "labels.npy")
    assert cli8.returncode == 0, cli8.stderr


def test_fp16_follows_fp32(tmp_path):
    """fp16 weights and activations (state and I/O fp32): both graphs export, and over 200 chunks
    the streamed probabilities stay within 1e-2 of fp32's."""
    torch.manual_seed(0)
    torch.save(MiniROAD(16, 5, 24, 32, 2).state_dict(), tmp_path / "m.pth")
    for precision in ("fp32", "fp16"):
        result = edgert("export", "miniroad", "--out", tmp_path / precision, "--checkpoint", tmp_path / "m.pth",
                        "--precision", precision)
        assert result.returncode == 0, result.stderr
    features = np.random.default_rng(2).standard_normal((200, 16)).astype(np.float32)
    fp32, fp16 = (softmax(stream_scores(tmp_path / p, features)) for p in ("fp32", "fp16"))
    assert np.abs(fp16 - fp32).max() < 1e-2
    offline = load(tmp_path / "fp16").run({"features": features[None]}, "offline")["scores"][0]
    assert np.abs(softmax(offline) - fp32).max() < 1e-2
