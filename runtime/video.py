"""Clip sources and TSN-style preprocessing, with numpy (and OpenCV for decoding) only.

Sources: a video file (decoded with OpenCV, which also ships for aarch64 boards and brings the
optical flow that two-stream models need), a folder of frames (``img_00001.jpg``...) or a
``.npy`` array ``T x H x W x 3`` uint8 RGB. Frames are decoded only at the indices the sampler
asks for.

Preprocessing follows TSN's test pipeline (``GroupScale`` -> ``GroupCenterCrop`` ->
normalise): shorter side resized to ``scale_size``, centre crop ``crop_size``, scaled and
normalised per channel. Sizes, offsets and the resampling are torchvision's and PIL's to the
bit (see "image transforms" below); sampling is the official repositories' test sampling.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import budget
from .errors import DecodeError, InputError
from .inputs import load_npy

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


# ---- sampling -------------------------------------------------------------------------
def segment_indices(num_frames: int, segments: int, new_length: int = 1, short_clip: str = "spread") -> np.ndarray:
    """The official test-time sampling: the middle of each of ``segments`` equal segments,
    with snippets of ``new_length`` frames starting there.

    Same arithmetic as tsn-pytorch's / TSM's ``_get_test_indices`` (0-based here). A clip too
    short for distinct snippets: ``short_clip="spread"`` (TSN, TSM) keeps the formula, so
    segments share frames; ``"start"`` (TDN's sampler, when the clip has no more than
    ``segments + new_length - 1`` frames) starts every snippet at the first frame.
    """
    if num_frames < 1:
        raise InputError("cannot sample segments from a clip with no frames")
    if short_clip == "start" and num_frames <= segments + new_length - 1:
        return np.zeros(segments, dtype=np.int64)
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


MAX_SIDE = 8192  # pixels: a frame larger than this on a side is refused before it is decoded


def _check_size(path, height: int, width: int) -> None:
    if max(height, width) > MAX_SIDE:
        raise InputError(f"{path}: frames of {width}x{height}; at most {MAX_SIDE} pixels on a side")


def _open_video(path: Path):
    """An opened cv2.VideoCapture on ``path``, its frame size checked. OpenCV takes names as
    UTF-8 and crashes (SIGSEGV) on one that is not: such a name is opened here and handed over
    as /proc/self/fd/N."""
    import cv2

    try:
        str(path).encode("utf-8")
        capture = cv2.VideoCapture(str(path))
    except UnicodeEncodeError:
        proc = Path("/proc/self/fd")
        if not proc.is_dir():
            raise InputError(f"{path}: the name is not valid UTF-8, which OpenCV cannot open; rename it") from None
        fd = os.open(path, os.O_RDONLY)
        try:  # OpenCV opens its own descriptor of the same file in the constructor
            capture = cv2.VideoCapture(str(proc / str(fd)))
        finally:
            os.close(fd)
    if not capture.isOpened():
        raise DecodeError(f"{path}: cannot decode video (not a video file, or a codec OpenCV lacks)")
    height, width = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    _check_size(path, height, width)
    if budget.bounded() and not height * width:
        capture.release()
        raise DecodeError(f"{path}: the video states no frame size, which a bounded decode needs")
    return capture


def _next_frame(capture, path: Path, retrieve: bool = True):
    """Decode the next frame, charged to the decode budget first: ``(ok, frame)`` as OpenCV
    gives it (``grab`` only, with ``retrieve`` False: a skipped frame is decoded all the same)."""
    import cv2

    if budget.bounded():  # the CLI's decode loop (no bound) asks OpenCV nothing more per frame
        budget.charge(path, int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
    return capture.read() if retrieve else (capture.grab(), None)


def _read_image(path: Path):
    """A frame file, read by Python (any name) and decoded by OpenCV from memory; its size,
    where the header states it, checked and charged to the decode budget before decoding."""
    import cv2

    try:
        data = np.fromfile(path, np.uint8)
    except OSError as err:
        raise InputError(f"{path}: cannot read ({err.strerror})") from None
    size = budget.image_size(memoryview(data))  # whole: a JPEG's frame header may follow 64 KiB of EXIF and ICC
    if size is None and budget.bounded():
        raise InputError(f"{path}: cannot read the image's size from its header (JPEG, PNG, BMP or WebP), "
                         "which a bounded decode needs")
    if size is not None:
        _check_size(path, *size)
        budget.charge(path, *size)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is not None and size is not None and image.shape[0] * image.shape[1] != size[0] * size[1]:
        raise InputError(f"{path}: the header says {size[1]}x{size[0]}, the image decodes to "
                         f"{image.shape[1]}x{image.shape[0]}")
    return image


class FolderClip(Clip):
    def __init__(self, path: Path, files: list[Path]):
        super().__init__(path, len(files))
        self.files = files

    def frames(self, indices):
        import cv2

        out = []
        for i in indices:
            image = _read_image(self.files[i])
            if image is None:
                raise InputError(f"{self.files[i]}: cannot decode image")
            _check_size(self.files[i], *image.shape[:2])
            out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        if len({f.shape for f in out}) > 1:
            raise InputError(f"{self.path}: frames have different sizes")
        return np.stack(out)


class VideoClip(Clip):
    def __init__(self, path: Path):
        capture = _open_video(path)
        # The container's frame count is often wrong (VFR, truncated files): count by grabbing.
        count = 0
        while _next_frame(capture, path, retrieve=False)[0]:
            count += 1
        capture.release()
        if count == 0:
            raise DecodeError(f"{path}: video has no decodable frames")
        super().__init__(path, count)

    def frames(self, indices):
        import cv2

        wanted = sorted(set(int(i) for i in indices))
        capture = _open_video(self.path)
        got: dict[int, np.ndarray] = {}
        index = 0
        for target in wanted:
            while index <= target:
                if not _next_frame(capture, self.path, retrieve=False)[0]:
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
        array = load_npy(path, "clip")
        if array.ndim == 3:  # T x H x W grayscale
            array = array[..., None]
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
            raise InputError(f"{path}: expected a T x H x W x 3 uint8 RGB array (or grayscale / RGBA), "
                             f"given {array.dtype} {list(array.shape)}")
        if len(array) == 0:
            raise InputError(f"{path}: array holds no frames")
        if 0 in array.shape[1:3]:  # (a video's or an image's frames, once decoded, have pixels)
            raise InputError(f"{path}: frames of {array.shape[2]}x{array.shape[1]}; a frame has at least one pixel "
                             "on a side")
        _check_size(path, *array.shape[1:3])
        return ArrayClip(path, as_rgb(array))
    return VideoClip(path)


def iter_frames(source: str | os.PathLike) -> Iterator[np.ndarray]:
    """Frames (H, W, 3) uint8 RGB one at a time, in order, for streaming: a video is read
    in a single pass, never counted or held in memory."""
    path = Path(source)
    if path.is_file() and path.suffix.lower() not in (".npy",):
        import cv2

        capture = _open_video(path)
        count = 0
        while True:
            ok, frame = _next_frame(capture, path)
            if not ok:
                break
            count += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        capture.release()
        if count == 0:
            raise DecodeError(f"{path}: video has no decodable frames")
        return
    clip = open_clip(path)
    for i in range(clip.num_frames):
        yield clip.frames([i])[0]


# ---- image transforms -------------------------------------------------------------------
# The official test pipelines (tsn-pytorch, TSM, TDN, TAM, TRN-pytorch) resize PIL images with
# torchvision's ``Resize(int)`` and PIL's bilinear filter. Both are reproduced exactly here, so
# a bundle sees the pixels the released accuracy numbers were measured on: the output size as
# torchvision computes it, and PIL's 8-bit resampling (Pillow's ``Resample.c``): a triangle
# filter widened by the downscale factor, coefficients in 22-bit fixed point, a horizontal
# pass rounded to uint8 and then a vertical one. (Pillow 13 may take the vertical pass first
# when the height shrinks much more than the width; a shorter-side resize scales both alike.)
PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's bilinear taps for one axis: (indices, fixed-point weights), each (out_size, taps)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1, widened when downscaling
    taps = int(np.ceil(support)) * 2 + 1
    centers = (np.arange(out_size) + 0.5) * scale
    starts = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.int64)
    idx = starts[:, None] + np.arange(taps)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs((idx - centers[:, None] + 0.5) * (1.0 / filterscale)))
    weights[idx >= in_size] = 0.0
    total = weights[:, 0].copy()
    for t in range(1, taps):  # summed in Pillow's order: a different order can move a rounding
        total += weights[:, t]
    weights /= total[:, None]
    fixed = np.trunc(0.5 + weights * (1 << PRECISION_BITS)).astype(np.int32)  # weights are >= 0
    return np.minimum(idx, in_size - 1), fixed


def _resample(frames: np.ndarray, axis: int, out_size: int) -> np.ndarray:
    """One pass of PIL's 8-bit resampling along ``axis`` of (n, H, W, C) uint8 frames."""
    idx, fixed = _taps(frames.shape[axis], out_size)
    shape = [1] * frames.ndim
    shape[axis] = out_size
    total = np.full(frames.shape[:axis] + (out_size,) + frames.shape[axis + 1:], 1 << (PRECISION_BITS - 1), np.int32)
    term = np.empty_like(total)
    for t in range(idx.shape[1]):  # a tap at a time: no (.., out, taps, ..) temporary
        np.multiply(np.take(frames, idx[:, t], axis=axis), fixed[:, t].reshape(shape), out=term)
        total += term
    np.right_shift(total, PRECISION_BITS, out=total)
    return np.clip(total, 0, 255).astype(np.uint8)


def resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(n, H, W, C) uint8 frames to (n, height, width, C) uint8, bit for bit as PIL's
    ``Image.resize((width, height), BILINEAR)``: the width first, then the height; an axis
    that keeps its size is left alone."""
    out = np.asarray(frames, dtype=np.uint8)
    if out.shape[2] != width:
        out = _resample(out, 2, width)
    if out.shape[1] != height:
        out = _resample(out, 1, height)
    return out


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to ``size``, as torchvision's
    ``Resize(size)`` computes it: the longer side is ``int(size * long / short)`` (truncated,
    not rounded: 240x320 to 128 gives 128x170)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_shorter(frames: np.ndarray, size: int) -> np.ndarray:
    """Scale so the shorter side is ``size``, keeping the aspect ratio (TSN's GroupScale)."""
    return resize(frames, *shorter_side_size(*frames.shape[1:3], size))


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """torchvision's ``CenterCrop``: offsets ``int(round((side - size) / 2))``."""
    h, w = frames.shape[1:3]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return frames[:, top:top + size, left:left + size]


def preprocess(frames: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB -> (n, 3, crop, crop) float32, as the manifest's preprocessing says."""
    x = center_crop(resize_shorter(frames, int(pre["scale_size"])), int(pre["crop_size"]))
    if pre.get("channel_order", "RGB") == "BGR":
        x = x[..., ::-1]
    x = x * np.float32(pre.get("input_scale", 1.0 / 255.0))
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
    starts = segment_indices(clip.num_frames, segments, new_length, pre.get("short_clip", "spread"))
    frames = preprocess(clip.frames(snippet_indices(starts, new_length, clip.num_frames)), pre)
    if new_length == 1:
        return frames[None]
    return frames.reshape(1, segments, new_length, *frames.shape[1:])


def load_segments(source: str | os.PathLike, pre: dict[str, Any]) -> np.ndarray:
    """``clip_segments`` of a video file, frame folder or .npy clip."""
    return clip_segments(open_clip(source), pre)
