"""--precision int8 / int4: calibrated QDQ video models and weight-only quantized decoders keep
their accuracy (measured on held-out data, recorded, enforced), really contain the quantized
operators, are smaller, and every bad request gets one line and leaves no bundle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error, edgert

from edgert.exporters.finetune import train
from edgert.exporters.synthetic import CLASSES, render_clip, write_video
from edgert.plugins.tsn import TSNDetector
from edgert.runtime.model import load

TINY = ["--opt", "backbone=resnet18", "--opt", "segments=3", "--opt", "size=48", "--opt", f"num_classes={len(CLASSES)}"]


def ops(path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A TSN-ResNet18 and a TSM-ResNet18 (trained offline, exported online too) trained for
    seconds on synthetic clips, the TSN's fp32 bundle, and 16 clips (mp4, .npy and a frame
    folder) to calibrate on, rendered with another seed."""
    import cv2
    import torch

    from edgert.plugins.tsm import TSMDetector

    root = tmp_path_factory.mktemp("int8")
    for detector, name in ((TSNDetector(), "tsn.pt"), (TSMDetector(), "tsm.pt")):
        opts = detector.resolve_options({"backbone": "resnet18", "segments": "3", "size": "48", "dropout": "0.2",
                                         "num_classes": str(len(CLASSES))})
        torch.manual_seed(0)
        model = detector.build(opts, None)
        train(model, render_clip, len(CLASSES), 3, detector.preprocessing(opts), steps=60)
        torch.save(model.state_dict(), root / name)
    data = root / "calibration"
    data.mkdir()
    rng = np.random.default_rng(7)
    for i in range(16):
        clip = render_clip(i % len(CLASSES), rng, frames=12)
        if i % 4 == 1:
            np.save(data / f"clip{i:02d}.npy", clip)
        elif i == 6:
            (data / f"clip{i:02d}").mkdir()
            for t, frame in enumerate(clip):
                cv2.imwrite(str(data / f"clip{i:02d}" / f"img_{t:05d}.jpg"), frame[..., ::-1])
        else:
            write_video(data / f"clip{i:02d}.mp4", clip)
    (data / "notes.txt").write_text("not a clip: skipped")
    assert edgert("export", "tsn", "--out", root / "fp32", "--checkpoint", root / "tsn.pt", *TINY).returncode == 0
    return root


def test_int8_recognizer_keeps_its_accuracy(trained, tmp_path):
    out = tmp_path / "int8"
    result = edgert("export", "tsn", "--out", out, "--checkpoint", trained / "tsn.pt", *TINY, "--precision", "int8",
                    "--calibration", trained / "calibration")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8"
    q = manifest["quantization"]["main"]
    assert q["accuracy"]["held_out_items"] == 4 and q["calibration"]["calibration_items"] == 12
    assert q["accuracy"]["decisive"] >= 3 and q["accuracy"]["decisive_agreement"] >= 0.98
    assert q["accuracy"]["top1_agreement"] >= 0.75 and q["accuracy"]["max_probability_difference"] < 0.05
    assert len(q["calibration"]["sha256"]) == 64 and q["float_ops"] == ["ReduceMean"]  # the consensus stays float
    counts = ops(out / "model.onnx")
    assert counts["QuantizeLinear"] > 10 and counts["DequantizeLinear"] > 20
    assert counts["ReduceMean"] == 2  # the global average pool and the consensus, both float
    fp32_size, int8_size = (sum(p.stat().st_size for p in folder.glob("model.onnx*")) for folder in (trained / "fp32", out))
    assert int8_size < 0.35 * fp32_size, (int8_size, fp32_size)
    assert "top1_agreement" in edgert("info", out).stdout

    # On fresh clips int8 still agrees with fp32 and with the truth.
    fp32, int8 = load(trained / "fp32"), load(out)
    rng = np.random.default_rng(123)
    agree, right = [], []
    for i in range(10):
        path = tmp_path / f"test{i}.npy"
        np.save(path, render_clip(i % len(CLASSES), rng, frames=12))
        a, b = fp32.predict(path).top[0][0], int8.predict(path).top[0][0]
        agree.append(a == b)
        right.append(b == f"class_{i % len(CLASSES)}")
    assert np.mean(agree) >= 0.9 and np.mean(right) >= 0.8, (agree, right)

    # The same calibration gives the same digest: the manifest names the data it was made from.
    again = edgert("export", "tsn", "--out", tmp_path / "again", "--checkpoint", trained / "tsn.pt", *TINY,
                   "--precision", "int8", "--calibration", trained / "calibration", "--quant", "calibration_method=percentile")
    assert again.returncode == 0, again.stderr
    q2 = json.loads((tmp_path / "again" / "manifest.json").read_text())["quantization"]["main"]
    assert q2["calibration"]["sha256"] == q["calibration"]["sha256"] and q2["params"]["percentile"] == 99.999


def test_tensorrt_flavour_is_symmetric_qdq(trained, tmp_path):
    """--flavour trt --precision int8: TensorRT's explicit quantization wants int8 Q/DQ with zero
    points 0, per-channel weight scales on the output-channel axis."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "trt"
    result = edgert("export", "tsn", "--out", out, "--checkpoint", trained / "tsn.pt", *TINY, "--precision", "int8",
                    "--flavour", "trt", "--calibration", trained / "calibration")
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert quantize
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zero = inits[node.input[2]]
            if zero.dtype == np.int32:  # a bias's DQ (int32 with zero point 0)
                assert not zero.any()
                continue
            assert zero.dtype == np.int8 and not zero.any(), node.name
    per_channel = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                   and inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1]
    assert per_channel and all(next((a.i for a in n.attribute if a.name == "axis"), 1) == 0 for n in per_channel)
    assert "TensorRT explicit" in json.loads((out / "manifest.json").read_text())["quantization"]["main"]["format"]


def test_streaming_and_feature_graphs(trained, tmp_path):
    """Online TSM calibrates step by step with the fp32 state carried; its state stays float.
    A feature extractor is held to the cosine similarity of its features."""
    out = tmp_path / "online"
    result = edgert("export", "tsm", "--out", out, "--checkpoint", trained / "tsm.pt", "--opt", "online=true", *TINY,
                    "--precision", "int8", "--calibration", trained / "calibration")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    accuracy = manifest["quantization"]["main"]["accuracy"]
    assert accuracy["compared"] == 4 * 12 and accuracy["decisive_agreement"] >= 0.98  # every held-out frame
    assert all(t["dtype"] == "float32" for t in manifest["graphs"]["main"]["inputs"])
    stream = load(out).stream()
    assert stream.push(render_clip(0, np.random.default_rng(1), frames=1)[0]).top

    features = edgert("export", "tsn", "--out", tmp_path / "features", "--checkpoint", trained / "tsn.pt", *TINY,
                      "--opt", "output=features", "--precision", "int8", "--calibration", trained / "calibration")
    assert features.returncode == 0, features.stderr
    acc = json.loads((tmp_path / "features" / "manifest.json").read_text())["quantization"]["main"]["accuracy"]
    assert acc["min_cosine_similarity"] >= 0.99
    failed = edgert("export", "tsn", "--out", tmp_path / "strict", "--checkpoint", trained / "tsn.pt", *TINY,
                    "--opt", "output=features", "--precision", "int8", "--calibration", trained / "calibration",
                    "--quant", "min_cosine=1")
    assert_user_error(failed, "int8 accuracy check failed", "cosine similarity", "< min_cosine 1", "no bundle was written")
    assert not (tmp_path / "strict").exists()


def test_bad_calibration_requests(trained, tmp_path):
    out = tmp_path / "b"
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int4"),
                      "--precision int4 quantizes LLM decoder weights", "fp32, fp16 or int8")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8"), "needs --calibration DATA")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--calibration", trained / "calibration"),
                      "--calibration: only --precision int8 / int4")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--quant", "holdout=0.5"),
                      "--quant holdout=...", "not fp32")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration",
                             trained / "calibration", "--quant", "bins=3"), "unknown option 'bins'", "calibration_method")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration",
                             trained / "calibration", "--quant", "calibration_method=kl"), "expected one of")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--flavour", "trt"), "--flavour trt --precision fp32")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no clips here")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration", empty),
                      f"--calibration {empty}: holds no clips")
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration",
                             tmp_path / "missing"), "not a folder")
    fifo = tmp_path / "fifo"
    (fifo / "frames").mkdir(parents=True)
    np.save(fifo / "ok.npy", render_clip(0, np.random.default_rng(0), frames=6))
    os.mkfifo(fifo / "frames" / "0001.png")  # opened, it would block the export for ever
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration", fifo),
                      f"--calibration {fifo / 'frames' / '0001.png'}: not a regular file")
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(4):
        np.save(broken / f"ok{i}.npy", render_clip(i, np.random.default_rng(i), frames=6))
    (broken / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration", broken),
                      "--calibration:", "garbage.mp4")
    (broken / "garbage.mp4").unlink()
    np.save(broken / "wrong.npy", np.zeros((4, 5), np.float32))
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration", broken),
                      "wrong.npy", "T x H x W x 3 uint8")
    (broken / "wrong.npy").unlink()
    assert_user_error(edgert("export", "tsn", "--out", out, *TINY, "--precision", "int8", "--calibration", broken,
                             "--quant", "calibration_batch=8"), "3 clips to calibrate on, fewer than calibration_batch=8")
    assert not out.exists() and not list(tmp_path.glob(".b.*"))


# ---- decoders -------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers", reason="the tiny checkpoints are made with transformers")

from llm_checkpoints import make_llama, make_qwen2  # noqa: E402

# Random-weight checkpoints have no margins to speak of: the top two logits often differ by less
# than quantization noise, so the tests set bounds a trained model beats by far (the defaults are
# set from the trained benchmark model, docs/benchmarks.md), and check that the bounds bite.
LOOSE = ["--quant", "min_agreement=0.5", "--quant", "max_perplexity_ratio=2"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant-llm")
    make_llama(root / "llama")
    make_qwen2(root / "qwen2")
    return root


@pytest.mark.parametrize("family, precision", [("llama", "int4"), ("llama", "int8"), ("qwen2", "int4")])
def test_quantized_decoders(checkpoints, tmp_path, family, precision):
    out = tmp_path / "bundle"
    result = edgert("export", "llama", "--checkpoint", checkpoints / family, "--out", out, "--precision", precision, *LOOSE)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    q = manifest["quantization"]["decoder"]
    assert manifest["precision"] == precision and manifest["decoder"]["kv_dtype"] == "float32"
    counts = ops(out / "decoder.onnx")
    # per layer q/k/v merged into one, o, gate/up merged into one, down; and the lm_head
    assert "MatMul" not in counts and counts["MatMulNBits"] == 9 and q["params"]["merged_matmuls"] == 6
    if precision == "int4":
        assert counts["GatherBlockQuantized"] == 1 and "Gather" not in counts
        assert q["weight_bytes"] <= 0.3 * q["fp32_weight_bytes"], q
    else:
        assert counts["Gather"] == 1 and q["weight_bytes"] <= 0.5 * q["fp32_weight_bytes"], q
    assert q["params"]["untied_lm_head"] is (family == "qwen2")  # the tied head got its own quantized copy
    # RoPE and attention one node each; Qwen2's q/k/v biases inside the MatMulNBits; every
    # residual Add inside the norm after it: no Add left
    assert counts["RotaryEmbedding"] == 4 and counts["GroupQueryAttention"] == 2 and "Add" not in counts, counts
    assert counts["SkipSimplifiedLayerNormalization"] == 4 and q["params"]["fused_residual_norms"] == 4
    assert q["params"]["folded_biases"] == (2 if family == "qwen2" else 0)
    accuracy = q["accuracy"]
    assert accuracy["greedy_positions"] == 96 and accuracy["perplexity_ratio"] < 2 and accuracy["greedy_agreement"] >= 0.5
    assert len(q["calibration"]["sha256"]) == 64
    generated = edgert("generate", out, "--prompt", "The quick brown fox", "--max-new-tokens", "12")
    assert generated.returncode == 0 and "12 new tokens" in generated.stderr, generated.stderr
    assert "greedy_agreement" in edgert("info", out).stdout


def test_graph_passes_keep_the_numbers(checkpoints, tmp_path, monkeypatch):
    """Bias folding and residual-norm fusion change the graph, not its outputs: the quantized
    Qwen2 decoder with and without them, on a prefill and a decode step."""
    import onnx
    import onnxruntime as ort

    from edgert.exporters.llm import weights
    from edgert.exporters.precision import resolve_quantization

    fp32 = tmp_path / "fp32"
    assert edgert("export", "llama", "--checkpoint", checkpoints / "qwen2", "--out", fp32).returncode == 0
    knobs = resolve_quantization("decoder", "int4", "onnx", {}, None)
    (tmp_path / "fused").mkdir()
    (tmp_path / "plain").mkdir()
    fused = weights.quantize_graph(fp32 / "decoder.onnx", tmp_path / "fused" / "decoder.onnx", 4, knobs)
    monkeypatch.setattr(weights, "fold_biases", lambda model: 0)
    monkeypatch.setattr(weights, "fuse_residual_norms", lambda model: 0)
    weights.quantize_graph(fp32 / "decoder.onnx", tmp_path / "plain" / "decoder.onnx", 4, knobs)
    assert fused["params"]["folded_biases"] == 2 and fused["params"]["fused_residual_norms"] == 4
    assert "Add" in ops(tmp_path / "plain" / "decoder.onnx") and "Add" not in ops(tmp_path / "fused" / "decoder.onnx")
    onnx.checker.check_model(str(tmp_path / "fused" / "decoder.onnx"))  # still in topological order
    assert_same_outputs(tmp_path / "fused" / "decoder.onnx", tmp_path / "plain" / "decoder.onnx")


def assert_same_outputs(a: Path, b: Path) -> None:
    """Two decoder graphs give the same outputs on a prefill and a decode step."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for path in (a, b)]
    rng = np.random.default_rng(0)
    kv = {i.name: i.shape for i in sessions[0].get_inputs() if i.name.startswith("past_key_values.")}
    for past, new in ((0, 7), (7, 1)):
        feeds = {"input_ids": rng.integers(0, 256, (1, new)), "position_ids": np.arange(past, past + new)[None],
                 "attention_mask": np.tril(np.ones((new, past + new), bool), past)[None],
                 "logit_positions": np.arange(new)[None]}
        feeds |= {name: rng.standard_normal((1, shape[1], past, shape[3])).astype(np.float32) for name, shape in kv.items()}
        got, want = (s.run(None, feeds) for s in sessions)
        for x, y in zip(got, want):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)


def test_hqq_float_zero_points_become_integer_ones_and_minimums(checkpoints, tmp_path, monkeypatch):
    """ONNX Runtime's HQQ quantizer writes float zero points (the CPU kernel's slow path, which
    dequantizes every call) and no accuracy_level: edgert rewrites them as zero point 0 plus a
    block-minimum term, the same outputs."""
    import onnx

    from edgert.exporters.llm import weights
    from edgert.exporters.precision import resolve_quantization

    fp32 = tmp_path / "fp32"
    assert edgert("export", "llama", "--checkpoint", checkpoints / "llama", "--out", fp32).returncode == 0
    knobs = resolve_quantization("decoder", "int4", "onnx", {"method": "hqq", "accuracy_level": "0"}, None)
    (tmp_path / "integer").mkdir()
    (tmp_path / "float").mkdir()
    record = weights.quantize_graph(fp32 / "decoder.onnx", tmp_path / "integer" / "decoder.onnx", 4, knobs)
    monkeypatch.setattr(weights, "integer_zero_points", lambda model: 0)
    weights.quantize_graph(fp32 / "decoder.onnx", tmp_path / "float" / "decoder.onnx", 4, knobs)
    model = onnx.load(str(tmp_path / "integer" / "decoder.onnx"))
    onnx.checker.check_model(model)
    inits = {i.name: i for i in model.graph.initializer}
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert record["params"]["float_zero_points_as_minimums"] == len(nbits) > 0
    assert all(inits[n.input[3]].data_type == onnx.TensorProto.UINT8 for n in nbits)
    assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in nbits)
    assert_same_outputs(tmp_path / "integer" / "decoder.onnx", tmp_path / "float" / "decoder.onnx")


def test_gptq_and_the_accuracy_bound(checkpoints, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    rng = np.random.default_rng(0)
    words = "the quick brown fox jumps over the lazy dog and edge devices run small models".split()
    (text / "a.txt").write_text(" ".join(rng.choice(words, 1500)))
    out = tmp_path / "gptq"
    result = edgert("export", "llama", "--checkpoint", checkpoints / "llama", "--out", out, "--precision", "int4",
                    "--quant", "method=gptq", "--calibration", text, *LOOSE)
    assert result.returncode == 0, result.stderr
    q = json.loads((out / "manifest.json").read_text())["quantization"]["decoder"]
    assert q["params"]["method"] == "gptq" and q["calibration"]["calibration_sequences"] >= 3
    assert ops(out / "decoder.onnx")["MatMulNBits"] == 9

    strict = edgert("export", "llama", "--checkpoint", checkpoints / "llama", "--out", tmp_path / "strict",
                    "--precision", "int4", "--quant", "min_agreement=1")
    line = assert_user_error(strict, "int4 accuracy check failed for llama: greedy agreement with fp32",
                             "< min_agreement 100.0%", "no bundle was written")
    assert "%" in line and not (tmp_path / "strict").exists() and not list(tmp_path.glob(".strict.*"))


def test_bad_decoder_quantization_requests(checkpoints, tmp_path):
    ckpt, out = checkpoints / "llama", tmp_path / "b"
    assert_user_error(edgert("export", "llama", "--checkpoint", ckpt, "--out", out, "--precision", "int4", "--quant",
                             "method=gptq"), "method=gptq needs --calibration TEXTFILES")
    for method in ("hqq", "gptq"):
        assert_user_error(edgert("export", "llama", "--checkpoint", ckpt, "--out", out, "--precision", "int8", "--quant",
                                 f"method={method}", "--calibration", ckpt / "tokenizer.json"), f"method={method}", "4-bit")
    assert_user_error(edgert("export", "llama", "--checkpoint", ckpt, "--out", out, "--precision", "int4", "--quant",
                             "block_size=24"), "--quant block_size=24", "power of two")
    assert_user_error(edgert("export", "llama", "--checkpoint", ckpt, "--out", out, "--precision", "int4", "--flavour",
                             "trt"), "--flavour trt --precision int4", "runs fp16")
    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert_user_error(edgert("export", "llama", "--checkpoint", ckpt, "--out", out, "--precision", "int4",
                             "--calibration", short), f"--calibration {short}", "tokens; at least")
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "x.txt").write_bytes(b"\xff\xfe\x00bad")
    assert_user_error(edgert("export", "llama", "--checkpoint", ckpt, "--out", out, "--precision", "int4",
                             "--calibration", binary), "cannot be read as UTF-8")
    assert not out.exists()


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random Llama as wide as SmolLM2-135M (hidden 576, MLP 1536), 2 layers: wide enough for
    ONNX Runtime's single-row MatMulNBits path to differ from its several-row one (the tiny
    test models are not)."""
    import shutil

    import torch
    import transformers

    root = tmp_path_factory.mktemp("wide")
    make_llama(root / "tiny")
    (root / "ckpt").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(root / "tiny" / name, root / "ckpt" / name)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=576, intermediate_size=1536, num_hidden_layers=2,
                                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=256,
                                      bos_token_id=0, eos_token_id=1, pad_token_id=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(root / "ckpt")
    return root / "ckpt"


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_step_computes_what_a_verify_pass_computes(wide, tmp_path, precision):
    """With the default two-row steps (int8 activations) a token's logits are bit-identical alone
    and inside a verify pass, and lookup's greedy text is ar's. One-row steps differ here (by
    1e-6 to 1e-2 of the logits on this machine, by up to 0.9 on SmolLM2-135M), which is what
    made speculation on quantized bundles leave ar's text."""
    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.sampling import SamplingParams

    out = tmp_path / "bundle"
    result = edgert("export", "llama", "--checkpoint", wide, "--out", out, "--precision", precision,
                    "--quant", "min_agreement=0", "--quant", "max_perplexity_ratio=1e6")
    assert result.returncode == 0, result.stderr
    gen = Generator(out)
    assert gen.info["step_rows"] == 2
    session, ids = gen.session, list(range(5, 60))
    cache = session.new_cache(128)
    session.extend(cache, ids[:40])
    verify = session.extend(cache, ids[40:49], logits_at=list(range(9)))[0]
    cache = session.new_cache(128)
    session.extend(cache, ids[:40])
    steps = np.array([session.extend(cache, [t])[0][-1] for t in ids[40:49]])
    np.testing.assert_array_equal(steps, verify)
    assert cache.length == 49  # the copy rows left nothing behind
    gen.eos = set()
    params = SamplingParams(max_new_tokens=48)
    assert gen.generate(ids[:20], params, strategy="lookup").tokens == gen.generate(ids[:20], params).tokens
    _a_tree_verify_computes_what_steps_compute(session, ids[:40])


def _a_tree_verify_computes_what_steps_compute(session, prompt):
    """A greedy tree verify accepts, keeps in the cache and hands on exactly what single steps
    compute, for a path off the tree's first chain too (whose rows saw a masked-out sibling
    among their keys: 4e-3 off here in one pass, 0.77 on SmolLM2-135M at int4), and for a tree
    of the root alone (one row)."""
    from edgert.runtime.llm.generator import Decoding, GenerationStats
    from edgert.runtime.llm.sampling import Sampler, SamplingParams
    from edgert.runtime.llm.tree import Tree

    def steps(tokens):
        cache = session.new_cache(128)
        session.extend(cache, prompt)
        outs = [session.extend(cache, [t]) for t in tokens]
        kv = {name: np.array(value[:, :, :cache.length]) for name, value in cache.past().items()}
        return np.array([o.logits[-1] for o in outs]), np.concatenate([o.hidden for o in outs]), kv

    def verify(tree, tokens, params=SamplingParams()):
        d = Decoding(session, prompt, Sampler(params), 128, GenerationStats())
        d.prefill()
        verdict = d.verify(tree, tokens)
        kv = {name: np.array(value[:, :, :d.cache.length]) for name, value in d.cache.past().items()}
        return verdict, d.hidden, kv

    root = 50
    logits, _, _ = steps([root])
    second, best = np.argsort(logits[0])[-2:]
    logits, hidden, kv = steps([root, best])
    grand = int(logits[1].argmax())
    logits, hidden, kv = steps([root, best, grand])
    # node order: the root, a rejected sibling (the first child), the accepted child, its child
    verdict, d_hidden, d_kv = verify(Tree(np.array([-1, 0, 0, 2])), [root, second, best, grand])
    assert verdict.path == [0, 2, 3] and verdict.bonus == int(logits[2].argmax())
    np.testing.assert_array_equal(d_hidden, hidden)
    for name in kv:
        np.testing.assert_array_equal(d_kv[name], kv[name])
    # sampling (the op walks the same way): whatever path a seed accepts is kept as steps make it
    walked = set()
    for seed in range(12):
        verdict, d_hidden, d_kv = verify(Tree(np.array([-1, 0, 0, 2])), [root, second, best, grand],
                                         SamplingParams(temperature=0.1, seed=seed))
        walked.add(tuple(verdict.path))
        _, hidden, kv = steps([[root, second, best, grand][i] for i in verdict.path])
        np.testing.assert_array_equal(d_hidden, hidden)
        for name in kv:
            np.testing.assert_array_equal(d_kv[name], kv[name])
    assert (0, 2) in walked or (0, 2, 3) in walked, walked
    verdict, d_hidden, d_kv = verify(Tree.chain(1), [root])
    logits, hidden, kv = steps([root])
    assert verdict.path == [0] and verdict.bonus == int(logits[0].argmax())
    np.testing.assert_array_equal(d_hidden, hidden)
