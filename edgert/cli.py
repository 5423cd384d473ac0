"""The ``edgert`` command line: plugins, export, info, run, generate, serve, eval, bench.

User errors (:class:`EdgertError`) print one line on stderr and exit 1, without a traceback;
argparse's usage errors exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import threading

from edgert.runtime.errors import EdgertError, one_line
from edgert.runtime.progress import step


def _parse_opts(pairs: list[str], flag: str = "--opt") -> dict[str, str]:
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise EdgertError(f"{flag} {pair!r}: expected key=value")
        opts[key.strip()] = value.strip()
    return opts


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7f, *range(0x80, 0xa0)]}
_CONTROL.update({c: f"\\u{c:04x}" for c in [0x2028, 0x2029, *range(0x202a, 0x202f), *range(0x2066, 0x206a)]})


def shown(value) -> str:
    """``value`` as text safe for a terminal: control characters (escape sequences, carriage
    returns, newlines, bidirectional overrides) from a manifest or a file name are escaped."""
    return str(value).translate(_CONTROL)


def cmd_plugins(args) -> int:
    from edgert.runtime.host import get_host

    host = get_host()
    rows = [(shown(r.name), r.kind, shown(f"{r.plugin.package} {r.plugin.version}".strip()),
             shown(getattr(r.obj, "description", ""))) for r in host.all()]
    widths = [max(len(str(row[i])) for row in rows + [("name", "kind", "package", "")]) for i in range(3)]
    print(f"{'name':<{widths[0]}}  {'kind':<{widths[1]}}  {'package':<{widths[2]}}  description")
    for row in rows:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    for name, error in host.failures:
        print(f"(failed) plugin {shown(name)}: {shown(error)}")
    return 0


def cmd_export(args) -> int:
    import torch  # noqa: F401  (every export needs it: without it, main's one-line refusal comes first)

    from edgert.exporters.driver import export

    print(f"exporting {args.model} to {args.out}", file=sys.stderr)
    out = export(args.model, args.out, _parse_opts(args.opt), checkpoint=args.checkpoint, precision=args.precision,
                 tolerance=args.tolerance, force=args.force, seed=args.seed, engine=args.engine,
                 engine_max_batch=args.engine_max_batch, flavour=args.flavour, calibration=args.calibration,
                 quant=_parse_opts(args.quant, "--quant"))
    from edgert.runtime.bundle import Bundle

    bundle = Bundle.load(out)
    for gname, report in bundle.manifest["parity"]["graphs"].items():
        for oname, r in report["outputs"].items():
            print(f"parity {gname}/{oname}: max_abs {r['max_abs']:.3g}, max_rel {r['max_rel']:.3g} "
                  f"({_parity_bound(report, r)}) ok")
    for line in _quantization_lines(bundle.manifest):
        print(line)
    print(f"wrote {out}")
    return 0


def _stdin_text(what: str) -> str:
    """Standard input as UTF-8 text, strictly (Python's own reading would let bad bytes through
    as surrogates)."""
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise EdgertError(f"{what}: standard input is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start})") from None


def _parity_bound(report: dict, row: dict) -> str:
    """What one output's max_rel was held to: the tolerance, or a multiple of fp32's own rounding."""
    tolerance = report["tolerance"]
    if row.get("allowed", tolerance) > tolerance:
        return (f"allowed {row['allowed']:.3g}, a multiple of fp32's own rounding against fp64 "
                f"({row.get('rounding', float('nan')):.3g}); tolerance {tolerance:g}")
    return f"tolerance {tolerance:g}" + (" against fp64" if "rounding" in row else "")


def _quantization_lines(m) -> list[str]:
    lines = []
    for gname, q in (m.get("quantization") or {}).items():
        params = ", ".join(f"{k}={v}" for k, v in q.get("params", {}).items())
        lines.append(shown(f"quantized  {gname}: {q['method']}" + (f" ({params})" if params else "")))
        cal = q.get("calibration")
        if cal:
            counts = ", ".join(f"{k} {v}" for k, v in cal.items() if k not in ("path", "sha256"))
            lines.append(shown(f"  calibration {cal['path']} (sha256 {cal['sha256'][:16]}…; {counts})"))
        acc = q.get("accuracy")
        if acc:
            lines.append(shown("  accuracy   " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in acc.items())))
    return lines


def cmd_generate(args) -> int:
    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                            stop=tuple(args.stop))
    prompt = _stdin_text("--prompt -") if args.prompt == "-" else args.prompt
    generator = Generator(args.bundle, device=args.device, threads=args.threads, backend=args.backend)
    stream = args.stream and not args.json
    on_text = (lambda piece: print(piece, end="", flush=True)) if stream else None
    result = generator.generate(prompt, params, strategy=args.strategy, chat=args.chat, system=args.system, on_text=on_text,
                                strategy_options=_parse_opts(args.strategy_opt, "--strategy-opt"))
    st = result.stats
    if args.json:
        print(json.dumps({"text": result.text, "tokens": result.tokens, "stop_reason": result.stop_reason,
                          "prompt_tokens": st.prompt_tokens, "new_tokens": st.new_tokens,
                          "prefill_tokens_per_s": st.prefill_tokens_per_s, "decode_tokens_per_s": st.decode_tokens_per_s,
                          "ttft_ms": st.ttft_s * 1e3}))
    else:
        print("" if stream else result.text, flush=True)
    print(f"prompt {st.prompt_tokens} tokens, prefill {st.prefill_tokens_per_s:.1f} tokens/s; "
          f"time to first token {st.ttft_s * 1e3:.0f} ms; {st.new_tokens} new tokens, decode "
          f"{st.decode_tokens_per_s:.1f} tokens/s; stopped: {result.stop_reason} ({args.strategy}, "
          f"{generator.session.backend.describe()})", file=sys.stderr)
    if args.stats:
        depth = ", ".join(f"{d + 1}: {a:.0%}" for d, a in enumerate(st.acceptance_by_depth())) or "-"
        print(f"{st.forward_calls} decoder passes after the prefill, {st.tokens_per_step:.2f} tokens per pass; "
              f"acceptance by draft depth {depth}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from edgert.chat import chat
    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    generator = Generator(args.bundle, device=args.device, threads=args.threads, backend=args.backend)
    return chat(generator, params, strategy=args.strategy, system=args.system,
                strategy_options=_parse_opts(args.strategy_opt, "--strategy-opt"))


def cmd_serve(args) -> int:
    from edgert.runtime.signing import trusted_key_files
    from edgert.serve import API_KEY_ENV, ServeOptions, run

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"edgert: warning: serving on {args.host} without an API key: anyone who reaches it can use it "
              f"(--api-key or {API_KEY_ENV})", file=sys.stderr)
    counts = {"": 1}
    for text in args.replicas or ["1"]:
        name, sep, count = text.rpartition("=")
        if not count.isdigit() or int(count) < 1 or (sep and not name):
            raise EdgertError(f"--replicas {text!r}: expected N or NAME=N, N a positive integer")
        counts[name] = int(count)
    drafts = {}
    for text in args.draft:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise EdgertError(f"--draft {text!r}: expected NAME=BUNDLE")
        drafts[name] = os.path.abspath(path)
    options = ServeOptions(replicas=counts.pop(""), replicas_of=counts, cpus_per_replica=args.cpus_per_replica, api_key=api_key,
                           max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                           max_upload_bytes=int(args.max_upload_mb * (1 << 20)), session_ttl_s=args.session_ttl,
                           max_queued=args.max_queued,
                           strategy=args.strategy, strategy_options=_parse_opts(args.strategy_opt, "--strategy-opt"),
                           drafts=drafts, backend=args.backend, device=args.device,
                           trusted_keys=tuple(str(p) for p in trusted_key_files()))
    if args.address != "local":
        print(f"edgert: warning: joining the Ray cluster at {args.address}: Ray runs any code a caller sends to its ports; "
              "keep the cluster on a network only its nodes reach, with RAY_AUTH_MODE=token on every node "
              "(docs/serving.md, What Ray exposes)", file=sys.stderr)
    run(args.bundle, options, address=None if args.address == "local" else args.address, host=args.host, port=args.port,
        verbose=args.verbose)
    return 0


def cmd_train(args) -> int:
    from edgert.exporters.llm.train import train
    from edgert.runtime.host import get_host

    options = _parse_opts(args.opt)
    head = get_host().get("head", args.what).obj
    declared = getattr(head, "train_options", {}) or {}
    # --heads / --layers: Medusa's knobs as typed flags, for the heads that declare them
    for key in ("heads", "layers"):
        if getattr(args, key) is not None:
            if key not in declared:
                raise EdgertError(f"--{key}: head {args.what!r} has no {key!r} option "
                                  f"(its options: {sorted(declared) or 'none'})")
            options[key] = getattr(args, key)
    report = train(args.what, args.checkpoint, args.data, args.out, options=options, steps=args.steps, batch=args.batch,
                   samples=args.samples, prompt_len=args.prompt_len, new_tokens=args.new_tokens, lr=args.lr,
                   seed=args.seed, resume=not args.no_resume)
    print(f"wrote {args.out}: {report['kind']}, last batch top-1 " + " ".join(f"{a:.2f}" for a in report["top1"]))
    return 0


def cmd_tune_tree(args) -> int:
    import numpy as np

    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.tune import tune_tree

    gen = Generator(args.bundle, device=args.device, threads=args.threads)
    ids: list[int] = []
    for name in args.data:
        try:
            with open(name, encoding="utf-8") as f:
                ids += gen.tokenizer.encode(f.read(), add_special_tokens=False)
        except (OSError, UnicodeDecodeError) as err:
            raise EdgertError(f"{name}: cannot read sample text ({type(err).__name__})") from None
    if len(ids) < args.prompt_len + 1:
        raise EdgertError(f"sample text has {len(ids)} tokens; need more than --prompt-len {args.prompt_len}")
    starts = np.random.default_rng(0).integers(0, len(ids) - args.prompt_len, args.samples)
    prompts = [ids[s:s + args.prompt_len] for s in starts]
    choice = tune_tree(gen, prompts, args.new_tokens, args.top_k, args.max_nodes)
    print("tree tokens  expected tokens/pass  verify ms  expected tokens/s")
    for size, expected, ms, tps in choice.table:
        if size in (1, 2, 4, 8, 16, 32, 64) or size == len(choice.choices) + 1:
            print(f"{size:11d}  {expected:20.2f}  {ms:9.2f}  {tps:17.1f}" + ("   <- chosen" if size == len(choice.choices) + 1 else ""))
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(choice.choices, f)
    print(f"wrote {args.out}: {len(choice.choices)} nodes, expected {choice.expected_tokens:.2f} tokens per pass, "
          f"{choice.tokens_per_s:.1f} tokens/s on {gen.session.backend.describe()}")
    return 0


def cmd_keygen(args) -> int:
    from edgert.runtime.signing import generate_key

    private, public, key = generate_key(args.out)
    print(f"wrote {private} (private, keep it secret) and {public} (public, for --trusted-key); key id {key}")
    return 0


def cmd_sign(args) -> int:
    from edgert.runtime.signing import sign

    print(f"signed {args.bundle} with key {sign(args.bundle, args.key)}")
    return 0


def cmd_info(args) -> int:
    from edgert.runtime.bundle import Bundle

    bundle = Bundle.load(args.bundle)
    m = bundle.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"bundle     {shown(bundle.root)}")
    print(f"kind       {m['kind']}: {shown(m['plugin']['name'])} ({shown(m['plugin']['package'])} "
          f"{shown(m['plugin']['version'])})")
    if m["model"].get("paper"):
        print(f"paper      {shown(m['model']['paper'])}")
    training = set(m["model"].get("training_only", ()))  # dropout and the like: not what the graph computes
    print(f"options    {shown(', '.join(f'{k}={v}' for k, v in m['model']['options'].items() if k not in training))}")
    ckpt = m["model"].get("checkpoint")
    print(f"weights    {shown(ckpt['path']) if ckpt else 'random init (seed %d)' % m['model']['seed']}")
    print(f"precision  {shown(m['precision'])}")
    for line in _quantization_lines(m):
        print(line)
    for name, g in bundle.graphs.items():
        print(shown(f"graph      {name}: {g.file}" + (f" + engine {g.engine}" if g.engine else "")))
        width = max(12, *(len(t.name) for t in g.inputs + g.outputs))
        for side, tensors in (("input ", g.inputs), ("output", g.outputs)):
            for t in tensors:
                print(shown(f"  {side}   {t.name:<{width}} {t.dtype:<8} {t.shape_text()}"))
        if g.state:
            print(shown("  state    " + ", ".join(f"{o} -> {i}" for i, o in g.state)) + "  (streaming: run with --stream)")
    dec = m.get("decoder")
    if dec:
        print(f"decoder    context {dec['context']} positions, {dec['num_layers']} layers, KV cache {dec['kv_dtype']} "
              f"[batch, {dec['num_kv_heads']}, positions, {dec['head_dim']}], eos ids {dec['eos_token_ids']}, "
              f"chat template: {'yes' if dec.get('chat_template') else 'no'}")
        from edgert.runtime.llm.contract import heads_of

        extras = [shown(f"{name} head (graph {entry['graph']!r}"
                        + "".join(f", {k} {v}" for k, v in entry.items() if k != "graph") + ")")
                  for name, entry in heads_of(dec).items()]
        extras.append(f"verify graphs: {shown(', '.join(dec['verify']))}" if dec.get("verify") else "")
        if any(extras):
            print("speculate  " + "; ".join(e for e in extras if e))
    if m["preprocessing"]:
        print("preprocess " + shown(", ".join(f"{k}={v}" for k, v in m["preprocessing"].items())))
    labels = m["labels"]
    if labels:
        print(f"labels     {len(labels)}: {shown(', '.join(labels[:5]))}{', ...' if len(labels) > 5 else ''}")
    p = m["provenance"]
    print("provenance " + shown(", ".join(f"{k} {p[k]}" for k in ("edgert", "torch", "onnx", "onnxruntime", "opset") if k in p)
                                + f", created {p.get('created', '?')}"))
    for gname, report in m["parity"]["graphs"].items():
        for oname, r in report["outputs"].items():
            print(f"parity     {shown(gname)}/{shown(oname)}: max_rel {r['max_rel']:.3g}, max_abs {r['max_abs']:.3g} "
                  f"({_parity_bound(report, r)}, {shown(report['backend'])})")
    for rel in m["files"]:
        print(f"file       {shown(rel)} ({(bundle.root / rel).stat().st_size / 1e6:.1f} MB, sha256 verified)")
    from edgert.runtime.signing import SIGNATURE

    if bundle.signer:
        print(f"signature  ed25519, key {bundle.signer} (verified against the trusted keys)")
    else:
        print(f"signature  {'present, not checked (no trusted key configured)' if (bundle.root / SIGNATURE).is_file() else 'none'}")
    return 0


def cmd_run(args) -> int:
    from edgert.runtime.model import load
    from edgert.runtime.usage import usage_of

    model = load(args.bundle, backend=args.backend, device=args.device, threads=args.threads)
    if usage_of(model.bundle).kind == "decoder":
        raise EdgertError(f"{args.bundle}: a {model.bundle.kind} bundle; use 'edgert generate'")
    if args.stream:
        return _run_stream(model, args)
    for source in args.input:
        prediction = model.predict(source, top_k=args.top_k)
        timing = model.last_timing
        if args.json:
            print(json.dumps({"input": source, "top": prediction.top,
                              "prepare_ms": timing.prepare_s * 1e3, "infer_ms": timing.infer_s * 1e3}))
            continue
        print(source)
        if not prediction.top:  # a feature extractor
            vector = next(iter(prediction.outputs.values()))[0]
            print(f"  features: {vector.shape[0]}-d vector, L2 norm {float((vector ** 2).sum() ** 0.5):.3f}")
        for rank, (label, prob) in enumerate(prediction.top, 1):
            print(f"  {rank}. {shown(label):<32} {prob * 100:6.2f}%")
        total = (timing.prepare_s + timing.infer_s) * 1e3
        print(f"  time per clip: {total:.1f} ms (decode + preprocess {timing.prepare_s * 1e3:.1f} ms, "
              f"inference {timing.infer_s * 1e3:.1f} ms; {model.describe()})")
    return 0


def _run_stream(model, args) -> int:
    from edgert.runtime.stream import run_stream
    from edgert.runtime.usage import usage_of

    session = model.stream(window=args.window)
    session.top_k = args.top_k
    unit = usage_of(model.bundle).unit
    extractor = None
    if args.features:
        from edgert.runtime.model import load

        extractor = load(args.features, backend=args.backend, device=args.device, threads=args.threads)
    for source in args.input:
        if not args.json:
            print(f"{source} (streaming, scores averaged over the last {session.window} {unit}s)")
        latencies = []
        for st in run_stream(session, source, extractor):
            latencies.append(st.seconds)
            label, prob = st.prediction.top[0]
            if args.json:
                print(json.dumps({"input": source, unit: st.index, "top": st.prediction.top, "ms": st.seconds * 1e3}))
            else:
                print(f"  {unit} {st.index:6d}  {shown(label):<32} {prob * 100:6.2f}%  {st.seconds * 1e3:7.1f} ms")
        if latencies and not args.json:
            print(f"  {len(latencies)} {unit}s, {sum(latencies) / len(latencies) * 1e3:.1f} ms per {unit} "
                  f"(decode + preprocess + inference; {model.describe()})")
    return 0


def _load_array(path: str, what: str):
    from edgert.runtime.inputs import load_npy

    return load_npy(path, what)


def cmd_eval(args) -> int:
    import numpy as np

    from edgert.runtime.metrics import perframe_metrics, softmax, timeline_png

    labels = _load_array(args.labels, "labels")
    names: list[str] = []
    background, ambiguous = args.background, args.ambiguous
    if args.bundle:
        from edgert.runtime.model import load

        if not args.features:
            raise EdgertError("eval with a detector bundle needs --features FILE.npy")
        model = load(args.bundle, threads=args.threads)
        pre, names = model.bundle.preprocessing, model.bundle.labels
        ambiguous = int(pre.get("ambiguous", -1)) if ambiguous is None else ambiguous
        features = list(model.plugin.iter_steps(model.bundle, args.features))
        if len(labels) != len(features):
            raise EdgertError(f"{args.labels} has {len(labels)} labels but {args.features} has {len(features)} chunks")
        if "offline" in model.bundle.graphs:  # the paper's protocol: the whole video in one run
            how = "offline graph, one run"
            logits = model.run(model.plugin.prepare_graph(model.bundle, "offline", args.features), "offline")["scores"][0]
        else:
            how = "streamed, one step per chunk"
            session = model.stream(window=1)
            logits = np.stack([session.step(model.plugin.prepare_step(model.bundle, f))["scores"][0] for f in features])
        scores = softmax(logits)
    else:
        if not args.scores:
            raise EdgertError("eval needs --scores FILE.npy (or a detector bundle with --features)")
        scores = _load_array(args.scores, "scores")
        ambiguous = -1 if ambiguous is None else ambiguous
    result = perframe_metrics(scores, labels, background=background, ambiguous=ambiguous)
    names = names or [f"class {c}" for c in range(scores.shape[1])]
    print(f"frames: {result.frames} evaluated, {result.ignored_frames} ambiguous left out"
          + (f" ({how})" if args.bundle else ""))
    print(f"{'class':<24} {'positives':>9} {'AP':>8} {'cAP':>8}")
    for c, positives, ap, cap in result.per_class:
        cell = "no positives" if positives == 0 else f"{ap * 100:8.2f} {cap * 100:8.2f}"
        print(f"{shown(names[c])[:24]:<24} {positives:>9} {cell}")
    print(f"mAP  {result.map * 100:.2f}   (THUMOS'14 per-frame, background{'' if ambiguous < 0 else ' and ambiguous'} left out)")
    print(f"mcAP {result.mcap * 100:.2f}   (TVSeries calibrated)")
    if args.plot:
        timeline_png(args.plot, scores, labels, names, background, ambiguous)
        print(f"wrote {args.plot}")
    return 0


def _bench_decoder(bundle, args, threads: int) -> int:
    """Generation speed: a random prompt of up to 128 tokens, 64 new tokens, eos ignored."""
    import numpy as np

    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.sampling import SamplingParams

    if args.compare:
        raise EdgertError("--compare torch times detector bundles; for a decoder, benchmarks/bench_llm.py "
                          "compares it with transformers")
    if args.backend != "onnxruntime":
        raise EdgertError(f"decoder bundles run on onnxruntime, not {args.backend!r}")
    gen = Generator(bundle, device=args.device, threads=threads)
    gen.eos = set()  # time a fixed number of tokens
    prompt_len = min(128, gen.context // 2)
    new = min(64, gen.context - prompt_len)
    prompt = np.random.default_rng(0).integers(0, gen.session.vocab_size, prompt_len).tolist()
    print(f"{bundle.plugin_name} decoder: prompt {prompt_len} tokens, {new} new tokens, greedy; {threads} threads")
    for _ in range(args.warmup and 1):
        gen.generate(prompt[:8], SamplingParams(max_new_tokens=2))
    with step(f"generating {args.iters or 3} times"):
        runs = [gen.generate(prompt, SamplingParams(max_new_tokens=new)).stats for _ in range(args.iters or 3)]
    med = lambda values: float(np.median(values))  # noqa: E731
    print(f"prefill {med([r.prefill_tokens_per_s for r in runs]):.1f} tokens/s, time to first token "
          f"{med([r.ttft_s for r in runs]) * 1e3:.1f} ms, decode {med([r.decode_tokens_per_s for r in runs]):.1f} tokens/s "
          f"(median of {len(runs)} runs; {gen.session.backend.describe()})")
    return 0


def cmd_bench(args) -> int:
    import numpy as np

    from edgert.runtime.bench import measure
    from edgert.runtime.model import load

    threads = args.threads or os.cpu_count() or 1
    from edgert.runtime.bundle import Bundle
    from edgert.runtime.usage import usage_of

    bundle = Bundle.load(args.bundle)
    if usage_of(bundle).kind == "decoder":
        return _bench_decoder(bundle, args, threads)
    args.iters = args.iters or 20
    if args.compare == "torch":  # before the ONNX Runtime half, not after it
        try:
            import torch  # noqa: F401
        except ImportError:
            raise EdgertError("bench --compare torch needs torch: pip install 'edgert[export]'") from None
    model = load(bundle.root, backend=args.backend, device=args.device, threads=threads)
    graph = model.graph()
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in graph.inputs:
        shape = [d if isinstance(d, int) else args.batch for d in spec.dims]
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    print(f"{model.bundle.plugin_name} {graph.name}: inputs "
          + ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items()) + f"; {threads} threads")
    with step(f"timing {args.backend} ({args.device}): {args.warmup} warm-up and {args.iters} timed runs"):
        ours = measure(f"{args.backend} ({args.device})", lambda: model.run(feeds), args.iters, args.warmup, args.batch)
    print(ours.line())
    if args.compare == "torch":
        from edgert.exporters.compare import torch_runner

        run_torch, note = torch_runner(model.bundle, graph, feeds, threads)
        with step(f"timing pytorch eager: {args.warmup} warm-up and {args.iters} timed runs"):
            theirs = measure("pytorch eager", run_torch, args.iters, args.warmup, args.batch)
        print(theirs.line())
        print(f"ratio {args.backend}/pytorch: throughput {ours.throughput / theirs.throughput:.2f}x, "
              f"p50 latency {theirs.p50_ms / ours.p50_ms:.2f}x faster  ({note})")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with the user-error policy: one `edgert: error:` line (no usage block), exit 2."""

    def error(self, message):
        command = self.prog.removeprefix("edgert").strip()
        print(f"edgert: error: {command + ': ' if command else ''}{shown(message)} (see --help)", file=sys.stderr)
        sys.exit(2)


def _int(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside [{lo}, {hi}]")
        return value

    parse.__name__ = "integer"
    return parse


def _float(lo: float, hi: float, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (lo < value if low_open else lo <= value) or not value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {'(' if low_open else '['}{lo}, {hi}]")
        return value

    parse.__name__ = "number"
    return parse


def _deprecated(replacement: str, constant=None):
    """An argparse action for an old spelling: stores like ``replacement`` and warns once."""
    class Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"edgert: warning: {option_string} is deprecated, use {replacement} (the old spelling goes in the "
                  "next release)", file=sys.stderr)
            setattr(namespace, self.dest, values if constant is None else constant)
    return Deprecated


DEVICES = ["cpu", "cuda", "tensorrt-ep"]


def _device(text: str) -> str:
    if text == "trt":  # the previous release's name for ONNX Runtime's TensorRT execution provider
        print("edgert: warning: --device trt is deprecated, use --device tensorrt-ep (ONNX Runtime's TensorRT "
              "execution provider; the old spelling goes in the next release)", file=sys.stderr)
        return "tensorrt-ep"
    return text


THREADS = _int(1, 1024)
COUNT = _int(1, 1 << 20)
SEED = _int(0, 2**63 - 1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgert", description="Export PyTorch video models and LLM decoders to "
                                     "ONNX / TensorRT and run them at the edge.")
    parser.add_argument("--version", action="version", version=f"edgert {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list detectors, decoders, strategies, heads and backends, and where they come from")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("export", help="export a model to a bundle (needs edgert[export])")
    p.add_argument("model", help="model name, see 'edgert plugins'")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--checkpoint", help="weights to load (.pt/.pth/.safetensors; for decoders a Hugging Face "
                   "checkpoint directory or a GGUF file)")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="model option (repeatable)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8", "int4", "stored"],
                   help="fp32 (default), fp16, int8 (video: calibrated static QDQ, needs --calibration; decoders: "
                        "int8 weights), int4 (decoders: 4-bit block-wise weights) or stored (a GGUF's own blocks, "
                        "the default for a GGUF)")
    p.add_argument("--calibration", metavar="DATA", help="int8 video models: a folder of clips (videos, frame folders, "
                   ".npy) to calibrate on, a quarter held out for the accuracy check; decoders: text files or a "
                   "folder of them (GPTQ calibration, held-out perplexity)")
    p.add_argument("--quant", action="append", default=[], metavar="KEY=VALUE",
                   help="quantization knob (repeatable), e.g. calibration_method=percentile, block_size=64; "
                        "an unknown key lists the valid ones")
    p.add_argument("--tolerance", type=_float(0, 1e3, low_open=True), help="parity tolerance, max error relative to the output's scale "
                   "(default 1e-4 for fp32, 1e-2 for fp16)")
    p.add_argument("--seed", type=SEED, default=0, help="seed for random init and parity inputs")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument("--engine", action="store_true", help="also build a TensorRT engine per graph (needs edgert[trt])")
    p.add_argument("--engine-max-batch", type=_int(1, 4096), default=8, help="largest batch of the engine's profile")
    p.add_argument("--flavour", default="onnx", choices=["onnx", "trt"],
                   help="graph flavour: standard ONNX ops for ONNX Runtime (default), or trt: for LLM decoders edgert's "
                        "TensorRT plugin ops (EdgertAttention, EdgertTreeVerify, EdgertKVCompact), for int8 video "
                        "models TensorRT's explicit-quantization QDQ")
    # The spellings of the previous release, kept for one more (each warns once).
    p.add_argument("--trt-engine", dest="engine", nargs=0, action=_deprecated("--engine", True), help=argparse.SUPPRESS)
    p.add_argument("--trt-max-batch", dest="engine_max_batch", type=_int(1, 4096), action=_deprecated("--engine-max-batch"),
                   help=argparse.SUPPRESS)
    p.add_argument("--backend", dest="flavour", choices=["onnx", "trt"], action=_deprecated("--flavour"),
                   help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("generate", help="generate text with a decoder bundle")
    p.add_argument("bundle")
    p.add_argument("--prompt", required=True, help="prompt text ('-' reads it from stdin)")
    p.add_argument("--max-new-tokens", type=_int(1, 1 << 24), default=128)
    p.add_argument("--temperature", type=_float(0, 100), default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--top-k", type=_int(0, 1 << 24), default=0, help="sample from the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=_float(0, 1, low_open=True), default=1.0, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--repetition-penalty", type=_float(0, 100, low_open=True), default=1.0)
    p.add_argument("--seed", type=SEED, help="seed for sampling")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--strategy", default="ar", help="decoding strategy, see 'edgert plugins' (default ar)")
    p.add_argument("--strategy-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy option (repeatable), e.g. model=DRAFT_BUNDLE for --strategy draft")
    p.add_argument("--stats", action="store_true", help="report tokens per decoder pass and acceptance per depth")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="--chat: a system message")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument("--json", action="store_true", help="print one JSON object: text, tokens, stop reason, timings")
    p.add_argument("--backend", default="onnxruntime", help="backend plugin the graphs run on (default onnxruntime)")
    p.add_argument("--device", default="cpu", choices=DEVICES, type=_device)
    p.add_argument("--threads", type=THREADS, help="intra-op threads (default: all cores)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="talk with a decoder bundle in the terminal (its chat template, history, "
                       "streaming; Ctrl-C stops an answer, Ctrl-D leaves)")
    p.add_argument("bundle")
    p.add_argument("--system", help="a system message that starts the conversation")
    p.add_argument("--max-new-tokens", type=_int(1, 1 << 24), default=512, help="longest answer (default 512)")
    p.add_argument("--temperature", type=_float(0, 100), default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--top-k", type=_int(0, 1 << 24), default=0, help="sample from the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=_float(0, 1, low_open=True), default=1.0, help="nucleus sampling mass, in (0, 1]")
    p.add_argument("--repetition-penalty", type=_float(0, 100, low_open=True), default=1.0)
    p.add_argument("--seed", type=SEED, help="seed for sampling")
    p.add_argument("--strategy", default="ar", help="decoding strategy, see 'edgert plugins' (default ar)")
    p.add_argument("--strategy-opt", action="append", default=[], metavar="KEY=VALUE", help="its options (repeatable)")
    p.add_argument("--backend", default="onnxruntime", help="backend plugin the graphs run on (default onnxruntime)")
    p.add_argument("--device", default="cpu", choices=DEVICES, type=_device)
    p.add_argument("--threads", type=THREADS, help="intra-op threads (default: all cores)")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("serve", help="serve bundles over HTTP on Ray Serve: OpenAI-compatible decoders, detection, "
                       "streaming sessions (needs edgert[serve])")
    p.add_argument("bundle", nargs="+", help="a bundle folder, or NAME=FOLDER to serve it under NAME")
    p.add_argument("--replicas", action="append", metavar="N|NAME=N",
                   help="replicas of each model (default 1), or of the model NAME (repeatable)")
    p.add_argument("--cpus-per-replica", type=_float(0, 1024, low_open=True), default=1.0,
                   help="CPUs each replica reserves from Ray, and its ONNX Runtime threads (default 1)")
    p.add_argument("--address", default="local", help="local (default: start Ray in this process), auto (the cluster "
                   "this machine is in), or ray://HOST:PORT")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_int(1, 65535), default=8000, help="port of the HTTP API (default 8000)")
    p.add_argument("--verbose", action="store_true", help="show Ray's and Serve's own INFO lines on the terminal")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on every request (default: $EDGERT_API_KEY)")
    p.add_argument("--max-batch", type=_int(1, 1024), default=8, help="detection: requests batched into one run "
                   "(1: off; default 8)")
    p.add_argument("--batch-wait-ms", type=_float(0, 10_000), default=5.0,
                   help="detection: longest wait for a batch to fill (default 5)")
    p.add_argument("--max-upload-mb", type=_float(0, 1 << 20, low_open=True), default=64.0,
                   help="largest request body in MiB (default 64)")
    p.add_argument("--session-ttl", type=_float(0, 1e7, low_open=True), default=300.0,
                   help="streams idle this many seconds are closed (default 300)")
    p.add_argument("--max-queued", type=_int(-1, 1 << 20), default=64,
                   help="requests a model holds waiting beyond those its replicas serve; past it, 429 with Retry-After "
                        "at once (-1: no bound; default 64)")
    p.add_argument("--strategy", default="ar", help="decoding strategy of requests that name none (default ar)")
    p.add_argument("--strategy-opt", action="append", default=[], metavar="KEY=VALUE", help="its options (repeatable)")
    p.add_argument("--draft", action="append", default=[], metavar="NAME=BUNDLE",
                   help="a draft model requests may pick by NAME (strategy draft, strategy_options.model); a request "
                        "names nothing else on this machine (repeatable)")
    p.add_argument("--backend", default="onnxruntime", help="backend plugin the graphs run on (default onnxruntime)")
    p.add_argument("--device", default="cpu", choices=DEVICES, type=_device)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train", help="train a speculative head for a checkpoint (needs edgert[export])")
    p.add_argument("what", metavar="HEAD", help="the head to train: medusa (Medusa heads), mtp (a DeepSeek-style MTP "
                   "module), eagle (an EAGLE-3 draft layer), or another registered head that can be trained (see "
                   "'edgert plugins')")
    p.add_argument("--checkpoint", required=True, help="the base model: a Hugging Face checkpoint directory or a GGUF file")
    p.add_argument("--data", nargs="+", required=True, help="UTF-8 text files the prompts are cut from")
    p.add_argument("--out", required=True, help="file to write (.safetensors), in the head's own layout")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="head option (repeatable)")
    p.add_argument("--heads", type=_int(1, 64), help="medusa: number of heads (default 4)")
    p.add_argument("--layers", type=_int(1, 64), help="medusa: ResBlocks per head (default 1)")
    p.add_argument("--steps", type=COUNT, default=500)
    p.add_argument("--batch", type=_int(1, 4096), default=8)
    p.add_argument("--samples", type=COUNT, default=256, help="prompts the base model continues (self-distillation)")
    p.add_argument("--prompt-len", type=_int(1, 1 << 16), default=32)
    p.add_argument("--new-tokens", type=_int(1, 1 << 16), default=96, help="tokens of each continuation")
    p.add_argument("--lr", type=_float(0, 10, low_open=True), default=1e-3)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--no-resume", action="store_true", help="ignore a <out>.partial.safetensors from an interrupted run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune-tree", help="choose a Medusa tree by measured head accuracy and verify latency")
    p.add_argument("bundle", help="decoder bundle exported with Medusa heads")
    p.add_argument("--data", nargs="+", required=True, help="UTF-8 sample text the prompts are cut from")
    p.add_argument("--out", required=True, help="JSON file for the tree (use with --strategy-opt tree=FILE)")
    p.add_argument("--samples", type=COUNT, default=16, help="prompts decoded to measure the heads")
    p.add_argument("--prompt-len", type=_int(1, 1 << 16), default=64)
    p.add_argument("--new-tokens", type=_int(1, 1 << 16), default=64)
    p.add_argument("--top-k", type=_int(1, 1024), default=10)
    p.add_argument("--max-nodes", type=_int(1, 1024), default=63)
    p.add_argument("--device", default="cpu", choices=DEVICES, type=_device)
    p.add_argument("--threads", type=THREADS)
    p.set_defaults(func=cmd_tune_tree)

    p = sub.add_parser("info", help="show a bundle's manifest")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles (needs edgert[sign])")
    p.add_argument("--out", required=True, help="private key file to write (the public key goes to OUT.pub)")
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser("sign", help="sign a bundle's manifest (which pins every file) with a private key")
    p.add_argument("bundle")
    p.add_argument("--key", required=True, help="Ed25519 private key (PEM, from edgert keygen)")
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("eval", help="per-frame mAP / mcAP of online detection (scores file, or a detector bundle)")
    p.add_argument("bundle", nargs="?", help="detector bundle to run over --features")
    p.add_argument("--features", help="T x D chunk features (.npy) for the bundle")
    p.add_argument("--scores", help="T x C scores (.npy), instead of a bundle")
    p.add_argument("--labels", required=True, help="T class indices or T x C one-hot (.npy)")
    p.add_argument("--background", type=_int(0, 1 << 20), default=0, help="background class, left out of the mean")
    p.add_argument("--ambiguous", type=_int(0, 1 << 20), help="ambiguous class: its frames are dropped (default: the bundle's, else none)")
    p.add_argument("--plot", help="write a PNG timeline of scores and ground truth")
    p.add_argument("--threads", type=THREADS)
    p.set_defaults(func=cmd_eval)

    for name, func, text in (("run", cmd_run, "run a detector bundle on clips"),
                             ("bench", cmd_bench, "measure latency and throughput")):
        p = sub.add_parser(name, help=text)
        p.add_argument("bundle")
        p.add_argument("--backend", default="onnxruntime")
        p.add_argument("--device", default="cpu", choices=DEVICES, type=_device)
        p.add_argument("--threads", type=THREADS, help="intra-op threads (default: all cores)")
        p.set_defaults(func=func)
        if name == "run":
            p.add_argument("--input", action="append", required=True, help="video file, frame folder or .npy (repeatable)")
            p.add_argument("--top-k", type=_int(1, 1 << 20), default=5)
            p.add_argument("--json", action="store_true", help="one JSON line per input (per frame with --stream)")
            p.add_argument("--stream", action="store_true", help="feed the frames one by one to a streaming bundle")
            p.add_argument("--window", type=_int(1, 1 << 20), help="--stream: average scores over this many frames "
                           "(default: the bundle's)")
            p.add_argument("--features", metavar="EXTRACTOR", help="--stream with an online detector: a recognizer "
                           "bundle exported with --opt output=features turns the video's chunks into features")
        else:
            p.add_argument("--compare", choices=["torch"], help="also time PyTorch eager in the same run")
            p.add_argument("--iters", type=_int(1, 1 << 20), help="timed runs (default 20; 3 generations for a decoder)")
            p.add_argument("--warmup", type=_int(0, 1 << 20), default=3)
            p.add_argument("--batch", type=_int(1, 1024), default=1)
    for name, p in sub.choices.items():  # every command that loads a bundle checks its signature
        if name in ("generate", "chat", "tune-tree", "info", "eval", "run", "bench", "serve"):
            p.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                           help="public key the bundle must be signed by (repeatable; adds to EDGERT_TRUSTED_KEYS "
                                "and ~/.config/edgert/trusted_keys)")
    return parser


def _version() -> str:
    from edgert import __version__

    return __version__


class Terminated(KeyboardInterrupt):
    """SIGTERM: unwinds like Ctrl-C (every `finally` runs, so an export's staging directory goes),
    but what catches a Ctrl-C to go on (``edgert chat``) lets it through."""


def _terminate(signum, frame):
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "trusted_key", None):
        from edgert.runtime.signing import configure

        configure(args.trusted_key)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.func(args)
    except EdgertError as err:
        print(f"edgert: error: {shown(err)}", file=sys.stderr)
        return 1
    except ImportError as err:
        if err.name in ("torch", "onnx", "onnxscript", "safetensors"):
            print(f"edgert: error: '{args.command}' needs {err.name}: pip install 'edgert[export]'", file=sys.stderr)
            return 1
        return _internal(err)
    except KeyboardInterrupt:
        print("edgert: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgert info B | head`: the reader left; end quietly, as a SIGPIPE'd tool does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return _internal(err)
        where = err.filename or getattr(args, "out", None)  # torch.onnx's writer does not say which file
        print(f"edgert: error: no space left on the device{f' writing {where}' if where else ''} "
              f"({err.strerror})", file=sys.stderr)
        return 1
    except Exception as err:  # a bug (ours or a backend's): still one line, the traceback on request
        return _internal(err)


def _internal(err: Exception) -> int:
    if os.environ.get("EDGERT_DEBUG"):
        raise err
    print(f"edgert: error: internal error: {shown(one_line(err))} "
          "(EDGERT_DEBUG=1 shows the traceback; please report it)", file=sys.stderr)
    return 1
