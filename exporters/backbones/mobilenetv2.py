"""MobileNetV2 in plain PyTorch with torchvision's module names.

Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018), width
1.0, as ``torchvision.models.mobilenet_v2``: ``features.0`` stem, ``features.1..17`` inverted
residual blocks (``conv.0.0`` expand 1x1 / ``conv.1.0`` depthwise 3x3 / ``conv.2`` project /
``conv.3`` BN), ``features.18`` 1x1 to 1280, ``classifier.1`` Linear. torchvision-pretrained
state_dicts load with ``strict=True``. It is the backbone of TSM's online edge demo.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation with ReLU6: keys ``.0`` (conv) and ``.1`` (BN)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel=1))
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)
        self.in_channels = inp

    def forward(self, x: torch.Tensor, branch_input: torch.Tensor | None = None) -> torch.Tensor:
        # branch_input: what the residual branch sees instead of x (used by online TSM).
        out = self.conv(x if branch_input is None else branch_input)
        return x + out if self.use_res_connect else out


SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    head = "classifier"

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features: list[nn.Module] = [ConvBNReLU6(3, 32, stride=2)]
        cin = 32
        for t, c, n, s in SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(ConvBNReLU6(cin, 1280, kernel=1))
        self.features = nn.Sequential(*features)
        self.feature_dim = 1280
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.features[0](x)

    def blocks(self) -> list[nn.Module]:
        return list(self.features[1:18])

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features[18](x), 1), 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features[1:18](self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x))
