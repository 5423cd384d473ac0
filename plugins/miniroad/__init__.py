"""Built-in detector plugin ``miniroad``: MiniROAD, the minimal-RNN online action detector."""

from __future__ import annotations

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.detector import Fixed, Option, positive_int
from edgert.runtime.hookspecs import hookimpl

from ..oad import OnlineDetector, oad_options


class MiniROADDetector(OnlineDetector):
    """MiniROAD (An, Kang et al., ICCV 2023), see ``model.MiniROAD``.

    Two graphs over the same weights: ``main``, one chunk per run with the GRU's hidden state
    carried between runs (``hidden`` -> ``next_hidden``, [batch, layers, hidden]), which
    ``edgert run --stream`` and served stream sessions run; and ``offline``, a whole video's
    features in one run from the zero state, the official evaluation, which ``edgert eval``
    runs. Constant work and state per chunk. Official checkpoints (``torch.save`` of the
    model's ``state_dict``: ``layer1.0.weight``, ``gru.weight_ih_l0``, ``f_classification.0.weight``)
    load as they are, and fix the feature size, the embedding and hidden sizes, the GRU's layers
    and the class count. Paper sizes (THUMOS'14, Kinetics features): RGB 2048 ‖ flow 1024 in,
    embedding 2048, hidden 1024, one layer, 22 classes.
    """

    name = "miniroad"
    description = "MiniROAD: GRU over chunk features, constant cost per chunk (ICCV 2023)"
    paper = "An, Kang et al., MiniROAD: Minimal RNN Framework for Online Action Detection, ICCV 2023"
    options = {
        **oad_options(),
        "embedding": Option(2048, "embedding size (layer1)", positive_int),
        "hidden": Option(1024, "GRU hidden size", positive_int),
        "layers": Option(1, "GRU layers", positive_int),
    }

    def checkpoint_options(self, checkpoint):
        from edgert.exporters.checkpoints import read_state_dict

        state, found = read_state_dict(checkpoint), {}
        embed, hh, head = state.get("layer1.0.weight"), state.get("gru.weight_hh_l0"), state.get("f_classification.0.weight")
        if embed is not None and embed.dim() == 2:
            found["embedding"] = Fixed(int(embed.shape[0]), f"layer1.0.weight is {list(embed.shape)}")
            found["feature_dim"] = Fixed(int(embed.shape[1]), f"layer1.0.weight is {list(embed.shape)}")
        if hh is not None and hh.dim() == 2:
            found["hidden"] = Fixed(int(hh.shape[1]), f"gru.weight_hh_l0 is {list(hh.shape)}")
            layers = sum(1 for key in state if key.startswith("gru.weight_hh_l"))
            found["layers"] = Fixed(layers, f"it has gru.weight_hh_l0..l{layers - 1}")
        if head is not None and head.dim() == 2:
            found["num_classes"] = Fixed(int(head.shape[0]), f"f_classification.0.weight is {list(head.shape)}")
        return found

    def build(self, opts, checkpoint):
        from edgert.exporters.checkpoints import load_strict, read_state_dict

        from .model import MiniROAD, MiniROADStep

        model = MiniROAD(opts["feature_dim"], opts["num_classes"], opts["embedding"], opts["hidden"], opts["layers"],
                         opts["dropout"])
        if checkpoint:
            load_strict(model, read_state_dict(checkpoint), checkpoint)
        model.eval()
        return {"main": MiniROADStep(model).eval(), "offline": model}

    def graphs(self, opts):
        d, c, state = opts["feature_dim"], opts["num_classes"], ("batch", opts["layers"], opts["hidden"])
        return [
            GraphSpec("main", "model.onnx",
                      inputs=(TensorSpec("features", "float32", ("batch", d)), TensorSpec("hidden", "float32", state)),
                      outputs=(TensorSpec("scores", "float32", ("batch", c)),
                               TensorSpec("next_hidden", "float32", state)),
                      state=(("hidden", "next_hidden"),)),
            GraphSpec("offline", "offline.onnx",
                      inputs=(TensorSpec("features", "float32", ("batch", "frames", d)),),
                      outputs=(TensorSpec("scores", "float32", ("batch", "frames", c)),)),
        ]


@hookimpl
def edgert_register_detectors():
    return [MiniROADDetector()]
