"""TSM in PyTorch: offline (bi- or uni-directional shift) and the online per-frame graph."""

from __future__ import annotations

import torch
from torch import nn

from edgert.exporters.backbones.mobilenetv2 import InvertedResidual
from edgert.exporters.temporal import TemporalShift
from edgert.exporters.video import SegmentNet


def shifted_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Where TSM puts the shift (``make_temporal_shift``, place 'blockres'): every residual
    block of a ResNet, except that ResNet-101's layer3 shifts every second block
    (``n_round = 2`` when a stage has >= 23 blocks); in MobileNetV2 the inverted residual
    blocks with a residual connection (10 of 17, as the online demo's shift_block_idx)."""
    if backbone.head == "classifier":
        return [b for b in backbone.blocks() if isinstance(b, InvertedResidual) and b.use_res_connect]
    chosen = []
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4):
        step = 2 if len(layer) >= 23 else 1
        chosen += [block for i, block in enumerate(layer) if i % step == 0]
    return chosen


class TSM(SegmentNet):
    """Temporal Shift Module (Lin et al., ICCV 2019) on the TSN skeleton.

    Residual shift ('blockres'): the shift is applied to the input of each chosen block's
    residual branch only (ResNet: before ``conv1``; MobileNetV2: before the expansion
    conv ``conv.0``), 1/``shift_div`` of the channels each way. ``shift_mode``:
    ``bidirectional`` (offline, the paper's default), ``unidirectional`` (past -> present
    only: the offline equivalent of online TSM) or ``external`` (the online graph below
    shifts with explicit buffers). Average consensus, as released models use.
    """

    def __init__(self, num_classes: int, segments: int, backbone: str = "resnet50", dropout: float = 0.8,
                 shift_div: int = 8, shift_mode: str = "bidirectional"):
        super().__init__(num_classes, segments, backbone, dropout)
        self.shift_div = shift_div
        for block in shifted_blocks(self.base_model):
            if isinstance(block, InvertedResidual):
                block.conv[0] = TemporalShift(block.conv[0], segments, shift_div, shift_mode)
            else:
                block.conv1 = TemporalShift(block.conv1, segments, shift_div, shift_mode)


class OnlineTSM(nn.Module):
    """One frame in, class scores out, with each shifted block's buffer as explicit state.

    As TSM's online demo (``InvertedResidualWithShift``): a block's residual branch sees
    ``cat(buffer, x[:, fold:])`` — the first ``fold`` channels of the previous frame — and the
    block hands ``x[:, :fold]`` on as the next buffer. Inputs ``(frame, *buffers)``, outputs
    ``(scores, *new_buffers)``. Fed frame by frame from zero buffers, it reproduces the
    per-frame scores of offline uni-directional TSM exactly; it shares the offline model's
    parameters and key layout, so the same checkpoint loads into both.
    """

    def __init__(self, tsm: TSM):
        super().__init__()
        self.tsm = tsm
        for block in shifted_blocks(tsm.base_model):
            shift = block.conv[0] if isinstance(block, InvertedResidual) else block.conv1
            shift.mode = "external"
        self._shifted = [id(b) for b in shifted_blocks(tsm.base_model)]

    def buffer_shapes(self, size: int) -> list[tuple[int, int, int]]:
        """(fold, H, W) of every buffer for a ``size`` x ``size`` frame."""
        shapes = []
        with torch.no_grad():
            x = self.tsm.base_model.stem(torch.zeros(1, 3, size, size))
            for block in self.tsm.base_model.blocks():
                if id(block) in self._shifted:
                    shapes.append((x.shape[1] // self.tsm.shift_div, x.shape[2], x.shape[3]))
                x = block(x)
        return shapes

    def forward(self, frame: torch.Tensor, *buffers: torch.Tensor):
        backbone = self.tsm.base_model
        x = backbone.stem(frame)
        new_buffers = []
        remaining = iter(buffers)
        for block in backbone.blocks():
            if id(block) in self._shifted:
                buffer = next(remaining)
                fold = buffer.shape[1]
                new_buffers.append(x[:, :fold])
                x = block(x, branch_input=torch.cat([buffer, x[:, fold:]], dim=1))
            else:
                x = block(x)
        scores = self.tsm.new_fc(backbone.pool(x))  # eval: the Dropout before new_fc is identity
        return (scores, *new_buffers)
