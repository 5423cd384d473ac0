"""Our Llama-family decoder module against transformers, on tiny checkpoints made here."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is the reference (installed by the dev extra)")

from edgert.exporters.llm.llama import causal_mask, load_decoder  # noqa: E402
from edgert.runtime.errors import EdgertError  # noqa: E402


def make_llama(path):
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    return model


def make_qwen2(path):
    config = transformers.Qwen2Config(
        vocab_size=80, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(1)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # non-zero biases so that their loading is tested
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("make", [make_llama, make_qwen2], ids=["llama-gqa-llama3rope", "qwen2-tied-qkvbias"])
def test_logits_match_transformers_with_cache(make, tmp_path):
    reference = make(tmp_path)
    ours = load_decoder(tmp_path)
    ids = torch.randint(0, reference.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(ids).logits
        prefill = 9
        every = torch.arange(prefill).expand(2, -1)
        logits, _, *cache = ours(ids[:, :prefill], every, causal_mask(2, prefill, 0), every, *ours.empty_cache(2))
        torch.testing.assert_close(logits, expected[:, :prefill], atol=1e-4, rtol=1e-4)
        for t in range(prefill, 13):  # decode steps against the cache
            logits, _, *cache = ours(ids[:, t:t + 1], torch.full((2, 1), t), causal_mask(2, 1, t),
                                     torch.zeros(2, 1, dtype=torch.long), *cache)
            torch.testing.assert_close(logits[:, 0], expected[:, t], atol=1e-4, rtol=1e-4)
    assert cache[0].shape == (2, reference.config.num_key_value_heads, 13, reference.config.hidden_size //
                              reference.config.num_attention_heads)


def test_bad_checkpoints(tmp_path):
    from safetensors.torch import load_file, save_file

    with pytest.raises(EdgertError, match="config.json: missing"):
        load_decoder(tmp_path)
    make_qwen2(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(EdgertError, match=r"model_type 'gpt2' is not supported \(supported: llama, qwen2, mistral, qwen3, smollm3, granite, "
                                         r"phi3, gemma3_text, gemma3\)"):
        load_decoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    weights["model.norm.weight"] = torch.ones(7)
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(EdgertError, match="missing tensors: model.layers.1.mlp.up_proj.weight"):
        load_decoder(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(EdgertError, match="no weights"):
        load_decoder(tmp_path)
