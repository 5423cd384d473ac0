"""Built-in detector plugin ``oad-trn``: the Temporal Recurrent Network for online action
detection (the name ``trn`` is the temporal relation network)."""

from __future__ import annotations

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.detector import Option, positive_int
from edgert.runtime.hookspecs import hookimpl

from ..oad import OnlineDetector, oad_options

# TRN.pytorch's checkpoint keys, which are ours unchanged (``model_state_dict``, no prefix).


class OadTRNDetector(OnlineDetector):
    """Temporal Recurrent Networks (Xu et al., ICCV 2019), see ``model.TemporalRecurrentNetwork``.

    Exported as a per-chunk step graph: inputs ``features``, ``future_input``, ``enc_hx``,
    ``enc_cx``; outputs ``scores`` (current chunk), ``anticipation`` (the next ``dec_steps``
    chunks) and the three state tensors, which the streaming session feeds back. Paper sizes:
    hidden 4096, 8 decoder steps, 3072-d input.
    """

    name = "oad-trn"
    description = "Temporal Recurrent Network: online action detection with anticipation (LSTM)"
    paper = "Xu et al., Temporal Recurrent Networks for Online Action Detection, ICCV 2019"
    options = {**oad_options(), "hidden": Option(4096, "LSTM hidden size", positive_int),
               "dec_steps": Option(8, "decoder (anticipation) steps", positive_int)}

    def build(self, opts, checkpoint):
        from edgert.exporters.checkpoints import load_strict, read_state_dict

        from .model import TemporalRecurrentNetwork

        model = TemporalRecurrentNetwork(opts["feature_dim"], opts["hidden"], opts["num_classes"], opts["dec_steps"],
                                         dropout=opts["dropout"])
        if checkpoint:
            load_strict(model, read_state_dict(checkpoint), checkpoint)
        return model.eval()

    def graphs(self, opts):
        d, h, c = opts["feature_dim"], opts["hidden"], opts["num_classes"]
        state = [("future_input", d), ("enc_hx", h), ("enc_cx", h)]
        return [GraphSpec(
            "main", "model.onnx",
            inputs=(TensorSpec("features", "float32", ("batch", d)),
                    *(TensorSpec(name, "float32", ("batch", size)) for name, size in state)),
            outputs=(TensorSpec("scores", "float32", ("batch", c)),
                     TensorSpec("anticipation", "float32", ("batch", opts["dec_steps"], c)),
                     *(TensorSpec(f"next_{name}", "float32", ("batch", size)) for name, size in state)),
            state=tuple((name, f"next_{name}") for name, _ in state),
        )]


@hookimpl
def edgert_register_detectors():
    return [OadTRNDetector()]
