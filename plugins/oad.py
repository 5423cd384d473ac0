"""Runtime-side base of the online action detectors (``oad-trn``, ``oadtr``, ``miniroad``).

They consume one feature vector per chunk of video (THUMOS'14 convention: 6 frames at 24 fps,
RGB 2048 ‖ flow 1024 = 3072), from a precomputed ``.npy`` (T x D, the way public THUMOS /
TVSeries features are distributed) or from a recognizer bundle exported as a feature
extractor. The chunking is recorded in the manifest. Each step graph carries its state
explicitly; ``edgert run --stream`` prints the current action per chunk. A detector whose
paper evaluates over a whole video in one pass also exports that as graph ``offline``
(features [batch, frames, D] -> scores [batch, frames, C]), which ``edgert eval`` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgert.runtime.bundle import Bundle
from edgert.runtime.detector import Detector, Option, positive_int
from edgert.runtime.errors import EdgertError, InputError
from edgert.runtime.inputs import load_npy

from .recognizer import read_labels, resolve_classes


def oad_options(**defaults) -> dict[str, Option]:
    return {
        "feature_dim": Option(defaults.get("feature_dim", 3072), "chunk feature size (THUMOS: RGB 2048 + flow 1024)",
                              positive_int),
        "num_classes": Option(0, "classes incl. background (default: from labels, else 22 as THUMOS'14)", int),
        "labels": Option("", "text file, one label per line (background first)", str),
        "ambiguous": Option(-1, "index of the 'ambiguous' class, -1 for none (THUMOS'14: 21)", int),
        "chunk_frames": Option(6, "video frames per chunk (features' stride)", positive_int),
        "fps": Option(24.0, "frame rate the features were extracted at", float),
        "dropout": Option(0.1, "dropout (training only)", float, training=True),
    }


def load_features(source: str, feature_dim: int) -> np.ndarray:
    """A T x D float feature file, checked: dims, and no NaN or inf (rejected, never passed on)."""
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() != ".npy":
        raise InputError(f"{path}: expected a .npy feature file (T x {feature_dim})")
    features = load_npy(path, "features")
    if features.ndim != 2 or features.dtype.kind != "f":
        raise InputError(f"{path}: expected a T x {feature_dim} float array, given {features.dtype} {list(features.shape)}")
    if len(features) == 0:
        raise InputError(f"{path}: holds no chunks")
    if features.shape[1] != feature_dim:
        raise InputError(f"{path}: feature dimension {features.shape[1]}, the bundle expects {feature_dim}")
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad.size:
        raise InputError(f"{path}: chunk {bad[0]} has NaN or inf features ({bad.size} chunks in all)")
    return features.astype(np.float32, copy=False)


class OnlineDetector(Detector):
    """Shared options, labels and the chunk-feature streaming path."""

    THUMOS_CLASSES = 22

    def resolve_options(self, given: dict[str, str]) -> dict[str, Any]:
        opts = super().resolve_options(given)
        resolve_classes(opts, self.THUMOS_CLASSES, minimum=2)  # background and at least one action
        if not -1 <= opts["ambiguous"] < opts["num_classes"] or opts["ambiguous"] == 0:
            raise EdgertError(f"--opt ambiguous={opts['ambiguous']}: expected -1 or a class index in 1..{opts['num_classes'] - 1}")
        return opts

    def labels(self, opts):
        if opts["labels"]:
            return read_labels(opts["labels"])
        names = ["background"] + [f"action_{i}" for i in range(1, opts["num_classes"])]
        if opts["ambiguous"] > 0:
            names[opts["ambiguous"]] = "ambiguous"
        return names

    def preprocessing(self, opts):
        return {"sampling": "chunks", "feature_dim": opts["feature_dim"], "chunk_frames": opts["chunk_frames"],
                "fps": opts["fps"], "chunks_per_second": opts["fps"] / opts["chunk_frames"],
                "background": 0, "ambiguous": opts["ambiguous"], "average_steps": 1}

    def iter_steps(self, bundle: Bundle, source: str) -> Iterator[np.ndarray]:
        return iter(load_features(source, int(bundle.preprocessing["feature_dim"])))

    def prepare_step(self, bundle: Bundle, item: np.ndarray) -> dict[str, np.ndarray]:
        feature = np.asarray(item, dtype=np.float32).reshape(1, -1)
        if feature.shape[1] != int(bundle.preprocessing["feature_dim"]):
            raise InputError(f"feature dimension {feature.shape[1]}, the bundle expects {bundle.preprocessing['feature_dim']}")
        if not np.isfinite(feature).all():
            raise InputError("chunk features contain NaN or inf")
        return {"features": feature}

    def prepare_graph(self, bundle: Bundle, graph: str, source: str) -> dict[str, np.ndarray]:
        """The offline twin (``offline``: [batch, frames, D] in) takes the whole feature file."""
        if graph != "offline":
            return super().prepare_graph(bundle, graph, source)
        return {"features": load_features(source, int(bundle.preprocessing["feature_dim"]))[None]}

    def prepare(self, bundle: Bundle, source: str):
        raise EdgertError(f"{bundle.root}: an online detector; run it with --stream on a feature file")
