"""Built-in detector plugin: TRN, the Temporal Relation Network (multi-scale)."""

from __future__ import annotations

from edgert.runtime.detector import Option, positive_int
from edgert.runtime.hookspecs import hookimpl

from ..recognizer import RESNETS, SegmentRecognizer, common_options


class TRNDetector(SegmentRecognizer):
    """Temporal Relation Networks (Zhou et al., ECCV 2018), TRN-multiscale.

    Choices: 2D backbone per segment; each frame's feature projected to 256-d; relations over
    ordered frame subsets at every scale from K frames down to 2, one MLP per scale, summed.
    The largest scale uses all K frames; the others ``relations`` (default 3, as TRN-pytorch's
    subsample_num) subsets each, chosen deterministically (evenly over the sorted subsets)
    instead of TRN-pytorch's random draw in every forward: the exported graph is static and
    two runs agree. The chosen subsets are written into the manifest.
    """

    name = "trn"
    description = "Temporal Relation Network: multi-scale relations over ordered frames"
    paper = "Zhou et al., Temporal Relational Reasoning in Videos, ECCV 2018"
    options = {**common_options(RESNETS + ("mobilenetv2",)),
               "relations": Option(3, "relations per scale below the largest", positive_int)}

    def make_model(self, opts):
        from .model import TRN

        return TRN(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"], subsample=opts["relations"])

    def details(self, opts):
        from .model import choose_relations

        return {"relations": [[list(r) for r in scale] for scale in choose_relations(opts["segments"], opts["relations"])]}


@hookimpl
def edgert_register_detectors():
    return [TRNDetector()]
