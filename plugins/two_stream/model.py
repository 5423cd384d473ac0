"""Two-stream network in PyTorch: an RGB TSN and a temporal TSN, late fusion of scores."""

from __future__ import annotations

import torch
from torch import nn

from edgert.exporters.video import SegmentNet


def inflate_first_conv(stream: SegmentNet, channels: int) -> None:
    """TSN's cross-modality initialisation: the first conv's RGB filters averaged over the
    input channels and replicated to ``channels`` (flow: 2L, RGB difference: 3L)."""
    base = stream.base_model
    old = base.conv1 if hasattr(base, "conv1") else base.features[0][0]
    new = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    with torch.no_grad():
        new.weight.copy_(old.weight.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1))
    if hasattr(base, "conv1"):
        base.conv1 = new
    else:
        base.features[0][0] = new


class TwoStream(nn.Module):
    """Simonyan & Zisserman (NeurIPS 2014) as used by TSN: ``rgb`` and ``temporal`` are TSNs
    (K segments, average consensus); the temporal stream's first conv takes the stacked
    motion channels. Output: ``rgb_weight * rgb_scores + motion_weight * temporal_scores``
    (TSN's late fusion, default weights 1 and 1.5)."""

    def __init__(self, num_classes: int, segments: int, backbone: str, dropout: float, motion_channels: int,
                 rgb_weight: float = 1.0, motion_weight: float = 1.5):
        super().__init__()
        self.rgb = SegmentNet(num_classes, segments, backbone, dropout)
        self.temporal = SegmentNet(num_classes, segments, backbone, dropout)
        inflate_first_conv(self.temporal, motion_channels)
        self.rgb_weight, self.motion_weight = rgb_weight, motion_weight

    def forward(self, video: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        return self.rgb_weight * self.rgb(video) + self.motion_weight * self.temporal(motion)


class TwoStreamFeatures(nn.Module):
    """Feature extractor: [RGB stream features ‖ temporal stream features], each averaged over
    the segments — the layout of THUMOS'14 features (RGB then flow)."""

    def __init__(self, model: TwoStream):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        rgb, temporal = self.model.rgb, self.model.temporal
        return torch.cat([rgb.features(video).unflatten(0, (-1, rgb.segments)).mean(dim=1),
                          temporal.features(motion).unflatten(0, (-1, temporal.segments)).mean(dim=1)], dim=1)
