"""One PyTorch module to one checked ONNX file, for every exporter (video driver, decoders,
heads): ``torch.onnx.export(dynamo=True)`` with the spec's dynamic dims and names and the
caller's onnxscript translations (custom ops plug in there), ``onnx.checker`` (full check) and
strict shape inference; and the fp16 conversion that keeps norms and softmax in fp32.
"""

from __future__ import annotations

import inspect
import logging
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import EdgertError, first_line


# Above this many bytes of weights the ONNX file keeps them in a side file (<graph>.onnx.data):
# protobuf cannot serialise a message over 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 30


def export_graph(module, graph: GraphSpec, feeds: dict[str, np.ndarray], path: Path, translations: dict,
                  opset: int | None = None, derived: tuple[str, ...] = ()) -> int:
    """Export one graph with the dynamo exporter; returns the ONNX opset used.

    ``derived``: symbolic dims that are functions of others (a decoder's total length = past +
    new); torch.export infers them (``Dim.AUTO``) and the spec's name is written on afterwards."""
    import onnx
    import onnx_ir as ir
    import torch

    dims: dict[str, Any] = {}
    dynamic_shapes = []  # positional, like the args: works for any forward signature, *args too
    for spec in graph.inputs:
        axes = {}
        for axis, dim in enumerate(spec.dims):
            if isinstance(dim, str):
                axes[axis] = (torch.export.Dim.AUTO if dim in derived
                              else dims.setdefault(dim, torch.export.Dim(dim.replace(" ", "_"), min=1)))
        dynamic_shapes.append(axes or None)
    args = tuple(torch.from_numpy(feeds[t.name]) for t in graph.inputs)
    # torch.export wants dynamic_shapes shaped like forward's parameters: a *args parameter
    # (e.g. the online TSM's shift buffers) takes one tuple for all the values it collects.
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind is inspect.Parameter.VAR_POSITIONAL), None)
    if star is not None:
        dynamic_shapes = dynamic_shapes[:star] + [tuple(dynamic_shapes[star:])]
    # The exporter logs a line per torchvision op it cannot register (torchvision is not a
    # dependency) and pytree deprecation warnings: noise to a user, not information.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # Two inputs sharing a symbolic dim: the exporter keeps one name and says so; the
            # spec's names are written back below anyway.
            warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis")
            program = torch.onnx.export(
                module, args, dynamo=True, input_names=[t.name for t in graph.inputs],
                output_names=[t.name for t in graph.outputs], dynamic_shapes=tuple(dynamic_shapes),
                custom_translation_table=translations or None, optimize=True, verbose=False, opset_version=opset,
            )
    except Exception as err:
        root = err
        while root.__cause__ is not None:  # torch wraps the real reason in "step 1/3" errors
            root = root.__cause__
        text = re.sub(r"\x1b\[[0-9;]*m", "", first_line(root))
        raise EdgertError(f"torch.onnx.export failed for graph {graph.name!r}: {type(root).__name__}: {text}") from err
    model = program.model
    # Name the symbolic dims as the spec does, on inputs and outputs, so the ONNX file and
    # the manifest tell the same story (the exporter invents names like 's0' or 'batch*8').
    for values, specs in ((model.graph.inputs, graph.inputs), (model.graph.outputs, graph.outputs)):
        by_name = {t.name: t for t in specs}
        for value in values:
            spec = by_name.get(value.name)
            if spec is None:
                raise EdgertError(f"graph {graph.name!r}: exported tensor {value.name!r} is not in the plugin's spec")
            if value.shape is None or len(value.shape) != len(spec.dims):
                raise EdgertError(f"graph {graph.name!r}: {value.name!r} exported with shape {value.shape}, spec says {spec.shape_text()}")
            value.shape = ir.Shape([want if isinstance(want, str) else d for d, want in zip(value.shape, spec.dims)])
    weights = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    program.save(str(path), external_data=weights > EXTERNAL_DATA_BYTES)
    onnx.checker.check_model(str(path), full_check=True)
    onnx.shape_inference.infer_shapes_path(str(path), str(path), check_type=True, strict_mode=True)
    return max(version for domain, version in model.opset_imports.items() if domain in ("", "ai.onnx"))


def to_fp16(path: Path) -> None:
    """fp16 weights and activations; I/O stay fp32 and normalisation/softmax stay fp32."""
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(path)), keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ["Softmax", "LayerNormalization", "RMSNormalization"],
    )
    # Its value_info keeps the element type a tensor had before a blocked op (LayerNormalization)
    # was wrapped in Casts; the checker's inference then disagrees with it. The types are inferred
    # again from the graph itself.
    del model.graph.value_info[:]
    # The converter appends the input Casts after their consumers; ONNX requires topological order.
    ir_model = onnx_ir.from_proto(model)
    ir_model.graph.sort()
    onnx.save(onnx_ir.to_proto(ir_model), str(path))
    onnx.checker.check_model(str(path), full_check=True)


def weights_beside(path: Path, props: dict[str, str] | None = None) -> None:
    """Keep the graph file's weights in ``<file>.data`` beside it, whatever their size, and record
    ``props`` in its own metadata (what the runtime checks a manifest's fields against). The
    runtime hands ONNX Runtime a checked private copy of that file to memory-map, where a graph
    that holds its weights must be parsed from bytes that are copied twice on the way
    (docs/benchmarks.md, "Memory and start-up")."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    if props:
        kept = [p for p in model.metadata_props if p.key not in props]
        del model.metadata_props[:]
        model.metadata_props.extend(kept + [onnx.StringStringEntryProto(key=k, value=v) for k, v in props.items()])
    external = any(uses_external_data(t) for t in model.graph.initializer)
    data = path.with_name(f"{path.name}.data")
    if not external:
        # onnx appends to the file it writes the weights to: one left by an earlier version of this
        # graph (the fp32 export a quantized graph replaced) would stay in the bundle as dead bytes
        data.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=not external, all_tensors_to_one_file=True,
              location=f"{path.name}.data", size_threshold=1024)
    if data.is_file():  # onnx writes it owner-only; the bundle's files are read by whoever may read the bundle
        data.chmod(path.stat().st_mode & 0o777)
