"""Synthetic action clips, rendered with OpenCV: data for demos and tests, made in seconds.

No dataset can be downloaded here, and a model with random weights proves nothing about a
pipeline, so demos and tests train small models on clips whose class is visible in every
frame (a shape with its own motion). Appearance-only classes suit TSN; clips are uint8 RGB
``(T, H, W, 3)``, the format of every edgert clip source.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("bouncing ball", "spinning square", "falling triangle", "blinking cross", "sliding bar")


def render_clip(label: int, rng: np.random.Generator, frames: int = 24, height: int = 120, width: int = 160) -> np.ndarray:
    """One clip of class ``label`` (index into CLASSES): random colours, size, start and noise."""
    import cv2

    background = rng.integers(40, 110, size=3)
    # Each class has its own hue family (with jitter) as well as its own shape and motion, so a
    # small network learns it in a few dozen CPU steps.
    hue = (label * 180 // len(CLASSES) + int(rng.integers(-8, 9))) % 180
    hsv = np.array([[[hue, int(rng.integers(170, 256)), int(rng.integers(190, 256))]]], np.uint8)
    colour = tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])
    radius = int(rng.integers(height // 8, height // 5))
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    phase = rng.uniform(0, 2 * np.pi)
    clip = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = np.empty((height, width, 3), np.uint8)
        img[:] = background
        s = t / max(frames - 1, 1)
        if label == 0:    # bouncing ball: vertical |sin| bounce
            y = cy + 0.3 * height * (abs(np.sin(phase + 3 * np.pi * s)) - 0.5)
            cv2.circle(img, (int(cx), int(y)), radius, colour, -1)
        elif label == 1:  # spinning square
            angle = np.degrees(phase) + 360 * s
            box = cv2.boxPoints(((cx, cy), (2 * radius, 2 * radius), angle)).astype(np.int32)
            cv2.fillPoly(img, [box], colour)
        elif label == 2:  # falling triangle
            y = (0.15 + 0.7 * s) * height
            pts = np.array([[cx, y - radius], [cx - radius, y + radius], [cx + radius, y + radius]], np.int32)
            cv2.fillPoly(img, [pts], colour)
        elif label == 3:  # blinking cross
            if np.sin(phase + 6 * np.pi * s) > -0.5:
                thick = max(radius // 3, 2)
                cv2.line(img, (int(cx - radius), int(cy - radius)), (int(cx + radius), int(cy + radius)), colour, thick)
                cv2.line(img, (int(cx - radius), int(cy + radius)), (int(cx + radius), int(cy - radius)), colour, thick)
        else:             # sliding bar: a horizontal bar moving left to right
            x = (0.1 + 0.8 * s) * width
            cv2.rectangle(img, (int(x - radius // 2), int(cy - 2 * radius)), (int(x + radius // 2), int(cy + 2 * radius)), colour, -1)
        noise = rng.integers(-12, 13, size=img.shape)
        clip[t] = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return clip


def write_video(path, clip: np.ndarray, fps: float = 24.0) -> None:
    """Write an RGB clip as an MPEG-4 (mp4v) file with OpenCV."""
    import cv2

    height, width = clip.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path}")
    for frame in clip:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


DIRECTIONS = ("moving right", "moving left", "moving down", "moving up")


def render_direction_clip(label: int, rng: np.random.Generator, frames: int = 8, size: int = 32) -> np.ndarray:
    """A square moving one of four ways (index into DIRECTIONS) at constant speed.

    The classes differ only in temporal order: a clip of one class played backwards is a clip
    of its opposite class, and start points are drawn so that every class covers the same
    positions. Any single frame, and any orderless set of frames, is equally likely under
    every class, so a model that averages per-frame evidence (TSN) is at chance by design.
    """
    import cv2

    side = max(size // 6, 3)
    step = (size - 2 * side) / max(frames - 1, 1) * rng.uniform(0.6, 1.0)
    travel = step * (frames - 1)
    along = rng.uniform(side, size - side - travel)      # start of a forward (right/down) move
    across = rng.uniform(side, size - side)
    colour = tuple(int(c) for c in rng.integers(150, 256, size=3))
    background = rng.integers(20, 90, size=3)
    clip = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        pos = along + step * (t if label in (0, 2) else frames - 1 - t)
        x, y = (pos, across) if label in (0, 1) else (across, pos)
        img = np.empty((size, size, 3), np.uint8)
        img[:] = background
        cv2.rectangle(img, (int(x - side / 2), int(y - side / 2)), (int(x + side / 2), int(y + side / 2)), colour, -1)
        noise = rng.integers(-10, 11, size=img.shape)
        clip[t] = np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return clip


def untrimmed_stream(rng: np.random.Generator, length: int = 400, num_classes: int = 4, dim: int = 32,
                     ambiguous: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Chunk features of an untrimmed stream: background with embedded action segments.

    Class ``k`` (1..num_classes-1; 0 is background) has its own pattern that unfolds over
    the segment: a fixed signature direction plus a direction that rotates with the phase of
    the action, both faint (amplitude below the noise), so single chunks are ambiguous and a
    detector gains from integrating over time. With ``ambiguous``, the chunks bordering each
    segment get the extra last class, as THUMOS marks uncertain boundaries.
    Returns features (T, dim) float32 and labels (T,) int.
    """
    signatures = np.random.default_rng(12345).standard_normal((num_classes, 3, dim))  # fixed per class
    signatures /= np.linalg.norm(signatures, axis=-1, keepdims=True)
    features = rng.standard_normal((length, dim)) * 1.0
    labels = np.zeros(length, np.int64)
    t = int(rng.integers(5, 25))
    last_action = num_classes - (2 if ambiguous else 1)
    while t < length - 10:
        k = int(rng.integers(1, last_action + 1))
        span = int(rng.integers(12, 30))
        end = min(t + span, length)
        phase = np.linspace(0, 1, end - t)[:, None]
        pattern = (signatures[k, 0] * 0.8 + signatures[k, 1] * np.cos(np.pi * phase) * 0.8
                   + signatures[k, 2] * np.sin(np.pi * phase) * 0.8)
        features[t:end] += pattern * np.sqrt(dim) * 0.25
        labels[t:end] = k
        if ambiguous:
            labels[t] = labels[end - 1] = num_classes - 1
        t = end + int(rng.integers(8, 30))
    return features.astype(np.float32), labels
