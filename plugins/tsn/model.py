"""TSN in PyTorch (export side only: imported lazily by the plugin)."""

from __future__ import annotations

import torch
from torch import nn

from edgert.exporters.backbones.resnet import ResNet
from edgert.exporters.checkpoints import load_strict, read_state_dict
from edgert.runtime.errors import EdgertError


class TSN(nn.Module):
    """Temporal Segment Networks (Wang et al., ECCV 2016), RGB modality.

    Layout and choices follow the authors' tsn-pytorch, so their checkpoints map 1:1:
    ``base_model`` is an ImageNet ResNet (torchvision key names) whose ``fc`` is replaced by
    ``Dropout``; ``new_fc`` is the class head (init N(0, 0.001), bias 0). Input
    ``(N, K, 3, H, W)``, one frame per segment (``new_length = 1``); the K segment snippets
    go through the shared backbone as a batch of N*K images; the segmental consensus is the
    average of the K class-score vectors (``ConsensusModule('avg')``). Output: class scores
    (pre-softmax), ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int, segments: int, backbone: str = "resnet50", dropout: float = 0.8):
        super().__init__()
        self.segments = segments
        self.base_model = ResNet(backbone)
        feature_dim = self.base_model.feature_dim
        self.base_model.fc = nn.Dropout(p=dropout)
        self.new_fc = nn.Linear(feature_dim, num_classes)
        nn.init.normal_(self.new_fc.weight, 0, 0.001)
        nn.init.zeros_(self.new_fc.bias)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        snippets = video.flatten(0, 1)                       # (N*K, 3, H, W)
        scores = self.new_fc(self.base_model(snippets))      # (N*K, classes)
        return scores.unflatten(0, (-1, self.segments)).mean(dim=1)


def load_tsn_checkpoint(model: TSN, path: str) -> str:
    """Load our own / tsn-pytorch state_dicts (``base_model.*``, ``new_fc.*``) or a bare
    torchvision ResNet state_dict (backbone only; the class head keeps its fresh init).
    Returns which layout was recognised."""
    state = read_state_dict(path)
    if any(k.startswith("base_model.") for k in state):
        load_strict(model, state, path)
        return "tsn"
    if "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
        backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
        load_strict(model.base_model, backbone, path)  # its fc is a Dropout now: no keys
        return "torchvision-resnet"
    raise EdgertError(f"{path}: unrecognised checkpoint layout for TSN (expected 'base_model.*' / 'new_fc.*' keys "
                      f"or a torchvision ResNet state_dict); first keys: {', '.join(list(state)[:4])}")

