"""Built-in detector plugin: TAM / TANet (Temporal Adaptive Module)."""

from __future__ import annotations

from edgert.runtime.hookspecs import hookimpl

from ..recognizer import RESNETS, SegmentRecognizer, common_options


class TAMDetector(SegmentRecognizer):
    """TANet: Temporal Adaptive Module (Liu et al., ICCV 2021).

    Choices: TAM after the first conv-BN-ReLU of every residual block of a ResNet (as the
    official TemporalBottleneck), kernel K=3, alpha=2, beta=4 (official defaults, as mmaction2);
    local branch (temporal conv -> location-sensitive importance) and global branch (video-
    adaptive temporal kernel from the pooled context). The adaptive convolution is written as
    a sum of shifted slices, so the graph takes any batch size (the official grouped conv
    exports only with a static batch). Average consensus; TSN sampling.
    """

    name = "tam"
    description = "TANet: temporal adaptive module (local importance + video-adaptive kernels)"
    paper = "Liu et al., TAM: Temporal Adaptive Module for Video Recognition, ICCV 2021"
    options = common_options(RESNETS)

    def make_model(self, opts):
        from .model import TANet

        return TANet(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"])


@hookimpl
def edgert_register_detectors():
    return [TAMDetector()]
