"""EAGLE-3 (plugins/eagle): the head plugin's dynamic tree on fixed draft probabilities, the
official checkpoint layout and its RoPE (the head's config.json), training-time-test training,
lossless greedy decoding (50 prompts x 128 tokens against ar), the multi-candidate sampling
rule, and the bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import CORPUS, make_llama, mixed_prompts  # noqa: E402

from edgert.exporters.driver import export  # noqa: E402
from edgert.exporters.llm.train import train  # noqa: E402
from edgert.runtime.llm.generator import Generator  # noqa: E402
from edgert.runtime.llm.sampling import SamplingParams  # noqa: E402
from edgert.runtime.llm.verify import verify  # noqa: E402

NEW_TOKENS = 128
# The released EAGLE-3 heads' state_dict keys (SafeAILab/EAGLE, eagle/model/cnets.py's Model).
OFFICIAL = ["fc.weight", "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
            "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight", "midlayer.mlp.gate_proj.weight",
            "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight", "midlayer.hidden_norm.weight",
            "midlayer.input_layernorm.weight", "midlayer.post_attention_layernorm.weight", "norm.weight",
            "lm_head.weight", "d2t", "t2d"]


@pytest.fixture(scope="module")
def eagle(tmp_path_factory):
    """An 8-layer target (taps 2, 4, 5), its EAGLE-3 head trained for a minute, the bundle."""
    root = tmp_path_factory.mktemp("eagle")
    make_llama(root / "target", layers=8)
    (root / "text.txt").write_text("\n".join(CORPUS[:5]) * 3)
    report = train("eagle", str(root / "target"), [str(root / "text.txt")], str(root / "eagle.safetensors"),
                   options={"ttt_steps": 3}, steps=120, samples=48, prompt_len=8, new_tokens=40)
    assert len(report["top1"]) == 3  # a loss and an accuracy per unrolled step
    from safetensors.torch import load_file

    head, target = load_file(root / "eagle.safetensors"), load_file(root / "target" / "model.safetensors")
    # a full-vocabulary head reads through the target's own final norm and lm_head, left as they were
    assert torch.equal(head["norm.weight"], target["model.norm.weight"])
    assert torch.equal(head["lm_head.weight"], target.get("lm_head.weight", target["model.embed_tokens.weight"]))
    export("llama", root / "bundle", {"eagle": str(root / "eagle.safetensors")}, checkpoint=str(root / "target"))
    return root


def prompts(gen: Generator, count: int = 50) -> list[list[int]]:
    return mixed_prompts(gen.tokenizer.encode, count)


def test_dynamic_tree_equals_the_hand_derived_one():
    """k = 2, two expansions over a 6-token vocabulary, fixed draft log-probabilities."""
    from edgert.plugins.eagle.tree import grow, select

    lp = np.log
    first = lp(np.array([0.05, 0.6, 0.3, 0.03, 0.01, 0.01]))  # depth 1: tokens 1 (0.6), 2 (0.3)
    tables = {
        1: lp([0.1, 0.1, 0.1, 0.5, 0.1, 0.1]),   # after token 1: 3 (0.5), then 0 / 1 / 2 / 4 / 5 (0.1: lowest id 0)
        2: lp([0.02, 0.02, 0.02, 0.02, 0.9, 0.02]),  # after token 2: 4 (0.9), 0 (0.02)
        3: lp([0.7, 0.1, 0.1, 0.04, 0.03, 0.03]),    # after 1 -> 3: 0 (0.7), 1 (0.1)
        4: lp([0.01, 0.01, 0.01, 0.01, 0.01, 0.95]),  # after 2 -> 4: 5 (0.95), 0 (0.01)
    }
    seen = []

    def expand(tree, frontier):
        seen.append(list(frontier))
        return np.stack([tables[tree.tokens[n]] for n in frontier])

    tree = grow(7, first, expand, depth=2, k=2)
    # nodes: 0 root(7); 1 tok1 .3 .. ; made in order: depth 1 [1, 2], depth 2 children of 1 [3:(3), 4:(0)],
    # of 2 [5:(4), 6:(0)]; the frontier keeps the 2 best of those four: 5 (.3*.9=.27) and 3 (.6*.5=.30)
    assert seen[0] == [1, 2]
    assert tree.tokens[:7] == [7, 1, 2, 3, 0, 4, 0] and tree.parents[:7] == [-1, 0, 0, 1, 1, 2, 2]
    assert seen[1] == [3, 5]  # reranked by cumulative probability: .30 before .27
    # depth 3: children of 3 -> [7:(0) .21, 8:(1) .03], of 5 -> [9:(5) .2565, 10:(0) .0027]
    assert tree.tokens[7:] == [0, 1, 5, 0] and tree.parents[7:] == [3, 3, 5, 5]
    assert tree.depths == [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    nodes, parents = select(tree, 5)  # the 5 best: 1 (.6), 2 (.3), 3 (.3), 5 (.27), 9 (.2565)
    assert nodes == [0, 1, 2, 3, 5, 9] and parents == [-1, 0, 0, 1, 2, 4]
    static = grow(7, first, expand, depth=2, k=2, static=True)  # only the best node of each level grows
    assert static.parents == [-1, 0, 0, 1, 1, 3, 3]


def test_auto_size_follows_the_draft_confidence_and_the_latency():
    """total_tokens=auto: verify the number of best nodes with the most expected tokens per
    second, expected = 1 + the sum of the nodes' path probabilities."""
    from edgert.plugins.eagle.tree import DraftTree, best_size

    sure = DraftTree([7, 1, 2, 3, 4], [-1, 0, 1, 2, 3], [0.0] + list(np.log([0.9, 0.8, 0.7, 0.6])), [0, 1, 2, 3, 4])
    doubtful = DraftTree([7, 1, 2, 3, 4], [-1, 0, 0, 0, 0], [0.0] + list(np.log([0.2, 0.1, 0.05, 0.01])), [0, 1, 1, 1, 1])
    flat = lambda size: 0.010  # noqa: E731 - verifying costs the same whatever the size: take everything
    steep = lambda size: 0.010 * size  # noqa: E731 - each node costs a pass: take none
    assert best_size(sure, flat) == 4 and best_size(doubtful, flat) == 4
    assert best_size(sure, steep) == 0
    rising = lambda size: 0.010 + 0.002 * (size - 1)  # noqa: E731
    # sure: (1 + .9 + .8 + .7 + .6) / .018 = 222 per s beats 1 / .01 = 100; doubtful: 1.2 / .012 = 100 ties 100,
    # 1.3 / .014 = 93: the root alone or one node, never four
    assert best_size(sure, rising) == 4 and best_size(doubtful, rising) <= 1
    assert best_size(sure, flat, largest=2) == 2


def test_calibration_learns_how_often_the_draft_is_right():
    """A draft that is right 9 times in 10 with probabilities of 0.3: after some verifications
    its nodes are scored near 0.9, not 0.3, so the tree grows deep along its first choices."""
    from edgert.plugins.eagle.tree import Calibration, DraftTree

    tree = DraftTree([7], [-1], [0.0], [0], [-1], [0])
    for depth in range(1, 4):
        tree.add(depth, depth - 1, float(np.log(0.3)) * depth, 0)
    calibration = Calibration(depth=3, k=1)
    before = np.exp(calibration.path_scores(tree))
    for step in range(50):
        path = [0, 1, 2, 3] if step % 10 else [0]  # accepted to the end 9 times in 10
        calibration.learn(tree, [0, 1, 2, 3], path)
    after = np.exp(calibration.path_scores(tree))
    assert np.allclose(before[1:], [0.3, 0.09, 0.027], rtol=1e-6)
    assert after[1] > 0.85 and after[3] > 0.6


def test_the_official_layout_loads_with_a_reduced_vocabulary(eagle, tmp_path):
    """A synthetic state_dict with exactly the released heads' keys, a draft vocabulary of 200 of
    the target's 320 tokens (d2t offsets), loads, exports (the map in the manifest) and decodes
    losslessly; the tree holds the target ids the draft's best ids map to."""
    from safetensors.torch import save_file

    from edgert.exporters.llm.llama import DecoderConfig
    from edgert.plugins.eagle.model import EagleDraft

    cfg = DecoderConfig.from_dir(eagle / "target")
    keep = np.sort(np.random.default_rng(0).choice(cfg.vocab_size, 200, replace=False))
    torch.manual_seed(0)
    state = {k: v for k, v in EagleDraft(cfg, 200).state_dict().items()}
    state["d2t"] = torch.from_numpy(keep - np.arange(200))
    state["t2d"] = torch.zeros(cfg.vocab_size, dtype=torch.bool)
    state["t2d"][keep] = True
    assert sorted(state) == sorted(OFFICIAL)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "official.safetensors"))
    export("llama", tmp_path / "bundle", {"eagle": str(tmp_path / "official.safetensors")},
           checkpoint=str(eagle / "target"))
    entry = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["decoder"]["heads"]["eagle"]
    assert entry["taps"] == [2, 4, 5] and entry["draft_vocab"] == 200
    assert (np.arange(200) + np.asarray(entry["d2t"]) == keep).all()
    gen = Generator(tmp_path / "bundle")
    from edgert.plugins.eagle.session import EagleSession
    from edgert.plugins.eagle.tree import grow

    session = EagleSession(gen.session, entry)
    tree = grow(7, np.arange(200, dtype=np.float32), None, depth=0, k=3, ids=session.ids)  # draft ids 199, 198, 197
    assert tree.tokens == [7, *keep[[199, 198, 197]]]
    params = SamplingParams(max_new_tokens=40)
    for prompt in ["The quick brown fox", "def add(a, b):"]:
        assert gen.generate(prompt, params, strategy="eagle").tokens == gen.generate(prompt, params).tokens


def test_greedy_is_lossless_and_accepts_long_paths(eagle):
    gen = Generator(eagle / "bundle")
    gen.eos = set()
    params = SamplingParams(max_new_tokens=NEW_TOKENS)
    gained = []
    for ids in prompts(gen):
        reference = gen.generate(ids, params).tokens
        result = gen.generate(ids, params, strategy="eagle")
        assert result.tokens == reference, ids
        gained.append(result.stats.tokens_per_step)
    assert np.mean(gained) > 2.0, gained  # the trained head is accepted deep into its trees
    for options in ({"total_tokens": "12", "top_k": "4"}, {"top_k": "3", "max_tokens": "48", "depth": "6"}):
        for ids in prompts(gen, 6):
            assert gen.generate(ids, params, strategy="eagle", strategy_options=options).tokens == \
                gen.generate(ids, params).tokens, options
    static = gen.generate(prompts(gen, 2)[1], params, strategy="eagle", strategy_options={"tree": "static"})
    assert static.tokens == gen.generate(prompts(gen, 2)[1], params).tokens


def test_the_multi_candidate_rule_keeps_the_target_distribution():
    """EAGLE's sampling rule with deterministic drafts: root with three sibling drafts (and a
    grandchild); accept a sibling with p(x), else zero it, renormalise, try the next; bonus from
    what is left. The first emitted token follows p: chi-square over 40,000 seeds."""
    p_logits = np.log(np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25],
                                [0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]]))
    tokens, parents = [0, 2, 0, 3, 1], [-1, 0, 0, 0, 1]
    counts = np.zeros(4)
    trials = 40_000
    for seed in range(trials):
        v = verify(tokens, parents, p_logits, "sampling", seed=seed)
        counts[tokens[v.path[1]] if v.length > 1 else v.bonus] += 1
    expected = np.exp(p_logits[0]) * trials
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, (counts, expected)  # 3 degrees of freedom, p = 0.001


def test_sampling_runs_and_is_reproducible(eagle):
    """A seed reproduces a sampled generation over a tree of fixed size. (``total_tokens=auto``
    sizes each tree by this machine's timing and by what earlier generations taught the
    calibration, so which tokens a seed draws may vary; their distribution is the target's.)"""
    gen = Generator(eagle / "bundle")
    params = SamplingParams(max_new_tokens=32, temperature=0.8, seed=5)
    for options in ({"total_tokens": "8"}, {"tree": "static"}):
        first = gen.generate("The quick brown fox", params, strategy="eagle", strategy_options=options)
        assert first.tokens == gen.generate("The quick brown fox", params, strategy="eagle",
                                            strategy_options=options).tokens, options
        assert first.stats.tokens_per_step > 1.0
    assert gen.generate("The quick brown fox", params, strategy="eagle").stats.tokens_per_step > 1.0  # auto


def test_bad_requests_are_one_line(eagle, tmp_path):
    from safetensors.torch import save_file

    from edgert.exporters.llm.llama import DecoderConfig
    from edgert.plugins.eagle.model import EagleDraft

    bundle, target = eagle / "bundle", eagle / "target"
    assert_user_error(edgert("generate", bundle, "--prompt", "hi", "--strategy", "eagle", "--strategy-opt", "depth=6",
                             "--strategy-opt", "total_tokens=4"), "total_tokens=4 is smaller than depth=6")
    assert_user_error(edgert("generate", bundle, "--prompt", "hi", "--strategy", "eagle", "--strategy-opt",
                             "total_tokens=400"), "total_tokens=400 does not fit the bundle's context of 256")
    assert_user_error(edgert("generate", bundle, "--prompt", "hi", "--strategy", "eagle", "--strategy-opt", "top_k=0"),
                      "top_k")
    export("llama", tmp_path / "plain", checkpoint=str(target))
    assert_user_error(edgert("generate", tmp_path / "plain", "--prompt", "hi", "--strategy", "eagle"),
                      "needs a bundle exported with an EAGLE-3 draft head", "--opt eagle=FILE")
    wider = DecoderConfig.from_dir(target)
    wider.hidden_size, wider.head_dim = 96, 12
    save_file({k: v.contiguous() for k, v in EagleDraft(wider).state_dict().items()}, str(tmp_path / "wide.safetensors"))
    assert_user_error(edgert("export", "llama", "--checkpoint", target, "--out", tmp_path / "b", "--opt",
                             f"eagle={tmp_path / 'wide.safetensors'}"), "an EAGLE head for hidden size 96",
                      "this model's hidden size is 64")
    import shutil

    shutil.copytree(bundle, tmp_path / "lying")
    manifest = json.loads((tmp_path / "lying" / "manifest.json").read_text())
    manifest["decoder"]["heads"]["eagle"]["draft_vocab"] = -1
    (tmp_path / "lying" / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(edgert("generate", tmp_path / "lying", "--prompt", "hi", "--strategy", "eagle"),
                      "decoder.heads.eagle.draft_vocab -1 does not match the draft graph's logits (320)")
    make_llama(tmp_path / "shallow", layers=4)
    assert_user_error(edgert("export", "llama", "--checkpoint", tmp_path / "shallow", "--out", tmp_path / "b", "--opt",
                             f"eagle={eagle / 'eagle.safetensors'}"), "this model has 4 layers", "needs at least 7")
    assert not (tmp_path / "b").exists()


def _released_head(directory, cfg, **config):
    """A head in the released layout: model.safetensors + the head's config.json (SafeAILab's
    keys; no rope_theta, as the Llama-3.1 heads)."""
    from safetensors.torch import save_file

    from edgert.plugins.eagle.model import EagleDraft

    directory.mkdir()
    torch.manual_seed(1)
    save_file({k: v.contiguous() for k, v in EagleDraft(cfg).state_dict().items()}, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLMEagle3"], "hidden_size": cfg.hidden_size, "num_hidden_layers": 1,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "vocab_size": cfg.vocab_size,
        "draft_vocab_size": cfg.vocab_size, "rms_norm_eps": 1e-5, "max_position_embeddings": 2048, **config}))
    return directory


def _official_inv_freq(base, dim):
    """cnets.py's LlamaRotaryEmbedding."""
    return 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))


def test_a_released_head_rotates_with_its_own_config(eagle, tmp_path):
    """Against a Llama-3.1-style target (θ 500000, llama3 scaling): a released head with no
    rope_theta rotates at the official 10000 unscaled, one with rope_theta at that θ, one with
    linear scaling at 10000 over factor; the draft graph reads exactly that table; the manifest
    says which; a head edgert trained keeps the target's table."""
    from edgert.exporters.llm.llama import DecoderConfig, load_decoder
    from edgert.plugins.eagle.model import DraftGraph, load_eagle

    target = tmp_path / "target31"
    target.mkdir()
    for f in (eagle / "target").iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "rope_theta": 500000.0}))
    cfg = DecoderConfig.from_dir(target)
    assert cfg.rope_scaling["rope_type"] == "llama3"
    model = load_decoder(target).eval()
    dim = cfg.head_dim

    released = _released_head(tmp_path / "released", cfg)
    draft = load_eagle(released, cfg)
    assert draft.rope == {"theta": 10000.0, "scaling": None, "from": "config.json"}
    torch.testing.assert_close(draft.inv_freq, _official_inv_freq(10000.0, dim), rtol=1e-6, atol=0)
    from edgert.exporters.llm.attention import attention
    from edgert.exporters.llm.llama import causal_mask

    ids, positions, hidden = torch.randint(0, cfg.vocab_size, (1, 6)), torch.arange(40, 46)[None], torch.randn(1, 6, 64)
    empty = torch.zeros(1, cfg.num_kv_heads, 0, dim)

    def draft_logits(inv_freq):
        draft.inv_freq = inv_freq
        with torch.no_grad():
            return DraftGraph(model, draft).run(ids, positions, torch.tensor([[5]]), hidden, lambda q, k, v: attention(
                q, k, v, causal_mask(1, 6, 0), empty, empty))[0]

    loaded = draft_logits(draft.inv_freq)
    official = draft_logits(_official_inv_freq(10000.0, dim))
    torch.testing.assert_close(loaded, official, rtol=0, atol=1e-5)
    spread = float(official.max() - official.min())
    assert float((draft_logits(model.inv_freq) - official).abs().max()) > 1e-3 * spread  # the target's table is not it

    with_theta = _released_head(tmp_path / "theta", cfg, rope_theta=500000.0)
    torch.testing.assert_close(load_eagle(with_theta, cfg).inv_freq, _official_inv_freq(500000.0, dim), rtol=1e-6, atol=0)
    linear = _released_head(tmp_path / "linear", cfg, rope_theta=500000.0, rope_scaling={"type": "linear", "factor": 4.0})
    draft = load_eagle(linear / "model.safetensors", cfg)  # the weights file, its config.json beside it
    assert draft.rope["theta"] == 10000.0 and draft.rope["scaling"] == {"type": "linear", "factor": 4.0}
    torch.testing.assert_close(draft.inv_freq, _official_inv_freq(10000.0, dim) / 4, rtol=1e-6, atol=0)
    for scaling, fragment in [({"type": "dynamic", "factor": 2.0}, "dynamic NTK"),
                              ({"rope_type": "llama3", "factor": 8.0}, "unscaled or with 'type': 'linear'")]:
        bad = _released_head(tmp_path / scaling.get("type", "llama3"), cfg, rope_scaling=scaling)
        result = edgert("export", "llama", "--checkpoint", target, "--out", tmp_path / "b", "--opt", f"eagle={bad}")
        assert_user_error(result, f"{bad / 'config.json'}: rope_scaling", fragment)
    assert not (tmp_path / "b").exists()

    export("llama", tmp_path / "bundle", {"eagle": str(released)}, checkpoint=str(target))
    entry = json.loads((tmp_path / "bundle" / "manifest.json").read_text())["decoder"]["heads"]["eagle"]
    assert entry["rope"] == {"theta": 10000.0, "scaling": None, "from": "config.json"}
    trained = json.loads((eagle / "bundle" / "manifest.json").read_text())["decoder"]["heads"]["eagle"]["rope"]
    assert trained["from"].startswith("the target's own table") and trained["scaling"]["rope_type"] == "llama3"
