"""TAM / TANet in PyTorch: temporal adaptive module inside every residual block."""

from __future__ import annotations

import torch
from torch import nn

from edgert.exporters.backbones.resnet import Bottleneck
from edgert.exporters.video import SegmentNet


class TAM(nn.Module):
    """Temporal Adaptive Module (Liu et al., ICCV 2021), on (N*T, C, H, W).

    Both branches read the spatially pooled features (N*C, T). Global branch G:
    Linear(T, 2T) -> BN -> ReLU -> Linear(2T, K) -> Softmax: a K-tap temporal kernel per video
    and channel. Local branch L: Conv1d(C, C/4, 3) -> BN -> ReLU -> Conv1d(C/4, C, 1) -> Sigmoid:
    a location-sensitive importance per (channel, t) that scales the features. The output is the
    scaled features convolved along time with the video's own kernel (zero padding K//2).

    The official code does that convolution as ``F.conv2d(..., groups=N*C)`` with the kernel
    as weight, which cannot export with a dynamic batch (the weight's shape depends on N).
    Here it is the same sum written out, ``sum_k kernel[..., k] * x[t + k - K//2]`` over padded
    time slices: identical values, any batch size. Keys ``G.*``, ``L.*`` as the official ones.
    """

    def __init__(self, channels: int, segments: int, kernel_size: int = 3, alpha: int = 2, beta: int = 4):
        super().__init__()
        self.segments, self.kernel_size = segments, kernel_size
        self.G = nn.Sequential(nn.Linear(segments, segments * alpha, bias=False), nn.BatchNorm1d(segments * alpha),
                               nn.ReLU(inplace=True), nn.Linear(segments * alpha, kernel_size, bias=False),
                               nn.Softmax(-1))
        self.L = nn.Sequential(nn.Conv1d(channels, channels // beta, kernel_size, padding=kernel_size // 2, bias=False),
                               nn.BatchNorm1d(channels // beta), nn.ReLU(inplace=True),
                               nn.Conv1d(channels // beta, channels, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, k = self.segments, self.kernel_size
        clip = x.unflatten(0, (-1, t)).transpose(1, 2)                 # (N, C, T, H, W)
        pooled = clip.mean(dim=(3, 4))                                  # (N, C, T)
        kernel = self.G(pooled.flatten(0, 1)).unflatten(0, (-1, clip.shape[1]))  # (N, C, K)
        local = self.L(pooled)                                          # (N, C, T)
        scaled = clip * local[..., None, None]
        pad = k // 2
        zeros = torch.zeros_like(scaled[:, :, :1]).expand(-1, -1, pad, -1, -1)
        padded = torch.cat([zeros, scaled, zeros], dim=2)               # (N, C, T + 2*pad, H, W)
        out = sum(kernel[:, :, i, None, None, None] * padded[:, :, i:i + t] for i in range(k))
        return out.transpose(1, 2).flatten(0, 1)


class TemporalBlock(nn.Module):
    """A ResNet block with TAM after its first conv-BN-ReLU (TANet's TemporalBottleneck);
    the block is kept as ``net`` so keys read ``layer1.0.net.conv1.weight``, ``layer1.0.tam.G.0.weight``."""

    def __init__(self, net: nn.Module, segments: int):
        super().__init__()
        self.net = net
        self.tam = TAM(net.conv1.out_channels, segments)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        identity = x if net.downsample is None else net.downsample(x)
        out = self.tam(net.relu(net.bn1(net.conv1(x))))
        out = net.bn2(net.conv2(out))
        if isinstance(net, Bottleneck):
            out = net.bn3(net.conv3(net.relu(out)))
        return net.relu(out + identity)


class TANet(SegmentNet):
    """TANet (Liu et al., ICCV 2021): TAM in every residual block of a ResNet, TSN skeleton,
    average consensus."""

    def __init__(self, num_classes: int, segments: int, backbone: str = "resnet50", dropout: float = 0.8):
        super().__init__(num_classes, segments, backbone, dropout)
        for layer in (self.base_model.layer1, self.base_model.layer2, self.base_model.layer3, self.base_model.layer4):
            for i in range(len(layer)):
                layer[i] = TemporalBlock(layer[i], segments)
