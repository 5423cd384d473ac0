"""Ahead-of-time compile the Triton kernels of trt_plugins/ to cubins, without a GPU.

    python trt_plugins/aot.py --out build/cubins --archs 87 90 110 [--jobs 2]

For every kernel variant below and every architecture it writes ``<variant>.sm<arch>.cubin``,
then ``cubin_table.cpp``: the cubins embedded with ``.incbin`` and the table the C++ launcher
library reads (variant, architecture, Triton's function name, warps, dynamic shared memory,
parameter count). CMake runs this with the project's Python (the one with triton installed);
nothing here runs at inference time.

A variant fixes what Triton must know at compile time: dtype, head dimension, mask kind, tile
sizes. Elements that are only moved (append, compaction) are compiled per element size as
integers. Kernel parameters keep the order of the Triton signature with the constexprs
removed, then Triton's two scratch pointers (always null here: the build refuses a variant
that needs scratch), which is what the launcher passes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
DTYPES = {"fp16": "fp16", "bf16": "bf16"}
BITS = {"b16": "i16", "b32": "i32"}  # moved, not computed: one kernel per element size


@dataclass
class Variant:
    name: str  # what the launcher asks for, e.g. attention_fwd.fp16.d128.tree.decode
    op: str  # trt_plugins/<op>/kernel.py
    kernel: str  # the @triton.jit function
    types: dict  # parameter -> Triton type; parameters not named are i32
    constexprs: dict
    num_warps: int = 4
    num_stages: int = 2
    aligned: tuple = field(default=())  # parameters promised to be multiples of 16 (pointers: bytes)


def variants() -> list[Variant]:
    out = []
    # Attention: prefill tiles (many queries) and decode tiles (few queries, split-KV, merged after).
    tiles = {"prefill": dict(BLOCK_M=128, BLOCK_N=64, SPLIT=0, num_warps=8),
             "decode": dict(BLOCK_M=16, BLOCK_N=64, SPLIT=1, num_warps=4)}
    for dt, ty in DTYPES.items():
        for dim in (64, 128):
            for mask in ("causal", "tree"):
                for tile, cfg in tiles.items():
                    cfg = dict(cfg)
                    warps = cfg.pop("num_warps")
                    out.append(Variant(
                        f"attention_fwd.{dt}.d{dim}.{mask}.{tile}", "attention", "_attention_fwd",
                        {"Q": f"*{ty}", "K": f"*{ty}", "V": f"*{ty}", "Out": "*fp32" if cfg["SPLIT"] else f"*{ty}",
                         "Lse": "*fp32", "Mask": "*i32", "PastLen": "*i32", "sm_scale": "fp32"},
                        dict(TREE=int(mask == "tree"), HEAD_D=dim, **cfg), num_warps=warps,
                        aligned=("Q", "K", "V", "Out", "Lse", "Mask", "PastLen", "s_qt", "s_kc", "s_vc", "s_ot")))
            out.append(Variant(f"attention_merge.{dt}.d{dim}", "attention", "_merge",
                               {"Parts": "*fp32", "Lse": "*fp32", "Out": f"*{ty}"}, dict(BLOCK_M=16, HEAD_D=dim),
                               aligned=("Parts", "Lse", "Out", "s_pt", "s_ot")))
    for bits, ty in BITS.items():
        for dim in (64, 128):
            out.append(Variant(f"attention_append.{bits}.d{dim}", "attention", "_append",
                               {"New": f"*{ty}", "Cache": f"*{ty}", "PastLen": "*i32"}, dict(HEAD_D=dim, BLOCK_T=16),
                               aligned=("New", "Cache", "PastLen", "s_nt", "s_cc")))
            out.append(Variant(f"kv_compact.{bits}.d{dim}", "kv_compact", "_compact",
                               {"Cache": f"*{ty}", "Path": "*i32", "Length": "*i32", "PastLen": "*i32"},
                               dict(HEAD_D=dim, BLOCK_D=dim), num_warps=2, aligned=("Cache", "s_cs")))
    for dt, ty in dict(DTYPES, fp32="fp32").items():
        for mode in ("greedy", "typical"):
            typical = int(mode == "typical")
            floats = {"inv_temperature": "fp32"}
            out.append(Variant(f"tree_verify_stats.{dt}.{mode}", "tree_verify", "_node_stats",
                               {"Logits": f"*{ty}", "Best": "*i32", "Lse": "*fp32", "Threshold": "*fp32",
                                "epsilon": "fp32", "delta": "fp32", **floats},
                               dict(TYPICAL=typical, BLOCK_V=1024)))
            out.append(Variant(f"tree_verify_accept.{dt}.{mode}", "tree_verify", "_accept",
                               {"Tokens": "*i32", "Parents": "*i32", "Logits": f"*{ty}", "Best": "*i32",
                                "Lse": "*fp32", "Threshold": "*fp32", "Accepted": "*i32", "Depth": "*i32",
                                "Score": "*fp32", "Path": "*i32", "Length": "*i32", "Bonus": "*i32",
                                "Uniform": "*fp32", **floats},
                               dict(TYPICAL=typical, BLOCK_V=1024)))
    return out


def _load(op: str):
    spec = importlib.util.spec_from_file_location(f"edgert_aot_{op}", HERE / op / "kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compile_one(job: tuple[Variant, int, str]) -> dict:
    variant, arch, out_dir = job
    import triton
    from triton.backends.compiler import GPUTarget

    fn = getattr(_load(variant.op), variant.kernel)
    names = fn.arg_names
    unknown = set(variant.types) | set(variant.constexprs) | set(variant.aligned)
    if unknown - set(names):
        raise SystemExit(f"aot: {variant.name}: {sorted(unknown - set(names))} are not parameters of {variant.kernel}")
    signature = {n: "constexpr" if n in variant.constexprs else variant.types.get(n, "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in variant.aligned}
    target = GPUTarget("cuda", arch, 32)
    options = triton.compiler.make_backend(target).parse_options(
        {"num_warps": variant.num_warps, "num_stages": variant.num_stages})
    compiled = triton.compile(triton.compiler.ASTSource(fn, signature, variant.constexprs, attrs),
                              target=target, options=options.__dict__)
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise SystemExit(f"aot: {variant.name} for sm_{arch} needs Triton scratch memory, which the launcher does not provide")
    path = Path(out_dir) / f"{variant.name}.sm{arch}.cubin"
    path.write_bytes(compiled.asm["cubin"])
    params = [n for n in names if n not in variant.constexprs]
    return dict(variant=variant.name, arch=arch, file=str(path), function=meta.name, num_warps=meta.num_warps,
                shared=meta.shared, params=params, aligned=list(variant.aligned))


def write_table(entries: list[dict], out_dir: Path) -> Path:
    """One C++ file: the cubins as .incbin'd symbols and the table of their launch facts."""
    lines = ['// Generated by trt_plugins/aot.py: do not edit.', '#include "cubin_table.h"', '']
    for i, e in enumerate(entries):
        lines.append(f'__asm__(".section .rodata\\n.balign 16\\nedgert_cubin_{i}:\\n.incbin \\"{e["file"]}\\"\\n'
                     f'edgert_cubin_{i}_end:\\n.previous");')
    lines.append('extern "C" {')
    for i in range(len(entries)):
        lines.append(f'extern const unsigned char edgert_cubin_{i}[] __asm__("edgert_cubin_{i}");')
        lines.append(f'extern const unsigned char edgert_cubin_{i}_end[] __asm__("edgert_cubin_{i}_end");')
    lines.append('}')
    lines.append('namespace edgert {')
    lines.append('const CubinEntry kCubins[] = {')
    for i, e in enumerate(entries):
        lines.append(f'  {{"{e["variant"]}", {e["arch"]}, edgert_cubin_{i}, edgert_cubin_{i}_end, "{e["function"]}", '
                     f'{e["num_warps"]}, {e["shared"]}, {len(e["params"])}}},')
    lines.append('};')
    lines.append(f'const int kNumCubins = {len(entries)};')
    lines.append('}  // namespace edgert')
    path = out_dir / "cubin_table.cpp"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--archs", nargs="+", type=int, default=[87, 90, 110], help="compute capabilities, e.g. 87 90 110")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    # Before triton is imported here and in the workers: the CPU interpreter (which the test
    # suite turns on) replaces @triton.jit, and there is nothing to compile then.
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    try:
        import triton  # noqa: F401
    except ImportError:
        print(f"aot: {sys.executable} has no triton; configure CMake with -DEDGERT_PYTHON=<the project's python> "
              "(pip install -e '.[dev]')", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", str(args.out.resolve() / "triton-cache"))
    jobs = [(v, arch, str(args.out)) for v in variants() for arch in args.archs]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        entries = list(pool.map(compile_one, jobs))
    (args.out / "cubins.json").write_text(json.dumps(entries, indent=1))
    write_table(entries, args.out)
    size = sum(Path(e["file"]).stat().st_size for e in entries)
    print(f"aot: {len(entries)} cubins ({len(jobs) // len(args.archs)} variants x sm_{', sm_'.join(map(str, args.archs))}), "
          f"{size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
