"""The spec tests/native/plugin_host_test.cpp replays: every custom node of the ONNX files a
TensorRT-flavour export wrote, read from the files themselves (op type, plugin_version,
plugin_namespace, attributes with their ONNX types, input and output types and shapes, which
output aliases which input), the values the dynamic dims take, and field sets a creator must
refuse. One line per fact; see the harness for the grammar."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import AttributeProto, TensorProto

# min / opt / max of each dynamic dim: the profile the host test drives the plugins with.
SYMBOLS = {"batch": (1, 2, 4), "sequence_length": (1, 5, 64), "mask_words": (1, 1, 2), "capacity": (256, 256, 256),
           "nodes": (1, 5, 64)}
LOOKUP = ("plugin_version", "plugin_namespace")  # the parser's lookup keys, not plugin fields


def _attribute(a: AttributeProto) -> str:
    kind = AttributeProto.AttributeType.Name(a.type)
    if a.type == AttributeProto.INT:
        values = [str(a.i)]
    elif a.type == AttributeProto.INTS:
        values = [str(v) for v in a.ints]
    elif a.type == AttributeProto.FLOAT:
        values = [repr(a.f)]
    elif a.type == AttributeProto.FLOATS:
        values = [repr(v) for v in a.floats]
    elif a.type == AttributeProto.STRING:
        values = [a.s.decode()]
    else:
        raise ValueError(f"attribute {a.name}: type {kind} has no plugin field")
    return " ".join(["attr", a.name, kind, *values])


def _tensor(kind: str, name: str, value: onnx.ValueInfoProto | None) -> str:
    if value is None:
        raise ValueError(f"{name}: no type or shape in the graph (value_info)")
    t = value.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in t.shape.dim]
    return " ".join([kind, name, TensorProto.DataType.Name(t.elem_type), *dims])


def node_lines(path: Path) -> list[str]:
    """The custom nodes of one ONNX file (those outside the default domain)."""
    graph = onnx.load(str(path)).graph
    values = {v.name: v for v in [*graph.input, *graph.output, *graph.value_info]}
    lines = []
    for node in graph.node:
        if node.domain in ("", "ai.onnx"):
            continue
        attrs = {a.name: a for a in node.attribute}
        version = attrs["plugin_version"].s.decode() if "plugin_version" in attrs else "1"
        namespace = attrs["plugin_namespace"].s.decode() if "plugin_namespace" in attrs else ""
        lines.append(f"node {node.name or '(unnamed)'} {node.op_type} {version} {namespace or '-'}")
        lines += [_attribute(a) for a in node.attribute if a.name not in LOOKUP]
        lines += [_tensor("input", name, values.get(name)) for name in node.input]
        lines += [_tensor("output", name, values.get(name)) for name in node.output]
        for j, name in enumerate(node.output):  # the caches: present.X is past_key_values.X, in place
            if name.startswith("present.") and f"past_key_values.{name[8:]}" in node.input:
                lines.append(f"alias {j} {list(node.input).index(f'past_key_values.{name[8:]}')}")
        lines.append("end")
    return lines


# (op, words the one logged error must hold, fields as "NAME KIND VALUES")
REJECTS = [
    ("EdgertAttention", "head_dim 96; the kernels are built for 64 and 128",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim INT 96", "mask_type STRING tree"]),
    ("EdgertAttention", "mask_type 'sliding', expected 'causal' or 'tree'",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim INT 64", "mask_type STRING sliding"]),
    ("EdgertAttention", "missing field 'num_kv_heads'", ["num_q_heads INT 8", "head_dim INT 64"]),
    ("EdgertAttention", "missing field 'num_q_heads'", []),
    ("EdgertAttention", "field 'head_dim' is kFLOAT32 (an ONNX FLOAT), expected kINT32",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim FLOAT 64.0"]),
    ("EdgertAttention", "field 'head_dim' has 2 values, expected 1",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim INTS 64 64"]),
    ("EdgertAttention", "num_q_heads 6 and num_kv_heads 4 must be >= 1 and group",
     ["num_q_heads INT 6", "num_kv_heads INT 4", "head_dim INT 64"]),
    ("EdgertAttention", "unknown field 'window'",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim INT 64", "window INT 128"]),
    ("EdgertAttention", "field 'head_dim' given twice",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim INT 64", "head_dim INT 128"]),
    ("EdgertAttention", "scale -1.000000 must be a finite number > 0",
     ["num_q_heads INT 8", "num_kv_heads INT 2", "head_dim INT 64", "scale FLOAT -1.0"]),
    ("EdgertTreeVerify", "mode 'sample', expected 'greedy' or 'typical'", ["mode STRING sample"]),
    ("EdgertTreeVerify", "temperature 0.000000 must be a finite number > 0", ["mode STRING typical", "temperature FLOAT 0"]),
    ("EdgertTreeVerify", "field 'epsilon' is kCHAR (an ONNX STRING), expected kFLOAT32", ["epsilon STRING 0.09"]),
    ("EdgertKVCompact", "unknown field 'mode'", ["mode STRING greedy"]),
]


def reject_lines() -> list[str]:
    lines = []
    for i, (op, words, fields) in enumerate(REJECTS):
        lines.append(f"reject bad.{i} {op} 1 edgert {words}")
        lines += [f"attr {f}" for f in fields]
        lines.append("end")
    return lines


def write_spec(bundle: Path, out: Path) -> list[str]:
    """Write the spec for every ONNX file of ``bundle``; returns the custom nodes' names."""
    lines = [f"symbol {name} {lo} {opt} {hi}" for name, (lo, opt, hi) in SYMBOLS.items()]
    for path in sorted(bundle.glob("*.onnx")):
        lines.append(f"# {path.name}")
        lines += node_lines(path)
    lines += reject_lines()
    out.write_text("\n".join(lines) + "\n")
    return [line.split()[1] for line in lines if line.startswith("node ")]
