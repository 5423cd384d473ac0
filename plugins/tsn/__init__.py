"""Built-in detector plugin: TSN (Temporal Segment Networks).

Registered through the ``edgert`` entry-point group in edgert's own pyproject.toml, exactly
as a third-party plugin would be. Module level stays free of torch: the runtime imports this
file on edge devices; the PyTorch model lives in :mod:`.model` and is imported by ``build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import Bundle, GraphSpec, TensorSpec
from edgert.runtime.detector import Detector, Option, positive_int
from edgert.runtime.errors import EdgertError
from edgert.runtime.hookspecs import hookimpl
from edgert.runtime.video import load_segments

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
KINETICS_CLASSES = 400


def _read_labels(path: str) -> list[str]:
    file = Path(path)
    if not file.is_file():
        raise EdgertError(f"{file}: labels file not found")
    labels = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not labels:
        raise EdgertError(f"{file}: labels file is empty")
    return labels


class TSNDetector(Detector):
    name = "tsn"
    description = "Temporal Segment Networks: ResNet per segment, average consensus"
    paper = "Wang et al., Temporal Segment Networks, ECCV 2016"
    options = {
        "backbone": Option("resnet50", "ResNet depth (torchvision key names)", str,
                           ("resnet18", "resnet34", "resnet50", "resnet101")),
        "segments": Option(8, "K, number of segments (one frame each)", positive_int),
        "size": Option(224, "crop size; frames are first scaled to size*256/224", positive_int),
        "num_classes": Option(0, "classes (default: from labels, else 400 as Kinetics)", int),
        "labels": Option("", "text file, one label per line", str),
        "dropout": Option(0.8, "dropout before the class head (training only)", float),
    }

    def resolve_options(self, given: dict[str, str]) -> dict[str, Any]:
        opts = super().resolve_options(given)
        if opts["labels"]:
            opts["labels"] = str(Path(opts["labels"]).resolve())
            count = len(_read_labels(opts["labels"]))
            if opts["num_classes"] not in (0, count):
                raise EdgertError(f"--opt num_classes={opts['num_classes']} but {opts['labels']} has {count} labels")
            opts["num_classes"] = count
        elif opts["num_classes"] == 0:
            opts["num_classes"] = KINETICS_CLASSES
        if opts["num_classes"] < 1:
            raise EdgertError(f"--opt num_classes={opts['num_classes']}: expected a positive integer")
        return opts

    # ---- export half ----
    def build(self, opts, checkpoint):
        from .model import TSN, load_tsn_checkpoint

        model = TSN(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"])
        if checkpoint:
            load_tsn_checkpoint(model, checkpoint)
        return model.eval()

    def graphs(self, opts) -> list[GraphSpec]:
        size, k = opts["size"], opts["segments"]
        return [GraphSpec(
            "main", "model.onnx",
            inputs=(TensorSpec("video", "float32", ("batch", k, 3, size, size)),),
            outputs=(TensorSpec("scores", "float32", ("batch", opts["num_classes"])),),
        )]

    def preprocessing(self, opts):
        return {
            "sampling": "tsn-segments", "segments": opts["segments"], "new_length": 1,
            "scale_size": opts["size"] * 256 // 224, "crop_size": opts["size"],
            "channel_order": "RGB", "input_scale": 1.0 / 255.0, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "layout": "NTCHW",
        }

    def labels(self, opts):
        if opts["labels"]:
            return _read_labels(opts["labels"])
        return [f"class_{i}" for i in range(opts["num_classes"])]

    # ---- runtime half ----
    def prepare(self, bundle: Bundle, source: str) -> dict[str, np.ndarray]:
        return {"video": load_segments(source, bundle.preprocessing)}


@hookimpl
def edgert_register_detectors():
    return [TSNDetector()]
