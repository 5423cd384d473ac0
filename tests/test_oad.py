"""Online action detection: streaming equals offline, detection is real, official
checkpoints load, bad input is refused."""

import json

import numpy as np
import pytest
import torch

from edgert.exporters.synthetic import untrimmed_stream
from edgert.plugins.oad_trn.model import TemporalRecurrentNetwork
from edgert.plugins.oadtr.model import OadTR
from edgert.runtime import load
from edgert.runtime.metrics import perframe_metrics, softmax

from conftest import assert_user_error, edgert

D, C = 16, 5
TRN_OPTS = ["--opt", f"feature_dim={D}", "--opt", "hidden=32", "--opt", f"num_classes={C}", "--opt", "dec_steps=3"]
OADTR_OPTS = ["--opt", f"feature_dim={D}", "--opt", f"num_classes={C}", "--opt", "window=6", "--opt", "dim=32",
              "--opt", "layers=2", "--opt", "heads=4", "--opt", "dec_layers=2", "--opt", "dec_heads=4",
              "--opt", "queries=3", "--opt", "mlp_dim=32"]


def tiny_oadtr():
    return OadTR(D, C, window=6, dim=32, layers=2, heads=4, mlp_dim=32, dec_layers=2, dec_heads=4, queries=3, dec_ff=32)


def _randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("oad")
    torch.manual_seed(0)
    trn = _randomise(TemporalRecurrentNetwork(D, 32, C, 3))
    torch.save({"epoch": 20, "model_state_dict": trn.state_dict(), "optimizer_state_dict": {}}, root / "trn.pth")
    oadtr = _randomise(tiny_oadtr())
    state = dict(oadtr.state_dict())
    # the official checkpoint also stores the decoder positional encoding it never uses
    state["decoder_position_encoding.pe.weight"] = torch.zeros(3, 32)
    state["decoder_position_encoding.position_ids"] = torch.arange(3)[None]
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 5}, root / "oadtr.pth")
    return root, trn, oadtr


def test_official_key_layouts(checkpoints):
    _, trn, oadtr = checkpoints
    trn_keys = trn.state_dict().keys()
    for key in ("feature_extractor.input_linear.0.weight", "hx_trans.0.weight", "cx_trans.0.bias", "fusion_linear.0.weight",
                "future_linear.0.weight", "enc_cell.weight_ih", "enc_cell.bias_hh", "dec_cell.weight_hh", "classifier.weight"):
        assert key in trn_keys
    oadtr_keys = oadtr.state_dict().keys()
    for key in ("cls_token", "decoder_cls_token", "linear_encoding.weight", "position_encoding.pe.weight",
                "position_encoding.position_ids", "encoder.net.0.fn.fn.qkv.weight", "encoder.net.0.fn.norm.weight",
                "encoder.net.1.fn.fn.net.3.weight", "pre_head_ln.weight",
                "decoder.layers.0.self_attention.query_projection.weight", "decoder.layers.1.cross_attention.out_projection.bias",
                "decoder.layers.0.conv1.weight", "decoder.layers.0.norm3.weight", "decoder.norm.weight",
                "classifier.weight", "mlp_head.weight"):
        assert key in oadtr_keys
    assert "encoder.net.0.fn.fn.qkv.bias" not in oadtr_keys  # qkv_bias=False, as OadTR


def test_trn_stream_equals_offline(checkpoints, tmp_path):
    root, trn, _ = checkpoints
    out = tmp_path / "trn"
    result = edgert("export", "oad-trn", "--out", out, "--checkpoint", root / "trn.pth", *TRN_OPTS)
    assert result.returncode == 0, result.stderr
    features = np.random.default_rng(1).standard_normal((1, 12, D)).astype(np.float32)
    with torch.no_grad():
        expected = trn.run_sequence(torch.from_numpy(features)).numpy()[0]
    session = load(out).stream()
    got = np.stack([session.step({"features": features[:, t]})["scores"][0] for t in range(12)])
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1, np.abs(expected).max()))
    # a reset in the middle of the stream starts cleanly: the same as a fresh stream
    session.reset()
    np.testing.assert_allclose(session.step({"features": features[:, 0]})["scores"][0], expected[0], atol=1e-4)


def test_oadtr_stream_equals_windows(checkpoints, tmp_path):
    root, _, oadtr = checkpoints
    out = tmp_path / "oadtr"
    result = edgert("export", "oadtr", "--out", out, "--checkpoint", root / "oadtr.pth", *OADTR_OPTS)
    assert result.returncode == 0, result.stderr
    features = np.random.default_rng(2).standard_normal((10, D)).astype(np.float32)
    padded = np.concatenate([np.zeros((5, D), np.float32), features])  # zeros before the stream starts
    session = load(out).stream()
    for t in range(10):
        got = session.step({"features": features[None, t]})
        with torch.no_grad():
            scores, anticipated = oadtr(torch.from_numpy(padded[None, t:t + 6]))
        np.testing.assert_allclose(got["scores"], scores.numpy(), atol=1e-4 * max(1, scores.abs().max().item()))
        np.testing.assert_allclose(got["anticipation"], anticipated.numpy(), atol=1e-4 * max(1, anticipated.abs().max().item()))


def test_checkpoint_of_the_other_detector(checkpoints, tmp_path):
    root, _, _ = checkpoints
    assert_user_error(edgert("export", "oadtr", "--out", tmp_path / "x", "--checkpoint", root / "trn.pth", *OADTR_OPTS),
                      "checkpoint does not fit the model", "missing keys: cls_token")
    assert_user_error(edgert("export", "oad-trn", "--out", tmp_path / "y", "--checkpoint", root / "oadtr.pth", *TRN_OPTS),
                      "missing keys: feature_extractor.input_linear.0.weight")


def test_bad_stream_inputs(checkpoints, tmp_path):
    root, _, _ = checkpoints
    out = tmp_path / "trn"
    assert edgert("export", "oad-trn", "--out", out, *TRN_OPTS).returncode == 0
    np.save(tmp_path / "wide.npy", np.zeros((5, D + 4), np.float32))
    assert_user_error(edgert("run", out, "--input", tmp_path / "wide.npy", "--stream"),
                      f"feature dimension {D + 4}, the bundle expects {D}")
    nan = np.zeros((5, D), np.float32)
    nan[3, 2] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    assert_user_error(edgert("run", out, "--input", tmp_path / "nan.npy", "--stream"), "chunk 3 has NaN or inf")
    np.save(tmp_path / "ok.npy", np.zeros((5, D), np.float32))
    np.save(tmp_path / "labels4.npy", np.zeros(4, np.int64))
    assert_user_error(edgert("eval", out, "--features", tmp_path / "ok.npy", "--labels", tmp_path / "labels4.npy"),
                      "has 4 labels but", "has 5 chunks")
    np.save(tmp_path / "scores.npy", np.zeros((5, C), np.float32))
    assert_user_error(edgert("eval", "--scores", tmp_path / "scores.npy", "--labels", tmp_path / "labels4.npy"),
                      "labels have 4 frames but scores have 5")
    np.save(tmp_path / "none.npy", np.zeros((0, C), np.float32))
    np.save(tmp_path / "labels0.npy", np.zeros(0, np.int64))
    assert_user_error(edgert("eval", "--scores", tmp_path / "none.npy", "--labels", tmp_path / "labels0.npy"),
                      "scores: no frames to evaluate")
    np.save(tmp_path / "ambiguous.npy", np.full(5, C - 1, np.int64))
    assert_user_error(edgert("eval", "--scores", tmp_path / "scores.npy", "--labels", tmp_path / "ambiguous.npy",
                             "--ambiguous", str(C - 1)), "every one of the 5 frames is ambiguous")
    ran = edgert("run", out, "--input", tmp_path / "ok.npy", "--stream", "--json")
    assert ran.returncode == 0 and len(ran.stdout.splitlines()) == 5


def _train_trn(model, streams, steps, rng):
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        features, labels = streams[int(rng.integers(len(streams)))]
        start = int(rng.integers(0, len(labels) - 48))
        x = torch.from_numpy(features[None, start:start + 48])
        loss = torch.nn.functional.cross_entropy(model.run_sequence(x)[0], torch.from_numpy(labels[start:start + 48]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _train_oadtr(model, streams, steps, rng, window):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        batch, targets = [], []
        for _ in range(16):
            features, labels = streams[int(rng.integers(len(streams)))]
            end = int(rng.integers(1, len(labels) + 1))
            win = features[max(0, end - window):end]
            batch.append(np.concatenate([np.zeros((window - len(win), features.shape[1]), np.float32), win]))
            targets.append(labels[end - 1])
        scores, _ = model(torch.from_numpy(np.stack(batch)))
        loss = torch.nn.functional.cross_entropy(scores, torch.tensor(targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.mark.parametrize("name", ["oad-trn", "oadtr"])
def test_detection_is_real(name, tmp_path):
    """Tiny detectors trained for seconds on a synthetic untrimmed stream, exported, streamed
    over a held-out stream: per-frame mAP far above the chance level (the positive rate)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    num_classes, dim = 4, 32
    streams = [untrimmed_stream(rng, 400, num_classes, dim) for _ in range(6)]
    if name == "oad-trn":
        model = _train_trn(TemporalRecurrentNetwork(dim, 64, num_classes, 4), streams, 150, rng)
        opts = ["--opt", f"feature_dim={dim}", "--opt", "hidden=64", "--opt", "dec_steps=4"]
    else:
        model = _train_oadtr(OadTR(dim, num_classes, window=16, dim=64, layers=2, heads=4, mlp_dim=64, dec_layers=1,
                                   dec_heads=4, queries=4, dec_ff=64), streams, 150, rng, 16)
        opts = ["--opt", f"feature_dim={dim}", "--opt", "window=16", "--opt", "dim=64", "--opt", "layers=2",
                "--opt", "heads=4", "--opt", "mlp_dim=64", "--opt", "dec_layers=1", "--opt", "queries=4"]
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "bundle"
    result = edgert("export", name, "--out", out, "--checkpoint", ckpt, "--opt", f"num_classes={num_classes}", *opts)
    assert result.returncode == 0, result.stderr

    features, labels = untrimmed_stream(np.random.default_rng(99), 600, num_classes, dim)
    np.save(tmp_path / "features.npy", features)
    np.save(tmp_path / "labels.npy", labels)
    session = load(out).stream()
    scores = softmax(np.stack([session.step({"features": f[None]})["scores"][0] for f in features]))
    result = perframe_metrics(scores, labels)
    chance = np.mean([np.mean(labels == c) for c in range(1, num_classes)])
    assert result.map > max(0.6, 3 * chance), (result.map, chance)

    cli = edgert("eval", out, "--features", tmp_path / "features.npy", "--labels", tmp_path / "labels.npy",
                 "--plot", tmp_path / "timeline.png")
    assert cli.returncode == 0, cli.stderr
    assert f"mAP  {result.map * 100:.2f}" in cli.stdout and (tmp_path / "timeline.png").stat().st_size > 1000

    # int8, calibrated on the training streams' features (the recurrent / attention state stays
    # float at the graph's boundary): the held-out mAP stays where fp32's is.
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i, (stream, _) in enumerate(streams[:4]):
        np.save(calibration / f"stream{i}.npy", stream[:120])
    int8 = tmp_path / "int8"
    result8 = edgert("export", name, "--out", int8, "--checkpoint", ckpt, "--opt", f"num_classes={num_classes}", *opts,
                     "--precision", "int8", "--calibration", calibration)
    assert result8.returncode == 0, result8.stderr
    accuracy = json.loads((int8 / "manifest.json").read_text())["quantization"]["main"]["accuracy"]
    assert accuracy["compared"] == 120 and accuracy["decisive_agreement"] >= 0.98, accuracy
    session8 = load(int8).stream()
    scores8 = softmax(np.stack([session8.step({"features": f[None]})["scores"][0] for f in features]))
    assert perframe_metrics(scores8, labels).map > result.map - 0.03


def test_video_to_features_to_detector(tmp_path):
    """A recognizer exported as feature extractor feeds an online detector chunk by chunk."""
    from edgert.exporters.synthetic import render_clip, write_video
    from edgert.runtime.chain import feature_chunks

    extractor = tmp_path / "extractor"
    result = edgert("export", "tsn", "--out", extractor, "--opt", "backbone=resnet18", "--opt", "segments=2",
                    "--opt", "size=48", "--opt", "output=features")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((extractor / "manifest.json").read_text())
    assert manifest["graphs"]["main"]["outputs"] == [{"name": "features", "dtype": "float32", "dims": ["batch", 512]}]
    assert manifest["labels"] == []

    detector = tmp_path / "detector"
    opts = [o.replace(f"feature_dim={D}", "feature_dim=512") for o in OADTR_OPTS]
    assert edgert("export", "oadtr", "--out", detector, "--opt", "chunk_frames=4", *opts).returncode == 0
    write_video(tmp_path / "v.mp4", render_clip(0, np.random.default_rng(0), frames=14))
    ran = edgert("run", detector, "--input", tmp_path / "v.mp4", "--stream", "--features", extractor, "--json")
    assert ran.returncode == 0, ran.stderr
    rows = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [r["chunk"] for r in rows] == [0, 1, 2, 3]  # 14 frames in chunks of 4: the last one partial

    # the same numbers through the Python API, step by step
    ext, det = load(extractor), load(detector)
    session = det.stream()
    for row, feature in zip(rows, feature_chunks(ext, str(tmp_path / "v.mp4"), 4)):
        assert feature.shape == (512,)
        top = session.push(feature).top
        assert top[0][0] == row["top"][0][0] and abs(top[0][1] - row["top"][0][1]) < 1e-5

    wrong = tmp_path / "wrong"
    assert edgert("export", "oad-trn", "--out", wrong, *TRN_OPTS).returncode == 0
    assert_user_error(edgert("run", wrong, "--input", tmp_path / "v.mp4", "--stream", "--features", extractor),
                      "extracts 512-d features", f"expects {D}")
    assert_user_error(edgert("export", "tsm", "--out", tmp_path / "z", "--opt", "online=true", "--opt", "output=features"),
                      "use output=features offline")


def test_two_stream_features_concatenate_both_streams(tmp_path, clip_npy):
    out = tmp_path / "ts"
    result = edgert("export", "two-stream", "--out", out, "--opt", "backbone=resnet18", "--opt", "segments=2",
                    "--opt", "size=48", "--opt", "output=features", "--opt", "flow_length=2")
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "manifest.json").read_text())["graphs"]["main"]["outputs"][0]["dims"] == ["batch", 1024]
    ran = edgert("run", out, "--input", clip_npy)
    assert ran.returncode == 0 and "features: 1024-d vector" in ran.stdout


def test_oadtr_at_fp16_follows_fp32(checkpoints, tmp_path):
    """fp16 with its LayerNorms kept fp32 (the converter's wrapped ops once left stale types
    that the checker refused): exports, and streams within 1e-2 of fp32's probabilities."""
    root, _, _ = checkpoints
    for precision in ("fp32", "fp16"):
        result = edgert("export", "oadtr", "--out", tmp_path / precision, "--checkpoint", root / "oadtr.pth",
                        *OADTR_OPTS, "--precision", precision)
        assert result.returncode == 0, result.stderr
    features = np.random.default_rng(7).standard_normal((30, D)).astype(np.float32)
    probabilities = []
    for precision in ("fp32", "fp16"):
        session = load(tmp_path / precision).stream()
        probabilities.append(softmax(np.stack([session.step({"features": f[None]})["scores"][0] for f in features])))
    assert np.abs(probabilities[0] - probabilities[1]).max() < 1e-2
