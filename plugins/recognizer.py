"""Runtime-side base of the TSN-family detectors (TSN, TSM, TRN, TDN, TAM, Two-Stream).

Shared options (``backbone``, ``segments``, ``size``, ``num_classes``, ``labels``,
``dropout``), the graph spec, TSN's preprocessing and the clip -> input path. Subclasses
set their name, paper and allowed backbones and implement ``build`` (torch, lazily).
No torch at module level.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import Bundle, GraphSpec, TensorSpec
from edgert.runtime.detector import Detector, Option, Prediction, positive_int
from edgert.runtime.errors import EdgertError, InputError
from edgert.runtime.video import Clip, as_rgb, clip_segments, open_clip, preprocess

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
KINETICS_CLASSES = 400
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def read_labels(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise EdgertError(f"{file}: labels file not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EdgertError(f"{file}: labels file is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                          f"{err.start})") from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels:
        raise EdgertError(f"{file}: labels file is empty")
    return labels


def resolve_classes(opts: dict[str, Any], default: int, minimum: int = 1) -> None:
    """Fill ``num_classes`` from ``labels`` (a file, made absolute) or ``default``, and check
    the two agree; in place."""
    if opts["labels"]:
        opts["labels"] = str(Path(opts["labels"]).resolve())
        count = len(read_labels(opts["labels"]))
        if opts["num_classes"] not in (0, count):
            raise EdgertError(f"num_classes={opts['num_classes']} but {opts['labels']} has {count} labels")
        opts["num_classes"] = count
    elif opts["num_classes"] == 0:
        opts["num_classes"] = default
    if opts["num_classes"] < minimum:
        raise EdgertError(f"--opt num_classes={opts['num_classes']}: expected at least {minimum}")


def common_options(backbones: tuple[str, ...], default_backbone: str = "resnet50") -> dict[str, Option]:
    return {
        "backbone": Option(default_backbone, "2D backbone (torchvision key names)", str, backbones),
        "segments": Option(8, "K, number of segments (one frame each)", positive_int),
        "size": Option(224, "crop size; frames are first scaled to size*256/224", positive_int),
        "num_classes": Option(0, "classes (default: from labels, else 400 as Kinetics)", int),
        "labels": Option("", "text file, one label per line", str),
        "dropout": Option(0.8, "dropout before the class head (training only)", float, training=True),
        "output": Option("scores", "graph output: class scores, or pooled backbone features (a feature "
                         "extractor for online detectors)", str, ("scores", "features")),
    }


class SegmentRecognizer(Detector):
    """A clip classifier fed K segment frames ``(batch, K, 3, size, size)``."""

    options = common_options(RESNETS)
    new_length = 1  # frames per segment

    def resolve_options(self, given: dict[str, str]) -> dict[str, Any]:
        opts = super().resolve_options(given)
        resolve_classes(opts, KINETICS_CLASSES)
        return opts

    def make_model(self, opts):
        """The PyTorch module for ``opts`` (export side; import torch inside)."""
        raise NotImplementedError

    def checkpoint_options(self, checkpoint):
        from edgert.exporters.layouts import checkpoint_options
        from edgert.exporters.video import read_checkpoint

        found = checkpoint_options(read_checkpoint(checkpoint))
        return {k: v for k, v in found.items() if k in self.options}

    def build(self, opts, checkpoint):
        from edgert.exporters.video import load_checkpoint

        model = self.make_model(opts)
        if checkpoint:
            load_checkpoint(model, checkpoint)
        return self.finish(model.eval(), opts)

    def finish(self, model, opts):
        """The module to export: the model, or its feature extractor (``output=features``)."""
        if opts.get("output") != "features":
            return model
        from edgert.exporters.video import SegmentFeatures

        return SegmentFeatures(model).eval()

    def feature_dim(self, opts) -> int:
        from edgert.exporters.backbones import make_backbone

        return make_backbone(opts["backbone"]).feature_dim

    def input_spec(self, opts) -> TensorSpec:
        size, k = opts["size"], opts["segments"]
        return TensorSpec("video", "float32", ("batch", k, 3, size, size))

    def output_spec(self, opts) -> TensorSpec:
        if opts.get("output") == "features":
            return TensorSpec("features", "float32", ("batch", self.feature_dim(opts)))
        return TensorSpec("scores", "float32", ("batch", opts["num_classes"]))

    def graphs(self, opts) -> list[GraphSpec]:
        return [GraphSpec("main", "model.onnx", inputs=(self.input_spec(opts),), outputs=(self.output_spec(opts),))]

    def preprocessing(self, opts):
        return {
            "sampling": "tsn-segments", "segments": opts["segments"], "new_length": self.new_length,
            "scale_size": opts["size"] * 256 // 224, "crop_size": opts["size"],
            "channel_order": "RGB", "input_scale": 1.0 / 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "layout": "NTCHW" if self.new_length == 1 else "NTLCHW",  # L: frames per segment snippet
        }

    def postprocess(self, bundle, outputs, top_k=5):
        if "features" in outputs:  # a feature extractor: nothing to rank
            return Prediction([], outputs)
        return super().postprocess(bundle, outputs, top_k)

    def labels(self, opts):
        if opts.get("output") == "features":
            return []
        if opts["labels"]:
            return read_labels(opts["labels"])
        return [f"class_{i}" for i in range(opts["num_classes"])]

    def prepare(self, bundle: Bundle, source: str) -> dict[str, np.ndarray]:
        if bundle.graph().state:
            raise EdgertError(f"{bundle.root}: a streaming bundle; run it with --stream")
        return self.prepare_clip(bundle, open_clip(source))

    def prepare_clip(self, bundle: Bundle, clip: Clip) -> dict[str, np.ndarray]:
        """Graph inputs from an opened clip (a file, or a chunk of frames in memory)."""
        return {"video": clip_segments(clip, bundle.preprocessing)}

    def prepare_step(self, bundle: Bundle, frame: np.ndarray) -> dict[str, np.ndarray]:
        # the same frames a file gives: floats in 0..1 would pass as near-black pixel values
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] not in (1, 3, 4) or 0 in frame.shape:
            raise InputError(f"a streamed frame must be an H x W x 3 uint8 RGB array (or grayscale / RGBA), given "
                             f"{frame.dtype} {list(frame.shape)}")
        return {"frame": preprocess(as_rgb(frame[None]), bundle.preprocessing)}
