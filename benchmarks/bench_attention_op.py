"""Which attention op the decoder graph uses: ONNX Attention (opset 23) against ONNX Runtime's
contrib GroupQueryAttention, on the CPU EP, at Qwen2.5-0.5B's decode shape (one new token,
14 query / 2 kv heads, head 64, fp32), for several cache lengths, 2 intra-op threads.

Each runs as edgert drives it, through IO binding. Attention-23 (``--opt kv_cache=concat``)
takes the dense past and writes past ‖ new into a bound present buffer. GQA (the default,
``kv_cache=in_place``) has one capacity-sized buffer bound once as its past and present, writes
the new K/V into it, and takes the visibility mask as an additive bias, as edgert's graph feeds
it. The outputs are compared too.

    python benchmarks/bench_attention_op.py
"""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as h

HQ, HKV, D, CAPACITY = 14, 2, 64, 4096


def tensor(name, shape):
    return h.make_tensor_value_info(name, TensorProto.FLOAT if name not in ("mask", "seqlens_k", "total") else
                                    {"mask": TensorProto.BOOL}.get(name, TensorProto.INT32), shape)


def attention23() -> bytes:
    nodes = [h.make_node("Unsqueeze", ["mask", "axis"], ["mask4"]),
             h.make_node("Attention", ["q", "k", "v", "mask4", "pk", "pv"], ["y", "present_k", "present_v"])]
    inputs = [tensor("q", ["b", HQ, "s", D]), tensor("k", ["b", HKV, "s", D]), tensor("v", ["b", HKV, "s", D]),
              tensor("mask", ["b", "s", "t"]), tensor("pk", ["b", HKV, "p", D]), tensor("pv", ["b", HKV, "p", D])]
    outputs = [tensor(n, None) for n in ("y", "present_k", "present_v")]
    graph = h.make_graph(nodes, "attention23", inputs, outputs, [h.make_tensor("axis", TensorProto.INT64, [1], [1])])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 23)]).SerializeToString()


def group_query_attention() -> bytes:
    nodes = [h.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens_k", "total", "", "", "", "bias"],
                         ["y", "present_k", "present_v"], domain="com.microsoft", num_heads=HQ, kv_num_heads=HKV)]
    inputs = [tensor("q", ["b", "s", HQ * D]), tensor("k", ["b", "s", HKV * D]), tensor("v", ["b", "s", HKV * D]),
              tensor("pk", ["b", HKV, "m", D]), tensor("pv", ["b", HKV, "m", D]), tensor("seqlens_k", ["b"]),
              tensor("total", []), tensor("bias", ["b", 1, "s", "t"])]
    outputs = [tensor(n, None) for n in ("y", "present_k", "present_v")]
    graph = h.make_graph(nodes, "gqa", inputs, outputs)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)]).SerializeToString()


def bound(session, inputs: dict, outputs: dict):
    """An IO binding of numpy arrays (the same array as an input and an output: one buffer)."""
    binding, held = session.io_binding(), {}
    for name, array in inputs.items():
        held[id(array)] = held.get(id(array)) or ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_input(name, held[id(array)])
    for name, array in outputs.items():
        held[id(array)] = held.get(id(array)) or ort.OrtValue.ortvalue_from_numpy(array)
        binding.bind_ortvalue_output(name, held[id(array)])
    return binding, held


def timed(session, binding, iters=300) -> float:
    for _ in range(20):
        session.run_with_iobinding(binding)
    t0 = time.perf_counter()
    for _ in range(iters):
        session.run_with_iobinding(binding)
    return (time.perf_counter() - t0) / iters * 1e6


def main() -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    a23 = ort.InferenceSession(attention23(), options)
    gqa = ort.InferenceSession(group_query_attention(), options)
    rng = np.random.default_rng(0)
    print(f"onnxruntime {ort.__version__}, decode step (1 new token), {HQ}/{HKV} heads, head {D}, fp32")
    for past in (128, 512, 2048):
        q = rng.standard_normal((1, HQ, 1, D), np.float32)
        k, v = rng.standard_normal((2, 1, HKV, 1, D), np.float32)
        pk, pv = rng.standard_normal((2, 1, HKV, past, D), np.float32)
        y23, present_k, present_v = (np.empty((1, HQ, 1, D), np.float32),
                                     *np.empty((2, 1, HKV, past + 1, D), np.float32))
        b23, _ = bound(a23, {"q": q, "k": k, "v": v, "mask": np.ones((1, 1, past + 1), bool), "pk": pk, "pv": pv},
                       {"y": y23, "present_k": present_k, "present_v": present_v})
        shared_k, shared_v = np.zeros((2, 1, HKV, CAPACITY, D), np.float32)
        shared_k[:, :, :past], shared_v[:, :, :past] = pk, pv
        y_gqa = np.empty((1, 1, HQ * D), np.float32)
        bgqa, _ = bound(gqa, {"q": q.transpose(0, 2, 1, 3).reshape(1, 1, -1), "k": k.reshape(1, 1, -1),
                              "v": v.reshape(1, 1, -1), "pk": shared_k, "pv": shared_v,
                              "seqlens_k": np.array([past], np.int32), "total": np.array(past + 1, np.int32),
                              "bias": np.zeros((1, 1, 1, past + 1), np.float32)},
                        {"y": y_gqa, "present_k": shared_k, "present_v": shared_v})
        t23, tgqa = timed(a23, b23), timed(gqa, bgqa)  # GQA rewrites the same position each run: same work
        diff = np.abs(y23.transpose(0, 2, 1, 3).reshape(1, 1, -1) - y_gqa).max()
        print(f"past {past:5d}: Attention-23 {t23:6.0f} us   GroupQueryAttention in place {tgqa:6.0f} us   "
              f"max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
