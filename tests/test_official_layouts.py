"""Fidelity to the official video code: TDN's L-TDM, the official TDN and TSM-MobileNetV2
checkpoint layouts (key lists in tests/data, read off the official repositories), and the
options a checkpoint fixes; TAM-R50 from the official TAM layout."""

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgert.runtime.errors import EdgertError
from edgert.runtime.host import get_host

from conftest import assert_user_error, edgert

DATA = Path(__file__).parent / "data"


def official_state(name: str, seed: int = 0) -> dict:
    """Random tensors under exactly the official keys and shapes (BN variances positive)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        shape = json.loads(shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * (0.2 if key.endswith(("bias", "running_mean")) else 0.1)
    return state


def detector(name):
    return get_host().get("detector", name).obj


# ---- TDN's long-term TDM ---------------------------------------------------------------------
def test_long_term_tdm_backward_path_takes_the_backward_difference():
    """The module against its formula written out step by step, per segment, with non-trivial
    BatchNorms: the backward direction's scale paths take conv2(f[t-1]) - f[t]."""
    from edgert.plugins.tdn.model import LongTermTDM

    torch.manual_seed(0)
    n, t, c, h, w = 2, 3, 32, 4, 4
    tdm = LongTermTDM(c, t).eval()
    with torch.no_grad():
        for m in tdm.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(n * t, c, h, w)

    def bn(m, v):
        return F.batch_norm(v, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    def attention(diff):  # the three scales of one direction's difference, averaged, to C
        small = F.interpolate(bn(tdm.bn3_smallscale2, F.conv2d(F.avg_pool2d(diff, 2), tdm.conv3_smallscale2.weight,
                                                                padding=1)), diff.shape[2:])
        full = bn(tdm.bn3_smallscale4, F.conv2d(diff, tdm.conv3_smallscale4.weight, padding=1))
        return torch.sigmoid(bn(tdm.bn3, F.conv2d((diff + small + full) / 3, tdm.conv3.weight))) - 0.5

    with torch.no_grad():
        f = bn(tdm.bn1, F.conv2d(x, tdm.conv1.weight)).view(n, t, -1, h, w)
        g = F.conv2d(f.flatten(0, 1), tdm.conv2.weight, padding=1, groups=f.shape[2]).view(f.shape)
        zero = torch.zeros_like(f[:, 0])
        forward = torch.stack([g[:, s + 1] - f[:, s] if s + 1 < t else zero for s in range(t)], 1).flatten(0, 1)
        backward = torch.stack([g[:, s - 1] - f[:, s] if s > 0 else zero for s in range(t)], 1).flatten(0, 1)
        expected = x + x * (0.5 * attention(forward) + 0.5 * attention(backward))
        got = tdm(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the old wiring (the backward full-scale path fed the forward one's output) is far off
    assert (got - x).abs().max() > 0.05


# ---- TDN's official layout -------------------------------------------------------------------
def _official_reference(state: dict, opts: dict) -> nn.Module:
    """edgert's TDN computing what the official FBResNet does: the official tensors put in place
    by renaming only, each conv bias kept as a real bias (so nothing is folded)."""
    from edgert.plugins.tdn.model import TDN

    model = TDN(opts["num_classes"], opts["segments"], opts["backbone"], 0.0).eval()
    renamed = {re.sub(r"^base_model\.layer(\d)_bak\.", r"base_model.layer\1.", k): v for k, v in state.items()
               if not k.startswith("base_model.conv1_temp.")}
    modules = dict(model.named_modules())
    for key in [k for k in renamed if k.endswith(".bias") and renamed[k[:-5] + ".weight"].dim() == 4]:
        modules[key[:-5]].bias = nn.Parameter(renamed.pop(key))
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    assert not unexpected and all(k.endswith(".bias") for k in missing)
    return model


def test_tdn_official_checkpoint_loads_with_its_biases_folded(tmp_path):
    state = official_state("tdn_resnet50_official_keys.txt")
    assert sum(k.endswith(".bias") and state[k[:-5] + ".weight"].dim() == 4 for k in state) == 53 + 10 + 1  # FBResNet-50, its layer1 copy, conv1_temp
    path = tmp_path / "tdn_sthv1.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 60}, path)
    tdn = detector("tdn")
    found = tdn.checkpoint_options(str(path))
    assert found["num_classes"].value == 10 and found["backbone"].value == "resnet50"
    opts = tdn.resolve_options({"segments": "3", "size": "64", "num_classes": "10"})
    model = tdn.build(opts, str(path))
    reference = _official_reference(state, opts)
    video = torch.randn(2, 3, 5, 3, 64, 64)
    with torch.no_grad():
        want, got = reference(video), model(video)
    assert ((want - got).abs().max() / want.abs().max()) < 1e-5


def test_tdn_conv_bias_without_batchnorm_is_refused(tmp_path):
    state = official_state("tdn_resnet50_official_keys.txt")
    state["base_model.layer2_bak.0.mse.conv2.bias"] = torch.zeros(state["base_model.layer2_bak.0.mse.conv2.weight"].shape[0])
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(EdgertError, match=r"base_model\.layer2_bak\.0\.mse\.conv2\.bias is a convolution bias with no "
                                          r"BatchNorm after it .*mse\.bn2\.running_mean"):
        detector("tdn").build(detector("tdn").resolve_options({"num_classes": "10"}), str(path))


# ---- TSM's MobileNetV2 (offline and the online demo) -------------------------------------------
def _assert_flat_weights_landed(model_state: dict, official: dict, prefix: str) -> None:
    """Official flat layer indices -> torchvision's nested names, checked tensor by tensor."""
    ours = {re.sub(r"\.net(?=\.)", "", k): v for k, v in model_state.items()}
    pairs = {"features.1.conv.0.weight": "features.1.conv.0.0.weight",   # t = 1: dw conv
             "features.1.conv.3.weight": "features.1.conv.1.weight",     # its pw-linear conv
             "features.1.conv.4.running_var": "features.1.conv.2.running_var",
             "features.2.conv.0.weight": "features.2.conv.0.0.weight",   # expanding: pw conv
             "features.2.conv.4.bias": "features.2.conv.1.1.bias",       # dw BN
             "features.2.conv.6.weight": "features.2.conv.2.weight",     # pw-linear
             "features.2.conv.7.running_mean": "features.2.conv.3.running_mean",
             "features.3.conv.0.weight": "features.3.conv.0.0.weight",   # a shifted block's pw conv
             "features.3.conv.1.weight": "features.3.conv.0.1.weight",
             "features.18.0.weight": "features.18.0.weight"}
    for theirs, mine in pairs.items():
        key = prefix + theirs
        given = official.get(key, official.get(key.replace("conv.0.weight", "conv.0.net.weight")))
        torch.testing.assert_close(ours["base_model." + mine], given)


def test_tsm_mobilenetv2_official_checkpoint(tmp_path):
    state = official_state("tsm_mobilenetv2_official_keys.txt")
    assert "base_model.features.3.conv.0.net.weight" in state  # TSM wraps the shifted blocks' first conv
    path = tmp_path / "TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment8_e100_dense.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    tsm = detector("tsm")
    found = {k: f.value for k, f in tsm.checkpoint_options(str(path)).items()}
    assert found == {"backbone": "mobilenetv2", "num_classes": 10, "shift_div": 8, "segments": 8}
    assert not tsm.checkpoint_options(str(path))["segments"].strict  # a file name: a default, TSM tests at 16 too
    model = tsm.build(tsm.resolve_options({k: str(v) for k, v in found.items()}), str(path))
    _assert_flat_weights_landed(model.state_dict(), state, "base_model.")
    torch.testing.assert_close(model.state_dict()["new_fc.weight"], state["new_fc.weight"])


def test_tsm_online_demo_checkpoint_streams(tmp_path):
    """The online demo's bare model (features.*, classifier.*) into the online graph; it then
    equals the offline uni-directional TSM with the same weights."""
    from edgert.plugins.tsm.model import TSM

    state = official_state("tsm_online_demo_keys.txt")
    path = tmp_path / "mobilenetv2_jester_online.pth.tar"
    torch.save(state, path)
    tsm = detector("tsm")
    found = {k: f.value for k, f in tsm.checkpoint_options(str(path)).items()}
    assert found == {"backbone": "mobilenetv2", "num_classes": 27}
    opts = tsm.resolve_options({"online": "true", "size": "64", "segments": "4", **{k: str(v) for k, v in found.items()}})
    online = tsm.build(opts, str(path))
    _assert_flat_weights_landed(online.tsm.state_dict(), state, "")
    torch.testing.assert_close(online.tsm.new_fc.bias, state["classifier.bias"])
    offline = TSM(27, 4, "mobilenetv2", 0.0, 8, "unidirectional").eval()
    offline.load_state_dict(online.tsm.state_dict())
    frames = torch.randn(4, 3, 64, 64)
    buffers = [torch.zeros(1, *s) for s in online.buffer_shapes(64)]
    with torch.no_grad():
        per_frame = []
        for frame in frames:
            scores, *buffers = online(frame[None], *buffers)
            per_frame.append(scores)
        torch.testing.assert_close(torch.cat(per_frame), offline.frame_scores(frames[None])[0], rtol=1e-4, atol=1e-5)


def test_mobilenetv2_of_another_width_is_refused(tmp_path):
    state = official_state("tsm_online_demo_keys.txt")
    state["features.18.0.weight"] = torch.randn(1280, 160, 1, 1)  # width 0.5 ends its blocks at 160 channels
    path = tmp_path / "half.pth"
    torch.save(state, path)
    with pytest.raises(EdgertError, match=r"features\.18\.0\.weight is \[1280, 160, 1, 1\], MobileNetV2 width 1.0 has "
                                          r"\[1280, 320, 1, 1\]"):
        detector("tsm").checkpoint_options(str(path))


# ---- what a checkpoint fixes -------------------------------------------------------------------
def test_trn_segments_and_classes_come_from_its_relations(tmp_path):
    from edgert.plugins.trn.model import TRN

    path = tmp_path / "trn.pth"
    torch.save({"state_dict": TRN(7, 5, "resnet18").state_dict()}, path)
    found = {k: f.value for k, f in detector("trn").checkpoint_options(str(path)).items()}
    assert found == {"backbone": "resnet18", "num_classes": 7, "segments": 5}


@pytest.fixture(scope="module")
def ten_class_tsn(tmp_path_factory):
    from edgert.exporters.video import SegmentNet

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tsn10.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in SegmentNet(10, 3, "resnet34").state_dict().items()}}, path)
    return path


def test_class_count_and_backbone_read_from_the_checkpoint(ten_class_tsn, tmp_path):
    out = tmp_path / "b"
    result = edgert("export", "tsn", "--out", out, "--checkpoint", ten_class_tsn, "--opt", "segments=3",
                    "--opt", "size=32")
    assert result.returncode == 0, result.stderr
    options = json.loads((out / "manifest.json").read_text())["model"]["options"]
    assert options["num_classes"] == 10 and options["backbone"] == "resnet34"


@pytest.mark.parametrize("opt,fragments", [
    ("num_classes=400", ("--opt num_classes=400 contradicts the checkpoint", "new_fc.weight is [10, 512]",
                         "num_classes=10")),
    ("backbone=resnet50", ("--opt backbone=resnet50 contradicts the checkpoint", "backbone=resnet34")),
])
def test_option_contradicting_the_checkpoint_is_one_line(ten_class_tsn, tmp_path, opt, fragments):
    result = edgert("export", "tsn", "--out", tmp_path / "b", "--checkpoint", ten_class_tsn, "--opt", opt)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "b").exists()


def test_labels_contradicting_the_checkpoint_name_both(ten_class_tsn, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"c{i}" for i in range(4)))
    result = edgert("export", "tsn", "--out", tmp_path / "b", "--checkpoint", ten_class_tsn, "--opt", f"labels={labels}")
    assert_user_error(result, "num_classes=10 but", "has 4 labels", "new_fc.weight is [10, 512]")


def test_tsm_file_name_gives_defaults_an_option_may_override(tmp_path):
    """An official TSM file name says segment8: exported with --opt segments=3 (TSM tests models
    at other segment counts too), its shift8 filled in."""
    from edgert.plugins.tsm.model import TSM

    path = tmp_path / "TSM_kinetics_RGB_resnet18_shift4_blockres_avg_segment8_e50.pth"
    torch.save({"state_dict": TSM(4, 8, "resnet18", shift_div=4).state_dict()}, path)
    out = tmp_path / "b"
    result = edgert("export", "tsm", "--out", out, "--checkpoint", path, "--opt", "segments=3", "--opt", "size=32")
    assert result.returncode == 0, result.stderr
    options = json.loads((out / "manifest.json").read_text())["model"]["options"]
    assert (options["segments"], options["shift_div"], options["num_classes"]) == (3, 4, 4)


# ---- TAM (TANet): every block wrapped as ``net`` -------------------------------------------------
def test_tam_official_resnet50_checkpoint_exports_with_only_a_size(tmp_path):
    """The official TAM wraps each Bottleneck (``layer1.0.net.conv3``): read as a ResNet-50, not
    a ResNet-34 with 102 unexpected keys; nothing but the input size given."""
    state = official_state("tam_resnet50_official_keys.txt")
    path = tmp_path / "ckpt.best.pth.tar"
    torch.save({"epoch": 50, "arch": "resnet50", "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    found = {k: f.value for k, f in detector("tam").checkpoint_options(str(path)).items()}
    assert found == {"backbone": "resnet50", "num_classes": 174}
    out = tmp_path / "b"
    result = edgert("export", "tam", "--out", out, "--checkpoint", path, "--opt", "size=32")
    assert result.returncode == 0, result.stderr
    options = json.loads((out / "manifest.json").read_text())["model"]["options"]
    assert (options["backbone"], options["num_classes"]) == ("resnet50", 174)


@pytest.mark.parametrize("backbone", ["resnet50", "resnet101"])
def test_tam_state_dict_saved_by_edgert_reloads(tmp_path, backbone):
    tam = detector("tam")
    opts = tam.resolve_options({"backbone": backbone, "num_classes": "6", "segments": "4", "size": "32"})
    saved = tam.build(opts, None).eval()
    path = tmp_path / "tam.pth"
    torch.save(saved.state_dict(), path)
    found = {k: f.value for k, f in tam.checkpoint_options(str(path)).items()}
    assert found == {"backbone": backbone, "num_classes": 6}
    loaded = tam.build(tam.resolve_options({"segments": "4", "size": "32", **{k: str(v) for k, v in found.items()}}),
                       str(path)).eval()
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video), saved(video), rtol=0, atol=0)


def test_tdn_with_large_statistics_exports_and_a_perturbed_weight_still_fails(tmp_path, monkeypatch):
    """A TDN-R50 in the official layout whose BatchNorm variances are small (0.0015-0.015: logits
    ~1e7, fp32 itself 8e-3 from fp64 in PyTorch) exports at the default tolerance: parity is
    measured against the module in fp64, within four times PyTorch's own fp32 rounding. The
    same graph with its class head 10 % off is refused."""
    import onnx
    from onnx import numpy_helper

    from edgert.exporters import driver
    from edgert.exporters.driver import export

    state = official_state("tdn_resnet50_official_keys.txt")
    g = torch.Generator().manual_seed(5)
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.rand(value.shape, generator=g) * 0.015 + 0.0015
        elif key.endswith("running_mean"):
            state[key] = torch.randn(value.shape, generator=g) * 0.2
        elif key.endswith("weight") and value.dim() == 4:
            state[key] = torch.randn(value.shape, generator=g) * 0.1
    path = tmp_path / "tdn.pth"
    torch.save(state, path)
    opts = {"segments": "3", "size": "64"}
    export("tdn", tmp_path / "b", opts, checkpoint=str(path))
    row = json.loads((tmp_path / "b" / "manifest.json").read_text())["parity"]["graphs"]["main"]["outputs"]["scores"]
    assert row["passed"] and row["rounding"] > 1e-3 and row["allowed"] == 4 * row["rounding"]
    assert row["max_rel"] <= row["allowed"] and row["max_rel_fp32"] > 1e-4  # PyTorch fp32 as the reference: refused

    exported = driver.export_graph

    def perturbed(module, graph, feeds, out, translations):
        opset = exported(module, graph, feeds, out, translations)
        model = onnx.load(out)
        head = next(t for t in model.graph.initializer if t.dims == [10, 2048])  # new_fc.weight
        head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * 1.1, head.name))
        onnx.save(model, out)
        return opset

    monkeypatch.setattr(driver, "export_graph", perturbed)
    with pytest.raises(EdgertError, match=r"parity check failed for tdn, graph 'main', output 'scores': max relative "
                                          r"error .* > .*, 4 times PyTorch's own fp32 rounding against fp64"):
        export("tdn", tmp_path / "c", opts, checkpoint=str(path))
    assert not (tmp_path / "c").exists()
