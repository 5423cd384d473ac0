"""TDN in PyTorch: short-term (S-TDM) and long-term (L-TDM) temporal difference modules."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgert.exporters.video import SegmentNet

FRAMES_PER_SEGMENT = 5


class LongTermTDM(nn.Module):
    """L-TDM (the official ``mSEModule``), on (N*T, C, H, W) after a block's conv1-BN-ReLU.

    Reduce channels 16x (1x1 conv + BN); difference between the next segment's feature after a
    depthwise 3x3 conv and the current one, forwards and backwards in time (zero at the clip
    end / start); three scales of the difference averaged (itself; avg-pool 2 -> 3x3 conv -> BN ->
    nearest upsample; 3x3 conv -> BN); 1x1 conv + BN back to C channels; attention
    ``sigmoid(.) - 0.5``; ``out = x + x * (y_fwd + y_bwd) / 2``. The two directions share the
    scale convolutions (``conv3_smallscale2``/``4`` and their BNs), each applied to its own
    direction's difference, as the official module does (MCG-NJU/TDN ``ops/base_module.py``);
    the forward difference at segment t is ``conv2(f[t+1]) - f[t]``, the backward one
    ``conv2(f[t-1]) - f[t]``.
    """

    def __init__(self, channels: int, segments: int, reduction: int = 16):
        super().__init__()
        mid = channels // reduction
        self.segments = segments
        self.conv1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.avg_pool_forward2 = nn.AvgPool2d(2, 2)
        self.avg_pool_backward2 = nn.AvgPool2d(2, 2)
        self.conv3 = nn.Conv2d(mid, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.conv3_smallscale2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn3_smallscale2 = nn.BatchNorm2d(mid)
        self.conv3_smallscale4 = nn.Conv2d(mid, mid, 3, padding=1, bias=False)
        self.bn3_smallscale4 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.segments
        feat = self.bn1(self.conv1(x))
        conv = self.conv2(feat)
        feat5, conv5 = feat.unflatten(0, (-1, t)), conv.unflatten(0, (-1, t))
        zeros = torch.zeros_like(feat5[:, :1])
        forward = torch.cat([conv5[:, 1:] - feat5[:, :-1], zeros], dim=1).flatten(0, 1)   # pad at the end
        backward = torch.cat([zeros, conv5[:, :-1] - feat5[:, 1:]], dim=1).flatten(0, 1)  # pad at the start
        size = forward.shape[2:]
        fwd2 = F.interpolate(self.bn3_smallscale2(self.conv3_smallscale2(self.avg_pool_forward2(forward))), size)
        bwd2 = F.interpolate(self.bn3_smallscale2(self.conv3_smallscale2(self.avg_pool_backward2(backward))), size)
        fwd4 = self.bn3_smallscale4(self.conv3_smallscale4(forward))
        bwd4 = self.bn3_smallscale4(self.conv3_smallscale4(backward))
        y_fwd = torch.sigmoid(self.bn3(self.conv3((forward + fwd2 + fwd4) / 3.0))) - 0.5
        y_bwd = torch.sigmoid(self.bn3(self.conv3((backward + bwd2 + bwd4) / 3.0))) - 0.5
        return x + x * (0.5 * y_fwd + 0.5 * y_bwd)


class TemporalConv(nn.Module):
    """Depthwise temporal conv (kernel 3, zero padding) initialised as TSM's shift (the
    official ``ShiftModule``): channels [0, C/8) take the next segment, [C/8, C/4) the
    previous, the rest stay; learnable afterwards. Parameter kept as a Conv1d's ``conv.weight``
    (C, 1, 3), the official layout."""

    def __init__(self, channels: int, segments: int, fold_div: int = 8):
        super().__init__()
        self.segments = segments
        self.conv = nn.Conv1d(channels, channels, 3, padding=1, groups=channels, bias=False)
        fold = channels // fold_div
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:fold, 0, 2] = 1
            self.conv.weight[fold:2 * fold, 0, 0] = 1
            self.conv.weight[2 * fold:, 0, 1] = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The depthwise temporal conv written as three weighted time slices in the
        # (N, T, C, H, W) layout: the official permute to (N*H*W, C, T) and back moves the
        # whole tensor twice per block, which dominates on a CPU.
        clip = x.unflatten(0, (-1, self.segments))               # (N, T, C, H, W)
        zeros = torch.zeros_like(clip[:, :1])
        previous = torch.cat([zeros, clip[:, :-1]], dim=1)
        following = torch.cat([clip[:, 1:], zeros], dim=1)
        w = self.conv.weight[:, 0, :, None, None]                # (C, 3, 1, 1)
        return (w[:, 0] * previous + w[:, 1] * clip + w[:, 2] * following).flatten(0, 1)


class TDN(SegmentNet):
    """Temporal Difference Network (Wang et al., CVPR 2021).

    Input ``(N, T, 5, 3, H, W)``: five consecutive frames around each segment's sample.
    S-TDM: the centre frame goes through conv1-BN-ReLU-maxpool; the four RGB differences
    (12 channels) through avg-pool 2, ``conv1_5`` (7x7, stride 2, BN, ReLU; initialised with
    conv1's filters averaged over RGB) and max-pool; fused as ``a*x + b*diff`` (nearest
    resize), then the difference branch runs its own copy of layer1 (``resnext_layer1``) and is
    fused again after layer1. a = b = 0.5 for 8 segments, else 0.75 / 0.25 (as the official
    code). L-TDM plus the shift-initialised temporal conv after conv1-BN-ReLU of every block in
    layers 2-4. Average consensus. Backbone: torchvision-layout ResNet; the official code uses
    Cadene's FBResNet, whose convs carry biases: its checkpoints load with each bias folded
    into the BatchNorm after it (``exporters/layouts.py``), which is exact.
    """

    def __init__(self, num_classes: int, segments: int, backbone: str = "resnet50", dropout: float = 0.8):
        super().__init__(num_classes, segments, backbone, dropout)
        base = self.base_model
        self.alpha, self.beta = (0.5, 0.5) if segments == 8 else (0.75, 0.25)
        base.conv1_5 = nn.Sequential(nn.Conv2d(12, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        base.resnext_layer1 = copy.deepcopy(base.layer1)
        self.inflate_difference_stem()
        for layer in (base.layer2, base.layer3, base.layer4):
            for block in layer:
                width = block.conv1.out_channels
                block.mse = LongTermTDM(width, segments)
                block.shift = TemporalConv(width, segments)
                block.inserted = ("mse", "shift")

    def inflate_difference_stem(self) -> None:
        """conv1_5 from conv1 (RGB-averaged, replicated over the 12 difference channels) and
        resnext_layer1 from layer1: the official initialisation from ImageNet weights."""
        base = self.base_model
        with torch.no_grad():
            base.conv1_5[0].weight.copy_(base.conv1.weight.mean(dim=1, keepdim=True).expand(-1, 12, -1, -1))
            base.resnext_layer1.load_state_dict(base.layer1.state_dict())

    def features(self, video: torch.Tensor) -> torch.Tensor:
        base = self.base_model
        frames = video.flatten(0, 1)                                      # (N*T, 5, 3, H, W)
        diffs = (frames[:, 1:] - frames[:, :-1]).flatten(1, 2)           # (N*T, 12, H, W)
        centre = frames[:, FRAMES_PER_SEGMENT // 2]
        diff = base.maxpool(base.conv1_5(F.avg_pool2d(diffs, 2)))
        x = base.maxpool(base.relu(base.bn1(base.conv1(centre))))
        x = self.alpha * x + self.beta * F.interpolate(diff, x.shape[2:])
        x = base.layer1(x)
        x = self.alpha * x + self.beta * F.interpolate(base.resnext_layer1(diff), x.shape[2:])
        x = base.layer4(base.layer3(base.layer2(x)))
        return getattr(base, base.head)(base.pool(x))
