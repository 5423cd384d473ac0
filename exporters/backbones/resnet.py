"""ResNet-18/34/50/101 written out in plain PyTorch, with torchvision's module names.

He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016), in the v1.5 form
torchvision ships (stride 2 in the 3x3 conv of a Bottleneck, not the 1x1). Parameter and
buffer names match ``torchvision.models.resnet`` exactly (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ``fc``...), so a torchvision-pretrained state_dict loads with
``strict=True``. torchvision itself is not a dependency: this file is the whole backbone.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _after_conv1(block: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Apply the modules a video model inserted after a block's first conv-BN-ReLU (named in
    ``block.inserted``; TDN puts its L-TDM and temporal conv there). None by default."""
    for name in block.inserted:
        out = getattr(block, name)(out)
    return out


class BasicBlock(nn.Module):
    expansion = 1
    inserted: tuple[str, ...] = ()

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, branch_input: torch.Tensor | None = None) -> torch.Tensor:
        # branch_input: what the residual branch sees instead of x (online TSM feeds the
        # shifted tensor here while the identity path keeps x).
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x if branch_input is None else branch_input)))
        out = self.bn2(self.conv2(_after_conv1(self, out)))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4
    inserted: tuple[str, ...] = ()

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, branch_input: torch.Tensor | None = None) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x if branch_input is None else branch_input)))
        out = self.relu(self.bn2(self.conv2(_after_conv1(self, out))))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHS: dict[str, tuple[type[nn.Module], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(nn.Module):
    """torchvision-compatible ResNet. ``forward_features`` returns the pooled feature vector.

    ``head`` names the classifier attribute ("fc") that video models replace with Dropout;
    ``stem``/``blocks``/``pool`` let temporal models walk the network block by block.
    """

    head = "fc"

    def __init__(self, arch: str = "resnet50", num_classes: int = 1000):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown ResNet architecture {arch!r}; expected one of {sorted(ARCHS)}")
        block, layers = ARCHS[arch]
        self.arch = arch
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = 512 * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)
        self._init_weights()

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # torchvision's initialisation, so an untrained backbone behaves like theirs.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def blocks(self) -> list[nn.Module]:
        return [*self.layer1, *self.layer2, *self.layer3, *self.layer4]

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(x), 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))
