"""Parity: the exported graph on ONNX Runtime against the PyTorch model, same inputs.

Metric, per output: ``max_abs = max |onnx - torch|`` and ``max_rel = max_abs / max |torch|``
(error relative to the output's scale). Polygraphy's comparator checks element-wise
``|a - b| <= atol + rtol * |b|``, which is the right test for activations but flags logits near
zero; the scale-relative error is what tells whether a ranking can change, so it is computed
here directly (numpy, a few lines) and both numbers are recorded in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import EdgertError

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def torch_outputs(module, graph: GraphSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import torch

    with torch.inference_mode():
        result = module(*[torch.from_numpy(feeds[t.name]) for t in graph.inputs])
    if isinstance(result, torch.Tensor):
        result = (result,)
    if len(result) != len(graph.outputs):
        raise EdgertError(f"graph {graph.name!r}: model returned {len(result)} outputs, spec declares {len(graph.outputs)}")
    return {spec.name: value.detach().float().numpy() for spec, value in zip(graph.outputs, result)}


def output_error(ref: np.ndarray, got: np.ndarray, tolerance: float) -> dict[str, Any]:
    """The parity metric of one output: max_abs, max_rel (relative to the reference's scale),
    whether ONNX gave finite values, and whether it passed."""
    got = got.astype(np.float32)
    finite = bool(np.isfinite(got).all())
    max_abs = float(np.abs(got - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    return {"max_abs": max_abs, "max_rel": max_rel, "scale": scale, "finite": finite,
            "passed": finite and max_rel <= tolerance}


def cpu_session(model: Path | bytes):
    """ONNX Runtime on the CPU, as every export-time check runs a graph (parity, accuracy)."""
    import onnxruntime as ort

    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])


def require_parity(report: dict[str, Any], model: str, graph: str, tolerance: float) -> None:
    """Raise the one line that names the worst output when a parity ``report`` failed."""
    if report["passed"]:
        return
    name, worst = max(report["outputs"].items(), key=lambda kv: kv[1]["max_rel"])
    case = f" ({worst['case']})" if "case" in worst else ""
    raise EdgertError(f"parity check failed for {model}, graph {graph!r}, output {name!r}{case}: max relative error "
                      f"{worst['max_rel']:.3g} > tolerance {tolerance:g}{'' if worst['finite'] else ' (non-finite values)'}"
                      "; no bundle was written")


def compare(onnx_path: Path, module, graph: GraphSpec, feeds: dict[str, np.ndarray], tolerance: float) -> dict[str, Any]:
    """Run both and return the parity report; ``report['passed']`` says whether it held."""
    import onnxruntime as ort

    reference = torch_outputs(module, graph, feeds)
    session = cpu_session(onnx_path)
    names = [t.name for t in graph.outputs]
    actual = dict(zip(names, session.run(names, feeds)))
    outputs = {}
    for name in names:
        ref, got = reference[name], actual[name]
        if ref.shape != got.shape:
            raise EdgertError(f"parity: output {name!r} has shape {list(got.shape)} in ONNX, {list(ref.shape)} in PyTorch")
        outputs[name] = output_error(ref, got, tolerance)
    passed = all(row["passed"] for row in outputs.values())
    return {
        "reference": "pytorch eager, fp32",
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "metric": "max_rel = max|onnx - torch| / max|torch| per output",
        "tolerance": tolerance,
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "outputs": outputs,
        "passed": passed,
    }
