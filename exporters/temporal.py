"""Temporal shift (Lin et al., TSM, ICCV 2019) written as slices and concatenation.

The official ``TemporalShift.shift`` writes into a zero tensor with slice assignment, which
exports as ScatterND (plus Where/ConstantOfShape/Expand) — the pattern behind the TensorRT
mismatches users report. Here every shift is ``cat`` of slices and a zero step shaped from
the input, so the graph holds Slice, Concat and Shape/Expand for the zeros: no ScatterND, no
loops, and the batch stays dynamic.
"""

from __future__ import annotations

import torch
from torch import nn

MODES = ("bidirectional", "unidirectional", "external")


def _zeros_like_step(x: torch.Tensor) -> torch.Tensor:
    """Zeros shaped like one time step of ``x`` (N, 1, C', H, W), built from ``x`` so that the
    exported graph keeps a dynamic batch (``x[:, :1] * 0`` would turn NaN/inf into NaN)."""
    return torch.zeros_like(x[:, :1])


def temporal_shift(x: torch.Tensor, segments: int, fold_div: int = 8, mode: str = "bidirectional") -> torch.Tensor:
    """Shift channels of ``x`` (N*T, C, H, W) along time.

    bidirectional (offline TSM): channels [0, fold) take the next frame's values and
    [fold, 2*fold) the previous frame's; the rest stay; zeros at the clip's ends.
    unidirectional (online TSM): channels [0, fold) take the previous frame's values, as in
    TSM's online demo (its shift buffer is the first c // 8 channels).
    """
    clip = x.unflatten(0, (-1, segments))  # (N, T, C, H, W)
    fold = clip.shape[2] // fold_div
    if mode == "bidirectional":
        future = torch.cat([clip[:, 1:, :fold], _zeros_like_step(clip[:, :, :fold])], dim=1)
        past = torch.cat([_zeros_like_step(clip[:, :, fold:2 * fold]), clip[:, :-1, fold:2 * fold]], dim=1)
        out = torch.cat([future, past, clip[:, :, 2 * fold:]], dim=2)
    elif mode == "unidirectional":
        past = torch.cat([_zeros_like_step(clip[:, :, :fold]), clip[:, :-1, :fold]], dim=1)
        out = torch.cat([past, clip[:, :, fold:]], dim=2)
    else:
        raise ValueError(f"unknown shift mode {mode!r}")
    return out.flatten(0, 1)


class TemporalShift(nn.Module):
    """Wraps ``net`` (a block's first conv) so its input is shifted first (TSM 'blockres').

    The wrapped module is stored as ``net``, the official key layout
    (``layer1.0.conv1.net.weight``). Mode ``external``: the caller has already shifted the
    input (the online graph does, with its shift buffers), so this only applies ``net``.
    """

    def __init__(self, net: nn.Module, segments: int, fold_div: int = 8, mode: str = "bidirectional"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown shift mode {mode!r}; expected one of {MODES}")
        self.net, self.segments, self.fold_div, self.mode = net, segments, fold_div, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "external":
            x = temporal_shift(x, self.segments, self.fold_div, self.mode)
        return self.net(x)
