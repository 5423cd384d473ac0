"""Motion inputs for two-stream models: optical flow (OpenCV) or RGB differences.

Computed on the frames after the same resize and centre crop as the RGB stream, so flow is
measured in pixels of the network's input. Flow follows TSN's recipe: per snippet of L+1
frames, L flow fields between consecutive frames, x and y stacked as 2L channels
[x1, y1, x2, y2, ...], each clipped to +-bound pixels and scaled to [-1, 1]. RGB difference:
the L differences between consecutive normalised frames, 3L channels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import EdgertError
from .video import center_crop, resize_shorter

METHODS = ("dis", "farneback")


def _flow_pair(previous: np.ndarray, current: np.ndarray, method: str) -> np.ndarray:
    import cv2

    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        return dis.calc(previous, current, None)
    if method == "farneback":
        return cv2.calcOpticalFlowFarneback(previous, current, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    raise EdgertError(f"unknown optical flow method {method!r}; expected one of {list(METHODS)}")


def optical_flow(frames: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB snippet of L+1 frames -> (2L, crop, crop) float32 in [-1, 1]."""
    import cv2

    cropped = center_crop(resize_shorter(frames, int(pre["scale_size"])), int(pre["crop_size"]))
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in cropped]
    bound = float(pre["flow_bound"])
    fields = [_flow_pair(a, b, pre["flow_method"]) for a, b in zip(gray[:-1], gray[1:])]
    flow = np.clip(np.stack(fields), -bound, bound) / bound          # (L, crop, crop, 2)
    return np.ascontiguousarray(flow.transpose(0, 3, 1, 2).reshape(-1, *flow.shape[1:3]), dtype=np.float32)


def rgb_difference(normalised: np.ndarray) -> np.ndarray:
    """(L+1, 3, crop, crop) normalised frames -> (3L, crop, crop) consecutive differences."""
    return (normalised[1:] - normalised[:-1]).reshape(-1, *normalised.shape[2:])
