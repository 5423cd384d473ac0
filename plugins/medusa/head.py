"""The Medusa head family: what ``--opt medusa=medusa_lm_head.safetensors`` adds to a decoder
bundle, how ``edgert train medusa`` trains one, and what ``d.head("medusa")`` opens.

The exported ``medusa`` graph: ``hidden_states`` (B, N, H) -> ``medusa_logits`` (B, N, heads,
vocab); the model and checkpoint layout are in :mod:`edgert.exporters.llm.medusa`. The graph
holds no attention, so it joins both flavours (the TensorRT flavour runs it as plain ONNX).
"""

from __future__ import annotations

import numpy as np

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.options import Option, positive_int

GRAPH = "medusa"


def medusa_graph(hidden: int, vocab: int, heads: int) -> GraphSpec:
    return GraphSpec(GRAPH, f"{GRAPH}.onnx", (TensorSpec("hidden_states", "float32", ("batch", "positions", hidden)),),
                     (TensorSpec("medusa_logits", "float32", ("batch", "positions", heads, vocab)),))


class MedusaHead:
    name = "medusa"
    description = "Medusa heads: K extra LM heads on the last hidden state propose a token tree"
    paper = "Cai et al., Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding Heads, 2024"
    what = "Medusa heads"  # as messages name it
    file_help = "Medusa heads file (medusa_lm_head.safetensors layout), for --strategy medusa"
    flavours = ("onnx", "trt")
    train_options = {"heads": Option(4, "number of heads", positive_int),
                     "layers": Option(1, "ResBlocks per head", positive_int)}

    def plan(self, ctx, source):
        from edgert.exporters.llm.medusa import MedusaGraph, load_medusa
        from edgert.exporters.llm.plan import GraphJob

        g = ctx.geometry
        heads = load_medusa(source, g.hidden_size, g.vocab_size)
        hidden = {"hidden_states": ctx.rng.standard_normal((2, 3, g.hidden_size)).astype(np.float32)}
        job = GraphJob(medusa_graph(g.hidden_size, g.vocab_size, len(heads)), MedusaGraph(ctx.as_exported(heads)),
                       dict(hidden), ctx.parity(MedusaGraph(heads).eval(), {"heads": hidden}, proposal=True))
        return [job], {"graph": GRAPH, "num_heads": len(heads), "num_layers": heads.num_layers}

    def trainee(self, model, options):
        from edgert.exporters.llm.medusa import MedusaHeads, save_medusa
        from edgert.exporters.llm.train import Trainee, head_losses

        cfg = model.cfg
        heads = MedusaHeads(cfg.hidden_size, cfg.vocab_size, options["heads"], options["layers"], model.lm_head)
        # head k predicts token t + k + 2: the continuation must reach that far
        return Trainee(heads, head_losses, save_medusa, "Medusa heads", lookahead=options["heads"],
                       count=options["heads"])

    def open(self, target, entry):
        from .session import MedusaSession

        return MedusaSession(target, entry)
