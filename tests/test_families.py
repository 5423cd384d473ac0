"""The decoder families beyond Llama / Qwen2 (Qwen3, SmolLM3, Granite, Phi-3, Gemma 3) and
Mistral, each against transformers on a tiny checkpoint made here: logits with a KV cache
through ONNX Runtime, greedy generation, the sliding window and LongRoPE where they apply,
every strategy unchanged, and the bad checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers", reason="transformers is the reference (installed by the dev extra)")
torch = pytest.importorskip("torch")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import make_family, transformers_greedy  # noqa: E402

from edgert.exporters.driver import export  # noqa: E402
from edgert.runtime.llm.generator import Decoding, GenerationStats, Generator  # noqa: E402
from edgert.runtime.llm.sampling import Sampler, SamplingParams  # noqa: E402

FAMILIES = ["qwen3", "smollm3", "granite", "phi3", "gemma3", "mistral"]
PROMPTS = ["The quick brown fox", "Speculative decoding", "def add(a, b):", "Grüße aus Köln"]
# Longer than Gemma 3's and Mistral's window (8) and past Phi-3's original context (32).
LONG = ("Edge devices run small language models next to their vision models. The quick brown fox jumps over "
        "the lazy dog.")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    """(name, transformers reference, checkpoint dir, fp32 bundle): one export per family, with
    Medusa heads and an MTP module (random: they only propose) for the strategies' test."""
    from edgert.exporters.llm.llama import DecoderConfig
    from edgert.exporters.llm.medusa import MedusaHeads, save_medusa
    from edgert.exporters.llm.mtp import MTPModule, save_mtp

    root = tmp_path_factory.mktemp(request.param)
    reference = make_family(root / "ckpt", request.param)
    cfg = DecoderConfig.from_dir(root / "ckpt")
    torch.manual_seed(0)
    save_medusa(MedusaHeads(cfg.hidden_size, cfg.vocab_size, 2), root / "heads.safetensors")
    save_mtp(MTPModule(cfg), root / "mtp.safetensors")
    export("llama", root / "bundle", {"medusa": str(root / "heads.safetensors"), "mtp": str(root / "mtp.safetensors")},
           checkpoint=str(root / "ckpt"))
    return request.param, reference, root / "ckpt", root / "bundle"


def test_logits_match_transformers_prefill_and_5_cached_steps(family):
    name, reference, _, bundle = family
    gen = Generator(bundle)
    ids = gen.tokenizer.encode(LONG)
    assert len(ids) > 38  # past every window and LongRoPE's switch, on prefill already
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    scale = np.abs(expected).max()
    prefill = len(ids) - 5
    d = Decoding(gen.session, ids[:prefill], Sampler(SamplingParams()), len(ids), GenerationStats())
    logits, _ = d.forward(ids[:prefill], logits_at=range(prefill))
    np.testing.assert_allclose(logits, expected[:prefill], atol=1e-4 * scale, err_msg=name)
    for t in range(prefill, len(ids)):
        np.testing.assert_allclose(d.step(ids[t]), expected[t], atol=1e-4 * scale, err_msg=f"{name} step {t}")


def test_greedy_64_tokens_equal_transformers_generate(family):
    name, reference, _, bundle = family
    gen = Generator(bundle)
    for prompt in PROMPTS + [LONG]:
        expected = transformers_greedy(reference, gen.tokenizer.encode(prompt))
        result = gen.generate(prompt, SamplingParams(max_new_tokens=64))
        assert result.tokens == expected, (name, prompt)


def test_decoding_from_a_short_prompt_crosses_the_window_and_the_switch(family):
    """Four prompt tokens, 60 new ones: Gemma 3's and Mistral's windows (8) and Phi-3's LongRoPE
    switch (32) are crossed during decoding, where transformers' Phi-3 generation computes its
    cache again with the long factors (a cache kept as written is 1e-2 off here). Every step's
    logits equal those of transformers' generate; lookup (verify passes across the switch)
    gives ar's tokens."""
    name, reference, _, bundle = family
    gen = Generator(bundle)
    ids = gen.tokenizer.encode("The quick brown fox")[:4]
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                                 do_sample=False, max_new_tokens=60, min_new_tokens=60, pad_token_id=1,
                                 output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[0, 4:].tolist()
    expected = torch.stack(out.logits)[:, 0].numpy()
    d = Decoding(gen.session, ids, Sampler(SamplingParams()), 64, GenerationStats())
    got = [d.prefill()]
    for token in tokens[:-1]:
        d.tokens.append(token)
        got.append(d.step(token))
    np.testing.assert_allclose(np.array(got), expected, atol=1e-4 * np.abs(expected).max(), err_msg=name)
    gen.eos = set()
    params = SamplingParams(max_new_tokens=60)
    assert gen.generate(ids, params, strategy="lookup").tokens == gen.generate(ids, params).tokens, name
    assert gen.info.get("rope_switch") == (32 if name == "phi3" else None)


@pytest.mark.parametrize("name", ["gemma3", "mistral", "phi3"])
def test_the_window_and_longrope_are_really_in_use(name, tmp_path):
    """A window or LongRoPE that were ignored would give other logits: on the long prompt the
    model differs from the same weights with a window past the prompt (or the long factors
    equal to the short ones)."""
    reference = make_family(tmp_path / "ckpt", name)
    config = reference.config.to_dict()
    if name == "phi3":
        config["rope_parameters"] = {**config["rope_parameters"], "long_factor": config["rope_parameters"]["short_factor"]}
    else:
        config["sliding_window"] = 190
    other = type(reference)(type(reference.config).from_dict(config)).eval()
    other.load_state_dict(reference.state_dict())
    from tokenizers import Tokenizer

    ids = torch.tensor([Tokenizer.from_file(str(tmp_path / "ckpt" / "tokenizer.json")).encode(LONG).ids])
    with torch.no_grad():
        assert not torch.allclose(reference(ids).logits[0, -1], other(ids).logits[0, -1], atol=1e-3)


def test_every_strategy_runs_unchanged(family):
    """lookup, Medusa and MTP each lossless against ar on the family's bundle."""
    name, _, _, bundle = family
    gen = Generator(bundle)
    params = SamplingParams(max_new_tokens=32)
    for prompt in ["The quick brown fox", "0 1 0 1 0 1 0 1"]:
        expected = gen.generate(prompt, params).tokens
        for strategy, options in (("lookup", {}), ("medusa", {"tree": "[[0], [0, 0], [1]]"}), ("mtp", {"depth": "2"})):
            assert gen.generate(prompt, params, strategy=strategy, strategy_options=options).tokens == expected, \
                (name, strategy, prompt)


def test_fp16_and_the_tensorrt_flavour(family, tmp_path):
    """fp16 exports within its parity bound; the TensorRT flavour (head_dim 64 / 128 only)
    passes its math check against the fp32 reference, or is refused in one line."""
    name, _, ckpt, _ = family
    export("llama", tmp_path / "fp16", checkpoint=str(ckpt), precision="fp16")
    manifest = json.loads((tmp_path / "fp16" / "manifest.json").read_text())
    assert manifest["parity"]["graphs"]["decoder"]["outputs"]["logits"]["max_rel"] <= 1e-2
    result = edgert("export", "llama", "--checkpoint", ckpt, "--out", tmp_path / "trt", "--flavour", "trt",
                    "--precision", "fp16")
    if name == "qwen3":  # head_dim 64
        assert result.returncode == 0, result.stderr
        report = json.loads((tmp_path / "trt" / "manifest.json").read_text())["parity"]["graphs"]["decoder"]
        assert report["passed"] and "TensorRT" in report["backend"]
    else:  # head_dim 16
        assert_user_error(result, "has head_dim 16", "built for head_dim 64 and 128")


BAD = [
    ("qwen3", lambda c, w: (c, {k: v for k, v in w.items() if "q_norm" not in k}), ["missing tensors: model.layers.0.self_attn.q_norm.weight"]),
    ("qwen3", lambda c, w: ({**c, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, w),
     ["rope_scaling type 'yarn' is not supported for qwen3"]),
    ("phi3", lambda c, w: ({**c, "rope_parameters": {**c["rope_parameters"], "rope_type": "dynamic"}}, w),
     ["rope_scaling type 'dynamic' is not supported for phi3 (supported: default, longrope)"]),
    ("gemma3", lambda c, w: ({**c, "sliding_window": 1000}, w), ["sliding_window 1000 is larger than the context",
                                                                 "max_position_embeddings 192"]),
    ("smollm3", lambda c, w: ({**c, "model_type": "qwen3"}, w), ["does not fit a qwen3 of its config.json",
                                                                 "missing tensors: model.layers.0.self_attn.q_norm"]),
]


@pytest.mark.parametrize("name, change, fragments", BAD, ids=["qwen3-no-qnorm", "qwen3-yarn", "phi3-dynamic",
                                                              "gemma3-window", "smollm3-as-qwen3"])
def test_bad_checkpoints_are_one_line(name, change, fragments, tmp_path):
    from safetensors.torch import load_file, save_file

    make_family(tmp_path / "ckpt", name)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    weights = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    config, weights = change(config, weights)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    save_file(weights, str(tmp_path / "ckpt" / "model.safetensors"))
    assert_user_error(edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b"), *fragments)
    assert not (tmp_path / "b").exists()


def test_plugins_list_the_model_types_covered():
    line = next(row for row in edgert("plugins").stdout.splitlines() if row.startswith("llama "))
    for model_type in ("llama", "qwen2", "mistral", "qwen3", "gemma3_text", "gemma3", "phi3", "smollm3", "granite"):
        assert model_type in line
