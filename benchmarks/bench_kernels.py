"""GPU benchmark of the kernel library (trt_plugins/, through its ctypes binding), each figure
against a baseline measured in the same run on the same card:

* prefill (causal, head dim 64 and 128, 1k-16k tokens): TFLOP/s vs torch's
  scaled_dot_product_attention with the flash backend (target >= 0.8x);
* tree decode (64-node tree over 1k-32k cached tokens, batch 1-8): bandwidth over the K/V bytes
  read, as a fraction of a device-to-device copy of the same bytes (target >= 0.7);
* tree verification (64 nodes, 32k / 152k vocabulary) and KV compaction: microseconds per call.

    python benchmarks/bench_kernels.py [--quick] [--json OUT.json]   # needs a CUDA GPU, a CUDA torch, the library

Timing: CUDA events around 20 calls after 5 warm-up calls, median of 5 such runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS: list[dict] = []  # every figure printed, for --json


def load_binding():
    spec = importlib.util.spec_from_file_location("trt_plugins_binding", ROOT / "trt_plugins" / "binding.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timed(fn, calls: int = 20, runs: int = 5) -> float:
    """Median seconds per call."""
    import torch

    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / calls)
    return statistics.median(samples)


def bench_prefill(lib, quick: bool) -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print("prefill, causal, fp16, batch 1, 16 query heads / 16 kv heads: TFLOP/s (ours vs torch SDPA flash)")
    for dim in (64, 128):
        for tokens in ((1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384)):
            heads = 16
            q = torch.randn(1, heads, tokens, dim, device="cuda", dtype=torch.float16)
            k, v = torch.randn_like(q), torch.randn_like(q)
            kc, vc = torch.empty_like(k), torch.empty_like(v)
            past = torch.zeros(1, dtype=torch.int32, device="cuda")
            ours = timed(lambda: lib.attention(q, k, v, kc, vc, past))
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                theirs = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
            flops = 4 * heads * tokens * tokens * dim / 2  # causal: half the score matrix
            ROWS.append({"bench": "prefill", "head_dim": dim, "tokens": tokens, "tflops": flops / ours / 1e12,
                         "sdpa_tflops": flops / theirs / 1e12, "ratio_vs_sdpa": theirs / ours})
            print(f"  d{dim} {tokens:>6} tokens: {flops / ours / 1e12:6.1f} vs {flops / theirs / 1e12:6.1f} TFLOP/s "
                  f"= {theirs / ours:.2f}x")


def bench_tree_decode(lib, quick: bool) -> None:
    import numpy as np
    import torch

    from edgert.runtime.llm.tree import Tree

    rng = np.random.default_rng(0)
    tree = Tree(np.array([-1] + [int(rng.integers(0, i)) for i in range(1, 64)]))
    mask = torch.from_numpy(tree.packed_mask()).cuda()
    print("tree decode, 64-node tree, fp16, 32 query / 8 kv heads, d128: K/V bandwidth as a fraction of a D2D copy")
    for batch in ((1, 8) if quick else (1, 2, 4, 8)):
        for cached in ((1024, 32768) if quick else (1024, 4096, 16384, 32768)):
            kv, hq, dim = 8, 32, 128
            capacity = cached + 64
            kc = torch.randn(batch, kv, capacity, dim, device="cuda", dtype=torch.float16)
            vc = torch.randn_like(kc)
            q = torch.randn(batch, hq, 64, dim, device="cuda", dtype=torch.float16)
            past = torch.full((batch,), cached, dtype=torch.int32, device="cuda")
            ours = timed(lambda: lib.attention(q, None, None, kc, vc, past, tree_mask=mask))
            kv_bytes = 2 * batch * kv * (cached + 64) * dim * 2
            src = torch.empty(kv_bytes, dtype=torch.uint8, device="cuda")
            dst = torch.empty_like(src)
            copy = timed(lambda: dst.copy_(src))
            copy_bw = 2 * kv_bytes / copy  # a copy reads and writes
            ROWS.append({"bench": "tree_decode", "batch": batch, "cached": cached, "gb_per_s": kv_bytes / ours / 1e9,
                         "copy_gb_per_s": copy_bw / 1e9, "fraction_of_copy": kv_bytes / ours / copy_bw})
            print(f"  batch {batch} cache {cached:>6}: {kv_bytes / ours / 1e9:7.1f} GB/s read, copy {copy_bw / 1e9:7.1f} "
                  f"GB/s, fraction {kv_bytes / ours / copy_bw:.2f}")


def bench_verify_and_compact(lib) -> None:
    import torch

    print("tree verification (64 nodes, batch 1, fp32 logits) and KV compaction (28 layers x 2, d128, 8 kv heads)")
    for vocab in (32000, 151936):
        logits = torch.randn(1, 64, vocab, device="cuda")
        tokens = torch.randint(0, vocab, (1, 64), dtype=torch.int32, device="cuda")
        parents = torch.tensor([[-1] + [i // 2 for i in range(1, 64)]], dtype=torch.int32, device="cuda")
        for mode in ("greedy", "typical"):
            u = torch.rand(1, device="cuda")
            t = timed(lambda: lib.tree_verify(tokens, parents, logits, mode, uniform=u))
            ROWS.append({"bench": "verify", "mode": mode, "vocab": vocab, "us": t * 1e6})
            print(f"  verify {mode:<8} vocab {vocab:>6}: {t * 1e6:7.1f} us")
    cache = torch.randn(1, 8, 4096, 128, device="cuda", dtype=torch.float16)
    path = torch.tensor([[0, 1, 3, 7, 15, 31]], dtype=torch.int32, device="cuda")
    length = torch.tensor([6], dtype=torch.int32, device="cuda")
    past = torch.tensor([4000], dtype=torch.int32, device="cuda")
    t = timed(lambda: lib.kv_compact(cache, path, length, past))
    ROWS.append({"bench": "kv_compact", "us": t * 1e6})
    print(f"  kv_compact, one cache tensor: {t * 1e6:.1f} us; x 56 tensors of a 28-layer model: {56 * t * 1e6:.0f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU and a CUDA build of torch; nothing measured", file=sys.stderr)
        return 1
    lib = load_binding().KernelLibrary()
    print(f"card: {torch.cuda.get_device_name()} (sm_{''.join(map(str, torch.cuda.get_device_capability()))}), "
          f"torch {torch.__version__}, library {lib.path}")
    bench_prefill(lib, args.quick)
    bench_tree_decode(lib, args.quick)
    bench_verify_and_compact(lib)
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "rows": ROWS}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
