"""Built-in detector plugin: TDN (Temporal Difference Network)."""

from __future__ import annotations

from edgert.runtime.bundle import TensorSpec
from edgert.runtime.hookspecs import hookimpl

from ..recognizer import RESNETS, SegmentRecognizer, common_options


class TDNDetector(SegmentRecognizer):
    """TDN: Temporal Difference Networks (Wang et al., CVPR 2021), see ``model.TDN``.

    Five consecutive frames per segment (TDN's ``new_length = 5``): the run-time sampler takes
    the frames starting at TSN's segment offsets, repeating the last frame of a short clip;
    a clip of at most ``segments + 4`` frames starts every snippet at its first frame, as
    TDN's test sampler does. Official checkpoints (FBResNet layout) load with their conv
    biases folded into the BatchNorms (``exporters/layouts.py``).
    ResNet-50 as in the paper; ResNet-18/34/101 also build.
    """

    name = "tdn"
    description = "Temporal Difference Network: RGB-difference stem (S-TDM) + feature differences (L-TDM)"
    paper = "Wang et al., TDN: Temporal Difference Networks for Efficient Action Recognition, CVPR 2021"
    options = common_options(RESNETS)
    new_length = 5

    def input_spec(self, opts) -> TensorSpec:
        size, k = opts["size"], opts["segments"]
        return TensorSpec("video", "float32", ("batch", k, self.new_length, 3, size, size))

    def preprocessing(self, opts):
        return {**super().preprocessing(opts), "short_clip": "start"}

    def make_model(self, opts):
        from .model import TDN

        return TDN(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"])

    def build(self, opts, checkpoint):
        from edgert.exporters.video import load_checkpoint

        model = self.make_model(opts)
        if checkpoint and load_checkpoint(model, checkpoint) == "torchvision":
            model.inflate_difference_stem()  # an ImageNet backbone: derive the difference stem from it
        return self.finish(model.eval(), opts)


@hookimpl
def edgert_register_detectors():
    return [TDNDetector()]
