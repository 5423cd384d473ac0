"""The TensorRT flavour of a decoder bundle (`edgert export llama --flavour trt`): the exported
ONNX holds edgert's plugin nodes (domain edgert, plugin_version / plugin_namespace, shapes of
the in-place cache) and passes onnx.checker with the registered schemas; its PyTorch math is the
default flavour's on rows with different past lengths; bad requests get one-line errors. Engines
are built only where TensorRT and the plugin library exist."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import assert_user_error, edgert
from llm_checkpoints import make_llama

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bundle(trt_llama):
    return trt_llama  # ckpt/ (head_dim 64, 4 query heads per kv head) and bundle/


def shape(value):
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_decoder_graph_holds_the_attention_plugin(bundle):
    from edgert.exporters.llm.trt_flavour import register_schemas

    model = onnx.load(bundle / "bundle" / "decoder.onnx")
    register_schemas()
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("EdgertAttention") == 2 and "Attention" not in ops  # one plugin node per layer
    assert "RotaryEmbedding" not in ops  # TensorRT's parser has it only from 10.15: RoPE as primitive ops
    node = next(n for n in model.graph.node if n.op_type == "EdgertAttention")
    assert node.domain == "edgert"
    assert attrs(node) == {"plugin_version": b"1", "plugin_namespace": b"edgert", "num_q_heads": 4, "num_kv_heads": 1,
                           "head_dim": 64, "scale": pytest.approx(0.125), "mask_type": b"tree"}
    assert list(node.input[3:]) == ["past_key_values.0.key", "past_key_values.0.value", "past_lengths", "tree_mask"]
    assert list(node.output[1:]) == ["present.0.key", "present.0.value"]  # the caches, aliased by the plugin
    inputs = {v.name: shape(v) for v in model.graph.input}
    outputs = {v.name: shape(v) for v in model.graph.output}
    assert inputs["past_lengths"] == ["batch"] and inputs["tree_mask"] == ["sequence_length", "mask_words"]
    assert inputs["past_key_values.1.value"] == outputs["present.1.value"] == ["batch", 1, "capacity", 64]
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.input}
    assert types["past_key_values.0.key"] == onnx.TensorProto.FLOAT16  # the plugin's dtype
    assert types["tree_mask"] == types["past_lengths"] == onnx.TensorProto.INT32
    assert outputs["logits"] == ["batch", "num_logits", 320]


def test_verify_and_compaction_graphs(bundle):
    manifest = json.loads((bundle / "bundle" / "manifest.json").read_text())["decoder"]
    assert manifest["backend"] == "trt" and manifest["plugins"]["plugin_namespace"] == "edgert"
    typical = onnx.load(bundle / "bundle" / manifest["verify"]["typical"])
    (node,) = typical.graph.node
    assert node.op_type == "EdgertTreeVerify" and attrs(node)["mode"] == b"typical"
    assert attrs(node)["epsilon"] == pytest.approx(0.09) and attrs(node)["delta"] == pytest.approx(0.3)
    assert [shape(v) for v in typical.graph.output] == [["batch", "nodes"], ["batch"], ["batch"]]
    compact = onnx.load(bundle / "bundle" / manifest["kv_compact"])
    assert [n.op_type for n in compact.graph.node] == ["EdgertKVCompact"] * 4  # 2 layers x key, value
    assert list(compact.graph.node[3].input) == ["past_key_values.1.value", "path", "length", "past_lengths"]


def test_parity_of_the_flavour_is_recorded(bundle):
    report = json.loads((bundle / "bundle" / "manifest.json").read_text())["parity"]["graphs"]["decoder"]
    assert report["passed"] and report["tolerance"] == 1e-2 and report["outputs"]["logits"]["max_rel"] < 1e-2
    assert "TensorRT" in report["backend"]
    info = edgert("info", bundle / "bundle")
    assert info.returncode == 0 and "parity     decoder/logits" in info.stdout


def test_rows_with_different_past_lengths_match_the_default_flavour(bundle):
    """Each row's new tokens land at its own past length; the rest of the cache is untouched;
    logits equal the default flavour's with that row's past."""
    from edgert.exporters.llm.llama import load_decoder
    from edgert.exporters.llm.trt_flavour import CacheDecoder
    from edgert.runtime.llm.tree import Tree

    decoder = load_decoder(bundle / "ckpt")
    cfg = decoder.cfg
    rng = np.random.default_rng(0)
    past, new, capacity = [3, 9], 5, 20
    tree = Tree(np.array([-1, 0, 0, 1, 2]))
    ids = torch.from_numpy(rng.integers(0, cfg.vocab_size, (2, new)))
    depth = torch.tensor(tree.depths())  # a copy: the tree's arrays are read-only
    caches = [torch.randn(2, cfg.num_kv_heads, capacity, cfg.head_dim) for _ in range(2 * cfg.num_layers)]
    with torch.inference_mode():
        got = CacheDecoder(decoder)(ids, torch.stack([p + depth for p in past]), torch.tensor(past, dtype=torch.int32),
                                    torch.from_numpy(tree.packed_mask()), torch.arange(new).expand(2, new), *caches)
        for row, p in enumerate(past):
            mask = torch.cat([torch.ones(new, p, dtype=torch.bool), torch.tensor(tree.ancestor_mask())], 1)[None]
            want = decoder(ids[row:row + 1], (p + depth)[None], mask, torch.arange(new)[None],
                           *[c[row:row + 1, :, :p] for c in caches])
            torch.testing.assert_close(got[0][row], want[0][0], atol=1e-4, rtol=0)  # logits span ~±45
            for cache_in, out, present in zip(caches, got[2:], want[2:]):
                torch.testing.assert_close(out[row, :, : p + new], present[0], atol=1e-5, rtol=0)
                assert torch.equal(out[row, :, p + new:], cache_in[row, :, p + new:])


def test_bad_requests_get_one_line_errors(bundle, tmp_path):
    make_llama(tmp_path / "small")  # head_dim 8
    assert_user_error(edgert("export", "llama", "--checkpoint", tmp_path / "small", "--out", tmp_path / "b",
                             "--flavour", "trt", "--precision", "fp16"), "head_dim 8", "built for head_dim 64 and 128")
    assert_user_error(edgert("export", "llama", "--checkpoint", bundle / "ckpt", "--out", tmp_path / "b",
                             "--flavour", "trt"), "--precision fp32", "add --precision fp16")
    assert not (tmp_path / "b").exists()
    assert_user_error(edgert("export", "tsn", "--out", tmp_path / "v", "--flavour", "trt"),
                      "only LLM decoders have a TensorRT-plugin flavour")
    assert_user_error(edgert("generate", bundle / "bundle", "--prompt", "hello"),
                      "TensorRT flavour", "--backend onnx")


def test_engine_builds_with_the_plugin_library(bundle):
    trt = pytest.importorskip("tensorrt", reason="needs TensorRT (the tensorrt package) and libedgert_trt_plugins.so built against it")
    from conftest import ROOT

    library = ROOT / "build" / "native" / "trt_plugins" / "libedgert_trt_plugins.so"
    if not library.is_file():
        pytest.skip("libedgert_trt_plugins.so not built (cmake -S . -B build/native with TensorRT present)")
    from edgert.runtime.llm.tensorrt import build_decoder_engine

    engine = build_decoder_engine(bundle / "bundle", library, max_batch=2, max_tokens=64, capacity=256)
    assert engine.num_io_tensors == 7 + 4 * 2  # 5 + 2 caches per layer in, 2 + 2 per layer out
    assert trt.__version__


def test_every_plugin_node_is_named_and_carries_all_its_fields(bundle):
    names = []
    for path in sorted((bundle / "bundle").glob("*.onnx")):
        names += [n.name for n in onnx.load(path).graph.node if n.domain == "edgert"]
    assert all(names) and len(set(names)) == len(names) == 2 + 2 + 4
    assert {"layers.0.attention", "layers.1.attention", "verify.greedy", "verify.typical"} <= set(names)
    (greedy,) = onnx.load(bundle / "bundle" / "verify_trt_greedy.onnx").graph.node
    assert attrs(greedy) == {"mode": b"greedy", "temperature": 1.0, "epsilon": pytest.approx(0.09),
                             "delta": pytest.approx(0.3), "plugin_version": b"1", "plugin_namespace": b"edgert"}


@pytest.mark.parametrize("dtype", [onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT])
def test_rms_norm_is_written_as_primitive_ops_equal_to_rms_normalization(bundle, tmp_path, dtype):
    """TensorRT's parser imports RMSNormalization only from 10.15: the flavour writes the same math
    (fp32 statistics) as Cast/Mul/ReduceMean/Add/Sqrt/Reciprocal, equal to ONNX Runtime's op."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from edgert.exporters.llm.trt_flavour import finish_decoder

    ops = [n.op_type for n in onnx.load(bundle / "bundle" / "decoder.onnx").graph.node]
    assert "RMSNormalization" not in ops and ops.count("ReduceMean") == 2 * 2 + 1  # two per layer, the final norm
    rng = np.random.default_rng(0)
    np_type = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    scale = (1 + rng.standard_normal(256) * 0.1).astype(np_type)
    node = helper.make_node("RMSNormalization", ["x", "weight"], ["y"], name="norm", axis=-1, epsilon=1e-5, stash_type=1)
    graph = helper.make_graph([node], "norm", [helper.make_tensor_value_info("x", dtype, ["batch", "seq", 256])],
                              [helper.make_tensor_value_info("y", dtype, ["batch", "seq", 256])],
                              [helper.make_tensor("weight", dtype, [256], scale.astype(np.float32).tolist()
                                                  if dtype == TensorProto.FLOAT else scale.view(np.uint16).tolist())])
    path = tmp_path / "norm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), path)
    x = (rng.standard_normal((2, 5, 256)) * 100).astype(np_type)  # x² overflows fp16: the statistics must be fp32
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    finish_decoder(path)
    assert "RMSNormalization" not in [n.op_type for n in onnx.load(path).graph.node]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.isfinite(got).all() and got.dtype == want.dtype
    np.testing.assert_array_max_ulp(got, want, maxulp=4)  # the same math; ONNX Runtime sums in another order
