"""2D backbones with torchvision's state_dict layout (torchvision is not a dependency)."""

from __future__ import annotations

from torch import nn

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenetv2")


def make_backbone(name: str) -> nn.Module:
    """A backbone with ``stem()``, ``blocks()``, ``pool()``, ``feature_dim`` and ``head``."""
    if name == "mobilenetv2":
        from .mobilenetv2 import MobileNetV2

        return MobileNetV2()
    from .resnet import ResNet

    return ResNet(name)
