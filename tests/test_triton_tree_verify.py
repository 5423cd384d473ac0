"""The Triton tree-verification kernel (trt_plugins/tree_verify) against the numpy op of
runtime/llm/verify.py on random trees, greedy and typical, under the CPU interpreter."""

from __future__ import annotations

import numpy as np
import pytest

triton = pytest.importorskip("triton", reason="triton is installed by the dev extra")
torch = pytest.importorskip("torch")

from conftest import load_kernel  # noqa: E402

tree_verify = load_kernel("tree_verify").tree_verify

from edgert.runtime.llm.verify import uniforms, verify  # noqa: E402
from test_verify import random_case  # noqa: E402


@pytest.mark.parametrize("mode", ["greedy", "typical"])
def test_kernel_agrees_with_the_numpy_op(mode):
    rng = np.random.default_rng(11)
    lengths = []
    for case in range(40):
        size, vocab = int(rng.integers(1, 20)), int(rng.integers(2, 300))  # vocab spans several 128-wide tiles
        tokens, parents, logits, _ = random_case(rng, size, vocab, mode)
        kwargs = {"temperature": 0.7, "seed": case} if mode == "typical" else {}
        want = verify(tokens, parents, logits, mode, **kwargs)
        u = torch.tensor([uniforms(case, size)[0]], dtype=torch.float32)
        path, length, bonus = tree_verify(torch.from_numpy(np.asarray([tokens], np.int32)),
                                          torch.from_numpy(np.asarray([parents], np.int32)),
                                          torch.from_numpy(logits)[None], mode, temperature=0.7, uniform=u)
        got = path[0, : int(length[0])].tolist()
        assert (got, int(bonus[0])) == (want.path, want.bonus), (mode, case)
        lengths.append(len(got))
    assert max(lengths) >= 3


def test_batch_rows_are_independent():
    rng = np.random.default_rng(2)
    cases = [random_case(rng, 9, 200, "greedy") for _ in range(3)]
    tokens = torch.from_numpy(np.asarray([c[0] for c in cases], np.int32))
    parents = torch.from_numpy(np.asarray([c[1] for c in cases], np.int32))
    logits = torch.from_numpy(np.stack([c[2] for c in cases]))
    path, length, bonus = tree_verify(tokens, parents, logits)
    for row, (tok, par, lg, _) in enumerate(cases):
        want = verify(tok, par, lg)
        assert path[row, : int(length[row])].tolist() == want.path and int(bonus[row]) == want.bonus
