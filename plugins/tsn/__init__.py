"""Built-in detector plugin: TSN (Temporal Segment Networks).

Registered through the ``edgert`` entry-point group in edgert's own pyproject.toml, exactly
as a third-party plugin would be. Module level stays free of torch: the runtime imports this
file on edge devices; ``build`` imports the PyTorch side.
"""

from __future__ import annotations

from edgert.runtime.hookspecs import hookimpl

from ..recognizer import RESNETS, SegmentRecognizer, common_options


class TSNDetector(SegmentRecognizer):
    """Temporal Segment Networks (Wang et al., ECCV 2016), RGB modality.

    Choices, as the authors' tsn-pytorch: an ImageNet backbone (ResNet-18/34/50/101 or
    MobileNetV2, torchvision key names) whose classifier is replaced by Dropout; ``new_fc``
    head initialised N(0, 0.001); one frame per segment; average consensus of the K segment
    score vectors; output pre-softmax class scores. At run time the middle frame of each
    segment is sampled (tsn-pytorch's test sampler), scaled to size*256/224, centre-cropped
    and normalised with ImageNet mean/std.
    """

    name = "tsn"
    description = "Temporal Segment Networks: 2D backbone per segment, average consensus"
    paper = "Wang et al., Temporal Segment Networks, ECCV 2016"
    options = common_options(RESNETS + ("mobilenetv2",))

    def make_model(self, opts):
        from edgert.exporters.video import SegmentNet

        return SegmentNet(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"])


@hookimpl
def edgert_register_detectors():
    return [TSNDetector()]
