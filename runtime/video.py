"""Clip sources and TSN-style preprocessing, with numpy (and OpenCV for decoding) only.

Sources: a video file (decoded with OpenCV, which also ships for aarch64 boards and brings the
optical flow that two-stream models need), a folder of frames (``img_00001.jpg``...) or a
``.npy`` array ``T x H x W x 3`` uint8 RGB. Frames are decoded only at the indices the sampler
asks for.

Preprocessing follows TSN's test pipeline (``GroupScale`` -> ``GroupCenterCrop`` ->
normalise): shorter side resized to ``scale_size``, centre crop ``crop_size``, scaled and
normalised per channel. The resize is antialiased bilinear (a triangle filter widened by the
downscale factor), the filter PIL's bilinear resize uses, which TSN's transforms call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import InputError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# ---- sampling -------------------------------------------------------------------------
def segment_indices(num_frames: int, segments: int, new_length: int = 1) -> np.ndarray:
    """TSN's test-time sampling: the middle frame of each of ``segments`` equal segments.

    Same formula as tsn-pytorch's ``_get_test_indices`` (0-based here). A clip shorter than
    ``segments`` still works: segments then share frames.
    """
    if num_frames < 1:
        raise InputError("cannot sample segments from a clip with no frames")
    span = max(num_frames - new_length + 1, 1)
    tick = span / float(segments)
    return np.array([int(tick / 2.0 + tick * k) for k in range(segments)], dtype=np.int64)


# ---- sources --------------------------------------------------------------------------
class Clip:
    """A source of RGB uint8 frames with a known length; ``frames(idx)`` -> (n, H, W, 3)."""

    def __init__(self, path: Path, num_frames: int):
        self.path = path
        self.num_frames = num_frames

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError


class ArrayClip(Clip):
    def __init__(self, path: Path, array: np.ndarray):
        super().__init__(path, len(array))
        self.array = array

    def frames(self, indices):
        return self.array[np.asarray(indices)]


class FolderClip(Clip):
    def __init__(self, path: Path, files: list[Path]):
        super().__init__(path, len(files))
        self.files = files

    def frames(self, indices):
        import cv2

        out = []
        for i in indices:
            image = cv2.imread(str(self.files[i]), cv2.IMREAD_COLOR)
            if image is None:
                raise InputError(f"{self.files[i]}: cannot decode image")
            out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if len({f.shape for f in out}) > 1:
            raise InputError(f"{self.path}: frames have different sizes")
        return np.stack(out)


class VideoClip(Clip):
    def __init__(self, path: Path):
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise InputError(f"{path}: cannot decode video (not a video file, or a codec OpenCV lacks)")
        # The container's frame count is often wrong (VFR, truncated files): count by grabbing.
        count = 0
        while capture.grab():
            count += 1
        capture.release()
        if count == 0:
            raise InputError(f"{path}: video has no decodable frames")
        super().__init__(path, count)

    def frames(self, indices):
        import cv2

        wanted = sorted(set(int(i) for i in indices))
        capture = cv2.VideoCapture(str(self.path))
        got: dict[int, np.ndarray] = {}
        index = 0
        for target in wanted:
            while index <= target:
                if not capture.grab():
                    raise InputError(f"{self.path}: video ended at frame {index} while reading frame {target}")
                index += 1
            ok, frame = capture.retrieve()
            if not ok:
                raise InputError(f"{self.path}: cannot decode frame {target}")
            got[target] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        capture.release()
        return np.stack([got[int(i)] for i in indices])


def as_rgb(frames: np.ndarray) -> np.ndarray:
    """(..., 1|3|4) uint8 -> (..., 3): grayscale replicated, alpha dropped (OpenCV does the
    same when it decodes grayscale or RGBA video and images)."""
    if frames.shape[-1] == 1:
        return np.repeat(frames, 3, axis=-1)
    return frames[..., :3] if frames.shape[-1] == 4 else frames


def open_clip(source: str | os.PathLike) -> Clip:
    """Open a video file, a folder of frames or a .npy array, checking what it holds."""
    path = Path(source)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise InputError(f"{path}: folder holds no frames ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        return FolderClip(path, files)
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise InputError(f"{path}: not a readable .npy array ({err})") from None
        if array.ndim == 3:  # T x H x W grayscale
            array = array[..., None]
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise InputError(f"{path}: expected a T x H x W x 3 uint8 RGB array (or grayscale / RGBA), "
                             f"given {array.dtype} {list(array.shape)}")
        if len(array) == 0:
            raise InputError(f"{path}: array holds no frames")
        return ArrayClip(path, as_rgb(array))
    return VideoClip(path)


def iter_frames(source: str | os.PathLike) -> Iterator[np.ndarray]:
    """Frames (H, W, 3) uint8 RGB one at a time, in order, for streaming: a video is read
    in a single pass, never counted or held in memory."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() not in (".npy",):
        import cv2

        capture = cv2.VideoCapture(str(path))
        if not capture.isOpened():
            raise InputError(f"{path}: cannot decode video (not a video file, or a codec OpenCV lacks)")
        count = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        capture.release()
        if count == 0:
            raise InputError(f"{path}: video has no decodable frames")
        return
    clip = open_clip(path)
    for i in range(clip.num_frames):
        yield clip.frames([i])[0]


# ---- image transforms -------------------------------------------------------------------
def _aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Antialiased bilinear resampling taps: (indices, weights), each (out_size, taps)."""
    scale = in_size / out_size
    support = max(scale, 1.0)  # the triangle filter's half-width, widened when downscaling
    centers = (np.arange(out_size) + 0.5) * scale
    starts = np.clip(np.floor(centers - support + 0.5).astype(np.int64), 0, in_size)
    taps = int(np.ceil(support)) * 2 + 1
    idx = starts[:, None] + np.arange(taps)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs((idx - centers[:, None] + 0.5) / support))
    weights[idx >= in_size] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(idx, in_size - 1), weights.astype(np.float32)


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of (n, H, W, C) frames to float32 (n, height, width, C)."""
    out = frames.astype(np.float32, copy=False)
    if out.shape[1] != height:
        idx, w = _aa_weights(out.shape[1], height)
        out = np.einsum("nhtwc,ht->nhwc", out[:, idx], w)
    if out.shape[2] != width:
        idx, w = _aa_weights(out.shape[2], width)
        out = np.einsum("nhwtc,wt->nhwc", out[:, :, idx], w)
    return out


def resize_shorter(frames: np.ndarray, size: int) -> np.ndarray:
    """Scale so the shorter side is ``size``, keeping the aspect ratio (TSN's GroupScale)."""
    h, w = frames.shape[1:3]
    if h <= w:
        return resize(frames, size, max(1, round(w * size / h)))
    return resize(frames, max(1, round(h * size / w)), size)


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    h, w = frames.shape[1:3]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[:, top:top + size, left:left + size]


def preprocess(frames: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB -> (n, 3, crop, crop) float32, as the manifest's preprocessing says."""
    x = center_crop(resize_shorter(frames, int(pre["scale_size"])), int(pre["crop_size"]))
    if pre.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    x = x * float(pre.get("input_scale", 1.0 / 255.0))
    x = (x - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def snippet_indices(starts: np.ndarray, new_length: int, num_frames: int) -> np.ndarray:
    """Frame indices of each segment's snippet: ``new_length`` consecutive frames from each
    start (TSN's snippets; TDN uses 5), clamped to the clip, so a short clip repeats its end."""
    return np.minimum(starts[:, None] + np.arange(new_length)[None, :], num_frames - 1).reshape(-1)


def clip_segments(clip: Clip, pre: dict[str, Any]) -> np.ndarray:
    """A clip -> graph input: TSN sampling of ``segments`` snippets, then ``preprocess``.

    ``pre`` is a manifest's preprocessing (``segments``, ``new_length``, sizes, mean/std...).
    Returns ``(1, segments, 3, crop, crop)``, or ``(1, segments, new_length, 3, crop, crop)``
    when a segment is a snippet of several frames.
    """
    segments, new_length = int(pre["segments"]), int(pre.get("new_length", 1))
    starts = segment_indices(clip.num_frames, segments, new_length)
    frames = preprocess(clip.frames(snippet_indices(starts, new_length, clip.num_frames)), pre)
    if new_length == 1:
        return frames[None]
    return frames.reshape(1, segments, new_length, *frames.shape[1:])


def load_segments(source: str | os.PathLike, pre: dict[str, Any]) -> np.ndarray:
    """``clip_segments`` of a video file, frame folder or .npy clip."""
    return clip_segments(open_clip(source), pre)
