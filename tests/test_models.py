"""Every video detector: exports (fp32 and fp16, parity checked), runs on a video from the
CLI, and handles the awkward clips users have."""

import json
import re

import numpy as np
import pytest

from edgert.exporters.synthetic import render_clip, write_video

from conftest import assert_user_error, edgert

MODELS = ["tsn", "tsm", "trn", "tdn", "tam", "two-stream"]
TINY = ["--opt", "backbone=resnet18", "--opt", "segments=3", "--opt", "size=64", "--opt", "num_classes=4"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    write_video(root / "clip.mp4", render_clip(1, rng, frames=20))
    np.save(root / "short.npy", render_clip(2, rng, frames=2))  # fewer frames than segments (and snippets)
    return root


def test_plugins_lists_all_models():
    listed = edgert("plugins").stdout
    for name in MODELS:
        assert any(line.split()[:2] == [name, "detector"] for line in listed.splitlines()), listed


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", MODELS)
def test_export_and_run(name, precision, videos, tmp_path):
    out = tmp_path / name
    result = edgert("export", name, "--out", out, "--precision", precision, *TINY)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["parity"]["graphs"]["main"]
    assert report["outputs"]["scores"]["max_rel"] <= (1e-4 if precision == "fp32" else 1e-2)
    ran = edgert("run", out, "--input", videos / "clip.mp4", "--input", videos / "short.npy", "--json")
    assert ran.returncode == 0, ran.stderr
    rows = [json.loads(line) for line in ran.stdout.splitlines()]
    assert len(rows) == 2 and all(len(r["top"]) == 4 for r in rows)
    assert all(abs(sum(p for _, p in r["top"]) - 1) < 1e-4 for r in rows)


def test_trn_records_its_relations(tmp_path):
    out = tmp_path / "trn"
    assert edgert("export", "trn", "--out", out, *TINY).returncode == 0
    details = json.loads((out / "manifest.json").read_text())["model"]["details"]
    assert details["relations"] == [[[0, 1, 2]], [[0, 1], [0, 2], [1, 2]]]


def test_online_tsm_fp16_streams(videos, tmp_path):
    out = tmp_path / "online"
    assert edgert("export", "tsm", "--out", out, "--opt", "online=true", "--precision", "fp16", *TINY).returncode == 0
    ran = edgert("run", out, "--input", videos / "clip.mp4", "--stream", "--json")
    assert ran.returncode == 0, ran.stderr
    assert len(ran.stdout.splitlines()) == 20
    # StreamSession.push takes what a file gives: uint8 RGB (grayscale / RGBA too), nothing else
    from edgert.runtime import load
    from edgert.runtime.errors import InputError

    session = load(out).stream()
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert session.push(frame).top and session.push(frame[..., :1]).top
    for bad, words in [(frame / 255.0, "float64 [48, 64, 3]"), (frame[:, :0], "uint8 [48, 0, 3]"),
                       (frame[None], "uint8 [1, 48, 64, 3]")]:
        with pytest.raises(InputError, match=r"a streamed frame must be an H x W x 3 uint8 RGB array .*" + re.escape(words)):
            session.push(bad)


def test_checkpoint_of_another_architecture(tmp_path):
    import torch

    from edgert.plugins.tam.model import TANet

    path = tmp_path / "tanet.pth"
    torch.save({"state_dict": TANet(4, 3, "resnet18").state_dict()}, path)
    error = assert_user_error(edgert("export", "tsm", "--out", tmp_path / "o", "--checkpoint", path, *TINY),
                              "checkpoint does not fit the model", "missing keys: base_model.layer1.0.conv1.net.weight")
    assert "unexpected keys: base_model.layer1.0.net.conv1.weight" in error
    assert not (tmp_path / "o").exists()


def test_two_stream_flow_sees_motion(tmp_path):
    """The run-time flow is real: a bright square moving right gives positive x flow on it."""
    from edgert.runtime.flow import optical_flow

    frames = np.zeros((3, 96, 96, 3), np.uint8)
    for t in range(3):
        frames[t, 40:56, 20 + 4 * t:36 + 4 * t] = 255
    pre = {"scale_size": 96, "crop_size": 96, "flow_method": "dis", "flow_bound": 20.0}
    flow = optical_flow(frames, pre)
    assert flow.shape == (4, 96, 96)
    x, y = flow[0, 40:56, 24:36], flow[1, 40:56, 24:36]
    assert x.mean() * 20 > 2.0 and abs(y.mean() * 20) < 1.0
    farneback = optical_flow(frames, {**pre, "flow_method": "farneback"})
    assert farneback[0, 40:56, 24:36].mean() > 0.05


def test_tam_equals_the_grouped_convolution_definition():
    """TAM's adaptive temporal conv, exported as a sum of slices, equals the paper's per-video
    grouped convolution (the official implementation's formulation)."""
    import torch
    import torch.nn.functional as F

    from edgert.plugins.tam.model import TAM

    torch.manual_seed(0)
    tam = TAM(16, 5).eval()
    for m in tam.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    n, t, c, h, w = 3, 5, 16, 4, 4
    x = torch.randn(n * t, c, h, w)
    with torch.no_grad():
        clip = x.view(n, t, c, h, w).permute(0, 2, 1, 3, 4)
        pooled = clip.mean(dim=(3, 4))
        kernel = tam.G(pooled.reshape(n * c, t)).view(n * c, 1, 3, 1)
        scaled = clip * tam.L(pooled).view(n, c, t, 1, 1)
        expected = F.conv2d(scaled.reshape(1, n * c, t, h * w), kernel, padding=(1, 0), groups=n * c)
        expected = expected.view(n, c, t, h, w).permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
        torch.testing.assert_close(tam(x), expected)


def test_tdn_temporal_conv_starts_as_the_tsm_shift():
    import torch

    from edgert.exporters.temporal import temporal_shift
    from edgert.plugins.tdn.model import TemporalConv

    x = torch.randn(2 * 6, 32, 3, 3)
    conv = TemporalConv(32, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), temporal_shift(x, 6, 8, "bidirectional"))
        conv.conv.weight.normal_()  # any weights: the same as the depthwise Conv1d over time
        seq = x.view(2, 6, 32, 3, 3).permute(0, 3, 4, 2, 1).reshape(-1, 32, 6)
        expected = conv.conv(seq).view(2, 3, 3, 32, 6).permute(0, 4, 3, 1, 2).reshape(12, 32, 3, 3)
        torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("name", ["tsm", "tam", "tdn", "trn"])
def test_torchvision_backbone_into_temporal_models(name, tmp_path):
    """An ImageNet ResNet state_dict loads into every temporal model: wrapped convs/blocks get
    their weights, added modules keep their initialisation (TDN derives its difference stem)."""
    import torch

    from edgert.exporters.backbones.resnet import ResNet
    from edgert.runtime.host import get_host

    torch.manual_seed(3)
    imagenet = ResNet("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(imagenet.state_dict(), path)
    detector = get_host().get("detector", name).obj
    opts = detector.resolve_options({"backbone": "resnet18", "segments": "4", "size": "64", "num_classes": "4"})
    model = detector.build(opts, str(path))
    state = model.state_dict()
    conv1 = {"tsm": "base_model.layer2.1.conv1.net.weight", "tam": "base_model.layer2.1.net.conv1.weight",
             "tdn": "base_model.layer2.1.conv1.weight", "trn": "base_model.layer2.1.conv1.weight"}[name]
    torch.testing.assert_close(state[conv1], imagenet.layer2[1].conv1.weight)
    if name == "tdn":
        torch.testing.assert_close(state["base_model.conv1_5.0.weight"][:, 5],
                                   imagenet.conv1.weight.mean(dim=1))
        torch.testing.assert_close(state["base_model.resnext_layer1.1.conv2.weight"], imagenet.layer1[1].conv2.weight)
