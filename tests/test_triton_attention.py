"""The Triton attention kernel (trt_plugins/attention) under Triton's CPU interpreter, against a
numpy reference: causal over a past, tree masks in the bit-packed layout, grouped-query
heads, fp16 inputs with fp32 accumulation, rows that see nothing, split-KV with LSE merge.
bf16 is not tested here: Triton 3.9's CPU interpreter returns garbage for tl.dot on bf16
inputs (fp16 is right); tests/test_kernel_library.py checks bf16 against torch on a GPU."""

from __future__ import annotations

import numpy as np
import pytest

# conftest.py sets TRITON_INTERPRET=1 before anything imports triton: the kernels run on the CPU.
triton = pytest.importorskip("triton", reason="triton is installed by the dev extra")
torch = pytest.importorskip("torch")

from conftest import load_kernel  # noqa: E402

attention = load_kernel("attention").attention

from edgert.runtime.llm.tree import Tree, pack_mask  # noqa: E402


def reference(q, k, v, past, visible_new):
    """q [B,Hq,T,D], k/v [B,Hkv,C,D]; visible_new [T,T] among new tokens; the past always visible."""
    b, hq, t, d = q.shape
    group = hq // k.shape[1]
    kk = np.repeat(k[:, :, : past + t].astype(np.float64), group, axis=1)
    vv = np.repeat(v[:, :, : past + t].astype(np.float64), group, axis=1)
    scores = q.astype(np.float64) @ kk.transpose(0, 1, 3, 2) / np.sqrt(d)
    vis = np.concatenate([np.ones((t, past), bool), visible_new], axis=1)
    scores = np.where(vis, scores, -np.inf)
    top = scores.max(-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(scores - top)
    total = e.sum(-1, keepdims=True)
    return np.where(total > 0, (e / np.where(total > 0, total, 1)) @ vv, 0.0)


def case(rng, batch, hq, hkv, new, past, dim, capacity=None, dtype=torch.float32):
    capacity = capacity or past + new + 3
    q = torch.from_numpy(rng.standard_normal((batch, hq, new, dim)).astype(np.float32)).to(dtype)
    k = torch.from_numpy(rng.standard_normal((batch, hkv, capacity, dim)).astype(np.float32)).to(dtype)
    v = torch.from_numpy(rng.standard_normal((batch, hkv, capacity, dim)).astype(np.float32)).to(dtype)
    return q, k, v


@pytest.mark.parametrize("batch, hq, hkv, new, past, splits", [
    (1, 4, 2, 1, 37, 1),    # decode over a cache, grouped heads
    (2, 2, 2, 19, 0, 1),    # prefill, two query tiles, a partial one
    (1, 4, 1, 5, 70, 3),    # multi-query, split-KV over a long cache
])
def test_causal_matches_reference(batch, hq, hkv, new, past, splits):
    rng = np.random.default_rng(batch * 100 + new)
    q, k, v = case(rng, batch, hq, hkv, new, past, 16)
    got = attention(q, k, v, past, num_splits=splits).numpy()
    want = reference(q.numpy(), k.numpy(), v.numpy(), past, np.tri(new, dtype=bool))
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize("splits", [1, 2])
def test_tree_mask_matches_reference(splits):
    rng = np.random.default_rng(7)
    parents = [-1, 0, 0, 1, 1, 2, 5, 0] + list(range(7, 39))  # 40 nodes: two mask words per row
    tree = Tree(np.array(parents))
    q, k, v = case(rng, 1, 4, 2, tree.size, 21, 32)
    packed = torch.from_numpy(tree.packed_mask())
    got = attention(q, k, v, 21, tree_mask=packed, num_splits=splits).numpy()
    np.testing.assert_allclose(got, reference(q.numpy(), k.numpy(), v.numpy(), 21, tree.ancestor_mask()), atol=2e-5)


def test_fp16_inputs_accumulate_in_fp32():
    rng = np.random.default_rng(3)
    q, k, v = case(rng, 1, 2, 1, 3, 50, 16, dtype=torch.float16)
    q = q * 8  # large scores: an fp16 softmax would lose them
    got = attention(q, k, v, 50).float().numpy()
    want = reference(q.float().numpy(), k.float().numpy(), v.float().numpy(), 50, np.tri(3, dtype=bool))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=3e-3)


def test_a_row_that_sees_nothing_gives_zeros():
    rng = np.random.default_rng(5)
    q, k, v = case(rng, 1, 2, 2, 3, 0, 16)
    visible = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]], bool)  # row 1 sees no key (no past either)
    got = attention(q, k, v, 0, tree_mask=torch.from_numpy(pack_mask(visible)), num_splits=2).numpy()
    assert np.isfinite(got).all() and not got[0, :, 1].any()
    np.testing.assert_allclose(got, reference(q.numpy(), k.numpy(), v.numpy(), 0, visible), atol=2e-5)


def test_bad_shapes_are_refused():
    q, k, v = case(np.random.default_rng(0), 1, 3, 2, 2, 4, 16)
    with pytest.raises(ValueError, match="heads must group"):
        attention(q, k, v, 4)


def random_tree(rng, size):
    return Tree(np.array([-1] + [int(rng.integers(0, i)) for i in range(1, size)]))


@pytest.mark.parametrize("dim, group, nodes, dtype", [
    (64, 1, 64, torch.float32), (128, 4, 23, torch.float32), (64, 8, 37, torch.float16), (128, 1, 9, torch.float16)])
def test_random_trees_after_appending_to_a_batch_of_caches(dim, group, nodes, dtype):
    """As the plugin runs it: new K/V appended at each row's own past length (not a multiple
    of the 16-wide tile), then tree attention over past ‖ tree, split-KV over the capacity."""
    rng = np.random.default_rng(dim + group + nodes)
    hkv, past = 2, [29, 45]
    tree = random_tree(rng, nodes)
    q, k_new, v_new = case(rng, 2, hkv * group, hkv, nodes, 0, dim, capacity=nodes, dtype=dtype)
    _, k, v = case(rng, 2, hkv, hkv, 0, 0, dim, capacity=max(past) + nodes + 5, dtype=dtype)
    k_ref, v_ref = k.clone(), v.clone()
    got = attention(q, k, v, torch.tensor(past, dtype=torch.int32), tree_mask=torch.from_numpy(tree.packed_mask()),
                    num_splits=3, k_new=k_new, v_new=v_new).float().numpy()
    for b, p in enumerate(past):
        k_ref[b, :, p:p + nodes], v_ref[b, :, p:p + nodes] = k_new[b], v_new[b]
        want = reference(q[b:b + 1].float().numpy(), k_ref[b:b + 1].float().numpy(), v_ref[b:b + 1].float().numpy(),
                         p, tree.ancestor_mask())
        np.testing.assert_allclose(got[b:b + 1], want, atol=2e-5 if dtype == torch.float32 else 4e-3)
    np.testing.assert_array_equal(k.numpy(), k_ref.numpy())  # the append wrote exactly past .. past + nodes - 1



def test_matches_the_onnx_runtime_op_of_the_decoder_graph():
    """The default flavour's attention (ONNX Attention, opset 23, in ONNX Runtime) and the kernel
    agree on a tree over a cache with grouped heads."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rng = np.random.default_rng(9)
    batch, hq, hkv, past, dim = 1, 8, 2, 45, 64
    tree = random_tree(rng, 23)
    new = tree.size
    q, k, v = case(rng, batch, hq, hkv, new, past, dim, capacity=past + new)
    f32, boolean = TensorProto.FLOAT, TensorProto.BOOL
    node = helper.make_node("Attention", ["q", "k", "v", "mask", "past_key", "past_value"], ["y", "present_key", "present_value"],
                            softmax_precision=TensorProto.FLOAT)
    graph = helper.make_graph([node], "attention", [
        helper.make_tensor_value_info("q", f32, [batch, hq, new, dim]),
        helper.make_tensor_value_info("k", f32, [batch, hkv, new, dim]),
        helper.make_tensor_value_info("v", f32, [batch, hkv, new, dim]),
        helper.make_tensor_value_info("mask", boolean, [batch, 1, new, past + new]),
        helper.make_tensor_value_info("past_key", f32, [batch, hkv, past, dim]),
        helper.make_tensor_value_info("past_value", f32, [batch, hkv, past, dim])],
        [helper.make_tensor_value_info(n, f32, None) for n in ("y", "present_key", "present_value")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mask = np.concatenate([np.ones((new, past), bool), tree.ancestor_mask()], axis=1)[None, None]
    kn, vn = k.numpy(), v.numpy()
    (want,) = session.run(["y"], {"q": q.numpy(), "k": kn[:, :, past:], "v": vn[:, :, past:], "mask": mask,
                                  "past_key": kn[:, :, :past], "past_value": vn[:, :, :past]})
    got = attention(q, k, v, past, tree_mask=torch.from_numpy(tree.packed_mask()), num_splits=2).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
