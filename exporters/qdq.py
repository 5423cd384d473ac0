"""Static int8 for video models: calibrated QDQ graphs (``--precision int8 --calibration DATA``).

The fp32 graph, parity-checked and written into the staging bundle, is loaded with the runtime
(:func:`edgert.runtime.model.load`) and every calibration clip goes through the plugin's own
run-time path (``prepare``, or ``iter_steps`` + ``prepare_step`` with the state carried for a
streaming graph), so calibration sees exactly what inference will. ONNX Runtime's
``quantize_static`` then writes QuantizeLinear / DequantizeLinear pairs (QDQ format) with
per-channel int8 weights:

* the ``onnx`` flavour takes uint8 activations with zero points (U8S8, ONNX Runtime's choice
  on x86 CPUs), which ONNX Runtime fuses into QLinearConv / QLinearAdd / ...;
* the ``trt`` flavour is TensorRT's explicit quantization: int8 activations and weights, both
  symmetric (zero point 0), which is what TensorRT requires of Q/DQ nodes.

Kept float: every ReduceMean (the backbone's global average pool and the segmental consensus)
and any Softmax: averages and normalisations are cheap, int8 buys nothing there, and the averaged
scores are what a user reads; ``--quant keep_float=...`` adds more. TSM's shift (channel slices
and concatenations) is quantized: keeping it float changed neither agreement nor probability
difference of a trained TSM (docs/precision.md), since Q/DQ around a slice carry one scale. A streaming graph's state is float at the graph's boundary, as before.

Accuracy is measured on held-out items of DATA that calibration never saw: top-1 agreement with
the fp32 graph and the largest difference of a softmax probability (for a feature extractor the
cosine similarity of the features); the export fails below ``min_agreement`` and leaves no bundle.
Agreement is enforced on the inputs the fp32 graph decides clearly (top two probabilities at least
``near_tie`` apart): a tie flips on any rounding; both figures are recorded.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import EdgertError, InputError
from edgert.runtime.progress import step
from edgert.runtime.usage import usage_of
from edgert.runtime.video import IMAGE_EXTENSIONS

from .precision import agreement, calibration_digest, split_holdout

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
ALWAYS_FLOAT = ("ReduceMean", "Softmax")


def calibration_sources(data: str | os.PathLike) -> tuple[Path, list[Path], list[Path]]:
    """``(root, sources, files)``: the clips in the folder ``data`` (videos, frame folders,
    .npy files; hidden entries skipped) and every file they are made of, for the digest."""
    root = Path(data)
    if not root.is_dir():
        raise EdgertError(f"--calibration {root}: not a folder; it takes a folder of clips (videos, frame folders, .npy)")
    sources = sorted(p for p in root.iterdir() if not p.name.startswith(".")
                     and (p.is_dir() or p.suffix.lower() in VIDEO_EXTENSIONS | {".npy"}))
    if not sources:
        raise EdgertError(f"--calibration {root}: holds no clips (videos {', '.join(sorted(VIDEO_EXTENSIONS))}, "
                          "frame folders or .npy files)")
    files = []
    for source in sources:
        files += sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if source.is_dir() else [source]
    for path in files:  # a FIFO or a device would block the digest, or the decoder, for ever
        if not path.is_file():
            raise EdgertError(f"--calibration {path}: not a regular file; calibration reads files and frame folders only")
    return root, sources, files


def model_inputs(model, source: Path, graph: GraphSpec | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The inputs the runtime makes of ``source`` for ``graph`` (default: the main one): one per
    clip, one per step of a streaming graph (with the state the fp32 graph carries to that step),
    or the whole source for a graph beside the main one (an online detector's offline twin,
    ``prepare_graph``)."""
    spec = graph or model.graph()
    try:
        if not spec.state:
            if spec.name == model.graph().name:
                yield model.plugin.prepare(model.bundle, str(source))
            else:
                yield model.plugin.prepare_graph(model.bundle, spec.name, str(source))
            return
        session = model.stream(graph=spec.name, window=1)
        for item in model.plugin.iter_steps(model.bundle, str(source)):
            feeds = model.plugin.prepare_step(model.bundle, item)
            yield {**feeds, **session.state}
            session.step(feeds)
    except (InputError, EdgertError) as err:
        raise EdgertError(f"--calibration: {err}") from None


def _batches(inputs: list[dict[str, np.ndarray]], size: int) -> list[dict[str, np.ndarray]]:
    """Whole batches of ``size`` along the batch axis (a last partial one is dropped: every
    run then has the shape the first one had)."""
    return [{k: np.concatenate([f[k] for f in inputs[i:i + size]]) for k in inputs[0]}
            for i in range(0, len(inputs) - size + 1, size)]


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over prepared batches."""

    def __init__(self, batches):
        self._it = iter(batches)

    def get_next(self):
        return next(self._it, None)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def compare(fp32, int8, sources: list[Path], output: str, near_tie: float, graph: GraphSpec) -> dict[str, Any]:
    """Both graphs on every held-out source, the way the runtime runs them (a streaming graph
    each with its own state, as deployed). Outputs with a frames axis (an offline twin's) count
    each frame as one item."""
    pairs = []
    for source in sources:
        if graph.state:
            a, b = fp32.stream(graph=graph.name, window=1), int8.stream(graph=graph.name, window=1)
            for feeds in model_inputs(fp32, source, graph):
                step_feeds = {k: v for k, v in feeds.items() if k not in a.state}
                pairs.append((a.step(step_feeds)[output], b.step(step_feeds)[output]))
        else:
            for feeds in model_inputs(fp32, source, graph):
                pairs.append((fp32.run(feeds, graph.name)[output], int8.run(feeds, graph.name)[output]))
    want = np.concatenate([p[0].reshape(-1, p[0].shape[-1]) for p in pairs]).astype(np.float64)
    got = np.concatenate([p[1].reshape(-1, p[1].shape[-1]) for p in pairs]).astype(np.float64)
    report: dict[str, Any] = {"held_out_items": len(sources), "compared": int(len(want))}
    if output == "features":
        cosine = (want * got).sum(-1) / np.maximum(np.linalg.norm(want, axis=-1) * np.linalg.norm(got, axis=-1), 1e-30)
        report["min_cosine_similarity"] = float(cosine.min())
    else:
        report.update(agreement(want, got.argmax(-1), near_tie))
        report["max_probability_difference"] = float(np.abs(_softmax(want) - _softmax(got)).max())
    return report


def quantize_graph(stage: Path, graph: GraphSpec, knobs: dict[str, Any], data: str, backend: str,
                   fp32) -> dict[str, Any]:
    """Replace ``stage/graph.file`` by its calibrated int8 QDQ graph; returns the manifest's
    ``quantization`` record. Raises (no file replaced) when the held-out accuracy is short.
    ``fp32``: the stage's fp32 bundle (:func:`edgert.runtime.model.load`), opened once for all
    its graphs: once the first graph is replaced, the stage no longer matches its fp32 manifest."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from edgert.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgert.runtime.model import Model

    twin = not graph.state and graph.name != fp32.graph().name  # a whole stream per run
    unit = usage_of(fp32.bundle).unit if graph.state else "stream" if twin else "clip"
    root, sources, files = calibration_sources(data)
    if len(sources) < 2:
        raise EdgertError(f"--calibration {root}: {len(sources)} clip; at least 2 are needed (calibration and a "
                          "held-out accuracy check)")
    calibrate, held_out = split_holdout(sources, knobs["holdout"])
    with step(f"preparing {len(calibrate)} calibration clips from {root} (the runtime's preprocessing)"):
        inputs = [feeds for source in calibrate for feeds in model_inputs(fp32, source, graph)]
    size = 1 if twin else knobs["calibration_batch"]  # streams differ in length: one per run
    if len(inputs) < size:
        raise EdgertError(f"--calibration {root}: {len(inputs)} {unit}{'s' if len(inputs) != 1 else ''} to calibrate "
                          f"on, fewer than calibration_batch={size}")
    trt = backend == "trt"
    keep = set(ALWAYS_FLOAT) | {op.strip() for op in knobs["keep_float"].split(",") if op.strip()}
    quantizable = set(QDQRegistry) | set(QLinearOpsRegistry)
    if getattr(fp32.plugin, "int8_ops", None):  # the plugin's own limit (a streaming kernel's state arithmetic)
        keep |= quantizable - set(fp32.plugin.int8_ops)
    ops = sorted(quantizable - keep)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[knobs["calibration_method"]]
    batches = _batches(inputs, size)
    # Not CalibMaxIntermediateOutputs: onnxruntime 1.32's min-max calibrater drops (rather than
    # folds in) the outputs it holds each time it reaches that count. The calibrater holds every
    # run's activations (a ResNet-50 frame's are ~45 MB), so DATA should be tens of clips.
    extra = {"ActivationSymmetric": trt, "WeightSymmetric": True, "CalibPercentile": knobs["percentile"]}
    path = stage / graph.file
    quantized = path.with_name(path.name + ".int8")
    root_logger = logging.getLogger()
    level, root_logger.level = root_logger.level, logging.ERROR  # its "consider pre-processing" advice is not for users
    scratch = tempfile.TemporaryDirectory(prefix="edgert-int8-")  # the folded copy: never in the bundle
    try:
        source = path
        if not trt:
            # ONNX Runtime's pre-processing folds what is computed from weights alone (a slice of a
            # packed q/k/v projection, a transposed LSTM matrix) into initializers: only those
            # quantize as weights, stored int8; otherwise the graph keeps the fp32 weight and
            # quantizes its copy at every run (a paper-size oad-trn's int8 bundle was 1.8 GB, its
            # fp32 one 1.4 GB). Basic-level folding only (standard ops); the TensorRT flavour's
            # graph goes as exported, its parser folds for itself.
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = Path(scratch.name) / path.name
            with step(f"folding the constant parts of {graph.file} (onnxruntime's quantization pre-processing)"):
                quant_pre_process(str(path), str(source), skip_symbolic_shape=True, save_as_external_data=True,
                                  all_tensors_to_one_file=True, external_data_location=source.name + ".data")
        with step(f"quantizing {graph.file} to int8 QDQ ({knobs['calibration_method']} calibration, "
                  f"{len(inputs)} {unit}s)"):
            quantize_static(str(source), str(quantized), _Reader(batches), quant_format=QuantFormat.QDQ,
                            per_channel=knobs["per_channel"], op_types_to_quantize=ops, calibrate_method=method,
                            activation_type=QuantType.QInt8 if trt else QuantType.QUInt8, weight_type=QuantType.QInt8,
                            extra_options=extra)
    finally:
        root_logger.setLevel(level)
        scratch.cleanup()
    try:
        int8 = Model(fp32.bundle, {graph.name: OnnxRuntimeBackend(quantized)}, fp32.plugin)
        output = next(t.name for t in graph.outputs if t.name not in {o for _, o in graph.state})
        with step(f"checking int8 against fp32 on {len(held_out)} held-out clips"):
            accuracy = compare(fp32, int8, held_out, output, knobs["near_tie"], graph)
        if "top1_agreement" in accuracy:
            accuracy.update(min_agreement=knobs["min_agreement"], near_tie=knobs["near_tie"])
            if not accuracy["decisive"]:
                raise EdgertError(f"int8 accuracy check for {fp32.plugin.name}: the fp32 model decides none of the "
                                  f"{accuracy['compared']} held-out {unit}s clearly (top two within near_tie "
                                  f"{knobs['near_tie']:g}); give clips it recognises; no bundle was written")
            if accuracy["decisive_agreement"] < knobs["min_agreement"]:
                raise EdgertError(
                    f"int8 accuracy check failed for {fp32.plugin.name}: top-1 agreement with fp32 "
                    f"{accuracy['decisive_agreement']:.1%} over {accuracy['decisive']} held-out {unit}s < min_agreement "
                    f"{knobs['min_agreement']:.1%}; no bundle was written (try --quant calibration_method=percentile "
                    "or entropy, more calibration clips, or --quant keep_float=...)")
        else:
            accuracy["min_cosine"] = knobs["min_cosine"]
            if accuracy["min_cosine_similarity"] < knobs["min_cosine"]:
                raise EdgertError(
                    f"int8 accuracy check failed for {fp32.plugin.name}: feature cosine similarity with fp32 "
                    f"{accuracy['min_cosine_similarity']:.4f} < min_cosine {knobs['min_cosine']}; no bundle was written")
        counts = Counter(n.op_type for n in onnx.load(str(quantized)).graph.node)
        os.replace(quantized, path)
    finally:
        quantized.unlink(missing_ok=True)
    return {
        "method": "static QDQ, onnxruntime.quantization.quantize_static",
        "format": "QDQ" + (" (TensorRT explicit quantization)" if trt else ""),
        "weights": f"int8 symmetric, {'per channel' if knobs['per_channel'] else 'per tensor'}",
        "activations": "int8 symmetric, per tensor" if trt else "uint8 with zero point, per tensor",
        "params": {k: knobs[k] for k in ("calibration_method", "per_channel", "calibration_batch", "holdout")}
        | ({"percentile": knobs["percentile"]} if knobs["calibration_method"] == "percentile" else {}),
        "float_ops": sorted(op for op in keep if counts.get(op)),
        "qdq_nodes": {"QuantizeLinear": counts.get("QuantizeLinear", 0), "DequantizeLinear": counts.get("DequantizeLinear", 0)},
        "calibration": {"path": str(root.resolve()), "sha256": calibration_digest(root, files), "items": len(sources),
                        "calibration_items": len(calibrate), "inputs": len(inputs)},
        "accuracy": accuracy,
    }
