"""The one GPU check: everything edgert can only verify on a GPU, in one run, into one report.

    python benchmarks/gpu_check.py [--out build/gpu-check] [--quick]      (or: make gpu-check)

On a machine with an NVIDIA GPU and a CUDA build of torch it
1. records the card (name, compute capability, memory, driver) and the versions that matter;
2. runs every test that needs a GPU: the kernel library's launches against torch SDPA, numpy's
   verification and a gather (tests/test_kernel_library.py, which also builds the library with
   CMake), the CUDA execution provider tests (tests/test_backends.py; they skip without
   onnxruntime-gpu) and, where tensorrt is importable, the engine build (tests/test_trt_flavour.py);
3. runs benchmarks/bench_kernels.py (every figure against torch SDPA or a device copy on the same card);
4. where tensorrt is importable: builds libedgert_trt_plugins.so against it, builds the decoder
   engine and checks a greedy generation token for token against ONNX Runtime
   (benchmarks/trt_greedy.py);
and writes ``report.json`` and ``report.md`` under ``--out``. Each step has its own time limit so
the whole run stays inside 8 minutes on one GPU; a step that fails is recorded, the next still runs.
Exit status 0 only when every step passed (skips with their reasons are listed, not failures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_TESTS = ["tests/test_kernel_library.py", "tests/test_backends.py", "tests/test_trt_flavour.py"]


def run(cmd: list[str], timeout: int, env: dict | None = None) -> dict:
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        code, out = 124, f"{err.stdout or ''}{err.stderr or ''}\ntimed out after {timeout} s"
    return {"command": " ".join(cmd), "returncode": code, "seconds": round(time.monotonic() - start, 1),
            "tail": out[-4000:] if isinstance(out, str) else ""}


def card() -> dict:
    import torch

    props = torch.cuda.get_device_properties(0)
    info = {"name": torch.cuda.get_device_name(0), "capability": "sm_%d%d" % torch.cuda.get_device_capability(0),
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    for module in ("triton", "onnxruntime", "tensorrt"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    return info


def ensure_edgert() -> str:
    """The tests import edgert: install the checkout (no index needed) where it is not installed."""
    try:
        import edgert  # noqa: F401

        return "installed"
    except ImportError:
        done = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."], 300)
        return "pip install -e . (offline): " + ("ok" if done["returncode"] == 0 else "failed\n" + done["tail"])


def junit(path: Path) -> dict:
    if not path.is_file():
        return {}
    cases = {"passed": 0, "failed": [], "skipped": {}}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            cases["failed"].append(name)
        elif (skip := case.find("skipped")) is not None:
            reason = (skip.get("message") or "").removeprefix("Skipped: ")
            cases["skipped"][reason] = cases["skipped"].get(reason, 0) + 1
        else:
            cases["passed"] += 1
    return cases


def tensorrt_step(out: Path, info: dict) -> dict:
    """libedgert_trt_plugins.so against the installed TensorRT, the engine, greedy tokens vs ONNX Runtime."""
    import tensorrt

    major, minor = tensorrt.__version__.split(".")[:2]
    root = os.environ.get("TENSORRT_ROOT")
    if not root:  # the pip wheels ship no headers: the public ones of that major, beside the checkout
        headers = Path(os.environ.get("EDGERT_TENSORRT_HEADERS") or ROOT.parent / "shared" / "tensorrt")
        candidates = sorted(headers.glob(f"{major}.*"))
        if not candidates:
            return {"returncode": 1, "tail": f"TensorRT {tensorrt.__version__}: no headers (set TENSORRT_ROOT)"}
        root = str(candidates[-1])
    library = next(Path(tensorrt.__file__).parent.parent.glob("tensorrt_libs/libnvinfer.so*"), None)
    tree = ROOT / "build" / "gpu-trt"
    defines = [f"-DTENSORRT_ROOT={root}", f"-DEDGERT_CUDA_ARCHITECTURES={info['capability'][3:]}"]
    if library:
        defines.append(f"-DTENSORRT_LIBRARY={library}")
    steps = [run(["cmake", "-S", ".", "-B", str(tree), *defines], 120),
             run(["cmake", "--build", str(tree), "-j", str(os.cpu_count() or 2)], 240)]
    if any(s["returncode"] for s in steps):
        return next(s for s in steps if s["returncode"])
    return run([sys.executable, "benchmarks/trt_greedy.py", "--plugins", str(tree / "trt_plugins/libedgert_trt_plugins.so"),
                "--out", str(out / "trt-greedy"), "--json", str(out / "trt_greedy.json")], 240)


def markdown(report: dict) -> str:
    c = report["card"]
    lines = [f"# edgert GPU check: {c['name']} ({c['capability']}, {c['memory_gib']} GiB, driver {c.get('driver')})", "",
             f"torch {c['torch']} (CUDA {c['cuda']}), triton {c['triton']}, onnxruntime {c['onnxruntime']}, "
             f"tensorrt {c['tensorrt']}; {report['date']}; {report['seconds']} s in all", "", "## Steps", "",
             "| step | result | seconds |", "| --- | --- | --- |"]
    for name, step in report["steps"].items():
        lines.append(f"| {name} | {'ok' if step['returncode'] == 0 else 'FAILED (%d)' % step['returncode']} | "
                     f"{step.get('seconds', '')} |")
    tests = report.get("tests") or {}
    if tests:
        lines += ["", f"## GPU tests: {tests['passed']} passed, {len(tests['failed'])} failed", ""]
        lines += [f"- FAILED {name}" for name in tests["failed"]]
        lines += [f"- skipped ({n}): {reason}" for reason, n in tests["skipped"].items()]
    rows = (report.get("bench") or {}).get("rows", [])
    if rows:
        lines += ["", "## Kernels (benchmarks/bench_kernels.py, same card, same run)", ""]
        lines += ["| prefill, causal fp16 | TFLOP/s | torch SDPA flash | ratio |", "| --- | --- | --- | --- |"]
        lines += [f"| d{r['head_dim']} {r['tokens']} tokens | {r['tflops']:.1f} | {r['sdpa_tflops']:.1f} | "
                  f"{r['ratio_vs_sdpa']:.2f}x |" for r in rows if r["bench"] == "prefill"]
        lines += ["", "| tree decode, 64 nodes, d128 | K/V GB/s | D2D copy GB/s | fraction |", "| --- | --- | --- | --- |"]
        lines += [f"| batch {r['batch']}, {r['cached']} cached | {r['gb_per_s']:.0f} | {r['copy_gb_per_s']:.0f} | "
                  f"{r['fraction_of_copy']:.2f} |" for r in rows if r["bench"] == "tree_decode"]
        lines += ["", "| verification / compaction | us per call |", "| --- | --- |"]
        lines += [f"| verify {r['mode']} vocab {r['vocab']} | {r['us']:.1f} |" for r in rows if r["bench"] == "verify"]
        lines += [f"| kv_compact, one cache tensor | {r['us']:.1f} |" for r in rows if r["bench"] == "kv_compact"]
    if report.get("trt_greedy"):
        g = report["trt_greedy"]
        lines += ["", f"## TensorRT greedy generation: {'equal' if g['equal'] else 'DIFFERENT'} to ONNX Runtime over "
                      f"{g['tokens']} tokens" + ("" if g["equal"] else f" (first difference at {g['first_difference']})")]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "gpu-check")
    parser.add_argument("--quick", action="store_true", help="fewer benchmark sizes")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: needs an NVIDIA GPU and a CUDA build of torch; nothing checked", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "card": card(), "steps": {}}
    report["edgert"] = ensure_edgert()
    xml = args.out / "gpu-tests.xml"
    report["steps"]["gpu tests"] = run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                                        f"--junitxml={xml}", *GPU_TESTS], 300)
    report["tests"] = junit(xml)
    bench = args.out / "bench_kernels.json"
    report["steps"]["bench_kernels"] = run([sys.executable, "benchmarks/bench_kernels.py", "--json", str(bench),
                                            *(["--quick"] if args.quick else [])], 150)
    report["bench"] = json.loads(bench.read_text()) if bench.is_file() else None
    if report["card"]["tensorrt"]:
        report["steps"]["tensorrt greedy"] = tensorrt_step(args.out, report["card"])
        greedy = args.out / "trt_greedy.json"
        report["trt_greedy"] = json.loads(greedy.read_text()) if greedy.is_file() else None
    report["seconds"] = round(time.monotonic() - start, 1)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report))
    failed = [name for name, step in report["steps"].items() if step["returncode"] != 0]
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)} (tails in {args.out / 'report.json'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
