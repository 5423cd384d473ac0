"""benchmarks/trt_greedy.py, the GPU check's TensorRT generation, without TensorRT: its pass inputs
and greedy loop driven through the TensorRT flavour's own PyTorch math (edgert::cache_attention over
fixed-capacity caches updated in place) give ONNX Runtime's greedy tokens for the same checkpoint."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import ROOT, edgert
from llm_checkpoints import make_llama

torch = pytest.importorskip("torch")


def test_the_loop_over_the_flavour_math_equals_onnx_runtime(tmp_path):
    from edgert.exporters.llm.llama import load_decoder
    from edgert.exporters.llm.trt_flavour import CacheDecoder
    from edgert.runtime.llm.generator import Generator
    from edgert.runtime.llm.sampling import SamplingParams

    spec = importlib.util.spec_from_file_location("trt_greedy", ROOT / "benchmarks" / "trt_greedy.py")
    trt_greedy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trt_greedy)
    make_llama(tmp_path / "ckpt", hidden=256, heads=4, kv_heads=1)
    assert edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b").returncode == 0
    prompt = [1, 17, 42, 99, 7, 250, 3, 12]
    want = Generator(tmp_path / "b").generate(prompt, SamplingParams(max_new_tokens=12)).tokens
    decoder = CacheDecoder(load_decoder(tmp_path / "ckpt")).eval()
    cfg = decoder.decoder.cfg
    caches = [torch.zeros(1, cfg.num_kv_heads, 64, cfg.head_dim) for _ in range(2 * cfg.num_layers)]

    def run(inputs):
        order = ["input_ids", "position_ids", "past_lengths", "tree_mask", "logit_positions"]
        with torch.inference_mode():
            logits, _, *present = decoder(*[torch.from_numpy(inputs[n]) for n in order], *caches)
        caches[:] = present  # what the plugin does in place
        return logits.numpy()

    assert trt_greedy.greedy(run, prompt, len(want)) == want
    first = trt_greedy.pass_inputs(prompt, 0)
    assert first["tree_mask"].tolist() == [[(1 << (i + 1)) - 1] for i in range(len(prompt))]  # the chain
    assert trt_greedy.pass_inputs([5], 8)["position_ids"].tolist() == [[8]]
