"""Built-in detector plugin ``oadtr``: OadTR, the online action detection transformer."""

from __future__ import annotations

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.detector import Option, positive_int
from edgert.runtime.errors import EdgertError
from edgert.runtime.hookspecs import hookimpl

from ..oad import OnlineDetector, oad_options

# Official checkpoint keys that map to nothing: OadTR stores a decoder positional encoding it
# never uses in forward(); dropped on load (and only those).
UNUSED_OFFICIAL_KEYS = ("decoder_position_encoding.pe.weight", "decoder_position_encoding.position_ids")


class OadTRDetector(OnlineDetector):
    """OadTR (Wang et al., ICCV 2021), see ``model.OadTR``.

    Exported as a streaming graph whose state is the window of the last ``window`` chunk
    features (zeros before the stream starts): each chunk shifts it by one, so one graph run
    per chunk. Outputs ``scores`` (current chunk) and ``anticipation`` (one per decoder query).
    Official checkpoints (``model``, keys such as ``encoder.net.0.fn.fn.qkv.weight``) load.
    """

    name = "oadtr"
    description = "OadTR: transformer with task token and future-query decoder, streaming window"
    paper = "Wang et al., OadTR: Online Action Detection with Transformers, ICCV 2021"
    options = {
        **oad_options(),
        "window": Option(64, "chunks in the encoder window", positive_int),
        "dim": Option(1024, "embedding size", positive_int),
        "layers": Option(3, "encoder layers", positive_int),
        "heads": Option(8, "encoder heads", positive_int),
        "dec_layers": Option(5, "decoder layers", positive_int),
        "dec_heads": Option(4, "decoder heads", positive_int),
        "queries": Option(8, "decoder queries (future steps)", positive_int),
        "mlp_dim": Option(1024, "encoder MLP and decoder FFN size", positive_int),
    }

    def resolve_options(self, given):
        opts = super().resolve_options(given)
        for heads in ("heads", "dec_heads"):
            if opts["dim"] % opts[heads]:
                raise EdgertError(f"--opt dim={opts['dim']} is not divisible by {heads}={opts[heads]}")
        return opts

    def build(self, opts, checkpoint):
        from edgert.exporters.checkpoints import load_strict, read_state_dict

        from .model import OadTR, StreamingOadTR

        model = OadTR(opts["feature_dim"], opts["num_classes"], opts["window"], opts["dim"], opts["layers"],
                      opts["heads"], opts["mlp_dim"], opts["dec_layers"], opts["dec_heads"], opts["queries"],
                      opts["mlp_dim"], opts["dropout"])
        if checkpoint:
            state = {k: v for k, v in read_state_dict(checkpoint).items() if k not in UNUSED_OFFICIAL_KEYS}
            load_strict(model, state, checkpoint)
        return StreamingOadTR(model.eval()).eval()

    def graphs(self, opts):
        d, c, w = opts["feature_dim"], opts["num_classes"], opts["window"]
        return [GraphSpec(
            "main", "model.onnx",
            inputs=(TensorSpec("features", "float32", ("batch", d)), TensorSpec("window", "float32", ("batch", w, d))),
            outputs=(TensorSpec("scores", "float32", ("batch", c)),
                     TensorSpec("anticipation", "float32", ("batch", opts["queries"], c)),
                     TensorSpec("next_window", "float32", ("batch", w, d))),
            state=(("window", "next_window"),),
        )]


@hookimpl
def edgert_register_detectors():
    return [OadTRDetector()]
