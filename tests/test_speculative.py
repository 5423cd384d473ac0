"""Speculative strategies against plain autoregressive decoding on the same bundle: greedy
output identical token for token (differences allowed only at near-ties of the target's
logits), seeded sampling reproducible, and the errors a user can make."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("transformers", reason="the tiny checkpoints are made with transformers")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import CORPUS, make_llama, mixed_prompts  # noqa: E402

from edgert.exporters.driver import export  # noqa: E402
from edgert.exporters.llm.train import train_medusa, train_mtp  # noqa: E402
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
    (root / "text.txt").write_text("\n".join(CORPUS[:5]) * 3)
    train_medusa(str(root / "target"), [str(root / "text.txt")], str(root / "heads.safetensors"), num_heads=3,
                 steps=60, samples=48, prompt_len=8, new_tokens=40)
    train_mtp(str(root / "target"), [str(root / "text.txt")], str(root / "mtp.safetensors"), steps=60, samples=48,
              prompt_len=8, new_tokens=40)
    # One bundle with both kinds of heads: Medusa logits as an output, the MTP module as a second graph.
    export("llama", root / "medusa-bundle", {"medusa": str(root / "heads.safetensors"), "mtp": str(root / "mtp.safetensors")},
           checkpoint=str(root / "target"))
    return root / "target-bundle", root / "draft-bundle", root / "medusa-bundle"


def prompts(gen: Generator, count: int = 50) -> list[list[int]]:
    return mixed_prompts(gen.tokenizer.encode, count)


def near_tie(gen: Generator, prefix: list[int]) -> bool:
    d = Decoding(gen.session, prefix, Sampler(SamplingParams()), len(prefix) + 1, GenerationStats())
    logits = d.prefill()
    top2 = np.sort(logits)[-2:]
    return (top2[1] - top2[0]) < NEAR_TIE * np.abs(logits).max()


@pytest.mark.parametrize("strategy, options", [
    ("lookup", {}),
    ("draft", {"gamma": "3", "confidence": "0"}),
    ("draft-self", {"gamma": "5", "adaptive": "false"}),
    ("medusa", {"tree": "mc_sim_15"}),
    ("medusa-chain", {"tree": "[[0], [0, 0], [0, 0, 0]]"}),  # rank 0 only: the argmax path
    ("medusa-big", {"tree": "[[0], [0, 0], [1], [0, 1], [0, 0, 0], [2], [1, 0], [0, 0, 1]]", "top_k": "4"}),
    ("mtp", {"depth": "3"}),
])
def test_greedy_is_lossless(bundles, strategy, options):
    target, draft, medusa = bundles
    gen = Generator(medusa if strategy.startswith(("medusa", "mtp")) else target)
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


def test_int8_proposals_stay_lossless(bundles, tmp_path):
    """--opt proposals=int8: the Medusa and MTP graphs' MatMuls in int8 (after an fp32 parity
    check); they only propose, so greedy output still equals ar's."""
    import onnx

    root = bundles[0].parent
    export("llama", tmp_path / "int8", {"medusa": str(root / "heads.safetensors"), "mtp": str(root / "mtp.safetensors"),
                                       "proposals": "int8"}, checkpoint=str(root / "target"))
    for graph in ("medusa.onnx", "mtp.onnx"):
        assert "MatMulInteger" in {n.op_type for n in onnx.load(tmp_path / "int8" / graph).graph.node}
    report = json.loads((tmp_path / "int8" / "manifest.json").read_text())["parity"]["graphs"]["medusa"]
    assert report["quantized"]["top1_agreement_with_pytorch"] > 0.8
    gen = Generator(tmp_path / "int8")
    gen.eos = set()
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    for ids in prompts(gen, 10):
        reference = gen.generate(ids, params).tokens
        for name, options in (("medusa", {"tree": "mc_sim_7"}), ("mtp", {"depth": "3"})):
            result = gen.generate(ids, params, strategy=name, strategy_options=options)
            if result.tokens != reference:
                first = next(i for i, (a, b) in enumerate(zip(result.tokens, reference)) if a != b)
                assert near_tie(gen, ids + reference[:first]), f"{name}: diverged at token {first} without a near-tie"


def test_onnx_verifier_gives_the_same_output(bundles):
    target, draft, _ = bundles
    params = SamplingParams(max_new_tokens=48)
    sampled = SamplingParams(max_new_tokens=48, temperature=1.5, top_p=0.95, seed=3)
    numpy_gen, onnx_gen = Generator(target), Generator(target, verifier="onnx")
    for strategy, options in (("lookup", {}), ("draft", {"model": str(draft)})):
        for p in (params, sampled):
            a = numpy_gen.generate("The quick brown fox", p, strategy=strategy, strategy_options=options)
            b = onnx_gen.generate("The quick brown fox", p, strategy=strategy, strategy_options=options)
            assert a.tokens == b.tokens, (strategy, p)


def test_sampling_is_reproducible(bundles):
    target, draft, _ = bundles
    gen = Generator(target)
    p = SamplingParams(max_new_tokens=40, temperature=2.0, seed=11)
    for strategy, options in (("lookup", {}), ("draft", {"model": str(draft)})):
        runs = [gen.generate("Edge devices", p, strategy=strategy, strategy_options=options).tokens for _ in range(2)]
        assert runs[0] == runs[1]


def test_draft_with_another_tokenizer_is_refused(bundles, tmp_path):
    target, _, _ = bundles
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


def test_a_draft_is_held_to_the_targets_signature_policy(bundles, tmp_path):
    """A target opened with trusted keys opens its draft with the same keys: an unsigned draft
    (or one another key signed) is refused, whoever names it (Python API or CLI)."""
    import shutil

    pytest.importorskip("cryptography", reason="signing needs cryptography (sign extra)")
    from edgert.runtime.bundle import BundleError
    from edgert.runtime.signing import generate_key, sign

    target, draft, _ = bundles
    shutil.copytree(target, tmp_path / "target")
    shutil.copytree(draft, tmp_path / "draft")
    private, public, _ = generate_key(tmp_path / "key")
    sign(tmp_path / "target", private)
    gen = Generator(tmp_path / "target", trusted_keys=[public])
    assert gen.session.bundle.signer
    with pytest.raises(BundleError, match=r"draft.*not signed"):
        gen.generate("hi", strategy="draft", strategy_options={"model": str(tmp_path / "draft")})
    sign(tmp_path / "draft", private)
    assert gen.generate("hi", strategy="draft", strategy_options={"model": str(tmp_path / "draft")}).tokens


@pytest.mark.parametrize("args, fragments", [
    (["--strategy", "draft"], ["--strategy-opt model=DRAFT_BUNDLE"]),
    (["--strategy", "lookup", "--strategy-opt", "depth=3"], ["strategy 'lookup': unknown option 'depth'"]),
    (["--strategy", "lookup", "--strategy-opt", "ngram"], ["--strategy-opt 'ngram': expected key=value"]),
    (["--strategy", "draft", "--strategy-opt", "confidence=1.5"], ["confidence=1.5: expected a number from 0 to 1"]),
])
def test_strategy_option_errors(bundles, args, fragments):
    target, _, _ = bundles
    assert_user_error(edgert("generate", target, "--prompt", "hi", *args), *fragments)


def test_medusa_typical_acceptance_and_stats(bundles):
    _, _, medusa = bundles
    gen = Generator(medusa)
    params = SamplingParams(max_new_tokens=64, temperature=0.7, seed=2)
    a = gen.generate("The quick brown fox", params, strategy="medusa", strategy_options={"tree": "mc_sim_15"})
    b = gen.generate("The quick brown fox", params, strategy="medusa", strategy_options={"tree": "mc_sim_15"})
    assert a.tokens == b.tokens and a.stats.tokens_per_step > 1.0
    depth = a.stats.acceptance_by_depth()
    assert depth == sorted(depth, reverse=True)  # a deeper token is accepted only after its parent


@pytest.mark.parametrize("tree, fragments", [
    ("[[0], [0, 0, 1]]", ["skips a level: its parent [0, 0] is not in the tree"]),
    ("[[0], [12]]", ["rank outside 0..9"]),
    ("[[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]]", ["4 deep but the bundle has 3 Medusa heads"]),
    ("no-such-tree", ["not a known tree"]),
])
def test_medusa_bad_trees(bundles, tree, fragments):
    _, _, medusa = bundles
    assert_user_error(edgert("generate", medusa, "--prompt", "hi", "--strategy", "medusa", "--strategy-opt", f"tree={tree}"),
                      *fragments)


def test_tree_larger_than_the_bundle_allows(bundles, tmp_path):
    target = bundles[0].parent / "target"
    heads = bundles[0].parent / "heads.safetensors"
    export("llama", tmp_path / "short", {"medusa": str(heads), "context": "32"}, checkpoint=str(target))
    assert_user_error(edgert("generate", tmp_path / "short", "--prompt", "hi", "--strategy", "medusa", "--strategy-opt",
                             "tree=[[0], [0, 0], [0, 0, 0], [0, 0, 1], " + ", ".join(f"[{r}]" for r in range(1, 10)) + ", "
                             + ", ".join(f"[{r}, 0]" for r in range(1, 10)) + ", " + ", ".join(f"[0, {r}]" for r in range(1, 10))
                             + "]", "--strategy-opt", "top_k=10"),
                      "medusa tree of 32 tokens does not fit the bundle's context of 32 positions")


def test_strategies_need_their_heads(bundles):
    target, _, _ = bundles
    assert_user_error(edgert("generate", target, "--prompt", "hi", "--strategy", "medusa"),
                      "needs a bundle exported with Medusa heads")
    assert_user_error(edgert("generate", target, "--prompt", "hi", "--strategy", "mtp"),
                      "needs a bundle exported with an MTP module")


def test_mtp_sampling_reproducible_and_stats(bundles):
    _, _, spec = bundles
    gen = Generator(spec)
    params = SamplingParams(max_new_tokens=48, temperature=1.0, seed=4)
    runs = [gen.generate("def add(a, b):", params, strategy="mtp") for _ in range(2)]
    assert runs[0].tokens == runs[1].tokens
    greedy = gen.generate("def add(a, b):", SamplingParams(max_new_tokens=48), strategy="mtp")
    assert greedy.stats.tokens_per_step > 1.0


def test_draft_confidence_ends_the_draft(bundles):
    target, _, _ = bundles
    gen = Generator(target)
    params = SamplingParams(max_new_tokens=40)
    fixed = {"model": str(target), "gamma": "4", "adaptive": "false"}  # the target drafting for itself
    free = gen.generate("The quick", params, strategy="draft", strategy_options={**fixed, "confidence": "0"})
    doubtful = gen.generate("The quick", params, strategy="draft", strategy_options={**fixed, "confidence": "1"})
    assert max(free.stats.accepted) == 5  # 4 drafts and the bonus ...
    assert max(doubtful.stats.accepted) == 2  # ... and with confidence 1 every draft ends at its first token
    assert doubtful.tokens == free.tokens


def test_medusa_training_resumes(bundles, tmp_path, monkeypatch):
    from edgert.runtime import progress

    target = bundles[0].parent / "target"
    (tmp_path / "text.txt").write_text("\n".join(CORPUS[:5]) * 3)
    args = (str(target), [str(tmp_path / "text.txt")], str(tmp_path / "heads.safetensors"))
    kwargs = dict(num_heads=2, steps=12, samples=16, prompt_len=8, new_tokens=16, save_every=5)
    real = progress.Bar.update

    def interrupt(self, done, note=""):
        real(self, done, note)
        if self.what.startswith("training") and done == 7:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.Bar, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_medusa(*args, **kwargs)
    partial = tmp_path / "heads.safetensors.partial.safetensors"
    assert partial.is_file() and not (tmp_path / "heads.safetensors").exists()
    monkeypatch.setattr(progress.Bar, "update", real)
    train_medusa(*args, **kwargs)
    assert (tmp_path / "heads.safetensors").is_file() and not partial.exists()
    import torch
    from safetensors.torch import load_file

    from edgert.exporters.llm.medusa import load_medusa

    assert len(load_medusa(tmp_path / "heads.safetensors", 64, 320)) == 2
    # Weights and optimiser state came back exactly: equal to a run never interrupted.
    train_medusa(str(target), args[1], str(tmp_path / "straight.safetensors"), **kwargs)
    resumed, straight = load_file(tmp_path / "heads.safetensors"), load_file(tmp_path / "straight.safetensors")
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_a_crafted_resume_file_is_refused_or_kept_to_the_command_line(tmp_path):
    """NaN weights, a step past --steps, ids outside the vocabulary, an optimizer state of
    another shape: each refused (training starts over); its own learning rate never replaces
    the command line's."""
    import json as jsonlib

    import torch
    from safetensors.torch import load_file, save_file

    from edgert.exporters.llm.train import ResumeError, load_resume_state, save_resume_state

    def fresh():
        torch.manual_seed(0)
        heads = torch.nn.Linear(4, 3)
        return heads, torch.optim.AdamW(heads.parameters(), lr=1e-3)

    heads, optimizer = fresh()
    heads(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    setup = {"kind": "medusa"}
    path = tmp_path / "partial.safetensors"
    save_resume_state(path, setup, 5, heads, optimizer, torch.randint(0, 50, (8, 12)))
    step, seqs = load_resume_state(path, setup, *fresh(), steps=10, vocab_size=50)
    assert step == 5 and seqs.shape == (8, 12)

    def crafted(change_tensors=None, change_meta=None):
        from safetensors import safe_open

        crafted.count = getattr(crafted, "count", 0) + 1
        tensors = load_file(path)
        with safe_open(str(path), "pt") as f:
            meta = jsonlib.loads(f.metadata()["edgert_resume"])
        (change_tensors or (lambda t: None))(tensors)
        (change_meta or (lambda m: None))(meta)
        bad = tmp_path / f"bad{crafted.count}.safetensors"
        save_file(tensors, str(bad), metadata={"edgert_resume": jsonlib.dumps(meta)})
        return bad

    cases = [
        (crafted(lambda t: t["heads.weight"].fill_(float("nan"))), "holds NaN or inf (heads.weight)"),
        (crafted(change_meta=lambda m: m.update(step=10 ** 9)), "at step 1000000000, past --steps 10"),
        (crafted(lambda t: t.update(seqs=torch.full((8, 12), 999))), "not ids of this vocabulary (50)"),
        (crafted(lambda t: t.update({"optimizer.0.exp_avg": torch.zeros(7)})), "optimizer state optimizer.0.exp_avg is [7]"),
    ]
    for bad, words in cases:
        with pytest.raises(ResumeError, match=re.escape(words)):
            load_resume_state(bad, setup, *fresh(), steps=10, vocab_size=50)
    fast = crafted(change_meta=lambda m: [g.update(lr=1e30) for g in m["param_groups"]])
    heads, optimizer = fresh()
    load_resume_state(fast, setup, heads, optimizer, steps=10, vocab_size=50)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3]


def test_tune_tree_picks_a_tree_that_runs(bundles, tmp_path):
    import json

    _, _, spec = bundles
    (tmp_path / "sample.txt").write_text("\n".join(CORPUS[:5]) * 2)
    result = edgert("tune-tree", spec, "--data", tmp_path / "sample.txt", "--out", tmp_path / "tree.json", "--samples", "4",
                    "--prompt-len", "8", "--new-tokens", "16", "--max-nodes", "15")
    assert result.returncode == 0, result.stderr
    assert "<- chosen" in result.stdout and "expected tokens/s" in result.stdout
    choices = json.loads((tmp_path / "tree.json").read_text())
    assert 1 <= len(choices) <= 15 and choices[0] == [0]
    from edgert.runtime.llm.tree import medusa_buffers

    medusa_buffers(choices, 10, 3)  # a valid tree for this bundle
    run = edgert("generate", spec, "--prompt", "The quick", "--strategy", "medusa", "--strategy-opt", f"tree={tmp_path / 'tree.json'}")
    assert run.returncode == 0, run.stderr


def test_grow_tree_follows_expected_acceptance():
    from edgert.runtime.llm.tune import grow_tree

    acc = np.array([[0.6, 0.2, 0.1], [0.5, 0.1, 0.05]])
    nodes = grow_tree(acc, 4)
    # E: (0,)=.6, (0,0)=.3, (1,)=.2, (0,1)=.06, (2,)=.1, (1,0)=.1
    assert [p for p, _ in nodes] == [(0,), (0, 0), (1,), (2,)] or [p for p, _ in nodes] == [(0,), (0, 0), (1,), (1, 0)]
    assert [round(e, 3) for _, e in nodes][:3] == [0.6, 0.3, 0.2]


def test_bad_medusa_heads_file(bundles, tmp_path):
    from safetensors.torch import save_file
    import torch

    target = bundles[0].parent / "target"
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "bad.safetensors"))
    assert_user_error(edgert("export", "llama", "--checkpoint", target, "--out", tmp_path / "b", "--opt",
                             f"medusa={tmp_path / 'bad.safetensors'}"), "not a Medusa heads checkpoint")


def test_generate_stats_on_the_cli(bundles):
    target, _, _ = bundles
    result = edgert("generate", target, "--prompt", "The quick brown fox. The quick brown fox.", "--strategy", "lookup",
                    "--stats", "--max-new-tokens", "32")
    assert result.returncode == 0, result.stderr
    assert "tokens per pass" in result.stderr and "acceptance by draft depth" in result.stderr



def test_a_generations_sessions_stop_spinning_between_runs(bundles):
    """Decoder, Medusa heads and MTP graph take turns on the cores: each session's threads stop
    spinning when its run ends (idle spinning pools took the cores from the next session)."""
    from edgert.plugins.medusa.session import MedusaSession
    from edgert.runtime.bundle import Bundle
    from edgert.runtime.llm.contract import heads_of
    from edgert.runtime.llm.session import DecoderSession

    bundle = Bundle.load(bundles[2])
    decoder = DecoderSession(bundle, threads=2)
    for session in (decoder, DecoderSession(bundle, threads=2, graph="mtp"),
                    MedusaSession(decoder, heads_of(bundle.manifest["decoder"])["medusa"])):
        options = session.backend.session.get_session_options()
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


@pytest.mark.parametrize("precision", ["int4", "int8"])
def test_quantized_target_stays_lossless(bundles, tmp_path, precision):
    """A weight-only int4 / int8 target with its Medusa heads and MTP module (quantized with it)
    and an int4 / int8 draft: every strategy still equals ar on that same bundle."""
    import onnx

    root = bundles[0].parent
    loose = {"min_agreement": "0.5", "max_perplexity_ratio": "2"}  # random weights: see tests/test_precision.py
    heads = {"medusa": str(root / "heads.safetensors"), "mtp": str(root / "mtp.safetensors")}
    export("llama", tmp_path / "target", heads, checkpoint=str(root / "target"), precision=precision, quant=loose)
    export("llama", tmp_path / "draft", checkpoint=str(root / "draft-ckpt"), precision=precision, quant=loose)
    for graph in ("decoder.onnx", "medusa.onnx", "mtp.onnx"):
        assert "MatMulNBits" in {n.op_type for n in onnx.load(tmp_path / "target" / graph).graph.node}, graph
    gen = Generator(tmp_path / "target")
    gen.eos = set()
    params = SamplingParams(max_new_tokens=64)
    strategies = [("lookup", {}), ("draft", {"gamma": "3", "confidence": "0", "model": str(tmp_path / "draft")}),
                  ("medusa", {"tree": "mc_sim_7"}), ("mtp", {"depth": "3"})]
    gained = {name: [] for name, _ in strategies}
    for ids in prompts(gen, 12):
        reference = gen.generate(ids, params).tokens
        for name, options in strategies:
            result = gen.generate(ids, params, strategy=name, strategy_options=options)
            gained[name].append(result.stats.tokens_per_step)
            if result.tokens != reference:
                first = next(i for i, (a, b) in enumerate(zip(result.tokens, reference)) if a != b)
                assert near_tie(gen, ids + reference[:first]), f"{name}: diverged at token {first} without a near-tie"
    assert all(np.mean(v) > 1.1 for v in gained.values()), gained


def test_lookup_drafts_only_what_pays():
    """Pace: long drafts where they are accepted and cheap, none where a drafted token costs as
    much as a step and half of them fail, and drafting again once that evidence has faded."""
    from edgert.plugins.lookup import Pace

    pace = Pace(8)
    for _ in range(20):  # cheap verify passes, every drafted token accepted
        pace.stepped(0.010)
        pace.verified(8, 8, 0.011)
    assert pace.length() == 8 and pace.acceptance() > 0.9
    slow = Pace(8)
    slow.stepped(0.010)
    for _ in range(20):  # each drafted token costs a step (a several-row kernel twice the one-row one)
        slow.verified(4, 1, 0.050)
    assert slow.per_token > 0.9 and slow.length() == 0
    bad = Pace(8)
    bad.stepped(0.010)
    for _ in range(20):  # cheap, but nothing is accepted: one-token drafts at most
        bad.verified(8, 0, 0.012)
    assert bad.length() <= 1
    for _ in range(200):  # plain steps: what drafts were worth fades back to the prior
        bad.stepped(0.010)
        slow.stepped(0.010)
    assert bad.length() > 1 and slow.length() == 0  # tried again where they are cheap, not where they cost
