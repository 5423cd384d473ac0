"""The EAGLE-3 head family: the decoder taps it asks for, what ``--opt eagle=HEAD`` adds to a
decoder bundle, how ``edgert train eagle`` trains one, and what ``d.head("eagle")`` opens.

Graphs: ``eagle_fc`` (taps (B, S, 3·hidden) -> hidden_states (B, S, hidden)) and ``eagle``, the
draft layer on the decoder contract with one layer: ``hidden_states`` in as an extra input,
``eagle_hidden_states`` out, logits over the draft vocabulary. Both only propose (the target
verifies), so ``--opt proposals=int8`` may quantize them. The module and its checkpoint
layout are in :mod:`.model`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.errors import EdgertError
from edgert.runtime.llm.contract import decoder_graph
from edgert.runtime.options import Option, positive_int

GRAPH, FC_GRAPH = "eagle", "eagle_fc"


def _layers(num_layers: int) -> tuple[int, int, int]:
    low, middle, high = 2, num_layers // 2, num_layers - 3
    if not low < middle < high:
        raise EdgertError(f"EAGLE-3 fuses the hidden states entering layers 2, L/2 and L-3; this model has {num_layers} "
                          f"layers, which gives {low}, {middle}, {high}: it needs at least 7")
    return low, middle, high


class EagleHead:
    name = "eagle"
    what = "an EAGLE-3 draft head"
    description = "EAGLE-3 draft head: one layer over the target's fused low/middle/high hidden states"
    paper = ("Li et al., EAGLE-3: Scaling up Inference Acceleration of Large Language Models via Training-Time Test, "
             "NeurIPS 2025; EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees, EMNLP 2024")
    file_help = ("EAGLE-3 head: a released head's directory (config.json + weights) or weights file, or the .safetensors "
                 "edgert train eagle writes; for --strategy eagle")
    flavours = ("onnx", "trt")
    # 5 unrolled steps: one per level of the strategy's default tree (depth 4 after the first level),
    # so that no level it drafts is one the head never trained for
    train_options = {"ttt_steps": Option(5, "training-time test: draft steps unrolled per position", positive_int)}

    def taps(self, config):
        return _layers(config.num_layers)

    def plan(self, ctx, source):
        from edgert.exporters.llm.plan import GraphJob, parity_cases, trace_feeds

        from .model import CacheDraftGraph, DraftGraph, FuseGraph, load_eagle

        draft = load_eagle(source, ctx.config)
        g, kv = ctx.geometry, np.dtype(ctx.kv_dtype)
        hidden = g.hidden_size
        fuse_spec = GraphSpec(FC_GRAPH, f"{FC_GRAPH}.onnx", (TensorSpec("taps", "float32", ("batch", "sequence_length",
                                                                                           3 * hidden)),),
                              (TensorSpec("hidden_states", "float32", ("batch", "sequence_length", hidden)),))
        taps = {"taps": ctx.rng.standard_normal((2, 3, 3 * hidden)).astype(np.float32)}
        fuse = GraphJob(fuse_spec, FuseGraph(ctx.as_exported(draft)), dict(taps),
                        ctx.parity(FuseGraph(draft).eval(), {"taps": taps}, proposal=True))
        state = TensorSpec("hidden_states", "float32", ("batch", "sequence_length", hidden))
        spec = decoder_graph(replace(g, vocab_size=draft.draft_vocab), ctx.kv_dtype, name=GRAPH, layers=1,
                             hidden="eagle_hidden_states", extra_inputs=(state,), in_place=ctx.in_place)
        extra = {"hidden_states": hidden}
        cases = parity_cases(g, kv, ctx.rng, layers=1, extra=extra)
        trace, module = trace_feeds(g, kv, ctx.rng, layers=1, extra=extra), DraftGraph(ctx.module, ctx.as_exported(draft))
        if ctx.flavour == "onnx":
            layer = GraphJob(spec, module.eval(), trace, ctx.parity(DraftGraph(ctx.reference, draft).eval(), cases,
                                                                    proposal=True),
                             translations=ctx.translations)
        else:  # edgert's attention plugin over the in-place cache, checked against the default flavour's math
            from edgert.exporters.llm import trt_flavour
            from edgert.runtime.llm.contract import cache_decoder_graph

            cached = CacheDraftGraph(module).eval()
            reference = DraftGraph(ctx.reference, draft).eval()
            layer = GraphJob(cache_decoder_graph(spec), cached, trt_flavour.cache_feeds(trace, 12, ctx.rng),
                             lambda path, s: trt_flavour.check_math(cached, reference, spec, s, cases, ctx.tolerance,
                                                                    ctx.rng),
                             translations=ctx.translations, finish=lambda path: trt_flavour.finish_decoder(path, GRAPH))
        cfg = ctx.config
        rope = draft.rope or {"theta": cfg.rope_theta, "scaling": cfg.rope_scaling,
                              "from": "the target's own table (edgert train eagle)"}
        entry = {"graph": GRAPH, "fc_graph": FC_GRAPH, "taps": list(self.taps(cfg)),
                 "draft_vocab": draft.draft_vocab, "rope": rope}
        if draft.draft_vocab != g.vocab_size or bool(draft.d2t.any()):
            entry["d2t"] = [int(v) for v in draft.d2t]
        return [fuse, layer], entry

    def trainee(self, model, options):
        from edgert.exporters.llm.train import Trainee

        from .model import EagleDraft, save_eagle
        from .train import ttt_losses

        draft = EagleDraft(model.cfg)
        # The target's own final norm and lm_head, frozen (a full-vocabulary "shared head"): the
        # layer learns to land in the space they read. Measured on the bench's medium target,
        # 300 steps: held-out top-1 .73-.75 a step, against .70-.72 with a trainable copy.
        draft.lm_head.weight.data.copy_(model.lm_head.weight.data)
        draft.norm.weight.data.copy_(model.model.norm.weight.data)
        draft.lm_head.requires_grad_(False)
        draft.norm.requires_grad_(False)
        steps = options["ttt_steps"]
        return Trainee(draft, ttt_losses(steps, self.taps(model.cfg)), save_eagle, "the EAGLE-3 head", lookahead=steps + 1, count=steps)

    def open(self, target, entry):
        from .session import EagleSession

        return EagleSession(target, entry)
