"""The TSN-family skeleton shared by the video recognizers, and their checkpoint layouts.

``SegmentNet`` is TSN's structure (Wang et al., ECCV 2016, as in the authors' tsn-pytorch,
which TSM, TRN, TDN and TAM all build on): a 2D ``base_model`` whose classifier is replaced
by Dropout, a ``new_fc`` head, and a consensus over the segments. Temporal models change the
backbone (a shift, an adaptive module) or the consensus (relations); the key layout stays
``base_model.*`` / ``new_fc.*`` so the official checkpoints map 1:1.
"""

from __future__ import annotations

import re
import sys

import torch
from torch import nn

from .backbones import make_backbone
from .checkpoints import check_keys, load_strict, read_state_dict
from .layouts import Converted, to_edgert


class SegmentNet(nn.Module):
    """Input ``(N, T, 3, H, W)``; the T frames share the backbone as a batch of N*T images."""

    def __init__(self, num_classes: int, segments: int, backbone: str = "resnet50", dropout: float = 0.8):
        super().__init__()
        self.segments = segments
        self.backbone_name = backbone
        self.base_model = make_backbone(backbone)
        feature_dim = self.base_model.feature_dim
        setattr(self.base_model, self.base_model.head, nn.Dropout(p=dropout))
        self.new_fc = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.new_fc.weight, 0, 0.001)
        nn.init.zeros_(self.new_fc.bias)

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """(N, T, 3, H, W) -> per-frame pooled features (N*T, D), dropout applied."""
        backbone = self.base_model
        return getattr(backbone, backbone.head)(backbone.forward_features(video.flatten(0, 1)))

    def frame_scores(self, video: torch.Tensor) -> torch.Tensor:
        """Class scores of every frame, (N, T, classes), before the consensus."""
        return self.new_fc(self.features(video)).unflatten(0, (-1, self.segments))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.frame_scores(video).mean(dim=1)  # average consensus


class SegmentFeatures(nn.Module):
    """A recognizer as feature extractor: its per-frame pooled backbone features (after the
    temporal modules) averaged over the segments, ``(N, D)`` — what online detectors consume
    per chunk. Two-stream models provide their own (both streams concatenated)."""

    def __init__(self, model: SegmentNet):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.model.features(video).unflatten(0, (-1, self.model.segments)).mean(dim=1)


# ---- checkpoints ----------------------------------------------------------------------------
def read_checkpoint(path: str) -> Converted:
    """A checkpoint file in edgert's names (see ``layouts``)."""
    return to_edgert(read_state_dict(path), path)


def load_checkpoint(model: nn.Module, path: str) -> str:
    """Load a checkpoint into a SegmentNet-based model; returns the layout recognised.

    Layouts (``exporters/layouts.py``): ours / the official repositories' (``base_model.*``,
    ``new_fc.*``, optionally under ``state_dict`` with DataParallel's ``module.``: tsn-pytorch,
    TSM, TRN-pytorch, TAM); TDN's (FBResNet, conv biases folded); MobileNetV2 numbered flat
    (TSM's and its online demo's); mmaction2 recognizers; a bare torchvision backbone (its
    classifier dropped, the class head left freshly initialised). Strict: anything that does
    not fit is listed in the error; official keys with no place in the model are listed on
    stderr.
    """
    converted = read_checkpoint(path)
    if converted.dropped:
        print(f"  {path}: {converted.layout} layout; not used by the model: {', '.join(converted.dropped)}",
              file=sys.stderr)
    if converted.layout == "torchvision":
        _load_torchvision_backbone(model, converted.state, path)
    elif converted.layout == "mobilenetv2-flat":
        # the flat layout has no TSM wrappers: put ``.net`` back where this model shifts
        targets = {re.sub(r"\.net(?=\.)", "", k): k for k in model.state_dict()}
        load_strict(model, {targets.get(k, k): v for k, v in converted.state.items()}, path)
    else:
        load_strict(model, converted.state, path)
    return converted.layout


def _load_torchvision_backbone(model: nn.Module, state: dict, path: str) -> None:
    """An ImageNet backbone into a video model's ``base_model``. Temporal models wrap convs or
    blocks (TSM ``conv1.net``, TAM ``layer1.0.net``) and add modules (TAM, L-TDM...): wrapped
    keys are matched by their name without the ``.net`` segments, added modules keep their
    initialisation, and the backbone's own classifier is dropped."""
    plain = make_backbone(model.backbone_name)
    head = plain.head + "."
    expected = {k: v for k, v in plain.state_dict().items() if not k.startswith(head)}
    given = {k: v for k, v in state.items() if not k.startswith(head)}
    check_keys(expected, given, path)
    targets = {re.sub(r"\.net(?=\.)", "", k): k for k in model.base_model.state_dict()}
    model.base_model.load_state_dict({targets[k]: v for k, v in given.items()}, strict=False)
