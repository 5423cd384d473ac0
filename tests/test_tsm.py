"""TSM: the shift against the official code, export without ScatterND, online == offline."""

import json

import numpy as np
import onnx
import pytest
import torch

from edgert.exporters.temporal import temporal_shift
from edgert.exporters.video import load_checkpoint
from edgert.plugins.tsm.model import TSM, OnlineTSM, shifted_blocks
from edgert.runtime import load
from edgert.runtime.errors import EdgertError

from conftest import assert_user_error, edgert


def official_shift(x, n_segment, fold_div=8):
    """mit-han-lab/temporal-shift-module ops/temporal_shift.py, TemporalShift.shift (inplace=False)."""
    nt, c, h, w = x.size()
    n_batch = nt // n_segment
    x = x.view(n_batch, n_segment, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]  # shift left
    out[:, 1:, fold: 2 * fold] = x[:, :-1, fold: 2 * fold]  # shift right
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]  # not shift
    return out.view(nt, c, h, w)


def online_demo_shift(x, n_segment, fold_div=8):
    """Uni-directional shift as the online demo applies it frame by frame: the first c//8
    channels come from the previous frame (zeros before the first)."""
    nt, c, h, w = x.size()
    x = x.view(-1, n_segment, c, h, w)
    out = x.clone()
    fold = c // fold_div
    out[:, 0, :fold] = 0
    out[:, 1:, :fold] = x[:, :-1, :fold]
    return out.view(nt, c, h, w)


@pytest.mark.parametrize("fold_div", [8, 4])
def test_shift_matches_official(fold_div):
    x = torch.randn(2 * 5, 16, 3, 3)
    torch.testing.assert_close(temporal_shift(x, 5, fold_div, "bidirectional"), official_shift(x, 5, fold_div))
    torch.testing.assert_close(temporal_shift(x, 5, fold_div, "unidirectional"), online_demo_shift(x, 5, fold_div))


def test_shift_placement():
    r50 = TSM(5, 8, "resnet50").base_model
    assert len(shifted_blocks(r50)) == 16  # every Bottleneck
    r101 = TSM(5, 8, "resnet101").base_model
    assert len(shifted_blocks(r101)) == 3 + 4 + 12 + 3  # layer3's 23 blocks: every second one
    mbv2 = TSM(5, 8, "mobilenetv2").base_model
    assert [i for i, b in enumerate(mbv2.blocks()) if b in shifted_blocks(mbv2)] == [2, 4, 5, 7, 8, 9, 11, 12, 14, 15]
    keys = TSM(5, 8, "resnet50").state_dict()
    assert "base_model.layer1.0.conv1.net.weight" in keys  # the official key layout


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv2"])
def test_online_equals_offline_unidirectional(backbone):
    torch.manual_seed(0)
    offline = TSM(6, 7, backbone, shift_mode="unidirectional").eval()
    for m in offline.modules():  # non-trivial BN statistics, so errors cannot hide
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    video = torch.randn(2, 7, 3, 64, 64)
    with torch.no_grad():
        expected = offline.frame_scores(video)
        online_model = TSM(6, 7, backbone, shift_mode="unidirectional")
        online_model.load_state_dict(offline.state_dict())
        online = OnlineTSM(online_model.eval()).eval()
        buffers = [torch.zeros(2, *s) for s in online.buffer_shapes(64)]
        for t in range(7):
            scores, *buffers = online(video[:, t], *buffers)
            torch.testing.assert_close(scores, expected[:, t], atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def tsm_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    model = TSM(5, 4, "resnet18", shift_mode="unidirectional").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("tsm") / "tsm_r18_uni.pt"
    torch.save(model.state_dict(), path)
    return path, model


def test_exported_online_stream_equals_offline(tsm_checkpoint, tmp_path):
    path, offline = tsm_checkpoint
    opts = ["--checkpoint", path, "--opt", "backbone=resnet18", "--opt", "segments=4", "--opt", "size=48",
            "--opt", "num_classes=5"]
    result = edgert("export", "tsm", "--out", tmp_path / "online", "--opt", "online=true", *opts)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "online" / "manifest.json").read_text())
    assert len(manifest["graphs"]["main"]["state"]) == 8 and manifest["preprocessing"]["average_steps"] == 4
    assert manifest["model"]["options"]["shift"] == "unidirectional"  # what the graph does, as `info` shows it
    assert "shift=unidirectional" in edgert("info", tmp_path / "online").stdout
    assert_user_error(edgert("export", "tsm", "--out", tmp_path / "x", "--opt", "online=true", "--opt",
                             "shift=bidirectional", *opts), "shift=bidirectional with online=true", "past only")

    video = np.random.default_rng(0).standard_normal((1, 9, 3, 48, 48)).astype(np.float32)
    reference = TSM(5, 9, "resnet18", shift_mode="unidirectional").eval()
    reference.load_state_dict(offline.state_dict())
    with torch.no_grad():
        expected = reference.frame_scores(torch.from_numpy(video)).numpy()
    session = load(tmp_path / "online").stream()
    got = np.stack([session.step({"frame": video[:, t]})["scores"] for t in range(9)], axis=1)
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, np.abs(expected).max()))
    session.reset()  # a restart gives the first frame's scores again, not a continuation
    np.testing.assert_allclose(session.step({"frame": video[:, 0]})["scores"], expected[:, 0], atol=1e-4)


def test_offline_export_has_no_scatternd(tmp_path, clip_npy):
    result = edgert("export", "tsm", "--out", tmp_path / "b", "--opt", "backbone=resnet18", "--opt", "segments=4",
                    "--opt", "size=32", "--opt", "num_classes=5")
    assert result.returncode == 0, result.stderr
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "model.onnx")).graph.node}
    assert "Concat" in ops and "Slice" in ops
    assert not ops & {"ScatterND", "ScatterElements", "Loop", "Scan", "If"}
    x = np.random.default_rng(1).standard_normal((3, 4, 3, 32, 32)).astype(np.float32)
    assert load(tmp_path / "b").run({"video": x})["scores"].shape == (3, 5)
    assert edgert("run", tmp_path / "b", "--input", clip_npy).returncode == 0


def test_stream_cli(tsm_checkpoint, tmp_path):
    from edgert.exporters.synthetic import render_clip, write_video

    path, _ = tsm_checkpoint
    out = tmp_path / "online"
    assert edgert("export", "tsm", "--out", out, "--checkpoint", path, "--opt", "online=true", "--opt", "backbone=resnet18",
                  "--opt", "segments=4", "--opt", "size=32", "--opt", "num_classes=5").returncode == 0
    write_video(tmp_path / "v.mp4", render_clip(0, np.random.default_rng(0), frames=12))
    result = edgert("run", out, "--input", tmp_path / "v.mp4", "--stream", "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["frame"] for r in rows] == list(range(12))
    offline = edgert("run", out, "--input", tmp_path / "v.mp4")
    assert offline.returncode != 0 and "run it with --stream" in offline.stderr


def _to_mmaction2(state):
    """Our TSM/TSN keys -> mmaction2's layout (ConvModule conv/bn, cls_head.fc_cls)."""
    out = {}
    for key, value in state.items():
        k = key.replace("base_model.", "backbone.", 1).replace("new_fc.", "cls_head.fc_cls.")
        k = k.replace("backbone.conv1.", "backbone.conv1.conv.").replace("backbone.bn1.", "backbone.conv1.bn.")
        for i in (1, 2, 3):
            k = k.replace(f".conv{i}.net.", f".conv{i}.conv.net.")
            if f".conv{i}.conv.net." not in k:
                k = k.replace(f".conv{i}.weight", f".conv{i}.conv.weight")
            k = k.replace(f".bn{i}.", f".conv{i}.bn.")
        k = k.replace(".downsample.0.", ".downsample.conv.").replace(".downsample.1.", ".downsample.bn.")
        out[k] = value
    return out


def test_checkpoint_layouts(tsm_checkpoint, tmp_path):
    _, model = tsm_checkpoint
    state = model.state_dict()
    official = tmp_path / "TSM_kinetics_RGB_resnet18_shift8_blockres_avg_segment8_e50.pth"
    torch.save({"epoch": 50, "arch": "resnet18", "best_prec1": 70.0,
                "state_dict": {f"module.{k}": v for k, v in state.items()}}, official)
    assert "module.base_model.layer1.0.conv1.net.weight" in torch.load(official)["state_dict"]
    target = TSM(5, 4, "resnet18")
    assert load_checkpoint(target, str(official)) == "edgert/official"
    torch.testing.assert_close(target.state_dict()["base_model.layer2.0.conv1.net.weight"],
                               state["base_model.layer2.0.conv1.net.weight"])

    mm = _to_mmaction2(state)
    assert "backbone.layer1.0.conv1.conv.net.weight" in mm and "backbone.layer1.0.conv1.bn.running_var" in mm
    assert "backbone.layer2.0.downsample.conv.weight" in mm and "cls_head.fc_cls.weight" in mm
    mm_path = tmp_path / "tsm_mmaction2.pth"
    torch.save({"meta": {"epoch": 50}, "state_dict": mm}, mm_path)
    target = TSM(5, 4, "resnet18")
    assert load_checkpoint(target, str(mm_path)) == "mmaction2"
    for key, value in state.items():
        torch.testing.assert_close(target.state_dict()[key], value)

    del mm["backbone.layer3.1.conv2.bn.weight"]
    torch.save({"state_dict": mm}, mm_path)
    with pytest.raises(EdgertError, match=r"missing keys: base_model.layer3.1.bn2.weight"):
        load_checkpoint(TSM(5, 4, "resnet18"), str(mm_path))


def test_mmaction2_tsn_layout(tmp_path):
    from edgert.exporters.video import SegmentNet

    source = SegmentNet(5, 3, "resnet50")
    path = tmp_path / "tsn_mmaction2.pth"
    torch.save({"state_dict": _to_mmaction2(source.state_dict())}, path)
    target = SegmentNet(5, 3, "resnet50")
    assert load_checkpoint(target, str(path)) == "mmaction2"
    torch.testing.assert_close(target.state_dict()["base_model.layer4.2.bn3.running_mean"],
                               source.state_dict()["base_model.layer4.2.bn3.running_mean"])
    with pytest.raises(EdgertError, match="unexpected keys: .*base_model.layer1.0.conv3.weight"):
        load_checkpoint(TSM(5, 3, "resnet18"), str(path))  # a checkpoint of another architecture
