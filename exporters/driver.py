"""The export driver: plugin model -> ONNX -> checks -> parity -> bundle.

For every graph a plugin declares: ``torch.onnx.export(dynamo=True)`` with the plugin's
dynamic dims and its onnxscript ``custom_translation_table`` (custom ops plug in there),
``onnx.checker`` (full check) and shape inference, optional fp16 conversion, then the parity
check against the PyTorch module on ONNX Runtime. Everything is written into a staging
directory that becomes the bundle only when all of it succeeded.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import logging
import platform
import re
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import SCHEMA_VERSION, GraphSpec, sha256_file
from edgert.runtime.staging import staged_bundle, write_manifest
from edgert.runtime.errors import EdgertError
from edgert.runtime.host import get_host
from edgert.runtime.progress import step

from .parity import DEFAULT_TOLERANCE, compare
from .precision import resolve_quantization
from .tensorrt import build_engine, check_available as check_tensorrt

# Symbolic dims get this size in the tracing / parity inputs: 2 rather than 1, because
# torch.export specialises size-1 dims to constants and the parity check should exercise
# a batch > 1 through the dynamic axis.
EXAMPLE_DIM = 2


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import onnx
    import onnxruntime
    import torch

    return {
        "edgert": version("edgert"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": version("onnxscript"),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


# Above this many bytes of weights the ONNX file keeps them in a side file (<graph>.onnx.data):
# protobuf cannot serialise a message over 2 GiB.
EXTERNAL_DATA_BYTES = 1 << 30


def _export_graph(module, graph: GraphSpec, feeds: dict[str, np.ndarray], path: Path, translations: dict,
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
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(root)).strip()
        first = text.splitlines()[0] if text else type(root).__name__
        raise EdgertError(f"torch.onnx.export failed for graph {graph.name!r}: {type(root).__name__}: {first}") from err
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


def _to_fp16(path: Path) -> None:
    """fp16 weights and activations; I/O stay fp32 and normalisation/softmax stay fp32."""
    import onnx
    import onnx_ir
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(path)), keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ["Softmax", "LayerNormalization", "RMSNormalization"],
    )
    # The converter appends the input Casts after their consumers; ONNX requires topological order.
    ir_model = onnx_ir.from_proto(model)
    ir_model.graph.sort()
    onnx.save(onnx_ir.to_proto(ir_model), str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _exportable(registered) -> bool:
    return registered.kind in ("detector", "decoder") and hasattr(registered.obj, "build" if registered.kind == "detector" else "export")


def find_exportable(name: str):
    host = get_host()
    for kind in ("detector", "decoder"):
        registered = host.registry[kind].get(name)
        if registered is not None and _exportable(registered):
            return registered
    exportable = sorted(r.name for r in host.all() if _exportable(r))
    raise EdgertError(f"no exportable model named {name!r} (installed: {', '.join(exportable) or 'none'})")


def _resolve_options(plugin, given: dict[str, str], checkpoint: str | None) -> dict[str, Any]:
    """The plugin's options: the user's, with what the checkpoint fixes filled in; an explicit
    option that contradicts the checkpoint is an error naming both."""
    found = plugin.checkpoint_options(checkpoint) if checkpoint else {}
    stated = plugin.resolve_options(given)
    for key, fixed in found.items():
        if fixed.strict and key in given and stated[key] != fixed.value:
            raise EdgertError(f"--opt {key}={given[key]} contradicts the checkpoint {checkpoint}: {fixed.evidence} "
                              f"({key}={fixed.value})")
    try:
        return plugin.resolve_options({**{k: f.value for k, f in found.items()}, **given})
    except EdgertError as err:
        if not found:
            raise
        fixed = "; ".join(f"{k}={f.value} ({f.evidence})" for k, f in found.items())
        raise EdgertError(f"{err} (from the checkpoint {checkpoint}: {fixed})") from None


def export(name: str, out: str | Path, options: dict[str, str] | None = None, checkpoint: str | None = None,
           precision: str = "fp32", tolerance: float | None = None, force: bool = False, seed: int = 0,
           trt_engine: bool = False, trt_max_batch: int = 8, backend: str = "onnx", calibration: str | None = None,
           quant: dict[str, str] | None = None) -> Path:
    """Export model ``name`` into the bundle directory ``out``; returns its path.

    ``precision``: fp32, fp16, int8 or int4 (decoders), see :mod:`.precision`; ``quant``: its
    ``--quant`` knobs; ``calibration``: the data int8 video models (and GPTQ) calibrate on.
    ``trt_engine``: also build a TensorRT engine per graph (needs the tensorrt package).
    ``backend``: the graph flavour, "onnx" (standard ops) or "trt": for decoders edgert's
    TensorRT plugin ops, for int8 video models TensorRT's explicit (symmetric) quantization."""
    import torch

    registered = find_exportable(name)
    knobs = resolve_quantization(registered.kind, precision, backend, quant or {}, calibration)
    if registered.kind == "decoder":  # LLM decoders: a checkpoint directory, their own graph and checks
        if trt_engine:
            raise EdgertError(f"{name}: --trt-engine is not available for decoder bundles yet; they run on onnxruntime")
        # A third-party family written before the TensorRT flavour or quantization need not know them.
        extra = {} if backend == "onnx" else {"backend": backend}
        if knobs is not None:
            if "quantization" not in inspect.signature(registered.obj.export).parameters:
                raise EdgertError(f"{name}: this decoder family ({registered.plugin.package}) does not quantize; "
                                  "export it with --precision fp32 or fp16")
            extra.update(quantization=knobs, calibration=calibration)
        return registered.obj.export(registered, out, options or {}, checkpoint, precision, tolerance, force, seed,
                                     **extra)
    if backend != "onnx" and precision != "int8":
        raise EdgertError(f"--backend {backend} --precision {precision}: only LLM decoders have a TensorRT-plugin "
                          "flavour; video models export standard ONNX (add --trt-engine to build a TensorRT engine from "
                          "it), and --backend trt --precision int8 writes TensorRT's explicit-quantization QDQ graph")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise EdgertError(f"{checkpoint}: checkpoint file not found")
    if knobs is not None:  # before minutes of export, not after
        from .qdq import calibration_sources

        calibration_sources(calibration)
    if trt_engine:
        check_tensorrt()
    plugin = registered.obj
    opts = _resolve_options(plugin, options or {}, checkpoint)
    # A quantized graph is made from the fp32 one, which is parity-checked as fp32 first.
    tolerance = DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE["fp32"]) if tolerance is None else float(tolerance)

    torch.manual_seed(seed)
    with step(f"building {name} ({', '.join(f'{k}={v}' for k, v in opts.items())})"):
        built = plugin.build(opts, checkpoint)
    graphs = plugin.graphs(opts)
    modules = built if isinstance(built, dict) else {graphs[0].name: built}
    rng = np.random.default_rng(seed)
    parity: dict[str, Any] = {}
    with staged_bundle(out, overwrite=force) as stage:
        opset = 0
        for graph in graphs:
            module = modules[graph.name].eval()
            feeds = plugin.example_inputs(opts, graph, rng, dims=dict.fromkeys(
                [d for t in graph.inputs for d in t.dims if isinstance(d, str)], EXAMPLE_DIM))
            with step(f"exporting graph {graph.name!r} to {graph.file} (torch.onnx, dynamo)"):
                opset = _export_graph(module, graph, feeds, stage / graph.file, plugin.onnx_translations())
            if precision == "fp16":
                with step("converting to fp16"):
                    _to_fp16(stage / graph.file)
            with step(f"checking parity of {graph.file} against PyTorch"):
                report = compare(stage / graph.file, module, graph, feeds, tolerance)
            parity[graph.name] = report
            if not report["passed"]:
                worst = max(report["outputs"].items(), key=lambda kv: kv[1]["max_rel"])
                raise EdgertError(
                    f"parity check failed for {name}, graph {graph.name!r}, output {worst[0]!r}: max relative error "
                    f"{worst[1]['max_rel']:.3g} > tolerance {tolerance:g}{'' if worst[1]['finite'] else ' (non-finite values)'}"
                    f"; no bundle was written"
                )
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": registered.kind,
            "plugin": {"name": plugin.name, "package": registered.plugin.package, "version": registered.plugin.version},
            "model": {
                "name": plugin.name, "paper": plugin.paper, "options": opts, "details": plugin.details(opts), "seed": seed,
                "checkpoint": None if checkpoint is None else
                {"path": str(Path(checkpoint).resolve()), "sha256": sha256_file(Path(checkpoint))},
            },
            "graphs": {g.name: g.to_json() for g in graphs},
            "preprocessing": plugin.preprocessing(opts),
            "labels": plugin.labels(opts),
            "precision": precision,
            "provenance": {
                **_versions(), "opset": opset, "exporter": "torch.onnx.export(dynamo=True)",
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            },
            "parity": {"passed": True, "graphs": parity},
        }
        write_manifest(stage, manifest)
        if knobs is not None:  # the fp32 bundle in the stage is what calibration runs
            from .qdq import quantize_graph

            manifest["quantization"] = {graph.name: quantize_graph(stage, graph, knobs, calibration, backend)
                                        for graph in graphs}
        if trt_engine:
            for i, graph in enumerate(graphs):
                engine = graph.file.rsplit(".", 1)[0] + ".plan"
                with step(f"building TensorRT engine {engine}"):
                    build_engine(stage / graph.file, graph, stage / engine, precision == "fp16", trt_max_batch)
                graphs[i] = replace(graph, engine=engine)
            manifest["graphs"] = {g.name: g.to_json() for g in graphs}
        if knobs is not None or trt_engine:
            write_manifest(stage, manifest)
    return Path(out)

