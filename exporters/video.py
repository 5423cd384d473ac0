"""The TSN-family skeleton shared by the video recognizers, and their checkpoint layouts.

``SegmentNet`` is TSN's structure (Wang et al., ECCV 2016, as in the authors' tsn-pytorch,
which TSM, TRN, TDN and TAM all build on): a 2D ``base_model`` whose classifier is replaced
by Dropout, a ``new_fc`` head, and a consensus over the segments. Temporal models change the
backbone (a shift, an adaptive module) or the consensus (relations); the key layout stays
``base_model.*`` / ``new_fc.*`` so the official checkpoints map 1:1.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from edgert.runtime.errors import EdgertError

from .backbones import make_backbone
from .checkpoints import check_keys, load_strict, read_state_dict


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


# ---- checkpoint layouts --------------------------------------------------------------------
# mmaction2's ResNet wraps each conv and its BN in a ConvModule (``conv1.conv``/``conv1.bn``);
# its heads are ``cls_head.fc_cls``. These rules map that layout onto torchvision's names.
_MMACTION_RULES = [
    (re.compile(r"^backbone\.conv1\.conv\.(.*)$"), r"base_model.conv1.\1"),
    (re.compile(r"^backbone\.conv1\.bn\.(.*)$"), r"base_model.bn1.\1"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.conv(\d)\.conv\.(.*)$"), r"base_model.\1.conv\2.\3"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.conv(\d)\.bn\.(.*)$"), r"base_model.\1.bn\2.\3"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.downsample\.conv\.(.*)$"), r"base_model.\1.downsample.0.\2"),
    (re.compile(r"^backbone\.(layer\d+\.\d+)\.downsample\.bn\.(.*)$"), r"base_model.\1.downsample.1.\2"),
    (re.compile(r"^cls_head\.fc_cls\.(.*)$"), r"new_fc.\1"),
]


def _from_mmaction2(state: dict) -> dict:
    out, unmapped = {}, []
    for key, value in state.items():
        for pattern, repl in _MMACTION_RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise EdgertError(f"mmaction2 checkpoint has keys edgert cannot map: {', '.join(unmapped[:8])}"
                          + (f", ... ({len(unmapped)} in all)" if len(unmapped) > 8 else ""))
    return out


def load_checkpoint(model: nn.Module, path: str) -> str:
    """Load a checkpoint into a SegmentNet-based model; returns the layout recognised.

    Layouts: ours / the official repositories' (``base_model.*``, ``new_fc.*``, optionally under
    ``state_dict`` with DataParallel's ``module.``: tsn-pytorch, TSM, TRN-pytorch, TDN, TAM);
    mmaction2 recognizers (``backbone.*``, ``cls_head.fc_cls.*``); a bare torchvision backbone
    (its classifier dropped, the class head left freshly initialised). Strict: anything that
    does not fit is listed in the error.
    """
    state = read_state_dict(path)
    if any(k.startswith("base_model.") for k in state):
        load_strict(model, state, path)
        return "edgert/official"
    if any(k.startswith("backbone.") for k in state):
        load_strict(model, _from_mmaction2(state), path)
        return "mmaction2"
    if any(k.startswith(("layer1.", "features.")) for k in state):
        _load_torchvision_backbone(model, state, path)
        return "torchvision"
    raise EdgertError(f"{path}: unrecognised checkpoint layout (expected 'base_model.*', mmaction2 'backbone.*' or "
                      f"torchvision backbone keys); first keys: {', '.join(list(state)[:4])}")


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
