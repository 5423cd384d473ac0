"""TSN: the model's semantics, checkpoint layouts, and a trained model end to end."""

import json

import numpy as np
import pytest
import torch

from edgert.exporters.backbones.resnet import ResNet
from edgert.plugins.tsn import TSNDetector
from edgert.exporters.video import SegmentNet as TSN, load_checkpoint as load_tsn_checkpoint
from edgert.runtime.errors import EdgertError

from conftest import assert_user_error, edgert


def test_consensus_is_the_average_of_segment_scores():
    torch.manual_seed(0)
    model = TSN(num_classes=7, segments=4, backbone="resnet18").eval()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        per_segment = torch.stack([model.new_fc(model.base_model(video[:, k])) for k in range(4)], 1)
        torch.testing.assert_close(model(video), per_segment.mean(1))


def test_state_dict_keys_follow_tsn_pytorch():
    keys = TSN(5, 3, "resnet50").state_dict().keys()
    assert "base_model.layer1.0.conv1.weight" in keys and "new_fc.weight" in keys
    assert not any(k.startswith("base_model.fc.") for k in keys)  # fc replaced by Dropout, as in tsn-pytorch


def test_loads_tsn_pytorch_checkpoint_with_module_prefix(tmp_path):
    torch.manual_seed(1)
    source = TSN(5, 3, "resnet18")
    path = tmp_path / "TSN_ucf101_rgb_resnet18.pth.tar"
    torch.save({"epoch": 80, "arch": "resnet18", "best_prec1": 85.0,
                "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    target = TSN(5, 3, "resnet18")
    assert load_tsn_checkpoint(target, str(path)) == "edgert/official"
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value)


def test_loads_torchvision_resnet_backbone(tmp_path):
    torch.manual_seed(2)
    imagenet = ResNet("resnet18")
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(imagenet.state_dict(), path)
    target = TSN(5, 3, "resnet18")
    assert load_tsn_checkpoint(target, str(path)) == "torchvision"
    torch.testing.assert_close(target.base_model.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)


def test_missing_keys_are_listed(tmp_path):
    state = TSN(5, 3, "resnet18").state_dict()
    del state["base_model.layer4.1.bn2.weight"], state["new_fc.bias"]
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(EdgertError, match=r"missing keys: base_model.layer4.1.bn2.weight, new_fc.bias"):
        load_tsn_checkpoint(TSN(5, 3, "resnet18"), str(path))


def test_wrong_architecture_and_shape(tmp_path):
    path = tmp_path / "r50.pt"
    torch.save(TSN(5, 3, "resnet50").state_dict(), path)
    with pytest.raises(EdgertError, match="unexpected keys: base_model.layer1.0.conv3.weight"):
        load_tsn_checkpoint(TSN(5, 3, "resnet18"), str(path))
    path = tmp_path / "ten.pt"
    torch.save(TSN(10, 3, "resnet18").state_dict(), path)
    with pytest.raises(EdgertError, match=r"keys of the wrong shape: new_fc.weight \[10, 512\] \(expected \[5, 512\]\)"):
        load_tsn_checkpoint(TSN(5, 3, "resnet18"), str(path))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert_user_error(edgert("export", "tsn", "--out", tmp_path / "o", "--checkpoint", junk), "junk.pt: cannot read checkpoint")


def test_labels_option(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n\nc\n")
    det = TSNDetector()
    opts = det.resolve_options({"labels": str(labels)})
    assert opts["num_classes"] == 3 and det.labels(opts) == ["a", "b", "c"]
    with pytest.raises(EdgertError, match="num_classes=4 but .* has 3 labels"):
        det.resolve_options({"labels": str(labels), "num_classes": "4"})
    assert det.resolve_options({})["num_classes"] == 400


def test_trained_tsn_end_to_end(tmp_path):
    """A TSN trained for a few seconds on synthetic clips, exported, then run from .mp4 files
    through the CLI: decoding, sampling and preprocessing at run time must match training."""
    from edgert.exporters.finetune import train
    from edgert.exporters.synthetic import CLASSES, render_clip, write_video

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    det = TSNDetector()
    opts = det.resolve_options({"backbone": "resnet18", "segments": "3", "size": "48", "labels": str(labels),
                                "dropout": "0.2"})
    torch.manual_seed(0)
    model = det.build(opts, None)
    train(model, render_clip, len(CLASSES), 3, det.preprocessing(opts), steps=45)
    ckpt = tmp_path / "tsn.pt"
    torch.save(model.state_dict(), ckpt)

    bundle = tmp_path / "bundle"
    result = edgert("export", "tsn", "--out", bundle, "--checkpoint", ckpt, "--opt", "backbone=resnet18",
                    "--opt", "segments=5", "--opt", "size=48", "--opt", f"labels={labels}")
    assert result.returncode == 0, result.stderr
    assert json.loads((bundle / "manifest.json").read_text())["model"]["checkpoint"]["sha256"]

    rng = np.random.default_rng(99)
    args, truth = [], []
    for i in range(10):
        path = tmp_path / f"clip{i}.mp4"
        write_video(path, render_clip(i % len(CLASSES), rng, frames=20))
        args += ["--input", path]
        truth.append(CLASSES[i % len(CLASSES)])
    ran = edgert("run", bundle, "--json", *args)
    assert ran.returncode == 0, ran.stderr
    predicted = [json.loads(line)["top"][0][0] for line in ran.stdout.splitlines()]
    accuracy = np.mean([p == t for p, t in zip(predicted, truth)])
    assert accuracy >= 0.8, (predicted, truth)  # chance is 0.2
