"""Video -> features -> online detector: a recognizer bundle exported with
``--opt output=features`` turns each chunk of decoded frames into the feature vector an
online detector consumes, so a video goes end to end without precomputed features."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import EdgertError
from .usage import usage_of
from .video import ArrayClip, iter_frames


def check_extractor(extractor, detector) -> None:
    given = usage_of(extractor.bundle)
    if given.kind != "extractor":
        raise EdgertError(f"{extractor.bundle.root}: not a feature extractor (export the recognizer with --opt output=features)")
    given, expected = given.dim, usage_of(detector.bundle).dim
    if given != expected:
        raise EdgertError(f"{extractor.bundle.root}: extracts {given}-d features, {detector.bundle.root} expects {expected}")


def feature_chunks(extractor, source: str, chunk_frames: int) -> Iterator[np.ndarray]:
    """One feature vector per ``chunk_frames`` decoded frames (a last partial chunk included)."""
    frames: list[np.ndarray] = []
    for frame in iter_frames(source):
        frames.append(frame)
        if len(frames) == chunk_frames:
            yield extract_features(extractor, frames, source)
            frames = []
    if frames:
        yield extract_features(extractor, frames, source)


def extract_features(extractor, frames, source: str = "frames") -> np.ndarray:
    """One chunk of decoded frames (H, W, 3 uint8 each) -> its feature vector; ``source`` names
    where they came from in messages."""
    feeds = extractor.plugin.prepare_clip(extractor.bundle, ArrayClip(Path(source), np.stack(frames)))
    return extractor.run(feeds)["features"][0]
