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
