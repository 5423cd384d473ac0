"""Built-in detector plugin: Two-Stream (RGB + optical flow or RGB difference)."""

from __future__ import annotations

import numpy as np

from edgert.runtime.bundle import Bundle, GraphSpec, TensorSpec
from edgert.runtime.detector import Fixed, Option, positive_int
from edgert.runtime.errors import EdgertError
from edgert.runtime.flow import METHODS, optical_flow, rgb_difference
from edgert.runtime.hookspecs import hookimpl
from edgert.runtime.video import Clip, preprocess, segment_indices, snippet_indices

from ..recognizer import RESNETS, SegmentRecognizer, common_options


class TwoStreamDetector(SegmentRecognizer):
    """Two-Stream ConvNets (Simonyan & Zisserman, NeurIPS 2014), in TSN's form.

    Choices: an RGB TSN and a temporal TSN on the same K segment snippets of L+1 frames; the
    RGB stream sees each snippet's middle frame, the temporal stream ``modality=flow`` (L
    optical flow fields, x/y stacked, 2L channels; OpenCV DIS by default or Farneback,
    clipped at +-``flow_bound`` px) or ``modality=rgbdiff`` (L RGB differences, 3L channels);
    first conv of the temporal stream initialised by TSN's cross-modality averaging. Late
    fusion of the class scores with ``rgb_weight`` / ``motion_weight`` (TSN's 1 : 1.5). The
    run-time motion computation is the one recorded in the manifest.
    """

    name = "two-stream"
    description = "Two-Stream: RGB TSN + optical-flow / RGB-difference TSN, late fusion"
    paper = "Simonyan & Zisserman, Two-Stream Convolutional Networks for Action Recognition in Videos, NeurIPS 2014"
    options = {
        **common_options(RESNETS + ("mobilenetv2",)),
        "modality": Option("flow", "temporal stream input", str, ("flow", "rgbdiff")),
        "flow_length": Option(5, "L, flow fields (or differences) per snippet", positive_int),
        "flow_method": Option("dis", "optical flow algorithm (OpenCV)", str, METHODS),
        "flow_bound": Option(20.0, "flow clipped at +-bound pixels, then scaled to [-1, 1]", float),
        "rgb_weight": Option(1.0, "fusion weight of the RGB stream", float),
        "motion_weight": Option(1.5, "fusion weight of the temporal stream", float),
    }

    def motion_channels(self, opts) -> int:
        return (2 if opts["modality"] == "flow" else 3) * opts["flow_length"]

    def checkpoint_options(self, checkpoint):
        """Read from the RGB stream (``rgb.*``), which has the plain TSN layout."""
        from edgert.exporters.checkpoints import read_state_dict
        from edgert.exporters.layouts import Converted, checkpoint_options

        rgb = {k[len("rgb."):]: v for k, v in read_state_dict(checkpoint).items() if k.startswith("rgb.")}
        found = checkpoint_options(Converted(rgb, "edgert/official"))
        return {k: Fixed(f.value, f"the RGB stream's {f.evidence}") for k, f in found.items() if k in self.options}

    def build(self, opts, checkpoint):
        from edgert.exporters.checkpoints import load_strict, read_state_dict

        from .model import TwoStream

        model = TwoStream(opts["num_classes"], opts["segments"], opts["backbone"], opts["dropout"],
                          self.motion_channels(opts), opts["rgb_weight"], opts["motion_weight"])
        if checkpoint:
            load_strict(model, read_state_dict(checkpoint), checkpoint)
        return self.finish(model.eval(), opts)

    def finish(self, model, opts):
        if opts["output"] != "features":
            return model
        from .model import TwoStreamFeatures

        return TwoStreamFeatures(model).eval()

    def feature_dim(self, opts) -> int:
        return 2 * super().feature_dim(opts)

    def graphs(self, opts) -> list[GraphSpec]:
        size, k = opts["size"], opts["segments"]
        return [GraphSpec("main", "model.onnx", inputs=(
            TensorSpec("video", "float32", ("batch", k, 3, size, size)),
            TensorSpec("motion", "float32", ("batch", k, self.motion_channels(opts), size, size))),
            outputs=(self.output_spec(opts),))]

    def preprocessing(self, opts):
        pre = super().preprocessing(opts)
        pre.update(new_length=opts["flow_length"] + 1, modality=opts["modality"], flow_method=opts["flow_method"],
                   flow_bound=opts["flow_bound"], motion_layout="[x1, y1, x2, y2, ...]" if opts["modality"] == "flow"
                   else "[rgb2-rgb1, rgb3-rgb2, ...] of normalised frames")
        return pre

    def prepare_clip(self, bundle: Bundle, clip: Clip) -> dict[str, np.ndarray]:
        pre = bundle.preprocessing
        segments, snippet = int(pre["segments"]), int(pre["new_length"])
        if clip.num_frames < 2:
            raise EdgertError(f"{clip.path}: {clip.num_frames} frame; the temporal stream needs at least 2")
        starts = segment_indices(clip.num_frames, segments, snippet)
        frames = clip.frames(snippet_indices(starts, snippet, clip.num_frames))
        frames = frames.reshape(segments, snippet, *frames.shape[1:])
        rgb, motion = [], []
        for snip in frames:
            normalised = preprocess(snip, pre)
            rgb.append(normalised[snippet // 2])
            motion.append(optical_flow(snip, pre) if pre["modality"] == "flow" else rgb_difference(normalised))
        return {"video": np.stack(rgb)[None], "motion": np.stack(motion)[None]}


@hookimpl
def edgert_register_detectors():
    return [TwoStreamDetector()]
