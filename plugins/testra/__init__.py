"""Built-in detector plugin ``testra``: TeSTra, LSTR's long/short memory with a streaming kernel."""

from __future__ import annotations

import numpy as np

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.detector import Fixed, Option, positive_int
from edgert.runtime.errors import EdgertError
from edgert.runtime.hookspecs import hookimpl

from ..oad import OnlineDetector, oad_options


def state_shapes(opts) -> dict[str, tuple]:
    """The step graph's state, batch axis left out (see ``model.TeSTraStep``)."""
    d, r, h, q = opts["d_model"], opts["rate"], opts["heads"], opts["compressed"]
    return {"work": (opts["work"], d), "delay": (opts["work"] + r - 1, d), "long": (r, opts["long"], d),
            "first": (d,), "num": (r, h, q, d // h), "den": (r, h, q), "ref": (r, h, q), "step": (1,)}


def _count(state, prefix: str) -> int:
    """How many numbered layers ``prefix.N.`` the checkpoint holds."""
    return len({key[len(prefix):].split(".", 1)[0] for key in state if key.startswith(prefix)})


class TeSTraDetector(OnlineDetector):
    """TeSTra (Zhao and Krähenbühl, ECCV 2022), see ``model.TeSTra`` and ``model.TeSTraStep``.

    Exported as a step graph, one chunk per run, constant work per chunk whatever the memory's
    length: its state is the work window, the long memory per sampling phase and the kernel's
    running sums (``edgert info`` lists them). Paper sizes (THUMOS'14, configs/THUMOS/TESTRA):
    RGB 2048 ‖ flow 1024 in, d_model 1024, 16 heads, feed-forward 1024, long memory 512 samples
    every 4 chunks (2,048 chunks, 512 s at 4 chunks/s), work memory 32, 16 then 32 compressed
    queries, 2 + 2 layers; kernel ``box`` or ``laplace`` (decay 0.97). Official checkpoints
    (``model_state_dict``, keys ``feature_head_long.input_linear.0.weight``,
    ``enc_modules.0.layers.0.multihead_attn.in_proj_weight``, ...) load as they are and fix the
    feature size, d_model, feed-forward size, class count, query counts and layer counts; the
    heads, memory lengths and kernel are the config's, not the checkpoint's: give them as options.
    """

    name = "testra"
    description = "TeSTra: long/short-memory transformer with a streaming kernel, constant cost per chunk (ECCV 2022)"
    paper = "Zhao and Krähenbühl, Real-time Online Video Detection with Temporal Smoothing Transformers, ECCV 2022"
    # int8 quantizes the matrix products (all of the weights); the kernel's running sums, their
    # exponentials and the state plumbing stay float (uint8 on them fails the accuracy gate)
    int8_ops = ("MatMul", "Gemm")
    options = {
        **oad_options(),
        "d_model": Option(1024, "model width (the feature heads' output)", positive_int),
        "heads": Option(16, "attention heads (the config's NUM_HEADS; not in the checkpoint)", positive_int),
        "ff": Option(1024, "feed-forward size", positive_int),
        "long": Option(512, "long-memory samples", positive_int),
        "rate": Option(4, "long-memory sample rate (chunks between samples)", positive_int),
        "work": Option(32, "work-memory chunks", positive_int),
        "compressed": Option(16, "first compression's queries (enc_queries.0)", positive_int),
        "compressed2": Option(32, "second compression's queries (enc_queries.1)", positive_int),
        "enc_layers": Option(2, "layers of the second compression", positive_int),
        "dec_layers": Option(2, "decoder layers", positive_int),
        "kernel": Option("box", "the long-memory attention's kernel", str, choices=("box", "laplace")),
        "decay": Option(0.97, "the Laplace kernel's decay per sample", float),
    }

    def resolve_options(self, given):
        opts = super().resolve_options(given)
        if opts["d_model"] % opts["heads"]:
            raise EdgertError(f"--opt d_model={opts['d_model']} is not divisible by heads={opts['heads']}")
        if not 0.0 < opts["decay"] <= 1.0:
            raise EdgertError(f"--opt decay={opts['decay']}: expected a number in (0, 1]")
        if opts["work"] > 5000:
            raise EdgertError(f"--opt work={opts['work']}: at most 5000 (the positional encoding's length)")
        return opts

    def checkpoint_options(self, checkpoint):
        from edgert.exporters.checkpoints import read_state_dict

        state, found = read_state_dict(checkpoint), {}
        head, cls = state.get("feature_head_long.input_linear.0.weight"), state.get("classifier.weight")
        if head is not None and head.dim() == 2:
            found["d_model"] = Fixed(int(head.shape[0]), f"feature_head_long.input_linear.0.weight is {list(head.shape)}")
            found["feature_dim"] = Fixed(int(head.shape[1]), f"feature_head_long.input_linear.0.weight is {list(head.shape)}")
        if cls is not None and cls.dim() == 2:
            found["num_classes"] = Fixed(int(cls.shape[0]), f"classifier.weight is {list(cls.shape)}")
        for option, key in (("compressed", "enc_queries.0.weight"), ("compressed2", "enc_queries.1.weight"),
                            ("ff", "enc_modules.0.layers.0.linear1.weight")):
            if key in state and state[key].dim() == 2:
                found[option] = Fixed(int(state[key].shape[0]), f"{key} is {list(state[key].shape)}")
        for option, prefix in (("enc_layers", "enc_modules.1.layers."), ("dec_layers", "dec_modules.layers.")):
            if count := _count(state, prefix):
                found[option] = Fixed(count, f"it has {prefix}0..{count - 1}")
        return found

    def build(self, opts, checkpoint):
        from edgert.exporters.checkpoints import load_strict, read_state_dict

        from .model import TeSTra, TeSTraStep

        model = TeSTra(opts["feature_dim"], opts["num_classes"], opts["d_model"], opts["heads"], opts["ff"],
                       opts["long"], opts["work"], (opts["compressed"], opts["compressed2"]), opts["enc_layers"],
                       opts["dec_layers"], opts["kernel"], opts["decay"])
        if checkpoint:
            load_strict(model, read_state_dict(checkpoint), checkpoint)
        return TeSTraStep(model.eval(), opts["rate"]).eval()

    def example_inputs(self, opts, graph, rng, dims):
        """The parity check's inputs: the first frame in one row, and in the others frames late
        enough that the long memory both takes a frame in and lets one go."""
        feeds = super().example_inputs(opts, graph, rng, dims)
        late = opts["work"] - 1 + opts["rate"] * (opts["long"] + 2)
        feeds["step"] = np.array([[0]] + [[late + i] for i in range(len(feeds["step"]) - 1)], np.int64)
        feeds["den"] = np.abs(feeds["den"]) + 1.0  # a sum of exponentials
        return feeds

    def graphs(self, opts):
        d, c = opts["feature_dim"], opts["num_classes"]
        state = [TensorSpec(name, "int64" if name == "step" else "float32", ("batch", *shape))
                 for name, shape in state_shapes(opts).items()]
        return [GraphSpec(
            "main", "model.onnx",
            inputs=(TensorSpec("features", "float32", ("batch", d)), *state),
            outputs=(TensorSpec("scores", "float32", ("batch", c)),
                     *(TensorSpec(f"next_{s.name}", s.dtype, s.dims) for s in state)),
            state=tuple((s.name, f"next_{s.name}") for s in state),
        )]


@hookimpl
def edgert_register_detectors():
    return [TeSTraDetector()]
