"""Tiny Hugging Face checkpoints made here (no hub): transformers models with random weights and
a byte-level BPE tokenizer trained with ``tokenizers`` on a few sentences."""

from __future__ import annotations

import json
from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small language models next to their vision models.",
    "Speculative decoding proposes tokens cheaply and verifies them in one pass.",
    "Grüße aus Köln! Ça va très bien, merci. 日本語のテキストも少し。 ✓ done",
    "def add(a, b):\n    return a + b\n",
] * 20
SPECIAL = ["<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n"
                 "{% else %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(directory: Path, vocab_size: int = 300) -> int:
    """Byte-level BPE with BOS added by the post-processor; returns the tokenizer's size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}))
    return tok.get_vocab_size()


def make_llama(directory: Path, seed: int = 0, layers: int = 2, hidden: int = 64, heads: int = 8, kv_heads: int = 2):
    """LlamaForCausalLM: grouped-query attention (8 query / 2 kv heads by default), llama3 rope
    scaling, untied head."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    make_tokenizer(directory)
    config = transformers.LlamaConfig(
        vocab_size=320, hidden_size=hidden, intermediate_size=112, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv_heads, max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=1,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32},
        tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    _sharpen(model)
    model.save_pretrained(directory)
    return model


def make_qwen2(directory: Path, seed: int = 1):
    """Qwen2ForCausalLM: tied embeddings, q/k/v biases (non-zero), 6 query / 2 kv heads."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    make_tokenizer(directory)
    config = transformers.Qwen2Config(
        vocab_size=304, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=192, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    _sharpen(model)
    model.save_pretrained(directory)
    return model


def _sharpen(model) -> None:
    """Random init gives nearly flat next-token distributions, where greedy choices hinge on
    1e-6 differences; larger embeddings make the logits decisive, as a trained model's are."""
    import torch

    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(40)
        if not model.config.tie_word_embeddings:
            model.lm_head.weight.mul_(40)


def make_family(directory: Path, family: str, seed: int = 2):
    """A tiny checkpoint of one of the newer decoder families (and Mistral), each with what makes
    it differ switched on: Qwen3's q/k norms and free head_dim; SmolLM3's NoPE layers; Granite's
    four multipliers; Phi-3's fused projections, LongRoPE (long factors past 32 positions) and
    partial rotary; Gemma 3's local (window 8) / global layers with their own RoPE (global ones
    linearly scaled); Mistral's sliding window (8). Norm weights are random so that they count."""
    import torch
    import transformers

    directory.mkdir(parents=True, exist_ok=True)
    make_tokenizer(directory)
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=112, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=192, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config, model_class = {
        "qwen3": lambda: (transformers.Qwen3Config(**common, head_dim=64, tie_word_embeddings=True),
                          transformers.Qwen3ForCausalLM),
        "smollm3": lambda: (transformers.SmolLM3Config(**common, no_rope_layer_interval=2, tie_word_embeddings=False),
                            transformers.SmolLM3ForCausalLM),
        "granite": lambda: (transformers.GraniteConfig(**common, embedding_multiplier=12.0, residual_multiplier=0.22,
                                                       attention_multiplier=0.03, logits_scaling=8.0),
                            transformers.GraniteForCausalLM),
        "phi3": lambda: (transformers.Phi3Config(**common, original_max_position_embeddings=32, rope_parameters={
            "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
            "original_max_position_embeddings": 32, "short_factor": [1.0 + 0.1 * i for i in range(6)],
            "long_factor": [2.0 + 0.5 * i for i in range(6)]}), transformers.Phi3ForCausalLM),
        "gemma3": lambda: (transformers.Gemma3TextConfig(
            **common, head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}}),
            transformers.Gemma3ForCausalLM),
        "mistral": lambda: (transformers.MistralConfig(**common, sliding_window=8), transformers.MistralForCausalLM),
    }[family]()
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and "norm" in name:
                param.normal_(0.0 if family == "gemma3" else 1.0, 0.3)
    _sharpen(model)
    model.save_pretrained(directory)
    return model


def mixed_prompts(encode, count: int = 50) -> list[list[int]]:
    """Text snippets and token sequences with repeats (so lookup finds matches), 4-40 tokens;
    ``encode``: the bundle's tokenizer's encode."""
    import numpy as np

    rng = np.random.default_rng(0)
    text = " ".join(CORPUS[:5])
    out = []
    for i in range(count):
        if i % 2:
            start = int(rng.integers(0, len(text) - 60))
            out.append(encode(text[start:start + int(rng.integers(10, 60))]))
        else:
            chunk = rng.integers(2, 300, int(rng.integers(2, 8))).tolist()
            out.append([0] + chunk * int(rng.integers(1, 4)) + rng.integers(2, 300, 3).tolist())
    return out


def transformers_greedy(reference, ids: list[int], new_tokens: int = 64, eos: int = 1) -> list[int]:
    """transformers' ``generate(do_sample=False)`` continuation of ``ids``, without the eos it
    stopped at (edgert's results do not keep it)."""
    import torch

    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=new_tokens, pad_token_id=eos)
    expected = out[0, len(ids):].tolist()
    return expected[:-1] if expected and expected[-1] == eos else expected
