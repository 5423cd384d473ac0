"""Training a segment-based recognizer on clips, TSN style, on the CPU.

TSN's training recipe in small: each clip is split into K segments and one frame is drawn at
random inside each (the test sampler takes the middle one); frames go through the same numpy
preprocessing the runtime applies, so what the model learns is what the bundle sees.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgert.runtime.video import preprocess, snippet_indices


def train_indices(num_frames: int, segments: int, rng: np.random.Generator, new_length: int = 1) -> np.ndarray:
    """TSN's training sampler: a random start inside each of ``segments`` equal segments (of the
    frames where a ``new_length`` snippet fits)."""
    span = max(num_frames - new_length + 1, 1)
    edges = np.linspace(0, span, segments + 1)
    return np.minimum(np.floor(edges[:-1] + rng.uniform(size=segments) * np.diff(edges)).astype(np.int64), span - 1)


def sample_clip(clip: np.ndarray, segments: int, pre: dict, rng: np.random.Generator) -> np.ndarray:
    """One training input from a (T, H, W, 3) clip, shaped as the runtime's ``load_segments``."""
    new_length = int(pre.get("new_length", 1))
    starts = train_indices(len(clip), segments, rng, new_length)
    frames = preprocess(clip[snippet_indices(starts, new_length, len(clip))], pre)
    return frames if new_length == 1 else frames.reshape(segments, new_length, *frames.shape[1:])


def train(model, make_clip: Callable[[int, np.random.Generator], np.ndarray], num_classes: int, segments: int,
          pre: dict, steps: int, batch: int = 8, lr: float = 3e-4, seed: int = 0, log=None) -> None:
    """Adam on freshly rendered clips (every batch is new data, so no overfitting to watch)."""
    import torch

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        labels = rng.integers(0, num_classes, size=batch)
        clips = []
        for y in labels:
            clips.append(sample_clip(make_clip(int(y), rng), segments, pre, rng))
        x = torch.from_numpy(np.stack(clips))
        loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if log and (step % 10 == 0 or step == steps - 1):
            log(f"step {step + 1}/{steps}: loss {loss.item():.3f}")
    model.eval()
