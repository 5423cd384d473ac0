"""TRN (temporal relation network) in PyTorch: multi-scale relations over ordered frames."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from edgert.exporters.video import SegmentNet


def choose_relations(segments: int, subsample: int = 3) -> list[list[tuple[int, ...]]]:
    """Ordered frame subsets per scale, scales T, T-1, ..., 2 (as TRN-pytorch).

    The largest scale uses its single relation (all frames). TRN-pytorch draws ``subsample``
    relations of every other scale with ``np.random.choice`` inside ``forward()``, in eval
    too, so two runs differ. Here the draw is fixed: ``subsample`` relations spread evenly over
    the lexicographically sorted combinations (first, last and evenly between) — a static,
    reproducible graph that still covers early, late and spread-out frames.
    """
    scales = []
    for scale in range(segments, 1, -1):
        combos = list(itertools.combinations(range(segments), scale))
        if len(combos) <= subsample or scale == segments:
            picked = combos if scale != segments else combos[:1]
        else:
            picked = [combos[round(i * (len(combos) - 1) / (subsample - 1))] for i in range(subsample)]
        scales.append(picked)
    return scales


class RelationModuleMultiScale(nn.Module):
    """Sum over scales s of MLP_s(concat of the s frames' features), for the chosen relations.

    Per-scale MLP as TRN-pytorch: ReLU -> Linear(s*D, 256) -> ReLU -> Linear(256, classes);
    keys ``fc_fusion_scales.{i}.{1,3}``.
    """

    def __init__(self, feature_dim: int, segments: int, num_classes: int, subsample: int = 3, bottleneck: int = 256):
        super().__init__()
        self.relations = choose_relations(segments, subsample)
        self.fc_fusion_scales = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(len(rel[0]) * feature_dim, bottleneck), nn.ReLU(),
                          nn.Linear(bottleneck, num_classes))
            for rel in self.relations)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (N, T, D)
        total = None
        for mlp, relations in zip(self.fc_fusion_scales, self.relations):
            for frames in relations:
                out = mlp(features[:, list(frames)].flatten(1))
                total = out if total is None else total + out
        return total


class TRN(SegmentNet):
    """TRN-multiscale (Zhou et al., ECCV 2018) on the TSN skeleton: ``new_fc`` projects each
    frame's backbone feature to 256-d (TRN-pytorch's img_feature_dim), the relation module
    (``consensus``) replaces the average."""

    def __init__(self, num_classes: int, segments: int, backbone: str = "resnet50", dropout: float = 0.8,
                 feature_dim: int = 256, subsample: int = 3):
        super().__init__(feature_dim, segments, backbone, dropout)
        self.consensus = RelationModuleMultiScale(feature_dim, segments, num_classes, subsample)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.consensus(self.frame_scores(video))
