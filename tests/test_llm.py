"""Decoder bundles against transformers: export, logits with a KV cache, greedy generation,
cache edits for speculation, sampling, streaming, the CLI and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="transformers is the reference (installed by the dev extra)")
torch = pytest.importorskip("torch")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import make_llama, make_qwen2, transformers_greedy  # noqa: E402

from edgert.runtime.llm.generator import Decoding, GenerationStats, Generator  # noqa: E402
from edgert.runtime.llm.sampling import Sampler, SamplingParams  # noqa: E402

PROMPTS = ["The quick brown fox", "Speculative decoding", "def add(a, b):", "Grüße aus Köln"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request, tmp_path_factory):
    """(transformers reference, checkpoint dir, fp32 bundle) for each family."""
    root = tmp_path_factory.mktemp(request.param)
    reference = (make_llama if request.param == "llama" else make_qwen2)(root / "ckpt")
    result = edgert("export", "llama", "--checkpoint", root / "ckpt", "--out", root / "bundle")
    assert result.returncode == 0, result.stderr
    return reference, root / "ckpt", root / "bundle"


def hf_logits(reference, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0].numpy()


def test_logits_match_transformers_prefill_and_cached_decode(model):
    reference, _, bundle = model
    gen = Generator(bundle)
    ids = gen.tokenizer.encode("The quick brown fox jumps over the lazy dog")
    expected = hf_logits(reference, ids)
    scale = np.abs(expected).max()
    prefill = len(ids) - 5
    d = Decoding(gen.session, ids[:prefill], Sampler(SamplingParams()), len(ids), GenerationStats())
    logits, hidden = d.forward(ids[:prefill], logits_at=range(prefill))
    np.testing.assert_allclose(logits, expected[:prefill], atol=1e-4 * scale)
    assert hidden.shape == (prefill, reference.config.hidden_size)
    for t in range(prefill, len(ids)):  # decode steps over the cache
        np.testing.assert_allclose(d.step(ids[t]), expected[t], atol=1e-4 * scale)
    assert d.cache.length == len(ids)


def test_greedy_64_tokens_equal_transformers_generate(model):
    reference, _, bundle = model
    gen = Generator(bundle)
    for prompt in PROMPTS:
        expected = transformers_greedy(reference, gen.tokenizer.encode(prompt))
        result = gen.generate(prompt, SamplingParams(max_new_tokens=64))
        assert result.tokens == expected, prompt
        assert result.stop_reason == ("max_new_tokens" if len(expected) == 64 else "eos")


def test_batch_with_padding_equals_one_prompt_at_a_time(model):
    _, _, bundle = model
    gen = Generator(bundle)
    params = SamplingParams(max_new_tokens=24)
    prompts = PROMPTS + ["x"]  # different lengths: up to several padding positions per row
    batched = gen.generate_batch(prompts, params)
    for prompt, result in zip(prompts, batched):
        alone = gen.generate(prompt, params)
        assert (result.tokens, result.text, result.stop_reason) == (alone.tokens, alone.text, alone.stop_reason), prompt
    sampled = SamplingParams(max_new_tokens=12, temperature=3.0, seed=5)
    assert [r.tokens for r in gen.generate_batch(prompts[:2], sampled)] == [gen.generate(p, sampled).tokens for p in prompts[:2]]


def test_tree_verify_then_compaction_equals_the_linear_run(model):
    """Two sibling candidates verified in one pass, the second kept: the cache then behaves as
    if only that branch had ever been run (positions, RoPE and all)."""
    _, _, bundle = model
    gen = Generator(bundle)
    ids = gen.tokenizer.encode("Edge devices run small")
    x, y, z = 40, 41, 42
    tree = Decoding(gen.session, ids, Sampler(SamplingParams()), len(ids) + 4, GenerationStats())
    tree.forward(ids)
    n = len(ids)
    logits = tree.forward([x, y], mask=np.eye(2, dtype=bool), positions=[n, n], logits_at=[0, 1]).logits
    tree.cache.keep(list(range(n)) + [n + 1])  # accept y
    after = tree.step(z)
    linear = Decoding(gen.session, ids, Sampler(SamplingParams()), len(ids) + 4, GenerationStats())
    linear.forward(ids)
    np.testing.assert_allclose(logits[1], linear.forward([y])[0][0], atol=1e-4)
    np.testing.assert_allclose(after, linear.step(z), atol=1e-4)
    linear.cache.truncate(n)  # and truncation: back to the prompt, the other branch
    np.testing.assert_allclose(linear.forward([x])[0][0], logits[0], atol=1e-4)


def test_in_place_cache_by_default_and_concat_on_request(model, tmp_path):
    """The default bundle's attention is GroupQueryAttention over caches of a fixed capacity,
    driven with one buffer per tensor bound as past and present; ``--opt kv_cache=concat`` gives
    ONNX Attention and the swapped dense caches. Both generate the same tokens, plain and with
    a strategy that verifies several tokens and truncates."""
    import onnx

    from edgert.runtime.bundle import Bundle
    from edgert.runtime.llm.kvcache import InPlaceKVCache, KVCache

    _, ckpt, bundle = model
    concat = tmp_path / "concat"
    result = edgert("export", "llama", "--checkpoint", ckpt, "--out", concat, "--opt", "kv_cache=concat")
    assert result.returncode == 0, result.stderr
    for path, op, dim, cache in ((bundle, "GroupQueryAttention", "capacity", InPlaceKVCache),
                                 (concat, "Attention", "past_sequence_length", KVCache)):
        ops = {n.op_type for n in onnx.load(str(path / "decoder.onnx"), load_external_data=False).graph.node}
        assert op in ops and not ({"Attention", "GroupQueryAttention"} - {op}) & ops, ops
        past = next(t for t in Bundle.load(path).graph("decoder").inputs if t.name == "past_key_values.0.key")
        assert past.dims[2] == dim
        assert type(Generator(path).session.new_cache(8)) is cache
    params = SamplingParams(max_new_tokens=40)
    in_place, dense = Generator(bundle), Generator(concat)
    for prompt in PROMPTS[:2]:
        for strategy in ("ar", "lookup"):
            assert in_place.generate(prompt, params, strategy=strategy).tokens == \
                dense.generate(prompt, params, strategy=strategy).tokens, (prompt, strategy)


def test_rope_and_packed_qkv_inside_the_attention_node(tmp_path):
    """Heads of 16 dims (GroupQueryAttention rotates multiples of 16): RoPE moves into the
    attention node, and at int4 the merged q/k/v reach it packed; greedy text stays
    transformers' (fp32) and every strategy stays lossless (int4)."""
    import onnx

    reference = make_llama(tmp_path / "ckpt", heads=4)
    loose = ["--quant", "min_agreement=0", "--quant", "max_perplexity_ratio=100"]
    for name, extra in (("fp32", []), ("int4", ["--precision", "int4", *loose])):
        result = edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / name, *extra)
        assert result.returncode == 0, result.stderr
    for name in ("fp32", "int4"):
        nodes = onnx.load(str(tmp_path / name / "decoder.onnx"), load_external_data=False).graph.node
        attention = [n for n in nodes if n.op_type == "GroupQueryAttention"]
        assert len(attention) == 2 and not [n for n in nodes if n.op_type == "RotaryEmbedding"]
        assert all(onnx.helper.get_attribute_value(a) == 1 for n in attention for a in n.attribute if a.name == "do_rotary")
        assert all(n.input[1] == n.input[2] == "" for n in attention) is (name == "int4")  # packed q‖k‖v
    fp32, int4 = Generator(tmp_path / "fp32"), Generator(tmp_path / "int4")
    params = SamplingParams(max_new_tokens=32)
    for prompt in PROMPTS[:2]:
        ids = fp32.tokenizer.encode(prompt)
        assert fp32.generate(prompt, params).tokens == transformers_greedy(reference, ids, 32)
        plain = int4.generate(prompt, params).tokens
        assert int4.generate(prompt, params, strategy="lookup").tokens == plain


def test_in_place_cache_grows_and_rebinds(model):
    """A cache made too small grows while decoding (new buffers, bound again) and keeps what it
    held: the logits equal those of a cache that was large enough from the start."""
    _, _, bundle = model
    session = Generator(bundle).session
    ids = Generator(bundle).tokenizer.encode("Edge devices run small language models")
    small, large = session.new_cache(2), session.new_cache(64)
    for cache in (small, large):
        session.extend(cache, ids)
    after_prompt = small.version  # it grew to hold the prompt
    for token in [40, 41, 42, 43, 44, 45, 46, 47]:
        got, want = session.extend(small, [token]).logits, session.extend(large, [token]).logits
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert small.length == large.length == len(ids) + 8 <= small.capacity < large.capacity
    assert small.version > after_prompt > 1  # grown again while decoding, bound again each time
    with pytest.raises(ValueError, match="outside"):
        small.keep([0, small.length])


def test_fp16_export_close_to_fp32_and_same_greedy_text(model, tmp_path):
    reference, ckpt, bundle = model
    result = edgert("export", "llama", "--checkpoint", ckpt, "--out", tmp_path / "fp16", "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "fp16" / "manifest.json").read_text())
    assert manifest["decoder"]["kv_dtype"] == "float16"
    assert manifest["parity"]["graphs"]["decoder"]["outputs"]["logits"]["max_rel"] <= 1e-2
    # the rotary inverse frequencies stay fp32, as in transformers' fp16 model: rounded to fp16
    # they would turn position 2048 by up to 0.3 rad
    import onnx
    from onnx import numpy_helper

    from edgert.exporters.llm.llama import load_decoder

    inv_freq = load_decoder(ckpt).inv_freq.numpy()
    graph = onnx.load(tmp_path / "fp16" / "decoder.onnx", load_external_data=False).graph
    tables = [numpy_helper.to_array(t).ravel() for t in graph.initializer if np.prod(t.dims) == inv_freq.size]
    assert any(t.dtype == np.float32 and np.array_equal(t, inv_freq) for t in tables), [t.dtype for t in tables]
    fp16, fp32 = Generator(tmp_path / "fp16"), Generator(bundle)
    for prompt in PROMPTS:
        ids = fp32.tokenizer.encode(prompt)
        expected = hf_logits(reference, ids)[-1]
        got = fp16.generate(ids, SamplingParams(max_new_tokens=1)).tokens
        top2 = np.sort(expected)[-2:]
        if top2[1] - top2[0] > 0.05 * np.abs(expected).max():  # not a near tie: the choice must agree
            assert got == [int(expected.argmax())], prompt
        a = fp32.generate(prompt, SamplingParams(max_new_tokens=24))
        b = fp16.generate(prompt, SamplingParams(max_new_tokens=24))
        # Identical until the first position where fp32's own top-2 gap was a near tie.
        same = next((i for i, (p, q) in enumerate(zip(a.tokens, b.tokens)) if p != q), len(a.tokens))
        if same < len(a.tokens):
            ctx = ids + a.tokens[:same]
            logits = hf_logits(reference, ctx)[-1]
            gap = np.diff(np.sort(logits)[-2:])[0]
            assert gap < 0.05 * np.abs(logits).max(), (prompt, same, gap)


def test_sampling_is_seeded_and_top_k_1_is_greedy(model):
    _, _, bundle = model
    gen = Generator(bundle)
    sampled = SamplingParams(max_new_tokens=20, temperature=4.0, top_p=0.95, seed=7)
    a, b = gen.generate("The quick", sampled), gen.generate("The quick", sampled)
    assert a.tokens == b.tokens
    c = gen.generate("The quick", SamplingParams(max_new_tokens=20, temperature=4.0, top_p=0.95, seed=8))
    assert c.tokens != a.tokens
    greedy = gen.generate("The quick", SamplingParams(max_new_tokens=20))
    assert gen.generate("The quick", SamplingParams(max_new_tokens=20, temperature=0.7, top_k=1, seed=3)).tokens == greedy.tokens


def test_sampler_matches_transformers_warpers():
    """Our distribution after repetition penalty, temperature, top-k and top-p is the one
    transformers' logits processors leave."""
    from edgert.runtime.llm.sampling import Sampler

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(200).astype(np.float32) * 3
    context = [3, 5, 5, 17]
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.7, repetition_penalty=1.3)
    ours = Sampler(params).probabilities(logits, context)
    from transformers.generation import logits_process as lp

    scores = torch.from_numpy(logits)[None]
    ids = torch.tensor([context])
    for proc in (lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.8),
                 lp.TopKLogitsWarper(50), lp.TopPLogitsWarper(0.7)):
        scores = proc(ids, scores)
    expected = torch.softmax(scores, -1)[0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_stop_strings_eos_and_streaming(model):
    _, _, bundle = model
    gen = Generator(bundle)
    full = gen.generate("The quick", SamplingParams(max_new_tokens=40))
    pieces = list(gen.stream("The quick", SamplingParams(max_new_tokens=40)))
    assert "".join(pieces) == full.text == gen.tokenizer.decode(full.tokens)
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
    if stop.strip() and "\ufffd" not in stop:
        cut = gen.generate("The quick", SamplingParams(max_new_tokens=40, stop=(stop,)))
        assert cut.stop_reason == "stop_string" and cut.text == full.text[:full.text.find(stop)]
        streamed = "".join(gen.stream("The quick", SamplingParams(max_new_tokens=40, stop=(stop,))))
        assert streamed == cut.text
    # eos: make the first greedy token the eos id and generation stops at once
    first = full.tokens[0]
    gen.eos = {first}
    stopped = gen.generate("The quick", SamplingParams(max_new_tokens=40))
    assert stopped.tokens == [] and stopped.stop_reason == "eos"


def test_incremental_detokenizer_across_multibyte_characters(model):
    _, _, bundle = model
    from edgert.runtime.llm.tokenizer import IncrementalDetokenizer

    gen = Generator(bundle)
    text = " Grüße aus Köln! 日本語のテキストも少し。 ✓ ünïcödé 🙂"
    ids = gen.tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in gen.tokenizer.decode([t]) for t in ids)  # some tokens split a character
    detok = IncrementalDetokenizer(gen.tokenizer)
    pieces = [detok.push(t) for t in ids] + [detok.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_chat_template_and_cli_generate(model):
    _, _, bundle = model
    gen = Generator(bundle)
    ids = gen.encode("Hi", chat=True, system="Be brief.")
    assert gen.tokenizer.decode(ids, skip_special_tokens=False) == "<s>Be brief.\n<|user|>Hi</s><|assistant|>"
    result = edgert("generate", bundle, "--prompt", "The quick brown", "--max-new-tokens", "12", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["tokens"] == gen.generate("The quick brown", SamplingParams(max_new_tokens=12)).tokens
    assert "prefill" in result.stderr and "decode" in result.stderr and "time to first token" in result.stderr
    streamed = edgert("generate", bundle, "--prompt", "Hi", "--chat", "--stream", "--max-new-tokens", "8",
                      "--temperature", "0.9", "--top-k", "20", "--seed", "1")
    assert streamed.returncode == 0, streamed.stderr


def test_bench_and_run_on_a_decoder_bundle(model):
    _, _, bundle = model
    result = edgert("bench", bundle, "--iters", "1")
    assert result.returncode == 0, result.stderr
    assert "prefill" in result.stdout and "decode" in result.stdout and "tokens/s" in result.stdout
    assert_user_error(edgert("run", bundle, "--input", "clip.npy"), "a decoder bundle; use 'edgert generate'")


def test_runtime_never_imports_torch(model):
    _, _, bundle = model
    code = (f"import sys; from edgert.runtime.llm.generator import Generator, SamplingParams; "
            f"g = Generator({str(bundle)!r}); g.generate('The', SamplingParams(max_new_tokens=3)); "
            "bad = [m for m in ('torch', 'transformers', 'onnxscript') if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, fragments", [
    (["--top-p", "0"], ["argument --top-p: 0.0 is outside (0, 1]"]),
    (["--top-p", "1.5"], ["argument --top-p: 1.5 is outside (0, 1]"]),
    (["--temperature", "-1"], ["argument --temperature: -1.0 is outside [0, 100]"]),
    (["--temperature", "1e-300"], ["temperature 1e-300 is below 0.01; use 0 for greedy decoding"]),
    (["--max-new-tokens", "0"], ["argument --max-new-tokens: 0 is outside [1, 16777216]"]),
    (["--strategy", "nope"], ["no strategy named 'nope'", "ar"]),
])
def test_generate_bad_values(model, args, fragments):
    _, _, bundle = model
    assert_user_error(edgert("generate", bundle, "--prompt", "hi", *args), *fragments)


def test_a_lone_surrogate_is_refused_in_one_line(model):
    from edgert.runtime.errors import InputError

    _, _, bundle = model
    gen = Generator(bundle)
    with pytest.raises(InputError, match=r"lone surrogate \(U\+D800 at character 2\)"):
        gen.generate("hi\ud800", SamplingParams(max_new_tokens=2))


def test_a_prompt_on_stdin_must_be_utf8(model):
    _, _, bundle = model
    result = subprocess.run([sys.executable, "-m", "edgert", "generate", str(bundle), "--prompt", "-"],
                            input=b"hi \xff", capture_output=True, timeout=600)
    assert_user_error(subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(),
                                                  result.stderr.decode()),
                      "--prompt -: standard input is not UTF-8 text (byte 0xff at offset 3)")


def test_the_manifest_records_what_was_built(model):
    """The options a decoder bundle records are what it was built with: the context it serves,
    no empty option of a head it does not hold (nor of the tests' own head plugin, registered
    here), and its family's paper, not all nine."""
    _, ckpt, bundle = model
    recorded = json.loads((bundle / "manifest.json").read_text())["model"]
    assert recorded["options"]["context"] == json.loads((ckpt / "config.json").read_text())["max_position_embeddings"]
    assert not {"medusa", "mtp", "eagle", "repeat"} & set(recorded["options"]), recorded["options"]
    assert recorded["paper"].count(",") <= 4 and ("LLaMA" in recorded["paper"] or "Qwen2" in recorded["paper"])
    info = edgert("info", bundle).stdout
    assert "repeat=" not in info and "medusa=" not in info


def test_prompt_longer_than_context(model, tmp_path):
    _, ckpt, _ = model
    result = edgert("export", "llama", "--checkpoint", ckpt, "--out", tmp_path / "short", "--opt", "context=16")
    assert result.returncode == 0, result.stderr
    assert_user_error(edgert("generate", tmp_path / "short", "--prompt", "The quick brown fox jumps over the lazy dog. " * 3),
                      "prompt has", "tokens; the bundle's context is 16")
    capped = Generator(tmp_path / "short").generate("The quick", SamplingParams(max_new_tokens=100))
    assert capped.stop_reason in ("context", "eos") and len(capped.tokens) <= 16
    # the graph records the positions it was exported for; a manifest that claims more is refused
    import onnx

    graph = onnx.load(str(tmp_path / "short" / "decoder.onnx"), load_external_data=False)
    assert {p.key: p.value for p in graph.metadata_props}["edgert.context"] == "16"
    manifest = json.loads((tmp_path / "short" / "manifest.json").read_text())
    manifest["decoder"]["context"] = 10**7
    (tmp_path / "short" / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(edgert("generate", tmp_path / "short", "--prompt", "The quick"),
                      "the manifest's decoder.context is 10000000 positions, but its graph decoder.onnx was exported for 16")
    manifest["decoder"]["context"] = 12  # less than exported: a smaller cache, allowed
    (tmp_path / "short" / "manifest.json").write_text(json.dumps(manifest))
    assert Generator(tmp_path / "short").session.context == 12


def test_export_bad_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "ckpt"
    make_qwen2(ckpt)
    out = tmp_path / "bundle"

    def export(*extra):
        return edgert("export", "llama", "--checkpoint", ckpt, "--out", out, *extra)

    assert_user_error(edgert("export", "llama", "--out", out), "--checkpoint DIR is required")
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    assert_user_error(export(), "model_type 'gpt2' is not supported (supported: llama, qwen2, mistral, qwen3, smollm3, "
                                "granite, phi3, gemma3_text, gemma3)")
    (ckpt / "config.json").write_text(json.dumps(config))
    weights = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"}, str(ckpt / "model.safetensors"))
    assert_user_error(export(), "missing tensors: model.layers.1.mlp.up_proj.weight")
    save_file({**weights, "model.norm.weight": torch.ones(7)}, str(ckpt / "model.safetensors"))
    assert_user_error(export(), "wrong shape: model.norm.weight [7] (expected [48])")
    save_file(weights, str(ckpt / "model.safetensors"))
    (ckpt / "config.json").write_text(json.dumps({**config, "vocab_size": 200}))
    save_file({**weights, "model.embed_tokens.weight": weights["model.embed_tokens.weight"][:200]}, str(ckpt / "model.safetensors"))
    assert_user_error(export(), "tokenizer has 300 tokens but the model's vocab_size is 200")
    (ckpt / "config.json").write_text(json.dumps(config))
    save_file(weights, str(ckpt / "model.safetensors"))
    (ckpt / "model.safetensors").unlink()
    assert_user_error(export(), "no weights")
    (ckpt / "config.json").unlink()
    assert_user_error(export(), "config.json: missing")
    assert not out.exists()
