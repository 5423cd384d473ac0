"""Export a Llama-family checkpoint directory into a decoder bundle: the planner.

One graph, ``decoder.onnx``, serves prefill, decode and tree verification (its I/O is the
contract of :mod:`edgert.runtime.llm.contract`). Beside it the bundle carries
``tokenizer.json``, the verification op as small ONNX graphs (``verify_<mode>.onnx``, see
:mod:`.verify_graphs`), the graphs of each speculative head the user asked for (``--opt
<head>=FILE``, heads registered through ``edgert_register_heads``) and, in the manifest's
``decoder`` section, what the runtime needs to drive the graph without torch.

The export is a plan (:mod:`.plan`): the decoder's :class:`~.plan.GraphJob`, then each head's,
run by one runner; then quantization at int8 / int4 (:mod:`.weights`), the verify graphs and
the manifest (:mod:`edgert.exporters.manifest`, shared with the video driver). Parity is
checked on two calls that cover what the runtime does: a prefill (empty cache, causal mask) and
a step over a non-empty cache with a tree-shaped mask.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgert.runtime.bundle import GraphSpec
from edgert.runtime.errors import BundleError, EdgertError
from edgert.runtime.host import get_host
from edgert.runtime.inputs import read_json, read_text
from edgert.runtime.llm.contract import CONTEXT_KEY, GRAPH, Geometry, decoder_graph, decoder_section, tap_outputs
from edgert.runtime.llm.tokenizer import check_chat_template, check_vocab
from edgert.runtime.progress import step
from edgert.runtime.staging import staged_bundle

from ..graph import weights_beside
from ..manifest import bundle_manifest, write
from ..parity import DEFAULT_TOLERANCE
from .plan import ExportContext, GraphJob, parity_cases, run_plan, trace_feeds

FLAVOURS = ("onnx", "trt")


@dataclass
class ExportRequest:
    """What ``edgert export <family>`` asks of a decoder family (see ``edgert_register_decoders``)."""

    checkpoint: str | None
    options: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    tolerance: float | None = None
    force: bool = False
    seed: int = 0
    flavour: str = "onnx"                     # "onnx" or "trt" (edgert's TensorRT plugin ops)
    quantization: dict[str, Any] | None = None  # the resolved --quant knobs, for int8 / int4
    calibration: str | None = None            # --calibration text, for int8 / int4


def read_generation_info(directory: Path, cfg) -> dict[str, Any]:
    """eos/bos/pad ids, chat template and special-token strings from the checkpoint's files."""
    def load(name: str) -> dict:
        path = directory / name
        if not path.is_file():
            return {}
        data = read_json(path)
        if not isinstance(data, dict):
            raise EdgertError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data

    config, generation, tok_config = load("config.json"), load("generation_config.json"), load("tokenizer_config.json")

    def ids(key: str) -> list[int]:
        value = generation.get(key, config.get(key))
        return [] if value is None else [int(v) for v in (value if isinstance(value, list) else [value])]

    template = tok_config.get("chat_template")
    if (directory / "chat_template.jinja").is_file():  # transformers >= 4.47 writes it as its own file
        template = read_text(directory / "chat_template.jinja")
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


def _heads(opts: dict[str, Any], flavour: str) -> list:
    """The heads the user asked for (``--opt <head>=FILE``), in registry order; a head that
    cannot join ``flavour`` is refused in one line."""
    wanted = []
    for registered in sorted(get_host().registry["head"].values(), key=lambda r: r.name):
        if opts.get(registered.name):
            head = get_host().get("head", registered.name).obj
            if flavour not in head.flavours:
                raise EdgertError(f"--opt {head.name}: the {'TensorRT' if flavour == 'trt' else flavour} flavour does not "
                                  f"carry a {head.name} head yet; export it with --flavour onnx")
            wanted.append(head)
    return wanted


def _taps(heads: list, cfg) -> tuple[int, ...]:
    """The layers whose input hidden states the requested heads read (``taps(config)``)."""
    taps = set()
    for head in heads:
        asked = tuple(getattr(head, "taps", lambda config: ())(cfg))
        bad = [i for i in asked if not isinstance(i, int) or not 0 <= i < cfg.num_layers]
        if bad:
            raise EdgertError(f"head {head.name!r} asks for the hidden states entering layers {bad}; the model has "
                              f"layers 0..{cfg.num_layers - 1}")
        taps.update(asked)
    return tuple(sorted(taps))


def _decoder_job(ctx: ExportContext) -> GraphJob:
    """The decoder graph's job, in the requested flavour."""
    kv, taps = np.dtype(ctx.kv_dtype), ctx.module.taps
    trace, cases = trace_feeds(ctx.geometry, kv, ctx.rng), parity_cases(ctx.geometry, kv, ctx.rng)
    if ctx.flavour == "onnx":
        return GraphJob(decoder_graph(ctx.geometry, ctx.kv_dtype, extra_outputs=tap_outputs(ctx.geometry, taps),
                                      in_place=ctx.in_place),
                        ctx.module, trace, ctx.parity(ctx.reference, cases), translations=ctx.translations)
    from . import trt_flavour

    module = trt_flavour.CacheDecoder(ctx.module).eval()
    default = decoder_graph(ctx.geometry, ctx.kv_dtype, extra_outputs=tap_outputs(ctx.geometry, taps))
    return GraphJob(trt_flavour.decoder_graph(ctx.geometry, ctx.kv_dtype, taps), module,
                    trt_flavour.cache_feeds(trace, 12, ctx.rng),
                    lambda path, spec: trt_flavour.check_math(module, ctx.reference, default, spec, cases, ctx.tolerance,
                                                              ctx.rng),
                    translations=ctx.translations, finish=trt_flavour.finish_decoder)


def export_decoder(registered, out: str | Path, request: ExportRequest) -> Path:
    """Export the checkpoint ``request.checkpoint`` (a Hugging Face directory or a GGUF file)
    with decoder plugin ``registered``.

    ``request.flavour``: "onnx" (standard ops, runs on ONNX Runtime) or "trt" (edgert's
    TensorRT plugins over an in-place cache, see :mod:`.trt_flavour`). ``request.precision``
    int8 / int4: weight-only quantization with the ``quantization`` knobs (see :mod:`.weights`),
    its accuracy measured on ``calibration`` text (or a built-in passage); stored: a GGUF's own
    blocks (:mod:`.stored`)."""
    from .gguf import checkpoint_directory, is_gguf

    r = request
    if r.precision == "stored" and not is_gguf(r.checkpoint):
        raise EdgertError(f"--precision stored: {r.checkpoint or 'no checkpoint'} is not a GGUF file; only a GGUF "
                          "stores blocks to keep (use fp32, fp16, int8 or int4)")
    if Path(out).exists() and not r.force:  # before a checkpoint is read, as staged_bundle words it
        raise BundleError(f"{Path(out).absolute()}: already exists (pass --force to replace it)")
    if r.checkpoint is not None and is_gguf(r.checkpoint):
        with checkpoint_directory(r.checkpoint) as (directory, gguf):
            return _export(registered, out, request, directory, gguf)
    return _export(registered, out, request, None if r.checkpoint is None else Path(r.checkpoint), None)


def _export(registered, out: str | Path, request: ExportRequest, directory: Path | None, gguf) -> Path:
    import torch

    from .llama import DecoderConfig, exported_copy, load_decoder

    plugin, r = registered.obj, request
    precision, flavour, quantization = r.precision, r.flavour, r.quantization
    if flavour not in FLAVOURS:
        raise EdgertError(f"--flavour {flavour}: expected one of {list(FLAVOURS)}")
    if precision in ("int8", "int4") and quantization is None:  # called directly, not through the driver
        from ..precision import resolve_quantization

        quantization = resolve_quantization("decoder", precision, flavour, {}, r.calibration)
    elif precision not in DEFAULT_TOLERANCE and quantization is None:
        raise EdgertError(f"--precision {precision}: expected one of {sorted(DEFAULT_TOLERANCE) + ['int4', 'int8']}")
    if directory is None:
        raise EdgertError(f"{plugin.name}: --checkpoint DIR is required (a Hugging Face checkpoint directory, or a "
                          "GGUF file)")
    if not directory.is_dir():
        raise EdgertError(f"{directory}: not a directory; --checkpoint takes a Hugging Face checkpoint directory or a "
                          "GGUF file")
    opts = plugin.resolve_options(r.options or {})
    if gguf is not None and flavour == "trt" and precision == "stored":
        raise EdgertError("--flavour trt: the TensorRT flavour runs fp16; add --precision fp16 to dequantize the GGUF")
    if flavour == "trt" and precision != "fp16":
        raise EdgertError(f"--flavour trt --precision {precision}: edgert's TensorRT attention plugin takes fp16 "
                          "tensors (the deployment precision on Jetson-class GPUs); add --precision fp16")
    heads = _heads(opts, flavour)
    # A quantized decoder is made from the fp32 graph, which is parity-checked as fp32 first.
    tolerance = DEFAULT_TOLERANCE.get(precision, DEFAULT_TOLERANCE["fp32"]) if r.tolerance is None else float(r.tolerance)
    cfg = DecoderConfig.from_dir(directory)
    if flavour == "trt" and cfg.head_dim not in (64, 128):
        raise EdgertError(f"--flavour trt: {directory} has head_dim {cfg.head_dim}; edgert's TensorRT attention "
                          "kernels are built for head_dim 64 and 128 (export with --flavour onnx)")
    tokenizer = directory / "tokenizer.json"
    if not tokenizer.is_file():
        raise EdgertError(f"{tokenizer}: missing; the bundle needs the checkpoint's tokenizer.json to read and write text")
    check_vocab(tokenizer, cfg.vocab_size)
    generation = read_generation_info(directory, cfg)
    try:
        check_chat_template(generation)
    except BundleError as err:  # worded for a bundle at run time; here it is the checkpoint's
        raise EdgertError(f"{r.checkpoint or directory}: {str(err).replace(' of this bundle', '')}; not exported") from None
    context = cfg.max_position_embeddings
    if flavour == "trt" and cfg.sliding:  # the attention plugin has no sliding-window mask: the context stays inside it
        context = min(context, cfg.sliding_window)
    if opts["context"]:
        if opts["context"] > context:
            raise EdgertError(f"--opt context={opts['context']}: the model supports at most {context} positions")
        context = opts["context"]
    if quantization is not None:  # the text is read (and refused) before minutes of export
        from .weights import token_chunks

        calibration_ids, held_out_ids, calibration_record = token_chunks(tokenizer, r.calibration, context)

    with step(f"loading {gguf.path if gguf else directory} ({cfg.model_type}, {cfg.num_layers} layers, vocab {cfg.vocab_size})"):
        reference = load_decoder(directory)
    module, kv_dtype = reference, "float32"
    if precision == "fp16":  # norms' statistics, RoPE angles, scores and softmax stay fp32 inside the module
        module, kv_dtype = exported_copy(reference, torch.float16), "float16"
    torch.manual_seed(r.seed)
    if flavour == "onnx":
        from .attention import translations

        table = translations(opts["kv_cache"])
    else:
        from .trt_flavour import translations

        table = translations()
    taps = _taps(heads, cfg)
    if taps:  # the hidden states entering these layers become outputs of the decoder graph
        reference.taps = module.taps = taps
    ctx = ExportContext(plugin.name, directory, cfg, Geometry.of(cfg), reference, module, flavour, precision, kv_dtype,
                        tolerance, np.random.default_rng(r.seed), table, opts["proposals"],
                        quantization is not None, in_place=flavour == "onnx" and opts["kv_cache"] == "in_place")
    jobs = [_decoder_job(ctx)]
    entries = {}
    for head in heads:  # each head draws its own random inputs: its figures do not depend on the others
        with step(f"loading the {head.name} head from {opts[head.name]}"):
            head_ctx = copy.copy(ctx)
            head_ctx.rng = np.random.default_rng([r.seed, *head.name.encode()])
            head_jobs, entries[head.name] = head.plan(head_ctx, opts[head.name])
        jobs += head_jobs
    with staged_bundle(out, overwrite=r.force) as stage:
        reports, opset = run_plan(jobs, stage, plugin.name, tolerance)
        quantized = None
        if precision == "stored":
            quantized = _transcode(stage, jobs[0].spec, gguf, quantization, held_out_ids, calibration_record, plugin.name)
        elif quantization is not None:
            quantized = _quantize(stage, [job.spec for job in jobs], precision, quantization, calibration_ids,
                                  held_out_ids, calibration_record, plugin.name)
        shutil.copyfile(tokenizer, stage / "tokenizer.json")
        extra: dict[str, Any] = {}
        if flavour == "onnx":
            from .verify_graphs import write_verify_graphs

            verify_files = write_verify_graphs(stage)
        else:
            from . import trt_flavour

            verify_files = trt_flavour.write_plugin_graphs(stage, ctx.geometry, kv_dtype)
            extra["kv_compact"] = verify_files.pop("compact")
            extra["plugins"] = {"library": "libedgert_trt_plugins.so", **trt_flavour.PLUGIN,
                                "ops": ["EdgertAttention", "EdgertTreeVerify", "EdgertKVCompact"]}
        details = {"model_type": cfg.model_type, "num_layers": cfg.num_layers, "num_heads": cfg.num_heads,
                   "num_kv_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_size": cfg.hidden_size,
                   "vocab_size": cfg.vocab_size, "rope_scaling": cfg.rope_scaling, "tie_word_embeddings": cfg.tie_word_embeddings,
                   "parameters": sum(p.numel() for p in reference.parameters())}
        if taps:
            extra["taps"] = list(taps)
        if getattr(reference, "long", False):  # Phi-3 LongRoPE: see Decoding.forward
            extra["rope_switch"] = int(reference.switch)
        extra["step_rows"] = _step_rows(opts["step_rows"], quantization)
        decoder = decoder_section(ctx.geometry, context=context, kv_dtype=kv_dtype, flavour=flavour,
                                  generation=generation, verify=verify_files, heads=entries, **extra)
        # what was built: the context it serves, and only the heads it holds (an unset head option
        # is every registered head's, a test plugin's too)
        recorded = {k: v for k, v in {**opts, "context": context}.items() if v != ""}
        manifest = bundle_manifest(registered, options=recorded, details=details, seed=r.seed,
                                   paper=getattr(plugin, "papers", {}).get(cfg.model_type),
                                   checkpoint=_checkpoint_record(directory, gguf), graphs=[job.spec for job in jobs],
                                   precision=precision, opset=opset, parity=reports, decoder=decoder,
                                   quantization=quantized)
        weights_beside(stage / jobs[0].spec.file, {CONTEXT_KEY: str(context)})
        write(stage, manifest)
    return Path(out)


def _step_rows(option: str, quantization: dict[str, Any] | None) -> int:
    """Rows of a one-token step (``--opt step_rows``). ONNX Runtime's CPU MatMulNBits runs one row
    on another kernel than several: at int8 activations (accuracy_level 4) a token's logits
    computed alone and inside a verify pass differed by up to 0.9 on SmolLM2-135M (int8 and
    int4), so a speculative strategy's greedy text left ar's on most prompts; with two rows they
    are bit-identical, for 9-21 % of a step. At fp32 compute the single-row path was within
    3e-5 (fp32) and 1.6e-4 (as stored) of the logits, and two rows cost 5 % (fp32) and 2x (the
    4-bit blocks' fp32 kernel dequantizes for several rows): one row there."""
    if option != "auto":
        return int(option)
    int8_activations = quantization is not None and quantization.get("accuracy_level") == 4
    return 2 if int8_activations else 1


def _checkpoint_record(directory: Path, gguf) -> dict[str, Any]:
    if gguf is None:
        return {"path": str(directory.resolve())}
    from edgert.runtime.bundle import sha256_file

    meta = gguf.metadata
    return {"path": str(gguf.path.resolve()), "format": "gguf", "sha256": sha256_file(gguf.path),
            "name": str(meta.get("general.name", "")), "license": str(meta.get("general.license", "")),
            "types": gguf.file_type}


def _transcode(stage: Path, spec: GraphSpec, gguf, knobs: dict[str, Any], held_out_ids, calibration_record,
               name: str) -> dict[str, Any]:
    """The decoder graph as the GGUF stores its weights (:mod:`.stored`), measured against the
    fp32 graph of the same values and held to the gate; the manifest's ``quantization``."""
    from .stored import transcode_graph
    from .weights import check_accuracy, measure

    work = stage / ".stored"
    work.mkdir()
    source, target = stage / spec.file, work / spec.file
    with step(f"transcoding {spec.file} as stored ({gguf.file_type} blocks)"):
        record = transcode_graph(source, target, gguf, knobs["accuracy_level"], knobs["q8"])
    with step(f"measuring the stored weights against fp32 ({len(held_out_ids)} held-out sequences)"):
        report = measure(source, target, held_out_ids, knobs["near_tie"])
    report.update(min_agreement=knobs["min_agreement"], max_perplexity_ratio=knobs["max_perplexity_ratio"])
    check_accuracy(report, knobs, "stored", name)
    record.update(accuracy=report, calibration=calibration_record)
    _replace_graph(source, target, stage)
    work.rmdir()
    return {spec.name: record}


def _replace_graph(source: Path, target: Path, stage: Path) -> None:
    """The rewritten graph ``target`` (and its weights file) takes ``source``'s place in ``stage``."""
    for old in (source, Path(f"{source}.data")):
        old.unlink(missing_ok=True)
    for new in (target, Path(f"{target}.data")):
        if new.exists():
            new.replace(stage / new.name)


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
        _replace_graph(source, target, stage)
        records[spec.name] = record
    work.rmdir()
    return records
