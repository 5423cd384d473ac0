"""Graph passes for the in-place decoder graphs (``--opt kv_cache=in_place``), whose attention is
ONNX Runtime's ``GroupQueryAttention`` (:func:`.attention.in_place_attention`): they move work
into that one node, as onnxruntime-genai's own graphs do, because on the CPU a decode step of a
small model pays for every node it runs (docs/benchmarks.md, "Low precision").

* :func:`fuse_rotary`: the two ``RotaryEmbedding`` nodes in front of each attention become its
  ``do_rotary``. GQA looks its tables up by ``position_ids`` in a ``cos_cache``/``sin_cache`` of
  at least ``total_sequence_length`` rows; edgert's tables are per token (B, S, D/2), whatever
  the RoPE variant, so they are flattened to (B·S, D/2) rows, padded with zero rows up to the
  total, and token (b, s) reads row b·S + s. A tree's positions, LongRoPE's switch and Gemma's
  two tables therefore stay what the rotary op computed. Exact: the same kernel rotates. GQA
  rotates only heads of a multiple of 16 dims; other graphs keep their RoPE nodes.
* :func:`pack_qkv`: where one MatMul(NBits) writes q‖k‖v and a Split cuts them for the
  attention (the quantized graphs' merged projections), GQA takes the packed tensor itself.

Both work on the ONNX protobuf in place and return how many attention nodes they changed.
"""

from __future__ import annotations

from pathlib import Path

CONTRIB = "com.microsoft"


def _attention_nodes(model):
    return [n for n in model.graph.node if n.op_type == "GroupQueryAttention" and n.domain == CONTRIB]


def _consumers(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            counts[name] = counts.get(name, 0) + 1
    for value in model.graph.output:
        counts[value.name] = counts.get(value.name, 0) + 1
    return counts


def _plain_rotary(node) -> bool:
    """ONNX RotaryEmbedding over whole heads, halves not pairs, tables given per token."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (node.op_type == "RotaryEmbedding" and node.domain in ("", "ai.onnx") and len(node.input) == 3
            and attrs.get("interleaved", 0) == 0 and attrs.get("rotary_embedding_dim", 0) == 0)


def _tables(model, cos: str, sin: str, total: str, prefix: str) -> tuple[list, tuple[str, str, str]]:
    """Nodes making GQA's cos_cache, sin_cache and position_ids from per-token tables."""
    from onnx import TensorProto, helper

    def const(name, value, dims):
        return helper.make_node("Constant", [], [f"{prefix}.{name}"], name=f"{prefix}.{name}",
                                value=helper.make_tensor(f"{prefix}.{name}", TensorProto.INT64, dims, [value]))

    p = prefix
    nodes = [const("zero", 0, [1]), const("one", 1, [1]), const("start", 0, []), const("step", 1, []),
             helper.make_node("Flatten", [cos], [f"{p}.cos_rows"], name=f"{p}.cos_rows", axis=2),
             helper.make_node("Flatten", [sin], [f"{p}.sin_rows"], name=f"{p}.sin_rows", axis=2),
             helper.make_node("Shape", [f"{p}.cos_rows"], [f"{p}.rows"], name=f"{p}.rows", end=1),
             helper.make_node("Cast", [total], [f"{p}.total64"], name=f"{p}.total64", to=TensorProto.INT64),
             helper.make_node("Reshape", [f"{p}.total64", f"{p}.one"], [f"{p}.total"], name=f"{p}.total"),
             helper.make_node("Sub", [f"{p}.total", f"{p}.rows"], [f"{p}.short"], name=f"{p}.short"),
             helper.make_node("Max", [f"{p}.short", f"{p}.zero"], [f"{p}.missing"], name=f"{p}.missing"),
             helper.make_node("Concat", [f"{p}.zero", f"{p}.zero", f"{p}.missing", f"{p}.zero"], [f"{p}.pads"],
                              name=f"{p}.pads", axis=0),
             helper.make_node("Pad", [f"{p}.cos_rows", f"{p}.pads"], [f"{p}.cos_cache"], name=f"{p}.cos_cache"),
             helper.make_node("Pad", [f"{p}.sin_rows", f"{p}.pads"], [f"{p}.sin_cache"], name=f"{p}.sin_cache"),
             helper.make_node("Squeeze", [f"{p}.rows"], [f"{p}.count"], name=f"{p}.count"),
             helper.make_node("Range", [f"{p}.start", f"{p}.count", f"{p}.step"], [f"{p}.row_ids"], name=f"{p}.row_ids"),
             helper.make_node("Shape", [cos], [f"{p}.tokens"], name=f"{p}.tokens", end=2),
             helper.make_node("Reshape", [f"{p}.row_ids", f"{p}.tokens"], [f"{p}.position_ids"], name=f"{p}.position_ids")]
    return nodes, (f"{p}.cos_cache", f"{p}.sin_cache", f"{p}.position_ids")


def fuse_rotary(model) -> int:
    """Move each attention's q and k RoPE into it (``do_rotary``); see the module docstring."""
    from onnx import helper

    producers = {out: node for node in model.graph.node for out in node.output}
    used = _consumers(model)
    head_dims = {v.name: v.type.tensor_type.shape.dim[3].dim_value for v in model.graph.input
                 if len(v.type.tensor_type.shape.dim) == 4}
    made: dict[tuple[str, str], tuple[str, str, str]] = {}
    fused = 0
    for attention in _attention_nodes(model):
        rq, rk = producers.get(attention.input[0]), producers.get(attention.input[1])
        head_dim = head_dims.get(attention.input[3], 0)
        if (rq is None or rk is None or not _plain_rotary(rq) or not _plain_rotary(rk)
                or not head_dim or head_dim % 16  # GQA's rotary kernel takes multiples of 16
                or list(rq.input[1:]) != list(rk.input[1:]) or used[rq.output[0]] != 1 or used[rk.output[0]] != 1
                or len(attention.input) < 7 or any(attention.input[7:10])):
            continue
        key = (rq.input[1], rq.input[2])
        if key not in made:
            nodes, made[key] = _tables(model, *key, attention.input[6], f"rope_tables.{len(made)}")
            position = list(model.graph.node).index(attention)
            for node in reversed(nodes):
                model.graph.node.insert(position, node)
        inputs = list(attention.input) + [""] * (11 - len(attention.input))
        inputs[0], inputs[1], inputs[7:10] = rq.input[0], rk.input[0], made[key]
        del attention.input[:]
        attention.input.extend(inputs)
        attention.attribute.append(helper.make_attribute("do_rotary", 1))
        model.graph.node.remove(rq)
        model.graph.node.remove(rk)
        fused += 1
    return fused


def pack_qkv(model) -> int:
    """Let each attention read q‖k‖v packed where a Split only cuts them for it."""
    producers = {out: node for node in model.graph.node for out in node.output}
    used = _consumers(model)
    packed = 0
    for attention in _attention_nodes(model):
        split = producers.get(attention.input[0])
        if (split is None or split.op_type != "Split" or list(split.output) != list(attention.input[:3])
                or any(used[name] != 1 for name in split.output)):
            continue
        attention.input[0], attention.input[1], attention.input[2] = split.input[0], "", ""
        model.graph.node.remove(split)
        sizes = split.input[1] if len(split.input) > 1 else ""
        if sizes and used.get(sizes, 0) == 1:
            for init in model.graph.initializer:
                if init.name == sizes:
                    model.graph.initializer.remove(init)
                    break
        packed += 1
    return packed


def fuse_file(path: Path) -> int:
    """:func:`fuse_rotary` on a written graph file; its weights (in the file or beside it) stay
    where they are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fused = fuse_rotary(model)
    if fused:
        onnx.save(model, str(path))
    return fused
