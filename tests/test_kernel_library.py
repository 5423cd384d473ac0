"""The kernel library (trt_plugins/, CMake): built here — CUDA toolkit, no GPU, no TensorRT —
with cubins for the default architectures, the TensorRT part reported skipped; its C API
refuses bad arguments with one-line messages. With a GPU (and a CUDA build of torch) its
launches are checked against torch's scaled_dot_product_attention with the same mask, the
numpy verification op and a gather, in fp16 and bf16."""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess

import numpy as np
import pytest

from conftest import CUBIN_CACHE, ROOT, cmake_build, load_trt_module

BUILD = ROOT / "build" / "native"
LIB = BUILD / "trt_plugins" / "libedgert_kernels.so"
binding = load_trt_module("binding.py", "trt_plugins_binding")
torch = pytest.importorskip("torch")
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU and a CUDA build of torch")


@pytest.fixture(scope="module")
def build_log():
    if not (shutil.which("cmake") and shutil.which("nvcc")):
        pytest.skip("needs cmake and a CUDA toolkit (nvcc)")
    pytest.importorskip("triton", reason="the AOT step needs triton (dev extra)")
    return cmake_build(BUILD)


@pytest.fixture(scope="module")
def lib(build_log):
    return binding.KernelLibrary(LIB)


def test_cmake_builds_cubins_for_the_default_architectures(build_log, lib):
    aot = load_trt_module("aot.py", "trt_plugins_aot")
    assert lib.architectures() == [87, 90, 110]
    assert lib.cubin_count() == 3 * len(aot.variants())
    import triton

    cubins = CUBIN_CACHE / f"triton-{triton.__version__}-sm_87_90_110"
    entries = json.loads((cubins / "cubins.json").read_text())
    cuobjdump = ROOT / ".venv/lib/python3.11/site-packages/triton/backends/nvidia/bin/cuobjdump"
    cuobjdump = shutil.which("cuobjdump") or (str(cuobjdump) if cuobjdump.exists() else None)
    for e in entries[:: max(1, len(entries) // 12)]:  # a sample: each is a real cubin for its architecture
        data = open(e["file"], "rb").read(20)
        assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == 190  # EM_CUDA
        if cuobjdump:
            text = subprocess.run([cuobjdump, "-elf", e["file"]], capture_output=True, text=True).stdout
            assert f"sm_{e['arch']}" in text, e["file"]
    if "edgert: TensorRT not found" in build_log:
        assert "skipped the TensorRT plugins (EdgertAttention, EdgertTreeVerify, EdgertKVCompact): no TensorRT" in build_log
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(LIB)], capture_output=True, text=True).stdout
    assert " cu" not in undefined.replace(" cuda", "")  # the runtime API only: links without a libcuda stub


def call(lib, name, *args):
    status = getattr(lib.lib, name)(*args)
    return status, lib.lib.edgert_last_error().decode()


FAKE = ctypes.c_void_p(1 << 20)  # aligned, never dereferenced: the checks come before any launch


def attention_args(**over):
    a = dict(stream=None, dtype=1, q=FAKE, k_new=FAKE, v_new=FAKE, k_cache=FAKE, v_cache=FAKE, past=FAKE, mask=None,
             out=FAKE, batch=1, q_heads=8, kv_heads=2, new=4, capacity=256, dim=128, scale=0.1, ws=FAKE, ws_bytes=1 << 30)
    a.update(over)
    return list(a.values())


@pytest.mark.parametrize("over, status, message", [
    (dict(dim=96), "unsupported", "edgert_attention: head_dim 96; built for 64 and 128"),
    (dict(q_heads=6, kv_heads=4), "invalid argument", "6 query heads do not group over 4 kv heads"),
    (dict(dtype=0), "unsupported", "dtype fp32; built for fp16 and bf16"),
    (dict(capacity=2), "invalid argument", "capacity >= new tokens"),
    (dict(ws_bytes=16), "workspace too small", "workspace of 16 bytes, needs"),
    (dict(q=ctypes.c_void_p((1 << 20) + 2)), "invalid argument", "16-byte aligned"),
    (dict(v_new=None), "invalid argument", "k_new and v_new come together"),
])
def test_attention_refuses_bad_arguments(lib, over, status, message):
    code, text = call(lib, "edgert_attention", *attention_args(**over))
    assert binding.STATUS[code] == status and message in text and "\n" not in text


def test_verification_and_compaction_refuse_bad_arguments(lib):
    code, text = call(lib, "edgert_tree_verify", None, 1, FAKE, FAKE, FAKE, None, FAKE, FAKE, FAKE, 1, 8, 100, 1,
                      1.0, 0.09, 0.3, FAKE, 1 << 20)
    assert code == 1 and "uniform" in text
    code, text = call(lib, "edgert_kv_compact", None, 8, FAKE, FAKE, FAKE, FAKE, 1, 2, 64, 128, 8)
    assert code == 2 and "element size 8 bytes" in text


@pytest.mark.skipif(GPU, reason="checks the message a machine without a GPU gets")
def test_no_gpu_is_a_clear_cuda_error(lib):
    code, text = call(lib, "edgert_kv_compact", None, 2, FAKE, FAKE, FAKE, FAKE, 1, 2, 64, 128, 8)
    assert binding.STATUS[code] == "CUDA error" and text.startswith("edgert: no usable CUDA device")


# --- with a GPU ------------------------------------------------------------------------------

def sdpa_reference(q, k_cache, v_cache, past, visible_new):
    """fp32 SDPA per batch row over past ‖ new with the boolean mask, heads expanded for GQA."""
    out = []
    group = q.shape[1] // k_cache.shape[1]
    for b, p in enumerate(past.tolist()):
        t = q.shape[2]
        k = k_cache[b:b + 1, :, : p + t].float().repeat_interleave(group, 1)
        v = v_cache[b:b + 1, :, : p + t].float().repeat_interleave(group, 1)
        mask = torch.cat([torch.ones(t, p, dtype=torch.bool, device=q.device), visible_new], 1)
        out.append(torch.nn.functional.scaled_dot_product_attention(q[b:b + 1].float(), k, v, attn_mask=mask))
    return torch.cat(out)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim, group", [(64, 1), (128, 4), (128, 8)])
@pytest.mark.parametrize("kind, new, past", [("causal", 300, [0, 0]), ("causal", 1, [1000, 517]), ("tree", 64, [777, 33])])
def test_attention_matches_torch(lib, dtype, dim, group, kind, new, past):
    from edgert.runtime.llm.tree import Tree

    gen = torch.Generator("cuda").manual_seed(dim + new)
    kv, capacity = 2, max(past) + new + 50
    rand = lambda *s: torch.randn(*s, device="cuda", generator=gen).to(dtype)  # noqa: E731
    q, k_new, v_new = rand(2, kv * group, new, dim), rand(2, kv, new, dim), rand(2, kv, new, dim)
    k_cache, v_cache = rand(2, kv, capacity, dim), rand(2, kv, capacity, dim)
    past_t = torch.tensor(past, dtype=torch.int32, device="cuda")
    if kind == "tree":
        rng = np.random.default_rng(new)
        tree = Tree(np.array([-1] + [int(rng.integers(0, i)) for i in range(1, new)]))
        visible, packed = torch.tensor(tree.ancestor_mask()).cuda(), torch.from_numpy(tree.packed_mask()).cuda()
    else:
        visible, packed = torch.ones(new, new, dtype=torch.bool, device="cuda").tril(), None
    got = lib.attention(q, k_new, v_new, k_cache, v_cache, past_t, tree_mask=packed)
    torch.cuda.synchronize()
    for b, p in enumerate(past):
        assert torch.equal(k_cache[b, :, p:p + new], k_new[b]) and torch.equal(v_cache[b, :, p:p + new], v_new[b])
    want = sdpa_reference(q, k_cache, v_cache, past_t, visible)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=2e-2 if dtype == torch.bfloat16 else 4e-3, rtol=0)


@needs_gpu
@pytest.mark.parametrize("mode", ["greedy", "typical"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tree_verify_matches_the_numpy_op(lib, mode, dtype):
    from test_triton_tree_verify import random_case

    from edgert.runtime.llm.verify import uniforms, verify

    rng = np.random.default_rng(0)
    for case in range(20):
        size, vocab = int(rng.integers(2, 64)), int(rng.integers(100, 5000))
        tokens, parents, logits, _ = random_case(rng, size, vocab, mode)
        logits = torch.from_numpy(logits).to(dtype)
        kwargs = {"temperature": 0.7, "seed": case} if mode == "typical" else {}
        want = verify(tokens, parents, logits.float().numpy(), mode, **kwargs)  # on what the kernel sees
        cuda = lambda a: torch.from_numpy(np.asarray([a], np.int32)).cuda()  # noqa: E731
        u = torch.tensor([uniforms(case, size)[0]], dtype=torch.float32, device="cuda")
        path, length, bonus = lib.tree_verify(cuda(tokens), cuda(parents), logits[None].cuda(), mode,
                                              temperature=0.7, uniform=u)
        assert (path[0, : int(length[0])].tolist(), int(bonus[0])) == (want.path, want.bonus), (mode, case)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kv_compact_matches_a_gather(lib, dtype):
    cache = torch.randn(2, 4, 64, 128, device="cuda").to(dtype)
    paths, past = [[0, 2, 3, 9], [0, 1, 5]], [10, 3]
    want = cache.clone()
    for b, (p, start) in enumerate(zip(paths, past)):
        want[b, :, start:start + len(p)] = cache[b][:, [start + i for i in p]]
    path = torch.tensor([p + [-1] * (4 - len(p)) for p in paths], dtype=torch.int32, device="cuda")
    lib.kv_compact(cache, path, torch.tensor([4, 3], dtype=torch.int32, device="cuda"),
                   torch.tensor(past, dtype=torch.int32, device="cuda"))
    torch.cuda.synchronize()
    assert torch.equal(cache, want)
