"""The detector interface plugin authors implement (see :mod:`edgert.runtime.hookspecs`).

A detector has two halves that never meet in one process on an edge device:

* the **export half** (``build``, ``graphs``, ``example_inputs``, ``preprocessing``,
  ``labels``) runs where torch is installed, inside ``edgert export``; import torch inside
  these methods, never at module level;
* the **runtime half** (``prepare``; ``prepare_step`` for streaming graphs; ``postprocess``)
  runs with numpy and the backend only, driven by what the export wrote into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .bundle import Bundle, GraphSpec
from .errors import EdgertError
# the video contract's own names for them, as plugins import them
from .options import Fixed, Option, boolean, non_negative_int, positive_int, probability, resolve_options  # noqa: F401


@dataclass
class Prediction:
    """What ``postprocess`` returns: ranked (label, probability) pairs plus raw outputs."""

    top: list[tuple[str, float]]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class Detector:
    """Base class for detector plugins. Override what your model needs."""

    name: str = ""
    kind = "detector"
    description: str = ""
    paper: str = ""
    options: dict[str, Option] = {}
    # int8: the operator types calibrated QDQ may quantize in this model's graphs (None: all
    # ONNX Runtime can). A graph that carries running sums in its state limits it to its matrix
    # products: a uint8 Add or Mul on a sum of exponentials loses the sum.
    int8_ops: tuple[str, ...] | None = None

    # ---- option handling (shared) ------------------------------------------------------
    def resolve_options(self, given: dict[str, str]) -> dict[str, Any]:
        return resolve_options(self.name, self.options, given)

    # ---- export half (torch available) ---------------------------------------------------
    def build(self, opts: dict[str, Any], checkpoint: str | None):
        """Return the ``torch.nn.Module`` to export, in eval mode, weights loaded."""
        raise NotImplementedError

    def checkpoint_options(self, checkpoint: str) -> dict[str, Fixed]:
        """What a checkpoint fixes about the model, read from the file before ``build``:
        ``{option: Fixed(value, evidence)}``, e.g. ``{"num_classes": Fixed(10, "new_fc.weight is
        [10, 512]")}``. ``edgert export`` fills these options in and refuses an ``--opt`` that
        contradicts a strict one, naming both values. Default: nothing."""
        return {}

    def graphs(self, opts: dict[str, Any]) -> list[GraphSpec]:
        """Describe the graph(s) to export: names, files, inputs and outputs with dims."""
        raise NotImplementedError

    def example_inputs(self, opts: dict[str, Any], graph: GraphSpec, rng: np.random.Generator,
                       dims: dict[str, int]) -> dict[str, np.ndarray]:
        """Inputs for tracing and the parity check. The default draws standard-normal floats
        (and zeros for integer inputs), with symbolic dims taken from ``dims``."""
        feeds = {}
        for spec in graph.inputs:
            shape = [d if isinstance(d, int) else dims.get(d, 1) for d in spec.dims]
            dtype = np.dtype(spec.dtype)
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        return feeds

    def preprocessing(self, opts: dict[str, Any]) -> dict[str, Any]:
        return {}

    def labels(self, opts: dict[str, Any]) -> list[str]:
        return []

    def details(self, opts: dict[str, Any]) -> dict[str, Any]:
        """Choices fixed at export that a user should see (written to manifest model.details)."""
        return {}

    def onnx_translations(self) -> dict:
        """torch op -> onnxscript function, for custom ops (``custom_translation_table``)."""
        return {}

    # ---- runtime half (numpy only) -------------------------------------------------------
    def prepare(self, bundle: Bundle, source: str) -> dict[str, np.ndarray]:
        """Turn a video file, frame folder or .npy array into the graph's inputs."""
        raise NotImplementedError

    def prepare_clip(self, bundle: Bundle, clip) -> dict[str, np.ndarray]:
        """Graph inputs from an opened clip (:class:`edgert.runtime.video.Clip`: a file, or frames
        already in memory). A recognizer that serves as a feature extractor for an online
        detector (:mod:`edgert.runtime.chain`) must implement it; the default says it cannot."""
        raise EdgertError(f"{self.name}: this model cannot take frames from memory (its plugin has no prepare_clip), "
                          "so it cannot extract features for an online detector")

    def prepare_graph(self, bundle: Bundle, graph: str, source: str) -> dict[str, np.ndarray]:
        """Inputs of a graph beside the main one from a whole source: an online detector's
        offline twin takes a video's every step at once (``edgert eval``, int8 calibration)."""
        raise EdgertError(f"{self.name}: no inputs can be made for graph {graph!r} from a file")

    def iter_steps(self, bundle: Bundle, source: str):
        """Streaming detectors: what one step consumes, in order — video frames (H, W, 3) by
        default; feature-based detectors yield one feature vector per chunk."""
        from .video import iter_frames

        return iter_frames(source)

    def prepare_step(self, bundle: Bundle, item: np.ndarray) -> dict[str, np.ndarray]:
        """Streaming detectors: one step's item (a frame, a chunk feature) -> the step graph's
        non-state inputs."""
        raise EdgertError(f"detector {self.name!r} does not stream")

    def postprocess(self, bundle: Bundle, outputs: dict[str, np.ndarray], top_k: int = 5) -> Prediction:
        """Default: softmax over the first output's last axis, the top-k labels of batch item 0."""
        scores = next(iter(outputs.values()))[0].astype(np.float64)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        labels = bundle.labels or [f"class_{i}" for i in range(len(probs))]
        order = np.argsort(-probs)[:top_k]
        return Prediction([(labels[i], float(probs[i])) for i in order], outputs)
