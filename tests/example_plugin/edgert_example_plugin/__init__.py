"""A third-party detector: a tiny CNN applied per frame, scores averaged over frames.

It exists to show (and test) the plugin author's path: subclass ``Detector``, declare options
and graphs, build the torch module lazily, reuse edgert's clip sampling and preprocessing,
register through the ``edgert`` entry-point group.
"""

from __future__ import annotations

from edgert import hookimpl
from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.detector import Detector, Option, positive_int
from edgert.runtime.video import load_segments


class FrameMeanDetector(Detector):
    name = "frame-mean"
    description = "tiny per-frame CNN, scores averaged over frames (example plugin)"
    paper = "none: an example"
    options = {
        "frames": Option(4, "frames sampled per clip", positive_int),
        "size": Option(32, "crop size", positive_int),
        "classes": Option(3, "number of classes", positive_int),
    }

    def build(self, opts, checkpoint):
        import torch
        from torch import nn

        class FrameMean(nn.Module):
            def __init__(self, classes):
                super().__init__()
                self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                              nn.AdaptiveAvgPool2d(1), nn.Flatten())
                self.head = nn.Linear(8, classes)

            def forward(self, video: torch.Tensor) -> torch.Tensor:
                scores = self.head(self.features(video.flatten(0, 1)))
                return scores.unflatten(0, (-1, video.shape[1])).mean(1)

        return FrameMean(opts["classes"]).eval()

    def graphs(self, opts):
        s = opts["size"]
        return [GraphSpec("main", "model.onnx",
                          (TensorSpec("video", "float32", ("batch", opts["frames"], 3, s, s)),),
                          (TensorSpec("scores", "float32", ("batch", opts["classes"])),))]

    def preprocessing(self, opts):
        return {"segments": opts["frames"], "new_length": 1, "scale_size": opts["size"], "crop_size": opts["size"],
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "RGB", "input_scale": 1 / 255}

    def labels(self, opts):
        return [f"pattern-{i}" for i in range(opts["classes"])]

    def prepare(self, bundle, source):
        return {"video": load_segments(source, bundle.preprocessing)}


@hookimpl
def edgert_register_detectors():
    return [FrameMeanDetector()]
