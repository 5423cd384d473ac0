"""The TensorRT flavour of a decoder bundle (``edgert export llama ... --flavour trt``): the same
weights and math, with edgert's TensorRT plugins (trt_plugins/) in place of ONNX Attention and
the verification subgraphs.

* ``decoder.onnx``: one ``EdgertAttention`` node per layer (domain ``edgert``, attributes
  ``plugin_version`` "1" and ``plugin_namespace`` "edgert", which TensorRT's ONNX parser uses to
  find the plugin by op type) over a **fixed-capacity, in-place** KV cache:
  inputs ``input_ids``, ``position_ids`` [batch, seq] int64, ``past_lengths`` [batch] int32,
  ``tree_mask`` [seq, ceil(seq/32)] int32 (runtime/llm/tree.py's packed layout; a chain for
  prefill), ``logit_positions``, ``past_key_values.{i}.key/value`` [batch, kv_heads, capacity,
  head_dim]; outputs ``logits``, ``hidden_states``, ``present.{i}.key/value`` — the same buffers
  (the plugin aliases them), with the new tokens written at ``past_lengths``.
  Every plugin node is named (``layers.{i}.attention``: TensorRT names the layer and reports
  errors by it). RMSNorm is written as primitive ops (Cast, Mul, ReduceMean, Add, Sqrt,
  Reciprocal, statistics in fp32), not the opset-23 ``RMSNormalization`` the dynamo exporter
  fuses it into: TensorRT's ONNX parser imports that op only from 10.15, and the plugins run
  from 10.3, the TensorRT of JetPack 6 on Orin (Thor's JetPack 7 ships 10.13); TensorRT fuses
  the primitive pattern into its normalization kernel itself.
* ``verify_trt_{greedy,typical}.onnx``: one ``EdgertTreeVerify`` node (tokens, parents, logits,
  uniform -> path, length, bonus) with all four fields (mode, temperature, epsilon, delta; the
  greedy file writes the defaults, which it ignores) so the parser never relies on a default.
* ``kv_compact_trt.onnx``: one ``EdgertKVCompact`` per cache tensor (path, length, past_lengths).

The ops' schemas are registered with onnx (:func:`register_schemas`) so ``onnx.checker`` checks
these files like any other. ONNX Runtime cannot run them; the PyTorch side defines the math
(``edgert::cache_attention``, tested equal to the default flavour's module).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgert.runtime.errors import EdgertError

from .attention import attention_heads, heads, merge_heads

DOMAIN = "edgert"
PLUGIN = {"plugin_version": "1", "plugin_namespace": "edgert"}
KV_TYPES = ["tensor(float16)", "tensor(bfloat16)", "tensor(float)"]


def register_schemas() -> None:
    """The three plugins' ONNX schemas (domain ``edgert``, version 1); idempotent."""
    from onnx import defs

    if defs.has("EdgertAttention", DOMAIN):
        return
    P, A, S = defs.OpSchema.FormalParameter, defs.OpSchema.Attribute, defs.OpSchema.AttrType.STRING
    F = defs.OpSchema.AttrType.FLOAT

    def optional(name, kind, doc):
        return A(name, kind, doc, required=False)

    Opt = defs.OpSchema.FormalParameterOption.Optional
    common = [A("plugin_version", S, "TensorRT plugin version ('1')"),
              A("plugin_namespace", S, "TensorRT plugin namespace ('edgert')")]
    i32 = "tensor(int32)"
    schemas = [
        defs.OpSchema(
            "EdgertAttention", DOMAIN, 1,
            doc="Fused attention over an in-place KV cache (trt_plugins/attention).",
            inputs=[P("q", "T"), P("k", "T"), P("v", "T"), P("k_cache", "T"), P("v_cache", "T"),
                    P("past_lengths", i32), P("tree_mask", i32, param_option=Opt)],
            outputs=[P("out", "T"), P("k_cache_out", "T"), P("v_cache_out", "T")],
            type_constraints=[("T", KV_TYPES[:2] + ["tensor(float)"], "q, k, v and the caches")],
            attributes=common + [A("num_q_heads", defs.OpSchema.AttrType.INT, ""),
                                 A("num_kv_heads", defs.OpSchema.AttrType.INT, ""),
                                 A("head_dim", defs.OpSchema.AttrType.INT, ""),
                                 optional("scale", F, "softmax scale (default 1/sqrt(head_dim))"),
                                 optional("mask_type", S, "'causal' (default) or 'tree'")]),
        defs.OpSchema(
            "EdgertTreeVerify", DOMAIN, 1,
            doc="Tree verification, greedy or typical acceptance (trt_plugins/tree_verify).",
            inputs=[P("tokens", i32), P("parents", i32), P("logits", "T"), P("uniform", "tensor(float)")],
            outputs=[P("path", i32), P("length", i32), P("bonus", i32)],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "logits")],
            attributes=common + [optional("mode", S, "'greedy' (default) or 'typical'"),
                                 optional("temperature", F, "typical: logits / temperature (default 1)"),
                                 optional("epsilon", F, "typical: Medusa's epsilon (default 0.09)"),
                                 optional("delta", F, "typical: Medusa's delta (default 0.3)")]),
        defs.OpSchema(
            "EdgertKVCompact", DOMAIN, 1,
            doc="In-place KV compaction after a verify (trt_plugins/kv_compact).",
            inputs=[P("cache", "T"), P("path", i32), P("length", i32), P("past_lengths", i32)],
            outputs=[P("cache_out", "T")],
            type_constraints=[("T", KV_TYPES, "the cache")], attributes=common),
    ]
    for schema in schemas:
        defs.register_schema(schema)


def cache_attention_math(q, k, v, k_cache, v_cache, past_lengths, tree_mask):
    """The plugin's semantics: write k/v at each row's past length, attend over the cache with
    the past visible and the new tokens as the tree mask says."""
    batch, _, new, _ = q.shape
    capacity = k_cache.shape[2]
    k_out, v_out = k_cache.clone(), v_cache.clone()
    position = torch.arange(capacity, device=q.device)
    rel = position[None, :] - past_lengths.long()[:, None]                  # [B, C]: index among the new tokens
    is_new = (rel >= 0) & (rel < new)
    slot = rel.clamp(0, new - 1)
    for part, cache in ((k, k_out), (v, v_out)):  # scatter without a data-dependent loop
        gathered = part.gather(2, slot[:, None, :, None].expand(-1, part.shape[1], -1, part.shape[3]))
        cache.copy_(torch.where(is_new[:, None, :, None], gathered, cache))
    from edgert.runtime.llm.tree import unpack_mask

    visible_new = torch.from_numpy(unpack_mask(tree_mask.cpu().numpy(), new)).to(q.device)  # [T, T]
    mask = (rel[:, None, :] < 0) | (is_new[:, None, :] & visible_new[:, slot].permute(1, 0, 2))
    empty = k_out[:, :, :0]
    y, _, _ = attention_heads(q, k_out, v_out, mask, empty, empty)
    return y, k_out, v_out


@torch.library.custom_op("edgert::cache_attention", mutates_args=())
def cache_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    past_lengths: torch.Tensor, tree_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return cache_attention_math(q, k, v, k_cache, v_cache, past_lengths, tree_mask)


@cache_attention.register_fake
def _(q, k, v, k_cache, v_cache, past_lengths, tree_mask):
    return torch.empty_like(q), torch.empty_like(k_cache), torch.empty_like(v_cache)


def onnx_cache_attention(q, k, v, k_cache, v_cache, past_lengths, tree_mask):
    """onnxscript translation: one EdgertAttention node (the TensorRT plugin)."""
    from onnxscript import values

    register_schemas()
    edgert = values.Opset(DOMAIN, 1)
    q_heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[3]
    return edgert.EdgertAttention(q, k, v, k_cache, v_cache, past_lengths, tree_mask, num_q_heads=q_heads,
                                  num_kv_heads=kv_heads, head_dim=dim, scale=1.0 / math.sqrt(dim), mask_type="tree",
                                  **PLUGIN)


def translations() -> dict:
    from .rotary import primitive_rotary

    return {torch.ops.edgert.cache_attention.default: onnx_cache_attention, torch.ops.edgert.rotary.default: primitive_rotary}


class CacheDecoder(nn.Module):
    """``forward(input_ids, position_ids, past_lengths, tree_mask, logit_positions, *caches)``
    -> ``(logits, hidden_states, *caches)``: the decoder over fixed-capacity caches."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, input_ids, position_ids, past_lengths, tree_mask, logit_positions, *caches):
        return self.decoder.run(input_ids, position_ids, logit_positions, cache_attend(caches, past_lengths, tree_mask))


# --- the bundle's graphs ---------------------------------------------------------------------

def decoder_graph(geometry, kv_dtype: str, taps: tuple[int, ...] = ()):
    """The default flavour's I/O with the mask replaced by past lengths and the packed tree mask,
    and the caches at their fixed capacity in and out (:func:`edgert.runtime.llm.contract.cache_decoder_graph`)."""
    from edgert.runtime.llm.contract import cache_decoder_graph, decoder_graph as default_graph, tap_outputs

    return cache_decoder_graph(default_graph(geometry, kv_dtype, extra_outputs=tap_outputs(geometry, taps)))


def cache_feeds(feeds: dict, capacity: int, rng) -> dict:
    """The default flavour's feeds (past ‖ new with a bool mask) as this flavour's: caches of
    ``capacity`` holding the past, per-row past lengths, the new tokens' packed mask; every
    other input (a head graph's extra ones) as it is."""
    import numpy as np

    from edgert.runtime.llm.tree import pack_mask

    batch, new = feeds["input_ids"].shape
    past = feeds["attention_mask"].shape[2] - new
    out = {k: v for k, v in feeds.items() if k != "attention_mask" and not k.startswith("past_key_values.")}
    out["past_lengths"] = np.full(batch, past, np.int32)
    out["tree_mask"] = pack_mask(feeds["attention_mask"][0, :, past:])
    for name, given in feeds.items():
        if name.startswith("past_key_values."):
            cache = rng.standard_normal((batch, given.shape[1], capacity, given.shape[3])).astype(given.dtype)
            cache[:, :, :past] = given
            out[name] = cache
    return out


def check_math(module, reference, default_spec, spec, cases: dict, tolerance: float, rng) -> dict:
    """This flavour's PyTorch module (the plugins' semantics, I/O ``spec``) against the default
    flavour's reference (I/O ``default_spec``) on the same cases: every output, the caches over
    the span written so far."""
    import numpy as np

    from edgert.exporters.parity import output_error

    order, default_order = [t.name for t in spec.inputs], [t.name for t in default_spec.inputs]
    names = [t.name for t in spec.outputs]
    outputs: dict = {}
    for case, feeds in cases.items():
        total = feeds["attention_mask"].shape[2]
        ours = cache_feeds(feeds, total + 3, rng)
        as_torch = lambda a: torch.from_numpy(a).float() if a.dtype == np.float16 else torch.from_numpy(a)  # noqa: E731
        with torch.inference_mode():
            want = reference(*[as_torch(feeds[n]) for n in default_order])
            got = module(*[torch.from_numpy(ours[n]) for n in order])
        for name, g, w in zip(names, got, want):
            g = g[:, :, :total] if name.startswith("present.") else g  # the span written so far
            row = {**output_error(w.float().numpy(), g.float().numpy(), tolerance), "case": case}
            if name not in outputs or row["max_rel"] > outputs[name]["max_rel"] or not row["finite"]:
                outputs[name] = row
    return {"reference": "pytorch eager, default flavour (ONNX Attention contract), fp32",
            "backend": "pytorch eager with edgert::cache_attention, the plugins' semantics; the ONNX file runs only "
                       "on TensorRT with libedgert_trt_plugins.so",
            "metric": "max_rel = max|flavour - reference| / max|reference| per output, worst over the cases",
            "tolerance": tolerance, "outputs": outputs, "passed": all(r["passed"] for r in outputs.values())}


def cache_attend(caches, past_lengths, tree_mask):
    """``attend(i)`` over fixed-capacity caches through the plugin's op: layer i's attention, on
    the layers' 3-D layout (the plugin reads (B, H, S, D) heads)."""
    def attend(i):
        k_cache, v_cache = caches[2 * i], caches[2 * i + 1]
        dim = k_cache.shape[3]

        def run(q, k, v):
            y, k_out, v_out = cache_attention(heads(q, dim), heads(k, dim), heads(v, dim), k_cache, v_cache,
                                              past_lengths, tree_mask)
            return merge_heads(y), k_out, v_out
        return run
    return attend


def finish_decoder(path, prefix: str = "layers") -> None:
    """The TensorRT-flavour decoder (or a head's graph on the same contract) as the parser wants
    it: plugin nodes named ``{prefix}.{i}.attention``, RMSNormalization expanded into primitive
    ops (see the module docstring). Weights stay where they are."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    nodes, layer = [], 0
    for node in graph.node:
        if node.op_type == "EdgertAttention":
            node.name = f"{prefix}.{layer}.attention"
            layer += 1
        if node.op_type != "RMSNormalization":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        x, scale = node.input[0], node.input[1]
        if attrs.get("axis", -1) != -1 or attrs.get("stash_type", 1) != TensorProto.FLOAT or x not in types:
            raise EdgertError(f"{path}: {node.name}: RMSNormalization with {attrs} is not the pattern edgert exports")
        n = node.name or f"rms_norm_{len(nodes)}"
        eps = helper.make_tensor(f"{n}.epsilon", TensorProto.FLOAT, [], [attrs.get("epsilon", 1e-5)])
        axes = helper.make_tensor(f"{n}.axes", TensorProto.INT64, [1], [-1])
        xf = x if types[x] == TensorProto.FLOAT else f"{n}.x_fp32"
        if xf != x:
            nodes.append(helper.make_node("Cast", [x], [xf], name=f"{n}.cast_in", to=TensorProto.FLOAT))
        nodes += [
            helper.make_node("Constant", [], [f"{n}.epsilon"], name=f"{n}.epsilon", value=eps),
            helper.make_node("Constant", [], [f"{n}.axes"], name=f"{n}.axes", value=axes),
            helper.make_node("Mul", [xf, xf], [f"{n}.square"], name=f"{n}.square"),
            helper.make_node("ReduceMean", [f"{n}.square", f"{n}.axes"], [f"{n}.mean"], name=f"{n}.mean", keepdims=1),
            helper.make_node("Add", [f"{n}.mean", f"{n}.epsilon"], [f"{n}.variance"], name=f"{n}.add_epsilon"),
            helper.make_node("Sqrt", [f"{n}.variance"], [f"{n}.rms"], name=f"{n}.sqrt"),
            helper.make_node("Reciprocal", [f"{n}.rms"], [f"{n}.inverse_rms"], name=f"{n}.reciprocal"),
            helper.make_node("Mul", [xf, f"{n}.inverse_rms"], [f"{n}.normalized"], name=f"{n}.normalize"),
        ]
        normalized = f"{n}.normalized"
        if xf != x:
            nodes.append(helper.make_node("Cast", [normalized], [f"{n}.normalized_in_type"], name=f"{n}.cast_out",
                                          to=types[x]))
            normalized = f"{n}.normalized_in_type"
        nodes.append(helper.make_node("Mul", [normalized, scale], list(node.output), name=f"{n}.scale"))
    del graph.node[:]
    graph.node.extend(nodes)
    unnamed = [n.op_type for n in graph.node if n.domain == DOMAIN and not n.name]
    if unnamed:
        raise EdgertError(f"{path}: plugin nodes without a name: {unnamed}")
    register_schemas()
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def write_plugin_graphs(stage, cfg, kv_dtype: str) -> dict:
    """verify_trt_<mode>.onnx (EdgertTreeVerify) and kv_compact_trt.onnx (EdgertKVCompact per
    cache tensor), written with onnx.helper and checked; returns the manifest's entries."""
    import onnx
    from onnx import TensorProto, helper

    register_schemas()
    i32, f32 = TensorProto.INT32, TensorProto.FLOAT
    kv = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}[kv_dtype]
    opsets = [helper.make_opsetid("", 23), helper.make_opsetid(DOMAIN, 1)]

    def save(name, nodes, inputs, outputs):
        graph = helper.make_graph(nodes, name.removesuffix(".onnx"), inputs, outputs)
        model = helper.make_model(graph, opset_imports=opsets, producer_name="edgert")
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(stage / name))
        return name

    files = {}
    for mode in ("greedy", "typical"):  # Medusa's epsilon and delta; greedy ignores them, but carries them
        files[mode] = save(
            f"verify_trt_{mode}.onnx",
            [helper.make_node("EdgertTreeVerify", ["tokens", "parents", "logits", "uniform"], ["path", "length", "bonus"],
                              domain=DOMAIN, name=f"verify.{mode}", mode=mode, temperature=1.0, epsilon=0.09, delta=0.3,
                              **PLUGIN)],
            [helper.make_tensor_value_info("tokens", i32, ["batch", "nodes"]),
             helper.make_tensor_value_info("parents", i32, ["batch", "nodes"]),
             helper.make_tensor_value_info("logits", f32, ["batch", "nodes", cfg.vocab_size]),
             helper.make_tensor_value_info("uniform", f32, ["batch"])],
            [helper.make_tensor_value_info("path", i32, ["batch", "nodes"]),
             helper.make_tensor_value_info("length", i32, ["batch"]),
             helper.make_tensor_value_info("bonus", i32, ["batch"])])
    cache = ["batch", cfg.num_kv_heads, "capacity", cfg.head_dim]
    names = [f"{i}.{p}" for i in range(cfg.num_layers) for p in ("key", "value")]
    files["compact"] = save(
        "kv_compact_trt.onnx",
        [helper.make_node("EdgertKVCompact", [f"past_key_values.{n}", "path", "length", "past_lengths"], [f"present.{n}"],
                          domain=DOMAIN, name=f"compact.{n}", **PLUGIN) for n in names],
        [helper.make_tensor_value_info(f"past_key_values.{n}", kv, cache) for n in names]
        + [helper.make_tensor_value_info("path", i32, ["batch", "nodes"]),
           helper.make_tensor_value_info("length", i32, ["batch"]),
           helper.make_tensor_value_info("past_lengths", i32, ["batch"])],
        [helper.make_tensor_value_info(f"present.{n}", kv, cache) for n in names])
    return files
