"""The Triton KV compaction kernel (trt_plugins/kv_compact) against numpy, under the CPU
interpreter, including the overlapping case that breaks a naive parallel copy and a batch whose
rows accept different paths after different past lengths."""

from __future__ import annotations

import numpy as np
import pytest

triton = pytest.importorskip("triton", reason="triton is installed by the dev extra")
torch = pytest.importorskip("torch")

from conftest import load_kernel  # noqa: E402

kv_compact = load_kernel("kv_compact").kv_compact


def padded(paths):
    width = max(len(p) for p in paths)
    return (torch.tensor([p + [-1] * (width - len(p)) for p in paths], dtype=torch.int32),
            torch.tensor([len(p) for p in paths], dtype=torch.int32))


@pytest.mark.parametrize("paths, past", [([[0, 2, 3]], [0]), ([[0, 1, 4, 7], [0, 3]], [5, 2]), ([[0], [0, 1, 2]], [7, 3])])
def test_compaction_matches_a_gather(paths, past):
    rng = np.random.default_rng(len(paths[0]))
    cache = rng.standard_normal((len(paths), 3, 16, 40)).astype(np.float32)  # head_dim 40: a partial block of 32
    want = cache.copy()
    for b, (p, start) in enumerate(zip(paths, past)):
        want[b, :, start:start + len(p)] = cache[b][:, [start + i for i in p]]
    got = torch.from_numpy(cache.copy())
    path, length = padded(paths)
    kv_compact(got, path, length, torch.tensor(past, dtype=torch.int32))
    np.testing.assert_array_equal(got.numpy(), want)


def test_bad_paths_are_refused():
    cache = torch.zeros(1, 1, 8, 16)
    with pytest.raises(ValueError, match="strictly increases"):
        kv_compact(cache, *padded([[0, 3, 2]]), 0)
    with pytest.raises(ValueError, match="beyond the capacity"):
        kv_compact(cache, *padded([[0, 1, 4]]), 4)
