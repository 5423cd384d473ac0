"""Backends: provider fallback on ONNX Runtime, and the native TensorRT path where it exists."""

import importlib.util
import json

import numpy as np
import pytest

from edgert.runtime import load

from conftest import TINY_TSN, edgert

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None and importlib.util.find_spec("polygraphy") is not None


def _has_provider(name: str) -> bool:
    import onnxruntime

    return name in onnxruntime.get_available_providers()


@pytest.mark.skipif(_has_provider("CUDAExecutionProvider"), reason="this onnxruntime has CUDA: no fallback to see")
def test_missing_provider_warns_and_falls_back_to_cpu(tiny_bundle, clip_npy):
    result = edgert("run", tiny_bundle, "--input", clip_npy, "--device", "cuda")
    assert result.returncode == 0, result.stderr
    assert "edgert: warning: CUDAExecutionProvider not available in this onnxruntime build" in result.stderr
    assert "falling back to CPUExecutionProvider" in result.stderr


def test_threads_setting_gives_the_same_answer(tiny_bundle):
    x = np.random.default_rng(3).standard_normal((2, 3, 3, 32, 32)).astype(np.float32)
    one = load(tiny_bundle, threads=1).run({"video": x})["scores"]
    two = load(tiny_bundle, threads=2).run({"video": x})["scores"]
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not _has_provider("CUDAExecutionProvider"),
                    reason="needs onnxruntime-gpu and a CUDA GPU")
def test_cuda_provider_matches_cpu(tiny_bundle):
    x = np.random.default_rng(4).standard_normal((2, 3, 3, 32, 32)).astype(np.float32)
    cpu = load(tiny_bundle, device="cpu").run({"video": x})["scores"]
    gpu = load(tiny_bundle, device="cuda").run({"video": x})["scores"]
    np.testing.assert_allclose(gpu, cpu, atol=1e-3 * np.abs(cpu).max())


@pytest.mark.skipif(not HAVE_TRT, reason="needs the tensorrt package (pip install tensorrt, from NVIDIA's "
                    "index) and a GPU")
def test_tensorrt_engine_export_and_run(tmp_path, clip_npy):
    out = tmp_path / "trt"
    result = edgert("export", "tsn", "--out", out, "--engine", "--engine-max-batch", "2", *TINY_TSN)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"]["main"]["engine"] == "model.plan" and "model.plan" in manifest["files"]
    x = np.random.default_rng(5).standard_normal((2, 3, 3, 32, 32)).astype(np.float32)
    ref = load(out).run({"video": x})["scores"]
    got = load(out, backend="tensorrt").run({"video": x})["scores"]
    np.testing.assert_allclose(got, ref, atol=1e-3 * np.abs(ref).max())


@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")
def test_trt_engine_export_without_tensorrt_fails_fast(tmp_path):
    from conftest import assert_user_error

    assert_user_error(edgert("export", "tsn", "--out", tmp_path / "x", "--engine", *TINY_TSN),
                      "--engine needs the 'tensorrt' and 'polygraphy' packages")
    assert not (tmp_path / "x").exists()
