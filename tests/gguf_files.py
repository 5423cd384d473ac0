"""Tiny GGUF files written here with ``gguf.GGUFWriter``: llama.cpp's layout (tensor names,
metadata keys, q/k rows permuted for Llama), with weights in any of llama.cpp's block types.

The blocks are drawn at random with valid fp16 scale fields, so every code of every type is
exercised (the ``gguf`` package can write only some types itself); the model they define is
whatever those blocks dequantize to, and the fp32 export of that is the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# bytes per block, elements per block, where the fp16 scale fields sit (byte offsets)
LAYOUT = {"Q8_0": (34, 32, (0,)), "Q4_0": (18, 32, (0,)), "Q4_1": (20, 32, (0, 2)), "Q5_0": (22, 32, (0,)),
          "Q5_1": (24, 32, (0, 2)), "Q4_K": (144, 256, (0, 2)), "Q5_K": (176, 256, (0, 2)), "Q6_K": (210, 256, (208,))}


def random_blocks(kind: str, rows: int, columns: int, rng: np.random.Generator, scale: float = 0.02) -> np.ndarray:
    """(rows, bytes) of valid ``kind`` blocks whose values are about ``scale`` in size."""
    size, elements, scales = LAYOUT[kind]
    assert columns % elements == 0, (kind, columns)
    blocks = rng.integers(0, 256, (rows, columns // elements, size), dtype=np.uint8)
    # K-quants' sub-block scales multiply d: keep d small there so values stay near `scale`
    divisor = {"Q4_K": 63 * 15, "Q5_K": 63 * 31, "Q6_K": 32 * 32, "Q8_0": 127, "Q4_0": 8, "Q4_1": 15,
               "Q5_0": 16, "Q5_1": 31}[kind]
    d = (rng.uniform(0.5, 1.0, blocks.shape[:2]) * scale / divisor).astype(np.float16)
    blocks[..., scales[0]:scales[0] + 2] = d[..., None].view(np.uint8)
    if len(scales) == 2:  # the minimum (Q4_1, Q5_1: x = d·q + m) or dmin (K: x = d·sc·q - dmin·m): centred on 0
        half = {"Q4_1": -7.5, "Q5_1": -15.5, "Q4_K": 7.5, "Q5_K": 15.5}[kind]
        second = (d.astype(np.float32) * half).astype(np.float16)
        blocks[..., scales[1]:scales[1] + 2] = second[..., None].view(np.uint8)
    return blocks.reshape(rows, -1)


def llama_permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py ``permute`` of q/k rows (any per-row data)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def write_gguf(path: Path, tokenizer_dir: Path, types: dict[str, str], arch: str = "llama", layers: int = 2,
               hidden: int = 256, intermediate: int = 512, heads: int = 4, kv_heads: int = 2, seed: int = 0,
               tied: bool = False, pre: str = "gpt-2", metadata: dict[str, float] | None = None,
               sentencepiece: Path | None = None) -> Path:
    """A ``arch`` model with random weights: ``types`` maps a GGUF tensor kind (``token_embd``,
    ``output``, ``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``, ``ffn_gate``, ``ffn_up``,
    ``ffn_down``) to its type (default F32); norms are F32. The tokenizer is ``tokenizer_dir``'s
    tokenizer.json (byte-level BPE) and its chat template; ``metadata``: more float32 keys
    (``{arch}.`` prefixed; int as uint32, float as float32, str). The weights depend only on
    ``seed`` and the shapes, not on ``arch``. ``sentencepiece``: a SentencePiece model file whose
    pieces, scores and types become the vocabulary instead, as llama.cpp's converter writes a
    Llama 2 one (``tokenizer.ggml.model`` 'llama', no merges)."""
    import gguf

    rng = np.random.default_rng(seed)
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tok_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    vocab = tok["model"]["vocab"]
    for added in tok["added_tokens"]:
        vocab[added["content"]] = added["id"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    special = {a["id"] for a in tok["added_tokens"]}
    head_dim = hidden // heads
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(intermediate)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)  # what llama.cpp's converter writes for head_dim
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    if sentencepiece is None:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
        writer.add_token_merges(merges)
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(sentencepiece))
        tokens = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        kinds = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(i)
                 else 1 for i in range(len(tokens))]  # llama.cpp's token types, SentencePiece's numbering
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([sp.get_score(i) for i in range(len(tokens))])
        writer.add_token_types(kinds)
        writer.add_unk_token_id(sp.unk_id())
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.add_eos_token_id(tokens.index("</s>"))
    writer.add_add_bos_token(True)
    writer.add_chat_template(tok_config["chat_template"])
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(f"{arch}.{key}", value)
        elif isinstance(value, int):
            writer.add_uint32(f"{arch}.{key}", value)
        else:
            writer.add_float32(f"{arch}.{key}", value)

    def add(name: str, kind: str, shape: tuple[int, ...], permute_heads: int | None = None):
        t = types.get(kind, "F32")
        if len(shape) == 1:
            data = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
            writer.add_tensor(name, data)
            return
        rows, columns = shape
        size = 1.0 if kind in ("token_embd", "output") else 0.05  # logits that decide (random weights)
        if t in ("F32", "F16"):
            data = (size * rng.standard_normal(shape)).astype(np.float32 if t == "F32" else np.float16)
            writer.add_tensor(name, data)
            return
        if t == "BF16":
            data = (size * rng.standard_normal(shape)).astype(np.float32).view(np.uint32)
            raw = (data >> 16).astype(np.uint16).view(np.uint8).reshape(rows, -1)
        else:
            raw = random_blocks(t, rows, columns, rng, size)
        if permute_heads is not None:
            raw = llama_permute(raw, permute_heads)
        writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=gguf.GGMLQuantizationType[t])

    add("token_embd.weight", "token_embd", (len(tokens), hidden))
    add("output_norm.weight", "norm", (hidden,))
    if not tied:
        add("output.weight", "output", (len(tokens), hidden))
    permute = arch in ("llama", "granite", "smollm3")  # llama.cpp's LlamaModel converters permute q/k
    for i in range(layers):
        p = f"blk.{i}."
        add(p + "attn_norm.weight", "norm", (hidden,))
        add(p + "ffn_norm.weight", "norm", (hidden,))
        if arch == "phi3":  # Hugging Face's fused projections, kept fused by llama.cpp (type: attn_q's, ffn_up's)
            add(p + "attn_qkv.weight", "attn_q", ((heads + 2 * kv_heads) * head_dim, hidden))
        else:
            add(p + "attn_q.weight", "attn_q", (heads * head_dim, hidden), heads if permute else None)
            add(p + "attn_k.weight", "attn_k", (kv_heads * head_dim, hidden), kv_heads if permute else None)
            add(p + "attn_v.weight", "attn_v", (kv_heads * head_dim, hidden))
        add(p + "attn_output.weight", "attn_output", (hidden, heads * head_dim))
        if arch == "phi3":
            add(p + "ffn_up.weight", "ffn_up", (2 * intermediate, hidden))
        else:
            add(p + "ffn_gate.weight", "ffn_gate", (intermediate, hidden))
            add(p + "ffn_up.weight", "ffn_up", (intermediate, hidden))
        add(p + "ffn_down.weight", "ffn_down", (hidden, intermediate))
        if arch == "qwen2":
            for part, width in (("attn_q", heads * head_dim), ("attn_k", kv_heads * head_dim),
                                ("attn_v", kv_heads * head_dim)):
                writer.add_tensor(f"{p}{part}.bias", (0.05 * rng.standard_normal(width)).astype(np.float32))
        if arch in ("qwen3", "gemma3"):
            add(p + "attn_q_norm.weight", "norm", (head_dim,))
            add(p + "attn_k_norm.weight", "norm", (head_dim,))
        if arch == "gemma3":  # norms around attention and around the feed-forward
            add(p + "post_attention_norm.weight", "norm", (hidden,))
            add(p + "post_ffw_norm.weight", "norm", (hidden,))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def train_sentencepiece(path: Path, text: str, vocab_size: int = 800) -> Path:
    """A SentencePiece BPE model trained on ``text`` as Llama 2's was configured: byte fallback,
    digits split, no normalization, whitespace kept, a dummy prefix. Returns the .model file."""
    import sentencepiece as spm

    corpus = path.with_suffix(".txt")
    corpus.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path.with_suffix("")), vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   add_dummy_prefix=True, character_coverage=0.9995, unk_id=0, bos_id=1, eos_id=2,
                                   minloglevel=2)
    return path.with_suffix(".model")
