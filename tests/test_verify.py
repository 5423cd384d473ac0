"""The tree-verification op: hand-derived trees, Medusa's buffers, the numpy reference against
the ONNX graphs on random trees, and speculative sampling's distribution."""

from __future__ import annotations

import numpy as np
import pytest

from edgert.runtime.errors import InputError
from edgert.runtime.llm.tree import Tree, medusa_buffers, pack_mask, unpack_mask
from edgert.runtime.llm.verify import OnnxVerifier, softmax, verify

MEDUSA_EXAMPLE = [[0], [0, 0], [0, 1], [0, 2], [1], [1, 0], [1, 1], [1, 2]]


def test_medusa_worked_example():
    b = medusa_buffers(MEDUSA_EXAMPLE, top_k=10)
    assert b.position_ids.tolist() == [0, 1, 1, 2, 2, 2, 2, 2, 2]
    assert b.retrieve_indices.tolist() == [[0, 2, 8], [0, 2, 7], [0, 2, 6], [0, 1, 5], [0, 1, 4], [0, 1, 3]]
    assert b.tree_indices.tolist() == [0, 1, 2, 11, 12, 13, 11, 12, 13]
    mask = b.tree.ancestor_mask()
    assert mask[8].tolist() == [True, False, True, False, False, False, False, False, True]  # root, [1], [1, 2]
    assert (b.tree.depths() == b.position_ids).all()


@pytest.mark.parametrize("choices, message", [
    ([[0], [0, 0, 1]], "skips a level"),
    ([[0], [10]], "rank outside 0..9"),
    ([[0], [0]], "appears twice"),
    ([], "non-empty"),
])
def test_medusa_choices_malformed(choices, message):
    with pytest.raises(InputError, match=message):
        medusa_buffers(choices, top_k=10)


def test_packed_mask_layout():
    chain = Tree.chain(40)
    packed = chain.packed_mask()
    assert packed.shape == (40, 2) and packed.dtype == np.int32
    assert packed[:31, 0].tolist() == [(1 << (j + 1)) - 1 for j in range(31)]  # TensorRT-LLM's chain rows
    assert packed[31, 0] == -1 and packed[39, 1] == 0xFF
    m = np.random.default_rng(0).random((7, 70)) > 0.5
    assert (unpack_mask(pack_mask(m), 70) == m).all()


def test_depth_first_layout():
    """The pass's row order: each node's first child's subtree before its next child, so the first
    chain is a causal prefix; the reordered tree is the same tree."""
    b = medusa_buffers(MEDUSA_EXAMPLE, top_k=10)  # slots: root, [0], [1], [0,0], [0,1], [0,2], [1,0], ...
    ran, row = b.tree.depth_first()
    order = np.argsort(row)
    assert order.tolist() == [0, 1, 3, 4, 5, 2, 6, 7, 8]
    assert ran.parents.tolist() == [-1, 0, 1, 1, 1, 0, 5, 5, 5]
    assert (ran.ancestor_mask() == b.tree.ancestor_mask()[np.ix_(order, order)]).all()
    assert (ran.depths() == b.tree.depths()[order]).all()
    chain = Tree.chain(5)
    assert chain.depth_first()[0] is chain and chain.depth_first()[1].tolist() == [0, 1, 2, 3, 4]


def test_greedy_hand_tree():
    # root 0 -> {1: token 5, 2: token 6}; 2 -> {3: token 7}; 1 -> {4: token 9}
    parents = [-1, 0, 0, 2, 1]
    tokens = [3, 5, 6, 7, 9]
    logits = np.zeros((5, 12))
    logits[0, 6] = logits[2, 7] = logits[3, 11] = logits[1, 9] = 1.0
    v = verify(tokens, parents, logits)
    assert v.path == [0, 2, 3] and v.bonus == 11
    logits[0, 6], logits[0, 5] = 0.0, 1.0  # now the other branch, which is one shorter
    v = verify(tokens, parents, logits)
    assert v.path == [0, 1, 4] and v.bonus == int(np.argmax(logits[4]))
    logits[0] = 0.0
    logits[0, 2] = 1.0  # nothing matches: the root alone, bonus = the target's choice
    assert verify(tokens, parents, logits).path == [0] and verify(tokens, parents, logits).bonus == 2


def test_typical_hand_tree():
    # A flat distribution at the root (high entropy: threshold = delta * exp(-H) is low) accepts both
    # children; the deeper branch wins.
    parents, tokens = [-1, 0, 0, 2], [0, 1, 2, 3]
    logits = np.full((4, 4), 0.0)
    logits[2, 3] = 3.0  # node 2 is confident about token 3
    v = verify(tokens, parents, logits, "typical", temperature=1.0)
    assert v.path == [0, 2, 3]
    logits[2] = [5.0, 0, 0, -5.0]  # now token 3 is implausible under node 2: p ~ 4e-5 < threshold
    v = verify(tokens, parents, logits, "typical", temperature=1.0)
    assert v.path in ([0, 1], [0, 2])


def random_case(rng, size, vocab, mode):
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, size)]
    if mode == "sampling":
        parents = list(range(-1, size - 1))  # the ONNX graph takes chains
    logits = rng.standard_normal((size, vocab)).astype(np.float32) * 3
    tokens = rng.integers(0, vocab, size)
    for i in range(1, size):  # make about half the nodes the parent's argmax
        if rng.random() < 0.6:
            tokens[i] = int(np.argmax(logits[parents[i]]))
    q = softmax(rng.standard_normal((size, vocab)) * 2).astype(np.float32) if mode == "sampling" else None
    return tokens, parents, logits, q


@pytest.mark.parametrize("mode", ["greedy", "typical", "sampling"])
def test_numpy_and_onnx_agree_on_random_trees(mode, tmp_path):
    from edgert.exporters.llm.verify_graphs import write_verify_graphs

    onnx_verify = OnnxVerifier(tmp_path, write_verify_graphs(tmp_path))
    rng = np.random.default_rng(1)
    lengths = []
    for case in range(200):
        tokens, parents, logits, q = random_case(rng, int(rng.integers(1, 24)), int(rng.integers(2, 60)), mode)
        kwargs = {"temperature": 0.7, "seed": case} if mode != "greedy" else {}
        if q is not None:
            kwargs["draft_probs"] = q
        a = verify(tokens, parents, logits, mode, **kwargs)
        b = onnx_verify(tokens, parents, logits, mode, **kwargs)
        assert (a.path, a.bonus) == (b.path, b.bonus), (mode, case)
        lengths.append(a.length)
    assert max(lengths) >= 3  # the cases exercise acceptance, not only the root


@pytest.mark.parametrize("draft", ["distribution", "deterministic"])
def test_speculative_sampling_preserves_the_target_distribution(draft):
    """Two proposed tokens over a 4-token vocabulary; the first emitted token (path[1] or the
    bonus) must follow the target p exactly: chi-square over 40,000 seeds."""
    rng = np.random.default_rng(0)
    p_logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]]))
    q = np.array([[0.1, 0.6, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    counts = np.zeros(4)
    trials = 40_000
    for seed in range(trials):
        first = int(rng.choice(4, p=q[0])) if draft == "distribution" else 1
        second = int(rng.choice(4, p=q[1])) if draft == "distribution" else 3
        v = verify([0, first, second], [-1, 0, 1], p_logits, "sampling", seed=seed,
                   draft_probs=q if draft == "distribution" else None)
        counts[[first, second][0] if v.length > 1 else v.bonus] += 1
    expected = np.exp(p_logits[0]) * trials
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 16.27, (counts, expected)  # 3 degrees of freedom, p = 0.001
