"""Engine builds on TensorRT 10.x and 11.x (runtime/trt_build.py), checked without TensorRT:
strongly typed wherever the network flag exists, the FP16 builder flag only where strong typing
does not and the flag does (TensorRT 11 has none), Polygraphy's loaders given exactly that, and
the decoder's optimisation profile read from the bundle's manifest."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest


pytest.importorskip("polygraphy", reason="polygraphy (dev extra) checks the loader keywords")


def fake_tensorrt(network_flags, builder_flags):
    return SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(**{f: object() for f in network_flags}),
                           BuilderFlag=SimpleNamespace(**{f: object() for f in builder_flags}))


TRT_11 = fake_tensorrt(["STRONGLY_TYPED"], ["BF16", "INT8"])  # no FP16: networks are strongly typed
TRT_10 = fake_tensorrt(["EXPLICIT_BATCH", "STRONGLY_TYPED"], ["FP16", "BF16", "INT8"])
TRT_WEAK = fake_tensorrt(["EXPLICIT_BATCH"], ["FP16", "INT8"])  # before strong typing


@pytest.mark.parametrize("trt, fp16, want", [
    (TRT_11, True, {"strongly_typed": True, "fp16": False}),
    (TRT_10, True, {"strongly_typed": True, "fp16": False}),  # the graph's own types, as parity checked them
    (TRT_WEAK, True, {"strongly_typed": False, "fp16": True}),
    (TRT_WEAK, False, {"strongly_typed": False, "fp16": False}),
    (fake_tensorrt([], []), True, {"strongly_typed": False, "fp16": False}),
])
def test_precision_options(trt, fp16, want):
    from edgert.runtime.trt_build import precision_options

    assert precision_options(trt, fp16) == want


@pytest.mark.parametrize("trt", [TRT_11, TRT_WEAK])
def test_polygraphy_loaders_get_the_options(tmp_path, trt):
    from edgert.runtime.trt_build import loaders, precision_options

    options = precision_options(trt, fp16=True)
    feature = object()
    network, config = loaders(tmp_path / "g.onnx", {"x": ([1, 3], [1, 3], [4, 3])}, options, (feature,))
    assert network.strongly_typed is options["strongly_typed"] and config.fp16 is options["fp16"]
    assert config.preview_features == [feature]
    (profile,) = config.profiles
    assert (list(profile["x"].min), list(profile["x"].opt), list(profile["x"].max)) == ([1, 3], [1, 3], [4, 3])


def test_the_decoder_profile_comes_from_the_manifest(trt_llama):
    from edgert.runtime.llm.tensorrt import decoder_profile

    graph = json.loads((trt_llama / "bundle" / "manifest.json").read_text())["graphs"]["decoder"]
    shapes = decoder_profile(graph, max_batch=2, max_tokens=64, capacity=256)
    assert set(shapes) == {spec["name"] for spec in graph["inputs"]}
    assert shapes["past_key_values.1.value"] == ([1, 1, 256, 64], [1, 1, 256, 64], [2, 1, 256, 64])
    assert shapes["tree_mask"] == ([1, 1], [1, 1], [64, 2]) and shapes["past_lengths"] == ([1], [1], [2])
    assert shapes["input_ids"] == ([1, 1], [1, 1], [2, 64])


def test_missing_tensorrt_is_one_line():
    from edgert.runtime.errors import EdgertError
    from edgert.runtime.trt_build import require_tensorrt

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EdgertError, match=r"^building a TensorRT decoder engine needs the 'tensorrt' and 'polygraphy' packages"):
            require_tensorrt("building a TensorRT decoder engine")
    else:
        pytest.skip("tensorrt is installed here")
