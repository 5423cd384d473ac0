"""A decoder bundle's export as a plan: one :class:`GraphJob` per graph (the decoder, then each
head's graphs), which one runner (:func:`run_plan`) exports, finishes, checks and reports on.

The planner (:func:`edgert.exporters.llm.export.export_decoder`) writes the decoder's job; a
speculative head (``edgert_register_heads``) writes its own from an :class:`ExportContext`,
which carries what every job needs: the checkpoint's config and geometry, the fp32 reference,
the module as exported (an fp16 copy at ``--precision fp16``), the flavour, the random inputs of
the contract (:func:`contract_feeds`, :func:`parity_cases`) and the parity check
(:meth:`ExportContext.parity`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import EdgertError
from edgert.runtime.llm.contract import TOTAL, Geometry, cache_names, in_place
from edgert.runtime.progress import step

from ..graph import export_graph
from ..parity import cpu_session, output_error, require_parity
from .gqa import fuse_file

Check = Callable[[Path, GraphSpec], dict]


@dataclass
class GraphJob:
    """One graph of the bundle: the module exported, its tracing inputs and onnxscript
    translations, the parity check of the written file, and optional post-steps."""

    spec: GraphSpec
    module: Any                      # torch.nn.Module, exported as it is
    trace: dict[str, np.ndarray]     # tracing inputs, by the spec's input names
    check: Check                     # (file, spec) -> parity report with 'passed'
    translations: dict = field(default_factory=dict)
    finish: Callable[[Path], None] | None = None  # rewrites the exported file (e.g. the TensorRT flavour's)


def contract_feeds(geometry: Geometry, batch: int, new: int, past: int, mask: np.ndarray, kv_dtype, rng,
                   layers: int | None = None, extra: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs of the decoder contract: ``new`` tokens over ``past`` cached positions
    with ``mask``; ``layers`` caches (default all); ``extra``: name -> width of extra float inputs."""
    g = geometry
    feeds = {"input_ids": rng.integers(0, g.vocab_size, (batch, new)).astype(np.int64),
             "position_ids": np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64).copy(),
             "attention_mask": np.broadcast_to(mask, (batch, new, past + new)).copy(),
             "logit_positions": np.broadcast_to(np.arange(new), (batch, new)).astype(np.int64).copy()}
    for name, width in (extra or {}).items():
        feeds[name] = rng.standard_normal((batch, new, width)).astype(np.float32)
    for name in cache_names(g.num_layers if layers is None else layers):
        feeds[name] = rng.standard_normal((batch, g.num_kv_heads, past, g.head_dim)).astype(kv_dtype)
    return feeds


def parity_cases(geometry: Geometry, kv_dtype, rng, layers: int | None = None,
                 extra: dict[str, int] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """What the runtime does: a causal prefill over an empty cache, and a 4-token tree over 6
    cached positions (nodes 1 and 2 both children of node 0, node 3 a child of node 2)."""
    causal = np.tril(np.ones((7, 7), bool))
    parents = [-1, 0, 0, 2]
    tree = np.zeros((4, 4), bool)
    for node, parent in enumerate(parents):
        tree[node, node] = True
        while parent >= 0:
            tree[node, parent], parent = True, parents[parent]
    tree = np.concatenate([np.ones((4, 6), bool), tree], axis=1)
    return {"prefill": contract_feeds(geometry, 1, 7, 0, causal, kv_dtype, rng, layers, extra),
            "tree": contract_feeds(geometry, 2, 4, 6, tree, kv_dtype, rng, layers, extra)}


def trace_feeds(geometry: Geometry, kv_dtype, rng, layers: int | None = None,
                extra: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Tracing inputs: distinct sizes (batch 2, 4 new over 5 cached, 3 logits), so that the
    exporter cannot tie two dynamic dims together."""
    feeds = contract_feeds(geometry, 2, 4, 5, np.tril(np.ones((4, 9), bool), k=5), kv_dtype, rng, layers, extra)
    feeds["logit_positions"] = feeds["logit_positions"][:, :3].copy()
    return feeds


def _torch_inputs(feeds: dict[str, np.ndarray], spec: GraphSpec) -> list:
    import torch

    return [torch.from_numpy(feeds[t.name]).float() if feeds[t.name].dtype == np.float16 else torch.from_numpy(feeds[t.name])
            for t in spec.inputs]


def in_place_feeds(feeds: dict[str, np.ndarray], slack: int = 3) -> dict[str, np.ndarray]:
    """A case's dense past as an in-place graph takes it: buffers ``slack`` positions longer
    than past + new, the past at their start and NaN after it, so that a graph which read beyond
    what it was told fails the check."""
    batch, new = feeds["input_ids"].shape
    out = dict(feeds)
    for name, past in feeds.items():
        if name.startswith("past_key_values."):
            b, heads, length, dim = past.shape
            buffer = np.full((b, heads, length + new + slack, dim), np.nan, past.dtype)
            buffer[:, :, :length] = past
            out[name] = buffer
    return out


def run_case(session, names: list[str], feeds: dict[str, np.ndarray], spec: GraphSpec) -> list[np.ndarray]:
    """``names`` of one case's run on ONNX Runtime. An in-place graph is fed its past as
    :func:`in_place_feeds` does, one row at a time (GroupQueryAttention takes several new tokens
    over a past only at batch 1), and its present is cut to the span written."""
    if not in_place(spec):
        return session.run(names, feeds)
    rows = [session.run(names, in_place_feeds({k: v[b:b + 1] for k, v in feeds.items()}))
            for b in range(feeds["input_ids"].shape[0])]
    total = feeds["attention_mask"].shape[2]
    return [np.concatenate(values)[:, :, :total] if name.startswith("present.") else np.concatenate(values)
            for name, values in zip(names, zip(*rows))]


def check_parity(path: Path, reference, spec: GraphSpec, cases: dict, tolerance: float) -> dict[str, Any]:
    """ONNX Runtime against the fp32 PyTorch module on every case; the worst error per output."""
    import onnxruntime as ort
    import torch

    session = cpu_session(path)
    names = [t.name for t in spec.outputs]
    outputs: dict[str, dict[str, Any]] = {}
    for case, feeds in cases.items():
        with torch.inference_mode():
            expected = reference(*_torch_inputs(feeds, spec))
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        for name, got, ref in zip(names, run_case(session, names, feeds, spec), expected):
            ref, got = ref.float().numpy(), got.astype(np.float32)
            if ref.shape != got.shape:
                raise EdgertError(f"parity ({case}): output {name!r} has shape {list(got.shape)} in ONNX, "
                                  f"{list(ref.shape)} in PyTorch")
            row = {**output_error(ref, got, tolerance), "case": case}
            if name not in outputs or row["max_rel"] > outputs[name]["max_rel"] or not row["finite"]:
                outputs[name] = row
    return {"reference": "pytorch eager, fp32", "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "metric": "max_rel = max|onnx - torch| / max|torch| per output, worst over the cases",
            "tolerance": tolerance, "cases": {c: {k: list(v.shape) for k, v in f.items() if not k.startswith("past_")}
                                              for c, f in cases.items()},
            "outputs": outputs, "passed": all(r["passed"] for r in outputs.values())}


def quantize_proposals(path: Path, reference, spec: GraphSpec, cases: dict) -> dict[str, Any]:
    """int8 weights for a graph that only proposes tokens (Medusa heads, an MTP module): ONNX
    Runtime's dynamic quantization of its MatMuls, in place, after the fp32 parity check. The
    target verifies every proposal, so this trades a little acceptance for a quarter of the
    bytes read per step; the report says how often the int8 top-1 matches PyTorch's."""
    import logging

    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_name(path.stem + ".int8.onnx")
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its "consider pre-processing" advice is not for users
    try:
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    tmp.replace(path)
    session = cpu_session(path)
    name = spec.outputs[0].name  # logits, or medusa_logits
    agree = []
    for feeds in cases.values():
        with torch.inference_mode():
            want = reference(*_torch_inputs(feeds, spec))
        want = (want if isinstance(want, torch.Tensor) else want[0]).float().numpy()
        (got,) = run_case(session, [name], feeds, spec)
        agree.append(got.argmax(-1) == want.argmax(-1))
    return {"weights": "int8 (dynamic quantization of MatMul/Gemm, onnxruntime.quantization)",
            "top1_agreement_with_pytorch": float(np.mean(np.concatenate([a.ravel() for a in agree])))}


@dataclass
class ExportContext:
    """What a graph job is planned from (see the module docstring)."""

    name: str                    # the decoder family, for messages
    directory: Path              # the checkpoint directory
    config: Any                  # the family's model config (DecoderConfig for llama)
    geometry: Geometry
    reference: Any               # the fp32 decoder module: the parity reference
    module: Any                  # the decoder as exported (an fp16 copy at --precision fp16)
    flavour: str                 # "onnx" or "trt"
    precision: str
    kv_dtype: str                # "float32" or "float16"
    tolerance: float
    rng: np.random.Generator
    translations: dict = field(default_factory=dict)  # the flavour's onnxscript translations (attention, RoPE)
    proposals: str = "fp32"      # --opt proposals: fp32 or int8 weights for graphs that only propose
    quantized: bool = False      # --precision int8 / int4: every graph is quantized after export
    in_place: bool = False       # --opt kv_cache=in_place: the onnx flavour's caches are updated in place

    @property
    def dtype(self):
        """The torch dtype of the exported module (what a head's copy is cast to)."""
        return next(self.module.parameters()).dtype

    def as_exported(self, module):
        """A copy of ``module`` in the exported dtype, in eval mode (the original stays fp32)."""
        from .llama import exported_copy

        return exported_copy(module, self.dtype)

    def parity(self, reference, cases: dict, proposal: bool = False) -> Check:
        """The check of a job: ONNX Runtime against ``reference`` (fp32) on ``cases``; for a
        proposal graph at ``--opt proposals=int8`` (and an fp32/fp16 bundle) the file is then
        quantized to int8 and its top-1 agreement recorded."""
        def check(path: Path, spec: GraphSpec) -> dict:
            report = check_parity(path, reference, spec, cases, self.tolerance)
            if proposal and self.proposals == "int8" and report["passed"] and not self.quantized:
                report["quantized"] = quantize_proposals(path, reference, spec, cases)
            return report
        return check


def run_plan(jobs: list[GraphJob], stage: Path, model: str, tolerance: float, opset: int = 23) -> tuple[dict, int]:
    """Export, finish and check every job into ``stage``; the parity reports by graph and the
    opset. The first failed check raises one line naming the graph and output."""
    reports, used = {}, opset
    for job in jobs:
        spec = job.spec
        with step(f"exporting graph {spec.name!r} to {spec.file} (torch.onnx, dynamo, opset {opset})"):
            used = export_graph(job.module.eval(), spec, job.trace, stage / spec.file, job.translations, opset=opset,
                                derived=(TOTAL,))
            if job.finish is not None:
                job.finish(stage / spec.file)
            if in_place(spec):  # RoPE into the attention node; the parity check below runs the fused graph
                fuse_file(stage / spec.file)
        with step(f"checking parity of {spec.file} against PyTorch"):
            report = job.check(stage / spec.file, spec)
        require_parity(report, model, spec.name, tolerance)
        reports[spec.name] = report
    return reports, used
