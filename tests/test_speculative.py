"""Speculative strategies against plain autoregressive decoding on the same bundle: greedy
output identical token for token (differences allowed only at near-ties of the target's
logits), seeded sampling reproducible, and the errors a user can make."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the tiny checkpoints are made with transformers")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import CORPUS, make_llama  # noqa: E402

from edgert.exporters.driver import export  # noqa: E402
from edgert.runtime.errors import EdgertError  # noqa: E402
from edgert.runtime.llm.generator import Decoding, GenerationStats, Generator  # noqa: E402
from edgert.runtime.llm.sampling import Sampler, SamplingParams  # noqa: E402

NEW_TOKENS = 128
NEAR_TIE = 1e-4  # relative to the logits' scale: where one-token and tree-pass rounding can flip an argmax


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("spec")
    make_llama(root / "target")
    # The draft: the target with noisy weights, so that it agrees often but not always (a random
    # model of its own would almost never agree and leave the accept path untested).
    shutil.copytree(root / "target", root / "draft-ckpt")
    weights = load_file(str(root / "draft-ckpt" / "model.safetensors"))
    gen = torch.Generator().manual_seed(3)
    save_file({k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if v.ndim == 2 else v for k, v in weights.items()},
              str(root / "draft-ckpt" / "model.safetensors"))
    export("llama", root / "target-bundle", checkpoint=str(root / "target"))
    export("llama", root / "draft-bundle", checkpoint=str(root / "draft-ckpt"))
    return root / "target-bundle", root / "draft-bundle"


def prompts(gen: Generator, count: int = 50) -> list[list[int]]:
    """Text snippets and token sequences with repeats (so lookup finds matches), 4-40 tokens."""
    rng = np.random.default_rng(0)
    text = " ".join(CORPUS[:5])
    out = []
    for i in range(count):
        if i % 2:
            start = int(rng.integers(0, len(text) - 60))
            out.append(gen.tokenizer.encode(text[start:start + int(rng.integers(10, 60))]))
        else:
            chunk = rng.integers(2, 300, int(rng.integers(2, 8))).tolist()
            out.append([0] + chunk * int(rng.integers(1, 4)) + rng.integers(2, 300, 3).tolist())
    return out


def near_tie(gen: Generator, prefix: list[int]) -> bool:
    d = Decoding(gen.session, prefix, Sampler(SamplingParams()), len(prefix) + 1, GenerationStats())
    logits = d.prefill()
    top2 = np.sort(logits)[-2:]
    return (top2[1] - top2[0]) < NEAR_TIE * np.abs(logits).max()


@pytest.mark.parametrize("strategy, options", [
    ("lookup", {}),
    ("draft", {"gamma": "3"}),
    ("draft-self", {"gamma": "5", "adaptive": "false"}),
])
def test_greedy_is_lossless(bundles, strategy, options):
    target, draft = bundles
    gen = Generator(target)
    gen.eos = set()  # full length for every prompt
    name = strategy.split("-")[0]
    if name == "draft":
        options = {**options, "model": str(target if strategy == "draft-self" else draft)}
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    gained = []
    for ids in prompts(gen):
        reference = gen.generate(ids, params).tokens
        result = gen.generate(ids, params, strategy=name, strategy_options=options)
        gained.append(result.stats.tokens_per_step)
        if result.tokens != reference:
            first = next(i for i, (a, b) in enumerate(zip(result.tokens, reference)) if a != b)
            assert near_tie(gen, ids + reference[:first]), f"{strategy}: diverged at token {first} without a near-tie"
        assert len(result.tokens) == NEW_TOKENS
    assert np.mean(gained) > 1.2, gained  # the drafts were exercised, not only single steps


def test_onnx_verifier_gives_the_same_output(bundles):
    target, draft = bundles
    params = SamplingParams(max_new_tokens=48)
    sampled = SamplingParams(max_new_tokens=48, temperature=1.5, top_p=0.95, seed=3)
    numpy_gen, onnx_gen = Generator(target), Generator(target, verifier="onnx")
    for strategy, options in (("lookup", {}), ("draft", {"model": str(draft)})):
        for p in (params, sampled):
            a = numpy_gen.generate("The quick brown fox", p, strategy=strategy, strategy_options=options)
            b = onnx_gen.generate("The quick brown fox", p, strategy=strategy, strategy_options=options)
            assert a.tokens == b.tokens, (strategy, p)


def test_sampling_is_reproducible(bundles):
    target, draft = bundles
    gen = Generator(target)
    p = SamplingParams(max_new_tokens=40, temperature=2.0, seed=11)
    for strategy, options in (("lookup", {}), ("draft", {"model": str(draft)})):
        runs = [gen.generate("Edge devices", p, strategy=strategy, strategy_options=options).tokens for _ in range(2)]
        assert runs[0] == runs[1]


def test_draft_with_another_tokenizer_is_refused(bundles, tmp_path):
    target, _ = bundles
    import json

    from llm_checkpoints import make_qwen2

    make_qwen2(tmp_path / "other")
    export("llama", tmp_path / "other-bundle", checkpoint=str(tmp_path / "other"))
    gen = Generator(target)
    with pytest.raises(EdgertError, match="the draft's tokenizer differs from the target's"):
        gen.generate("hi", strategy="draft", strategy_options={"model": str(tmp_path / "other-bundle")})
    result = edgert("generate", target, "--prompt", "hi", "--strategy", "draft", "--strategy-opt",
                    f"model={tmp_path / 'other-bundle'}")
    assert_user_error(result, "the draft's tokenizer differs")
    assert json.loads((target / "manifest.json").read_text())["decoder"]["verify"]


@pytest.mark.parametrize("args, fragments", [
    (["--strategy", "draft"], ["--strategy-opt model=DRAFT_BUNDLE"]),
    (["--strategy", "lookup", "--strategy-opt", "depth=3"], ["strategy 'lookup': unknown option 'depth'"]),
    (["--strategy", "lookup", "--strategy-opt", "ngram"], ["--strategy-opt 'ngram': expected key=value"]),
])
def test_strategy_option_errors(bundles, args, fragments):
    target, _ = bundles
    assert_user_error(edgert("generate", target, "--prompt", "hi", *args), *fragments)


def test_generate_stats_on_the_cli(bundles):
    target, _ = bundles
    result = edgert("generate", target, "--prompt", "The quick brown fox. The quick brown fox.", "--strategy", "lookup",
                    "--stats", "--max-new-tokens", "32")
    assert result.returncode == 0, result.stderr
    assert "tokens per pass" in result.stderr and "acceptance by draft depth" in result.stderr
