"""Parity: the exported graph on ONNX Runtime against the PyTorch model, same inputs.

Metric, per output: ``max_abs = max |onnx - torch|`` and ``max_rel = max_abs / max |torch|``
(error relative to the output's scale). Polygraphy's comparator checks element-wise
``|a - b| <= atol + rtol * |b|``, which is the right test for activations but flags logits near
zero; the scale-relative error is what tells whether a ranking can change, so it is computed
here directly (numpy, a few lines) and both numbers are recorded in the manifest.

Reference: the same PyTorch module run in fp64 (the video models; LLM decoders check their own
way, llm/plan.py), which separates fp32 rounding from a real difference. A graph passes when
its ``max_rel`` to the fp64 run is within the tolerance or, at the default tolerance, within
four times PyTorch's own fp32 ``max_rel`` to it (``rounding``) where that is larger; a
``--tolerance`` given holds as given. On a ResNet-50 with large BatchNorm statistics (logits
in the hundreds) fp32 itself is 1.5e-4 from fp64: a faithful graph must not be refused for
noise its reference has too. ``max_rel_fp32``: the distance to PyTorch's fp32 run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import EdgertError

DEFAULT_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def torch_outputs(module, graph: GraphSpec, feeds: dict[str, np.ndarray], wide: bool = False) -> dict[str, np.ndarray]:
    """The module's outputs on ``feeds``, as fp32 arrays; ``wide``: run it in float64 (float inputs
    widened, outputs kept float64). In place, and back to fp32 after (exact): a deep copy would
    break modules that key their blocks by ``id`` (online TSM)."""
    import torch

    if wide and any(t.dtype != torch.float32 for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()):
        raise EdgertError(f"graph {graph.name!r}: the parity reference expects an fp32 module")
    inputs = [feeds[t.name].astype(np.float64) if wide and feeds[t.name].dtype == np.float32 else feeds[t.name]
              for t in graph.inputs]
    try:
        if wide:
            module.double()
        with torch.inference_mode():
            result = module(*[torch.from_numpy(x) for x in inputs])
    finally:
        if wide:
            module.float()
    if isinstance(result, torch.Tensor):
        result = (result,)
    if len(result) != len(graph.outputs):
        raise EdgertError(f"graph {graph.name!r}: model returned {len(result)} outputs, spec declares {len(graph.outputs)}")
    return {spec.name: (value.detach().double() if wide else value.detach().float()).numpy()
            for spec, value in zip(graph.outputs, result)}


# How far past PyTorch's own fp32 rounding an fp32 graph may sit from fp64. Measured on 12
# ill-conditioned TDN-R50s (BatchNorm variances near 0.01; PyTorch fp32 1e-5..5e-2 from fp64):
# ONNX Runtime's distance to fp64 was 0.02-1.8x PyTorch's own.
ROUNDING_FACTOR = 4.0


def _max_rel(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    max_abs = float(np.abs(got.astype(np.float64) - ref).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs), scale


def output_error(ref: np.ndarray, got: np.ndarray, tolerance: float, fp32: np.ndarray | None = None,
                 widen: bool = True) -> dict[str, Any]:
    """The parity metric of one output: max_abs, max_rel (relative to the reference's scale),
    whether ONNX gave finite values, and whether it passed. With ``fp32`` (PyTorch's fp32 run
    when ``ref`` is its fp64 one) the bound widens to four times fp32's own rounding where that is
    larger than ``tolerance``, unless ``widen`` is false (a tolerance the user gave)."""
    got = got.astype(np.float32)
    finite = bool(np.isfinite(got).all())
    max_abs, max_rel, scale = _max_rel(ref, got)
    row = {"max_abs": max_abs, "max_rel": max_rel, "scale": scale, "finite": finite}
    allowed = tolerance
    if fp32 is not None:
        rounding = _max_rel(ref, fp32)[1]
        allowed = max(tolerance, ROUNDING_FACTOR * rounding) if widen else tolerance
        row.update(max_rel_fp32=_max_rel(fp32.astype(np.float64), got)[1], rounding=rounding, allowed=allowed)
    return {**row, "passed": finite and max_rel <= allowed}


def cpu_session(model: Path | bytes):
    """ONNX Runtime on the CPU, as every export-time check runs a graph (parity, accuracy)."""
    import onnxruntime as ort

    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), providers=["CPUExecutionProvider"])


def require_parity(report: dict[str, Any], model: str, graph: str, tolerance: float) -> None:
    """Raise the one line that names the worst output when a parity ``report`` failed."""
    if report["passed"]:
        return
    name, worst = max(report["outputs"].items(), key=lambda kv: (not kv[1]["passed"], kv[1]["max_rel"]))
    case = f" ({worst['case']})" if "case" in worst else ""
    bound = f"tolerance {tolerance:g}"
    if "rounding" in worst:
        bound = (f"{bound} (against PyTorch in fp64, where PyTorch's own fp32 is {worst['rounding']:.3g} off)"
                 if worst["allowed"] == tolerance else
                 f"{worst['allowed']:.3g}, {ROUNDING_FACTOR:g} times PyTorch's own fp32 rounding against fp64 "
                 f"({worst['rounding']:.3g}; tolerance {tolerance:g})")
    raise EdgertError(f"parity check failed for {model}, graph {graph!r}, output {name!r}{case}: max relative error "
                      f"{worst['max_rel']:.3g} > {bound}{'' if worst['finite'] else ' (non-finite values)'}"
                      "; no bundle was written")


def compare(onnx_path: Path, module, graph: GraphSpec, feeds: dict[str, np.ndarray], tolerance: float,
            widen: bool = True) -> dict[str, Any]:
    """Run both and return the parity report; ``report['passed']`` says whether it held.
    ``widen``: false when the user set the tolerance, which then holds as given."""
    import onnxruntime as ort

    reference = torch_outputs(module, graph, feeds)
    exact = torch_outputs(module, graph, feeds, wide=True)
    session = cpu_session(onnx_path)
    names = [t.name for t in graph.outputs]
    actual = dict(zip(names, session.run(names, feeds)))
    outputs = {}
    for name in names:
        ref, got = reference[name], actual[name]
        if ref.shape != got.shape:
            raise EdgertError(f"parity: output {name!r} has shape {list(got.shape)} in ONNX, {list(ref.shape)} in PyTorch")
        outputs[name] = output_error(exact[name], got, tolerance, ref, widen)
    passed = all(row["passed"] for row in outputs.values())
    return {
        "reference": "pytorch eager, the same module in fp64 (fp32's own rounding: each output's 'rounding')",
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "metric": f"max_rel = max|onnx - torch fp64| / max|torch fp64| per output, passing at most max(tolerance, "
                  f"{ROUNDING_FACTOR:g} x rounding); max_rel_fp32: the same against torch fp32",
        "tolerance": tolerance,
        "inputs": {k: list(v.shape) for k, v in feeds.items()},
        "outputs": outputs,
        "passed": passed,
    }
