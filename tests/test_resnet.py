"""The ResNet backbones keep torchvision's names, so torchvision weights load strictly."""

import pytest
import torch

from edgert.exporters.backbones.resnet import ResNet

# Entry counts and a sample of keys of torchvision.models.resnet{18,50}().state_dict():
# parameters, BN running stats and num_batches_tracked, fc included.
TORCHVISION = {
    "resnet18": (122, ["conv1.weight", "bn1.running_var", "layer1.0.conv2.weight", "layer2.0.downsample.0.weight",
                       "layer2.0.downsample.1.num_batches_tracked", "layer4.1.bn2.bias", "fc.weight"]),
    "resnet50": (320, ["layer1.0.conv3.weight", "layer1.0.bn3.running_mean", "layer1.0.downsample.0.weight",
                       "layer3.5.conv2.weight", "layer4.2.bn3.weight", "fc.bias"]),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_state_dict_layout_matches_torchvision(arch):
    count, keys = TORCHVISION[arch]
    state = ResNet(arch).state_dict()
    assert len(state) == count
    for key in keys:
        assert key in state
    assert state["fc.weight"].shape == (1000, 512 if arch == "resnet18" else 2048)


def test_resnet50_v1_5_stride_in_3x3():
    model = ResNet("resnet50")
    assert model.layer2[0].conv1.stride == (1, 1) and model.layer2[0].conv2.stride == (2, 2)
    out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1000)


def test_unknown_arch():
    with pytest.raises(ValueError, match="resnet7"):
        ResNet("resnet7")
