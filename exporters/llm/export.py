"""Export a Llama-family checkpoint directory into a decoder bundle.

One graph, ``decoder.onnx``, serves prefill, decode and tree verification (see
:class:`~edgert.exporters.llm.llama.LlamaDecoder` for its I/O). Beside it the bundle carries
``tokenizer.json``, the verification op as small ONNX graphs (``verify_<mode>.onnx``, see
:mod:`.verify_graphs`) and, in the manifest's ``decoder`` section, what the runtime needs to drive
the graph without torch: cache geometry and dtype, context length, eos/bos ids, chat template.

Parity is checked on two calls that cover what the runtime does: a prefill (empty cache,
causal mask) and a step over a non-empty cache with a tree-shaped mask.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import SCHEMA_VERSION, GraphSpec, TensorSpec
from edgert.runtime.staging import staged_bundle, write_manifest
from edgert.runtime.errors import EdgertError
from edgert.runtime.llm.tokenizer import check_vocab
from edgert.runtime.progress import step

from ..parity import DEFAULT_TOLERANCE, output_error

GRAPH = "decoder"
TOTAL = "total_sequence_length"
BACKENDS = ("onnx", "trt")


def decoder_graph(cfg, kv_dtype: str) -> GraphSpec:
    """The decoder graph's I/O, names as Optimum and onnxruntime-genai use them."""
    kv = ("batch", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim)
    present = ("batch", cfg.num_kv_heads, TOTAL, cfg.head_dim)
    inputs = [TensorSpec("input_ids", "int64", ("batch", "sequence_length")),
              TensorSpec("position_ids", "int64", ("batch", "sequence_length")),
              TensorSpec("attention_mask", "bool", ("batch", "sequence_length", TOTAL)),
              TensorSpec("logit_positions", "int64", ("batch", "num_logits"))]
    outputs = [TensorSpec("logits", "float32", ("batch", "num_logits", cfg.vocab_size)),
               TensorSpec("hidden_states", "float32", ("batch", "sequence_length", cfg.hidden_size))]
    for i in range(cfg.num_layers):
        for part in ("key", "value"):
            inputs.append(TensorSpec(f"past_key_values.{i}.{part}", kv_dtype, kv))
            outputs.append(TensorSpec(f"present.{i}.{part}", kv_dtype, present))
    return GraphSpec(GRAPH, f"{GRAPH}.onnx", tuple(inputs), tuple(outputs))


def medusa_graph(cfg, heads: int) -> GraphSpec:
    return GraphSpec("medusa", "medusa.onnx", (TensorSpec("hidden_states", "float32", ("batch", "positions", cfg.hidden_size)),),
                     (TensorSpec("medusa_logits", "float32", ("batch", "positions", heads, cfg.vocab_size)),))


def mtp_graph(cfg, kv_dtype: str) -> GraphSpec:
    """The MTP module's graph: the decoder's I/O with one layer, plus the base model's hidden
    states in and the module's own out (the next depth's input)."""
    base = decoder_graph(cfg, kv_dtype)
    inputs = [t for t in base.inputs if not t.name.startswith("past_key_values.") or t.name.startswith("past_key_values.0.")]
    inputs.insert(4, TensorSpec("hidden_states", "float32", ("batch", "sequence_length", cfg.hidden_size)))
    outputs = [base.outputs[0], TensorSpec("mtp_hidden_states", "float32", ("batch", "sequence_length", cfg.hidden_size))]
    outputs += [t for t in base.outputs if t.name.startswith("present.0.")]
    return GraphSpec("mtp", "mtp.onnx", tuple(inputs), tuple(outputs))


def read_generation_info(directory: Path, cfg) -> dict[str, Any]:
    """eos/bos/pad ids, chat template and special-token strings from the checkpoint's files."""
    def load(name: str) -> dict:
        path = directory / name
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EdgertError(f"{path}: not valid JSON ({err})") from None

    config, generation, tok_config = load("config.json"), load("generation_config.json"), load("tokenizer_config.json")

    def ids(key: str) -> list[int]:
        value = generation.get(key, config.get(key))
        return [] if value is None else [int(v) for v in (value if isinstance(value, list) else [value])]

    template = tok_config.get("chat_template")
    if (directory / "chat_template.jinja").is_file():  # transformers >= 4.47 writes it as its own file
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)

    def token_text(key: str) -> str | None:
        value = tok_config.get(key)
        return value.get("content") if isinstance(value, dict) else value

    eos = ids("eos_token_id")
    if not eos:
        raise EdgertError(f"{directory}: no eos_token_id in generation_config.json or config.json; generation could not stop")
    for token in eos + ids("bos_token_id"):
        if not 0 <= token < cfg.vocab_size:
            raise EdgertError(f"{directory}: special token id {token} outside the vocabulary (vocab_size {cfg.vocab_size})")
    return {"eos_token_ids": eos, "bos_token_id": (ids("bos_token_id") or [None])[0],
            "pad_token_id": (ids("pad_token_id") or [None])[0], "chat_template": template,
            "bos_token": token_text("bos_token"), "eos_token": token_text("eos_token"),
            "add_bos_token": bool(tok_config.get("add_bos_token", False))}


def _feeds(cfg, batch: int, new: int, past: int, mask: np.ndarray, kv_dtype, rng, mtp: bool = False) -> dict[str, np.ndarray]:
    feeds = {"input_ids": rng.integers(0, cfg.vocab_size, (batch, new)).astype(np.int64),
             "position_ids": np.broadcast_to(np.arange(past, past + new), (batch, new)).astype(np.int64).copy(),
             "attention_mask": np.broadcast_to(mask, (batch, new, past + new)).copy(),
             "logit_positions": np.broadcast_to(np.arange(new), (batch, new)).astype(np.int64).copy()}
    if mtp:
        feeds["hidden_states"] = rng.standard_normal((batch, new, cfg.hidden_size)).astype(np.float32)
    for i in range(1 if mtp else cfg.num_layers):
        for part in ("key", "value"):
            feeds[f"past_key_values.{i}.{part}"] = rng.standard_normal(
                (batch, cfg.num_kv_heads, past, cfg.head_dim)).astype(kv_dtype)
    return feeds


def parity_cases(cfg, kv_dtype, rng, mtp: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """A causal prefill over an empty cache, and a 4-token tree over 6 cached positions
    (nodes 1 and 2 both children of node 0, node 3 a child of node 2)."""
    causal = np.tril(np.ones((7, 7), bool))
    parents = [-1, 0, 0, 2]
    tree = np.zeros((4, 4), bool)
    for node, parent in enumerate(parents):
        tree[node, node] = True
        while parent >= 0:
            tree[node, parent], parent = True, parents[parent]
    tree = np.concatenate([np.ones((4, 6), bool), tree], axis=1)
    return {"prefill": _feeds(cfg, 1, 7, 0, causal, kv_dtype, rng, mtp), "tree": _feeds(cfg, 2, 4, 6, tree, kv_dtype, rng, mtp)}


def check_parity(path: Path, reference, graph: GraphSpec, cases: dict, tolerance: float) -> dict[str, Any]:
    """ONNX Runtime against the fp32 PyTorch module on every case; the worst error per output."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [t.name for t in graph.outputs]
    outputs: dict[str, dict[str, Any]] = {}
    for case, feeds in cases.items():
        with torch.inference_mode():
            expected = reference(*[torch.from_numpy(feeds[t.name]).float() if feeds[t.name].dtype == np.float16
                                   else torch.from_numpy(feeds[t.name]) for t in graph.inputs])
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        for name, got, ref in zip(names, session.run(names, feeds), expected):
            ref, got = ref.float().numpy(), got.astype(np.float32)
            if ref.shape != got.shape:
                raise EdgertError(f"parity ({case}): output {name!r} has shape {list(got.shape)} in ONNX, {list(ref.shape)} in PyTorch")
            row = {**output_error(ref, got, tolerance), "case": case}
            if name not in outputs or row["max_rel"] > outputs[name]["max_rel"] or not row["finite"]:
                outputs[name] = row
    return {"reference": "pytorch eager, fp32", "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "metric": "max_rel = max|onnx - torch| / max|torch| per output, worst over the cases",
            "tolerance": tolerance, "cases": {c: {k: list(v.shape) for k, v in f.items() if not k.startswith("past_")}
                                              for c, f in cases.items()},
            "outputs": outputs, "passed": all(r["passed"] for r in outputs.values())}


def quantize_proposals(path: Path, reference, graph: GraphSpec, cases: dict) -> dict[str, Any]:
    """int8 weights for a graph that only proposes tokens (Medusa heads, MTP module): ONNX
    Runtime's dynamic quantization of its MatMuls, in place, after the fp32 parity check. The
    target verifies every proposal, so this trades a little acceptance for a quarter of the
    bytes read per step; the report says how often the int8 top-1 matches PyTorch's."""
    import logging

    import onnxruntime as ort
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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = graph.outputs[0].name  # logits, or medusa_logits
    agree = []
    for feeds in cases.values():
        with torch.inference_mode():
            want = reference(*[torch.from_numpy(feeds[t.name]).float() if feeds[t.name].dtype == np.float16
                                else torch.from_numpy(feeds[t.name]) for t in graph.inputs])
        want = (want if isinstance(want, torch.Tensor) else want[0]).float().numpy()
        (got,) = session.run([name], feeds)
        agree.append(got.argmax(-1) == want.argmax(-1))
    return {"weights": "int8 (dynamic quantization of MatMul/Gemm, onnxruntime.quantization)",
            "top1_agreement_with_pytorch": float(np.mean(np.concatenate([a.ravel() for a in agree])))}


def export_decoder(registered, checkpoint: str | None, out: str | Path, options: dict[str, str] | None = None,
                   precision: str = "fp32", tolerance: float | None = None, force: bool = False, seed: int = 0,
                   backend: str = "onnx", quantization: dict[str, Any] | None = None,
                   calibration: str | None = None) -> Path:
    """Export the checkpoint directory ``checkpoint`` with decoder plugin ``registered``.

    ``backend``: "onnx" (standard ops, runs on ONNX Runtime) or "trt" (edgert's TensorRT
    plugins over an in-place cache, see :mod:`.trt_flavour`). ``precision`` int8 / int4:
    weight-only quantization with the ``quantization`` knobs (see :mod:`.weights`), its
    accuracy measured on ``calibration`` text (or a built-in passage)."""
    import torch

    from edgert.exporters.driver import _export_graph, _versions

    from .attention import translations
    from .verify_graphs import write_verify_graphs
    from .llama import DecoderConfig, load_decoder

    plugin = registered.obj
    if backend not in BACKENDS:
        raise EdgertError(f"--backend {backend}: expected one of {list(BACKENDS)}")
    if precision in ("int8", "int4") and quantization is None:  # called directly, not through the driver
        from ..precision import resolve_quantization

        quantization = resolve_quantization("decoder", precision, backend, {}, calibration)
    elif precision not in DEFAULT_TOLERANCE and quantization is None:
        raise EdgertError(f"--precision {precision}: expected one of {sorted(DEFAULT_TOLERANCE) + ['int4', 'int8']}")
    if checkpoint is None:
        raise EdgertError(f"{plugin.name}: --checkpoint DIR is required (a Hugging Face checkpoint directory)")
    directory = Path(checkpoint)
    if not directory.is_dir():
        raise EdgertError(f"{directory}: not a directory; --checkpoint takes a Hugging Face checkpoint directory")
    opts = plugin.resolve_options(options or {})
    if backend == "trt" and precision != "fp16":
        raise EdgertError(f"--backend trt --precision {precision}: edgert's TensorRT attention plugin takes fp16 tensors "
                          "(the deployment precision on Jetson-class GPUs); add --precision fp16")
    if backend == "trt" and opts["mtp"]:
        raise EdgertError("--opt mtp: the TensorRT flavour does not carry an MTP module yet; export it with --backend onnx")
    # A quantized decoder is made from the fp32 graph, which is parity-checked as fp32 first.
    tolerance = DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE["fp32"]) if tolerance is None else float(tolerance)
    cfg = DecoderConfig.from_dir(directory)
    if backend == "trt" and cfg.head_dim not in (64, 128):
        raise EdgertError(f"--backend trt: {directory} has head_dim {cfg.head_dim}; edgert's TensorRT attention kernels "
                          "are built for head_dim 64 and 128 (export with --backend onnx)")
    tokenizer = directory / "tokenizer.json"
    if not tokenizer.is_file():
        raise EdgertError(f"{tokenizer}: missing; the bundle needs the checkpoint's tokenizer.json to read and write text")
    check_vocab(tokenizer, cfg.vocab_size)
    generation = read_generation_info(directory, cfg)
    context = cfg.max_position_embeddings if cfg.sliding_window is None else min(cfg.max_position_embeddings, cfg.sliding_window)
    if opts["context"]:
        if opts["context"] > context:
            raise EdgertError(f"--opt context={opts['context']}: the model supports at most {context} positions")
        context = opts["context"]
    if quantization is not None:  # the text is read (and refused) before minutes of export
        from .weights import token_chunks

        calibration_ids, held_out_ids, calibration_record = token_chunks(tokenizer, calibration, context)

    with step(f"loading {directory} ({cfg.model_type}, {cfg.num_layers} layers, vocab {cfg.vocab_size})"):
        reference = load_decoder(directory)
        medusa = None
        if opts["medusa"]:
            from .medusa import load_medusa

            medusa = load_medusa(opts["medusa"], cfg.hidden_size, cfg.vocab_size)
    module = reference
    kv_dtype = "float32"
    if precision == "fp16":  # norms' statistics, RoPE angles, scores and softmax stay fp32 inside the module
        module, kv_dtype = copy.deepcopy(reference).half().eval(), "float16"
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    # Distinct example sizes, so that the exporter cannot tie two dynamic dims together.
    trace_mask = np.tril(np.ones((4, 9), bool), k=5)
    trace = _feeds(cfg, 2, 4, 5, trace_mask, np.dtype(kv_dtype), rng)
    cases = parity_cases(cfg, np.dtype(kv_dtype), rng)
    if backend == "onnx":
        graph = decoder_graph(cfg, kv_dtype)
        jobs = [(graph, module, trace, translations(),
                 lambda path, spec: check_parity(path, reference, spec, cases, tolerance))]
    else:
        from . import trt_flavour

        graph = trt_flavour.decoder_graph(cfg, kv_dtype)
        flavour = trt_flavour.CacheDecoder(module).eval()
        jobs = [(graph, flavour, trt_flavour.cache_feeds(trace, cfg, 12, rng), trt_flavour.translations(),
                 lambda path, spec: trt_flavour.check_math(flavour, reference, cfg, cases, tolerance, rng))]

    def proposal_check(path, reference, spec, cases):
        report = check_parity(path, reference, spec, cases, tolerance)
        # An int8 / int4 bundle quantizes its proposal graphs' weights with the decoder's below.
        if opts["proposals"] == "int8" and report["passed"] and quantization is None:
            report["quantized"] = quantize_proposals(path, reference, spec, cases)
        return report

    if opts["mtp"]:
        from .mtp import MTPGraph, load_mtp

        mtp = load_mtp(opts["mtp"], cfg)
        mtp_module = MTPGraph(module, copy.deepcopy(mtp).to(next(module.parameters()).dtype)).eval()
        mtp_cases = parity_cases(cfg, np.dtype(kv_dtype), rng, mtp=True)
        jobs.append((mtp_graph(cfg, kv_dtype), mtp_module, _feeds(cfg, 2, 4, 5, trace_mask, np.dtype(kv_dtype), rng, mtp=True),
                     translations(), lambda path, spec: proposal_check(path, MTPGraph(reference, mtp).eval(), spec, mtp_cases)))
    if medusa is not None:
        from .medusa import MedusaGraph

        dtype = next(module.parameters()).dtype
        hidden = {"hidden_states": rng.standard_normal((2, 3, cfg.hidden_size)).astype(np.float32)}
        jobs.append((medusa_graph(cfg, len(medusa)), MedusaGraph(copy.deepcopy(medusa).to(dtype)).eval(), dict(hidden), {},
                     lambda path, spec: proposal_check(path, MedusaGraph(medusa).eval(), spec, {"heads": hidden})))
    reports = {}  # jobs: (graph spec, module to export, trace feeds, translation table, parity check)
    with staged_bundle(out, overwrite=force) as stage:
        for spec, exported, trace, table, check in jobs:
            if "logit_positions" in trace:
                trace["logit_positions"] = trace["logit_positions"][:, :3].copy()
            with step(f"exporting graph {spec.name!r} to {spec.file} (torch.onnx, dynamo, opset 23)"):
                opset = _export_graph(exported, spec, trace, stage / spec.file, table, opset=23, derived=(TOTAL,))
                if backend == "trt" and spec.name == GRAPH:
                    trt_flavour.finish_decoder(stage / spec.file)
            with step(f"checking parity of {spec.file} against PyTorch (prefill, tree over a cache)"):
                report = check(stage / spec.file, spec)
            if not report["passed"]:
                name, worst = max(report["outputs"].items(), key=lambda kv: kv[1]["max_rel"])
                raise EdgertError(
                    f"parity check failed for {plugin.name}, graph {spec.name!r}, output {name!r} ({worst['case']}): max "
                    f"relative error {worst['max_rel']:.3g} > tolerance {tolerance:g}"
                    f"{'' if worst['finite'] else ' (non-finite values)'}; no bundle was written")
            reports[spec.name] = report
        quantized = None
        if quantization is not None:
            quantized = _quantize(stage, [job[0] for job in jobs], precision, quantization, calibration_ids,
                                  held_out_ids, calibration_record, plugin.name)
        shutil.copyfile(tokenizer, stage / "tokenizer.json")
        flavour = {"backend": backend}
        if backend == "onnx":
            verify_files = write_verify_graphs(stage)
        else:
            verify_files = trt_flavour.write_plugin_graphs(stage, cfg, kv_dtype)
            flavour["kv_compact"] = verify_files.pop("compact")
            flavour["plugins"] = {"library": "libedgert_trt_plugins.so", **trt_flavour.PLUGIN,
                                  "ops": ["EdgertAttention", "EdgertTreeVerify", "EdgertKVCompact"]}
        details = {"model_type": cfg.model_type, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
                   "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_size": cfg.hidden_size,
                   "vocab_size": cfg.vocab_size, "rope_scaling": cfg.rope_scaling, "tie_word_embeddings": cfg.tie_word_embeddings,
                   "parameters": sum(p.numel() for p in reference.parameters())}
        manifest = {
            "schema_version": SCHEMA_VERSION, "kind": registered.kind,
            "plugin": {"name": plugin.name, "package": registered.plugin.package, "version": registered.plugin.version},
            "model": {"name": plugin.name, "paper": plugin.paper, "options": opts, "details": details, "seed": seed,
                      "checkpoint": {"path": str(directory.resolve())}},
            "graphs": {job[0].name: job[0].to_json() for job in jobs},
            "decoder": {"graph": GRAPH, "tokenizer": "tokenizer.json", "context": context, "kv_dtype": kv_dtype,
                        "num_layers": cfg.num_layers, "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
                        "vocab_size": cfg.vocab_size, "verify": verify_files, **flavour, **generation,
                        "medusa": None if medusa is None else {"graph": "medusa", "num_heads": len(medusa),
                                                               "num_layers": medusa.num_layers},
                        "mtp": {"graph": "mtp"} if opts["mtp"] else None},
            "preprocessing": {}, "labels": [], "precision": precision,
            "provenance": {**_versions(), "opset": opset, "exporter": "torch.onnx.export(dynamo=True)",
                           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
            "parity": {"passed": True, "graphs": reports},
        }
        if quantized is not None:
            manifest["quantization"] = quantized
        write_manifest(stage, manifest)
    return Path(out)


def _quantize(stage: Path, specs: list[GraphSpec], precision: str, knobs: dict[str, Any], calibration_ids, held_out_ids,
              calibration_record: dict[str, Any], name: str) -> dict[str, Any]:
    """Every graph's weights to ``precision`` (the decoder's accuracy measured against its fp32
    graph on the held-out text and enforced); the manifest's ``quantization`` section."""
    from .weights import check_accuracy, measure, quantize_graph

    bits = int(precision[3:])
    records = {}
    work = stage / ".quantized"  # its own folder: a large graph's weights file keeps its name
    work.mkdir()
    for spec in specs:
        # GPTQ's calibration prefills are decoder inputs; the proposal graphs take round-to-nearest.
        graph_knobs = knobs if spec.name == GRAPH or knobs["method"] != "gptq" else {**knobs, "method": "rtn"}
        source, target = stage / spec.file, work / spec.file
        with step(f"quantizing {spec.file} to {precision} ({graph_knobs['method']}, blocks of {knobs['block_size']})"):
            record = quantize_graph(source, target, bits, graph_knobs, calibration_ids if spec.name == GRAPH else None)
        if spec.name == GRAPH:
            with step(f"measuring {precision} against fp32 ({len(held_out_ids)} held-out sequences)"):
                report = measure(source, target, held_out_ids, knobs["near_tie"])
            report.update(min_agreement=knobs["min_agreement"], max_perplexity_ratio=knobs["max_perplexity_ratio"])
            check_accuracy(report, knobs, precision, name)
            record.update(accuracy=report, calibration=calibration_record)
        for old in (source, Path(f"{source}.data")):
            old.unlink(missing_ok=True)
        for new in (target, Path(f"{target}.data")):
            if new.exists():
                new.replace(stage / new.name)
        records[spec.name] = record
    work.rmdir()
    return records
