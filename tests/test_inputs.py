"""Inputs are checked against the manifest before the backend runs."""

import numpy as np
import pytest

from edgert.runtime import InputError, load
from edgert.runtime.bundle import GraphSpec, TensorSpec
from edgert.runtime.inputs import check_inputs


@pytest.fixture(scope="module")
def model(tiny_bundle):
    return load(tiny_bundle, threads=1)


def test_runs_with_any_batch(model):
    for batch in (1, 3):
        out = model.run({"video": np.zeros((batch, 3, 3, 32, 32), np.float32)})
        assert out["scores"].shape == (batch, 5)


def test_run_batch_equals_runs_one_at_a_time(model):
    rng = np.random.default_rng(0)
    requests = [{"video": rng.standard_normal((n, 3, 3, 32, 32)).astype(np.float32)} for n in (1, 2, 1)]
    batched = model.run_batch(requests)
    assert [out["scores"].shape for out in batched] == [(1, 5), (2, 5), (1, 5)]
    for feeds, out in zip(requests, batched):
        np.testing.assert_allclose(out["scores"], model.run(feeds)["scores"], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="input 'video': expected dtype float32"):  # each request checked on its own
        model.run_batch([requests[0], {"video": requests[1]["video"].astype(np.float64)}])


def test_run_batch_needs_a_batch_axis(tiny_bundle):
    model = load(tiny_bundle, threads=1)  # its own: a graph is added to its bundle
    fixed = GraphSpec("main", "model.onnx", (TensorSpec("video", "float32", (1, 3, 3, 32, 32)),),
                      (TensorSpec("scores", "float32", (1, 5)),))
    model.bundle.graphs = {**model.bundle.graphs, "fixed": fixed}
    feeds = {"video": np.zeros((1, 3, 3, 32, 32), np.float32)}
    with pytest.raises(InputError, match=r"graph 'main': input 'video' has no batch axis \(\[1, 3, 3, 32, 32\]\)"):
        model.run_batch([feeds, feeds], graph="fixed")


@pytest.mark.parametrize("feeds,message", [
    ({"frames": np.zeros((1, 3, 3, 32, 32), np.float32)}, "unknown input 'frames'"),
    ({}, "missing input 'video'"),
    ({"video": np.zeros((1, 3, 3, 32, 32), np.float64)}, "input 'video': expected dtype float32, given float64"),
    ({"video": np.zeros((3, 3, 32, 32), np.float32)}, r"input 'video': expected rank 5 \[batch, 3, 3, 32, 32\], given shape \[3, 3, 32, 32\]"),
    ({"video": np.zeros((1, 8, 3, 32, 32), np.float32)}, r"given \[1, 8, 3, 32, 32\] \(dim 1 must be 3\)"),
    ({"video": np.zeros((0, 3, 3, 32, 32), np.float32)}, r"dim 0 \(batch\) is 0"),
    ({"video": [[1.0]]}, "expected a numpy array"),
])
def test_bad_inputs(model, feeds, message):
    with pytest.raises(InputError, match=message):
        model.run(feeds)


def test_symbolic_dims_must_agree():
    graph = GraphSpec("g", "g.onnx", (TensorSpec("a", "float32", ("batch", 2)), TensorSpec("b", "int64", ("batch",))),
                      (TensorSpec("o", "float32", ("batch",)),))
    check_inputs(graph, {"a": np.zeros((4, 2), np.float32), "b": np.zeros(4, np.int64)})
    with pytest.raises(InputError, match=r"input 'b': dim 0 \(batch\) is 3 but input 'a' has batch=4"):
        check_inputs(graph, {"a": np.zeros((4, 2), np.float32), "b": np.zeros(3, np.int64)})
