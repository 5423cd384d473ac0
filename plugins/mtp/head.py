"""The MTP head family: what ``--opt mtp=MODULE`` adds to a decoder bundle, how ``edgert train
mtp`` trains one, and what ``d.head("mtp")`` opens.

The ``mtp`` graph follows the decoder contract with one layer: the target's hidden states come
in as an extra input (``hidden_states``) and the module's own go out as ``mtp_hidden_states``
(the next depth's input). It runs through the decoder's ONNX Attention, so it joins the
``onnx`` flavour only. The module and its checkpoint layout are in
:mod:`edgert.exporters.llm.mtp`.
"""

from __future__ import annotations

import numpy as np

from edgert.runtime.bundle import TensorSpec
from edgert.runtime.llm.contract import decoder_graph

GRAPH = "mtp"
HIDDEN_IN = "hidden_states"


def mtp_graph(geometry, kv_dtype: str, in_place: bool = False):
    """The decoder's I/O with one layer, plus the base model's hidden states in and the
    module's own out; its cache in place like the decoder's."""
    hidden = TensorSpec(HIDDEN_IN, "float32", ("batch", "sequence_length", geometry.hidden_size))
    return decoder_graph(geometry, kv_dtype, name=GRAPH, layers=1, hidden="mtp_hidden_states", extra_inputs=(hidden,),
                         in_place=in_place)


class MTPHead:
    name = "mtp"
    description = "DeepSeek-V3-style multi-token prediction module: one transformer layer drafts from hidden states"
    paper = "DeepSeek-AI, DeepSeek-V3 Technical Report, 2024 (§2.2, multi-token prediction)"
    what = "an MTP module"  # as messages name it
    file_help = "MTP module file (edgert train mtp) to export as the 'mtp' graph, for --strategy mtp"
    flavours = ("onnx",)
    train_options: dict = {}

    def plan(self, ctx, source):
        from edgert.exporters.llm.mtp import MTPGraph, load_mtp
        from edgert.exporters.llm.plan import GraphJob, parity_cases, trace_feeds

        mtp = load_mtp(source, ctx.config)
        kv, extra = np.dtype(ctx.kv_dtype), {HIDDEN_IN: ctx.geometry.hidden_size}
        cases = parity_cases(ctx.geometry, kv, ctx.rng, layers=1, extra=extra)
        trace = trace_feeds(ctx.geometry, kv, ctx.rng, layers=1, extra=extra)
        job = GraphJob(mtp_graph(ctx.geometry, ctx.kv_dtype, ctx.in_place),
                       MTPGraph(ctx.module, ctx.as_exported(mtp)).eval(), trace,
                       ctx.parity(MTPGraph(ctx.reference, mtp).eval(), cases, proposal=True),
                       translations=ctx.translations)
        return [job], {"graph": GRAPH}

    def trainee(self, model, options):
        from edgert.exporters.llm.mtp import MTPModule, save_mtp
        from edgert.exporters.llm.train import Trainee, mtp_losses

        # position t reads (h_t, token t + 1) and predicts t + 2
        return Trainee(MTPModule(model.cfg), mtp_losses, save_mtp, "the MTP module", lookahead=1, count=1)

    def open(self, target, entry):
        return target.open_graph(entry["graph"])
