"""Built-in detector plugin: TSM (Temporal Shift Module), offline and online."""

from __future__ import annotations

import re
from pathlib import Path

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.detector import Fixed, Option, boolean, positive_int
from edgert.runtime.errors import EdgertError
from edgert.runtime.hookspecs import hookimpl

from ..recognizer import RESNETS, SegmentRecognizer, common_options


class TSMDetector(SegmentRecognizer):
    """Temporal Shift Module (Lin et al., ICCV 2019).

    Choices: residual shift ('blockres', every released model) of 1/``shift_div`` channels
    each way (default 8) before each residual branch; ResNet-18/34/50/101 or MobileNetV2;
    average consensus; TSN's sampling and preprocessing. The shift is exported as slices
    and concatenation (no ScatterND). ``online=true`` exports the per-frame graph of TSM's
    online demo: uni-directional shift (the first 1/``shift_div`` channels from the previous
    frame) with one explicit shift buffer per shifted block as state; run it with
    ``edgert run --stream`` or ``edgert.load(...).stream()``. A checkpoint trained with the
    uni-directional shift (``shift=unidirectional``) is what the online graph expects, as the
    TSM authors advise for online models.
    """

    name = "tsm"
    description = "Temporal Shift Module: channel shift in the residual branches (offline or online)"
    paper = "Lin et al., TSM: Temporal Shift Module for Efficient Video Understanding, ICCV 2019"
    options = {
        **common_options(RESNETS + ("mobilenetv2",)),
        "shift_div": Option(8, "1/shift_div of the channels shift each way", positive_int),
        "shift": Option("bidirectional", "offline shift direction", str, ("bidirectional", "unidirectional")),
        "online": Option(False, "export the per-frame streaming graph with shift-buffer state", boolean),
    }

    def make_model(self, opts):
        from .model import TSM

        shift = "unidirectional" if opts["online"] else opts["shift"]
        return TSM(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"], opts["shift_div"], shift)

    def resolve_options(self, given):
        opts = super().resolve_options(given)
        if opts["online"] and opts["output"] == "features":
            raise EdgertError("--opt online=true exports per-frame class scores; use output=features offline")
        if opts["online"]:  # the online graph shifts from the past only: the bundle says what it holds
            if given.get("shift", "unidirectional") != "unidirectional":
                raise EdgertError(f"--opt shift={given['shift']} with online=true: the online graph shifts from the "
                                  "past only (shift=unidirectional)")
            opts["shift"] = "unidirectional"
        return opts

    def checkpoint_options(self, checkpoint):
        """The layout's options, plus what the official release's file name says (TSM's own
        ``parse_shift_option_from_log_name`` reads it the same way), e.g.
        ``TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth``: shift8, segment8 —
        as defaults only: TSM tests a model with other segment counts too."""
        found = super().checkpoint_options(checkpoint)
        name = Path(checkpoint).name
        if name.startswith("TSM_"):
            for key, pattern in (("shift_div", r"_shift(\d+)_"), ("segments", r"_segment(\d+)_")):
                if (m := re.search(pattern, name)) and int(m.group(1)) > 0:
                    found[key] = Fixed(int(m.group(1)), f"its file name says {m.group(0).strip('_')}", strict=False)
        return found

    def build(self, opts, checkpoint):
        from .model import OnlineTSM

        model = super().build(opts, checkpoint)
        return OnlineTSM(model).eval() if opts["online"] else model

    def graphs(self, opts) -> list[GraphSpec]:
        if not opts["online"]:
            return super().graphs(opts)
        from .model import TSM, OnlineTSM

        size = opts["size"]
        shapes = OnlineTSM(TSM(1, 1, opts["backbone"], 0.0, opts["shift_div"]).eval()).buffer_shapes(size)
        buffers_in = tuple(TensorSpec(f"shift_buffer.{i}", "float32", ("batch", *s)) for i, s in enumerate(shapes))
        buffers_out = tuple(TensorSpec(f"new_shift_buffer.{i}", "float32", ("batch", *s)) for i, s in enumerate(shapes))
        return [GraphSpec(
            "main", "model.onnx",
            inputs=(TensorSpec("frame", "float32", ("batch", 3, size, size)), *buffers_in),
            outputs=(TensorSpec("scores", "float32", ("batch", opts["num_classes"])), *buffers_out),
            state=tuple((i.name, o.name) for i, o in zip(buffers_in, buffers_out)),
        )]

    def preprocessing(self, opts):
        pre = super().preprocessing(opts)
        if opts["online"]:
            # one frame per step; predictions average the scores of the last `segments` frames
            pre.update(sampling="stream", average_steps=opts["segments"], layout="NCHW")
        return pre


@hookimpl
def edgert_register_detectors():
    return [TSMDetector()]
