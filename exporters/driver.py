"""The export driver: plugin model -> ONNX -> checks -> parity -> bundle.

For every graph a plugin declares: ``torch.onnx.export(dynamo=True)`` with the plugin's
dynamic dims and its onnxscript ``custom_translation_table`` (custom ops plug in there),
``onnx.checker`` (full check) and shape inference, optional fp16 conversion, then the parity
check against the PyTorch module on ONNX Runtime. Everything is written into a staging
directory that becomes the bundle only when all of it succeeded.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import sha256_file
from edgert.runtime.errors import EdgertError
from edgert.runtime.host import get_host
from edgert.runtime.options import resolve_options
from edgert.runtime.progress import step
from edgert.runtime.staging import check_destination, staged_bundle, write_manifest

from .graph import export_graph, to_fp16, weights_beside
from .manifest import bundle_manifest
from .parity import DEFAULT_TOLERANCE, compare, require_parity
from .precision import resolve_quantization
from .tensorrt import build_engine, check_available as check_tensorrt

# Symbolic dims get this size in the tracing / parity inputs: 2 rather than 1, because
# torch.export specialises size-1 dims to constants and the parity check should exercise
# a batch > 1 through the dynamic axis.
EXAMPLE_DIM = 2


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
    # each given value converted on its own: the plugin's checks across options (d_model against
    # heads) wait for the checkpoint's values, or they would judge a given option by a default
    stated = resolve_options(plugin.name, plugin.options, given) if found else plugin.resolve_options(given)
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
           precision: str | None = None, tolerance: float | None = None, force: bool = False, seed: int = 0,
           engine: bool = False, engine_max_batch: int = 8, flavour: str = "onnx", calibration: str | None = None,
           quant: dict[str, str] | None = None, **deprecated) -> Path:
    """Export model ``name`` into the bundle directory ``out``; returns its path.

    ``precision``: fp32, fp16, int8, int4 or stored (decoders), see :mod:`.precision`; by default
    fp32, or stored for a decoder from a GGUF file (its own blocks); ``quant``: its
    ``--quant`` knobs; ``calibration``: the data int8 video models (and GPTQ) calibrate on.
    ``engine``: also build a TensorRT engine per graph (needs the tensorrt package), for batches
    up to ``engine_max_batch``. ``flavour``: the graph flavour, "onnx" (standard ops) or "trt":
    for decoders edgert's TensorRT plugin ops, for int8 video models TensorRT's explicit
    (symmetric) quantization. ``backend``, ``trt_engine``, ``trt_max_batch``: the previous
    release's names of ``flavour``, ``engine`` and ``engine_max_batch`` (deprecated)."""
    import torch

    renamed = {"backend": "flavour", "trt_engine": "engine", "trt_max_batch": "engine_max_batch"}
    if set(deprecated) - set(renamed):
        raise TypeError(f"export() got unexpected keyword arguments {sorted(set(deprecated) - set(renamed))}")
    for old in deprecated:
        warnings.warn(f"export({old}=...) is deprecated, use {renamed[old]}=...", DeprecationWarning, stacklevel=2)
    flavour = deprecated.get("backend", flavour)
    engine = deprecated.get("trt_engine", engine)
    engine_max_batch = deprecated.get("trt_max_batch", engine_max_batch)
    backend = flavour  # the exporters' internal name for it
    registered = find_exportable(name)
    check_destination(out, force)  # before the checkpoint is read: an existing --out needs no work to refuse
    if precision is None:
        from .llm.gguf import is_gguf

        precision = "stored" if registered.kind == "decoder" and is_gguf(checkpoint) else "fp32"
    knobs = resolve_quantization(registered.kind, precision, backend, quant or {}, calibration)
    if registered.kind == "decoder":  # LLM decoders: a checkpoint directory, their own graph and checks
        if engine:
            raise EdgertError(f"{name}: --engine is not available for decoder bundles yet (build the TensorRT flavour's "
                              "engine on the device, trt_plugins/README.md)")
        from .llm.export import ExportRequest

        request = ExportRequest(checkpoint, dict(options or {}), precision, tolerance, force, seed, backend,
                                knobs, calibration if knobs is not None else None)
        return registered.obj.export(registered, Path(out), request)
    if backend != "onnx" and precision != "int8":
        raise EdgertError(f"--flavour {backend} --precision {precision}: only LLM decoders have a TensorRT-plugin "
                          "flavour; video models export standard ONNX (add --engine to build a TensorRT engine from "
                          "it), and --flavour trt --precision int8 writes TensorRT's explicit-quantization QDQ graph")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise EdgertError(f"{checkpoint}: checkpoint file not found")
    if checkpoint is None:
        print(f"edgert: warning: no --checkpoint: {name} gets random weights (seed {seed}), so what it predicts "
              "means nothing; give --checkpoint FILE for a trained model", file=sys.stderr)
    if knobs is not None:  # before minutes of export, not after
        from .qdq import calibration_sources

        calibration_sources(calibration)
    if engine:
        check_tensorrt()
    plugin = registered.obj
    opts = _resolve_options(plugin, options or {}, checkpoint)
    # A quantized graph is made from the fp32 one, which is parity-checked as fp32 first.
    given = tolerance is not None  # held as given; the default widens to fp32's own rounding (parity.py)
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
                opset = export_graph(module, graph, feeds, stage / graph.file, plugin.onnx_translations())
            if precision == "fp16":
                with step("converting to fp16"):
                    to_fp16(stage / graph.file)
            with step(f"checking parity of {graph.file} against PyTorch"):
                report = compare(stage / graph.file, module, graph, feeds, tolerance, widen=not given)
            parity[graph.name] = report
            require_parity(report, name, graph.name, tolerance)
        checkpoint_record = None if checkpoint is None else {"path": str(Path(checkpoint).resolve()),
                                                             "sha256": sha256_file(Path(checkpoint))}
        manifest = bundle_manifest(registered, options=opts, details=plugin.details(opts), seed=seed,
                                   checkpoint=checkpoint_record, graphs=graphs, precision=precision, opset=opset,
                                   parity=parity, preprocessing=plugin.preprocessing(opts), labels=plugin.labels(opts),
                                   training_only=[k for k, o in plugin.options.items() if o.training])
        write_manifest(stage, manifest)
        if knobs is not None:  # the fp32 bundle in the stage is what calibration runs
            from edgert.runtime.model import load

            from .qdq import quantize_graph

            fp32 = load(stage, trusted_keys=[])  # every graph calibrates on the fp32 bundle, as checked
            manifest["quantization"] = {graph.name: quantize_graph(stage, graph, knobs, calibration, backend, fp32)
                                        for graph in graphs}
        if engine:
            for i, graph in enumerate(graphs):
                plan = graph.file.rsplit(".", 1)[0] + ".plan"
                with step(f"building TensorRT engine {plan}"):
                    build_engine(stage / graph.file, graph, stage / plan, precision == "fp16", engine_max_batch)
                graphs[i] = replace(graph, engine=plan)
            manifest["graphs"] = {g.name: g.to_json() for g in graphs}
        for graph in graphs:  # last: calibration and the engine build read the graphs as they were checked
            weights_beside(stage / graph.file)
        write_manifest(stage, manifest)
    return Path(out)

