"""Streaming sessions: feed frames (or feature chunks) one at a time, get a prediction each.

A streaming graph declares its state in the manifest as (input, output) pairs — TSM's shift
buffers, a recurrent network's hidden state. The session starts them at zero, feeds each
output back as the next step's input, and ``reset()`` starts over (a new stream, a cut).

    session = edgert.load("tsm-online").stream()
    for frame in frames:                       # (H, W, 3) uint8 RGB
        prediction = session.push(frame)       # top-k of the scores averaged over `window` steps
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from .errors import EdgertError


class StreamSession:
    def __init__(self, model, graph: str | None = None, window: int | None = None, batch: int = 1, top_k: int = 5):
        self.model, self.top_k = model, top_k
        self.spec = model.graph(graph)
        if not self.spec.state:
            raise EdgertError(f"{model.bundle.root}: graph {self.spec.name!r} is not a streaming graph (it has no state); "
                              "export the model's online variant (e.g. --opt online=true)")
        inputs = {t.name: t for t in self.spec.inputs}
        self._state_specs = [(inputs[i], o) for i, o in self.spec.state]
        self.batch = batch
        self.window = int(window or model.bundle.preprocessing.get("average_steps", 1))
        self.reset()

    def reset(self) -> None:
        """Zero the state and forget the score history: the next step starts a new stream."""
        self.state = {spec.name: np.zeros([d if isinstance(d, int) else self.batch for d in spec.dims], spec.dtype)
                      for spec, _ in self._state_specs}
        self.history: deque[dict[str, np.ndarray]] = deque(maxlen=self.window)
        self.steps = 0

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph run on ``feeds`` (the non-state inputs); returns the non-state outputs."""
        outputs = self.model.run({**feeds, **self.state}, graph=self.spec.name)
        for spec, out in self._state_specs:
            self.state[spec.name] = outputs.pop(out)
        self.history.append(outputs)
        self.steps += 1
        return outputs

    def push(self, item: np.ndarray, top_k: int | None = None):
        """Prepare one frame (or chunk feature) with the detector, step, and rank the scores
        averaged over the last ``window`` steps (TSM's online demo averages its recent logits
        the same way; window 1 ranks the current step alone)."""
        top_k = self.top_k if top_k is None else top_k
        self.step(self.model.plugin.prepare_step(self.model.bundle, item))
        averaged = {name: np.mean([h[name] for h in self.history], axis=0) for name in self.history[-1]}
        return self.model.plugin.postprocess(self.model.bundle, averaged, top_k=top_k)


@dataclass(frozen=True)
class StreamStep:
    """One step of a stream run over a source: its index, the prediction (scores averaged over
    the session's window) and the seconds the step took (decoding the frame, extracting its
    features where a chain does, inference)."""

    index: int
    prediction: Any
    seconds: float


def run_stream(session: StreamSession, source: str, extractor=None) -> Iterator[StreamStep]:
    """Feed ``source`` (a video, frame folder or .npy) step by step to ``session`` from its
    start (the session is reset): frames, or with ``extractor`` (a recognizer bundle exported
    with ``--opt output=features``, see :mod:`.chain`) one feature vector per chunk."""
    from .chain import check_extractor, feature_chunks

    model = session.model
    if extractor is not None:
        check_extractor(extractor, model)
        steps = feature_chunks(extractor, source, int(model.bundle.preprocessing["chunk_frames"]))
    else:
        steps = model.plugin.iter_steps(model.bundle, source)
    session.reset()
    steps, index = iter(steps), 0
    while True:
        t0 = time.perf_counter()  # the step's decoding (and feature extraction) counts too
        item = next(steps, None)
        if item is None:
            return
        prediction = session.push(item)
        yield StreamStep(index, prediction, time.perf_counter() - t0)
        index += 1
