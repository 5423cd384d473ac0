"""The Triton KV compaction kernel (trt_plugins/kv_compact) against numpy, under the CPU
interpreter, including the overlapping case that breaks a naive parallel copy."""

from __future__ import annotations

import numpy as np
import pytest

triton = pytest.importorskip("triton", reason="triton is installed by the dev extra")
torch = pytest.importorskip("torch")

from conftest import load_kernel  # noqa: E402

kv_compact = load_kernel("kv_compact").kv_compact


@pytest.mark.parametrize("select, start", [([0, 2, 3], 0), ([5, 6, 9, 12], 5), ([7], 7), ([8, 9, 10], 8)])
def test_compaction_matches_a_gather(select, start):
    rng = np.random.default_rng(len(select))
    cache = rng.standard_normal((2, 3, 16, 40)).astype(np.float32)  # head_dim 40: a partial block of 32
    want = cache.copy()
    want[:, :, start:start + len(select)] = cache[:, :, select]
    got = torch.from_numpy(cache.copy())
    kv_compact(got, torch.tensor(select, dtype=torch.int32), start)
    np.testing.assert_array_equal(got.numpy(), want)


def test_bad_select_is_refused():
    cache = torch.zeros(1, 1, 8, 16)
    with pytest.raises(ValueError, match="strictly increasing"):
        kv_compact(cache, torch.tensor([3, 2], dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="must lie in"):
        kv_compact(cache, torch.tensor([1, 9], dtype=torch.int32), 2)
