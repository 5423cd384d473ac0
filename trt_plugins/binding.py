"""ctypes binding of the kernel library (libedgert_kernels.so, built by CMake) for tests and
benchmarks: the same C API a TensorRT plugin calls, on torch CUDA tensors.

    lib = KernelLibrary()                      # $EDGERT_KERNELS_LIB, or build/native/trt_plugins/
    out = lib.attention(q, k_new, v_new, k_cache, v_cache, past_lengths, tree_mask=None)
    path, length, bonus = lib.tree_verify(tokens, parents, logits, mode="greedy")
    lib.kv_compact(cache, path, length, past_lengths)

A failing call raises KernelError with the library's one-line message.
"""

from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = ROOT / "build" / "native" / "trt_plugins" / "libedgert_kernels.so"
STATUS = {0: "ok", 1: "invalid argument", 2: "unsupported", 3: "no cubin for this device", 4: "CUDA error",
          5: "workspace too small"}
_p, _i, _f, _sz = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_size_t
SIGNATURES = {
    "edgert_attention_workspace_size": [_i, _i, _i, _i, _i, ctypes.POINTER(_sz)],
    "edgert_attention": [_p, _i, _p, _p, _p, _p, _p, _p, _p, _p, _i, _i, _i, _i, _i, _i, _f, _p, _sz],
    "edgert_tree_verify_workspace_size": [_i, _i, ctypes.POINTER(_sz)],
    "edgert_tree_verify": [_p, _i, _p, _p, _p, _p, _p, _p, _p, _i, _i, _i, _i, _f, _f, _f, _p, _sz],
    "edgert_kv_compact": [_p, _i, _p, _p, _p, _p, _i, _i, _i, _i, _i],
}


class KernelError(RuntimeError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = STATUS.get(status, str(status))


class KernelLibrary:
    def __init__(self, path: str | os.PathLike | None = None):
        path = Path(path or os.environ.get("EDGERT_KERNELS_LIB") or DEFAULT_PATH)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no kernel library; build it with "
                                    "`cmake -S . -B build/native && cmake --build build/native`")
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        for name, args in SIGNATURES.items():
            getattr(self.lib, name).argtypes = args
            getattr(self.lib, name).restype = _i
        self.lib.edgert_last_error.restype = ctypes.c_char_p
        self.lib.edgert_kernels_version.restype = ctypes.c_char_p

    def _check(self, status: int) -> None:
        if status:
            raise KernelError(status, self.lib.edgert_last_error().decode())

    def architectures(self) -> list[int]:
        archs = (ctypes.c_int * 16)()
        return list(archs[: self.lib.edgert_kernels_architectures(archs, 16)])

    def cubin_count(self) -> int:
        return self.lib.edgert_kernels_cubin_count()

    # --- launches on torch CUDA tensors (the current stream) ---------------------------------

    @staticmethod
    def _dtype(t) -> int:
        import torch

        return {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[t.dtype]

    @staticmethod
    def _stream():
        import torch

        return ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)

    @staticmethod
    def _ptr(t):
        return None if t is None else ctypes.c_void_p(t.data_ptr())

    def _workspace(self, query, *shape):
        import torch

        size = _sz()
        self._check(getattr(self.lib, query)(*shape, ctypes.byref(size)))
        return torch.empty(max(size.value, 1), dtype=torch.uint8, device="cuda"), size.value

    def attention(self, q, k_new, v_new, k_cache, v_cache, past_lengths, tree_mask=None, scale=None):
        import torch

        batch, q_heads, new, dim = q.shape
        kv_heads, capacity = k_cache.shape[1], k_cache.shape[2]
        out = torch.empty_like(q)
        ws, size = self._workspace("edgert_attention_workspace_size", batch, q_heads, new, capacity, dim)
        self._check(self.lib.edgert_attention(
            self._stream(), self._dtype(q), self._ptr(q), self._ptr(k_new), self._ptr(v_new), self._ptr(k_cache),
            self._ptr(v_cache), self._ptr(past_lengths), self._ptr(tree_mask), self._ptr(out), batch, q_heads,
            kv_heads, new, capacity, dim, scale or 1.0 / math.sqrt(dim), self._ptr(ws), size))
        return out

    def tree_verify(self, tokens, parents, logits, mode="greedy", temperature=1.0, epsilon=0.09, delta=0.3,
                    uniform=None):
        import torch

        batch, nodes, vocab = logits.shape
        i32 = dict(dtype=torch.int32, device=logits.device)
        path, length, bonus = torch.empty(batch, nodes, **i32), torch.empty(batch, **i32), torch.empty(batch, **i32)
        ws, size = self._workspace("edgert_tree_verify_workspace_size", batch, nodes)
        self._check(self.lib.edgert_tree_verify(
            self._stream(), self._dtype(logits), self._ptr(tokens), self._ptr(parents), self._ptr(logits),
            self._ptr(uniform), self._ptr(path), self._ptr(length), self._ptr(bonus), batch, nodes, vocab,
            int(mode == "typical"), temperature, epsilon, delta, self._ptr(ws), size))
        return path, length, bonus

    def kv_compact(self, cache, path, length, past_lengths):
        batch, heads, capacity, dim = cache.shape
        self._check(self.lib.edgert_kv_compact(
            self._stream(), cache.element_size(), self._ptr(cache), self._ptr(path), self._ptr(length),
            self._ptr(past_lengths), batch, heads, capacity, dim, path.stride(0)))
