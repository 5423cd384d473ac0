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
from typing import Any, Callable

import numpy as np

from .bundle import Bundle, GraphSpec
from .errors import EdgertError


@dataclass(frozen=True)
class Option:
    """An ``--opt key=value`` export option (or a strategy's): default, parser, help, allowed
    values. ``names``: what a value names on the machine it runs on — ``"bundle"`` (a bundle
    folder) or ``"file"`` (a file it may read; ``builtin`` lists the values that read none).
    A served request never gives such a value itself (edgert/serve/decoder.py). ``training``:
    the option shapes training only; the manifest says so and ``edgert info`` leaves it out of
    what the bundle was built with."""

    default: Any
    help: str
    parse: Callable[[str], Any] = str
    choices: tuple = ()
    names: str = ""
    builtin: tuple = ()
    training: bool = False  # used by training only (dropout): the exported graph does not depend on it

    def convert(self, key: str, raw: Any, flag: str = "--opt") -> Any:
        try:
            value = self.parse(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise EdgertError(f"{flag} {key}={raw}: expected {self.parse.__name__}") from None
        if self.choices and value not in self.choices:
            raise EdgertError(f"{flag} {key}={raw}: expected one of {list(self.choices)}")
        return value


@dataclass(frozen=True)
class Fixed:
    """What a checkpoint says about an option (see ``Detector.checkpoint_options``)."""

    value: Any
    evidence: str          # for messages: where in the checkpoint it was read
    strict: bool = True    # False: only a default, an --opt may differ (e.g. read off a file name)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


positive_int.__name__ = "a positive integer"


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


non_negative_int.__name__ = "an integer >= 0"


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(text)
    return value


probability.__name__ = "a number from 0 to 1"


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


boolean.__name__ = "true or false"


def resolve_options(owner: str, options: dict[str, Option], given: dict[str, Any], flag: str = "--opt") -> dict[str, Any]:
    """Every declared option's value: the given one converted, else its default. ``owner``
    names who declares them in the error (a model, a strategy, a precision); ``flag`` is the
    command-line spelling the messages use."""
    unknown = sorted(set(given) - set(options))
    if unknown:
        raise EdgertError(f"{owner}: unknown option {unknown[0]!r}; options are {sorted(options) or 'none'}")
    return {key: opt.convert(key, given[key], flag) if key in given else opt.default for key, opt in options.items()}


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
    step_unit = "frame"  # what one streaming step consumes, for messages
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
