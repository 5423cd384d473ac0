"""benchmarks/gpu_check.py, the one GPU check, where there is no GPU: it says so in one line and
checks nothing; its report (JUnit summary, Markdown tables) is right on synthetic results, so the
run on a lent GPU machine spends its minutes measuring, not crashing."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT

torch = pytest.importorskip("torch")


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU gets")
def test_without_a_gpu_it_checks_nothing_and_says_so(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "gpu_check: needs an NVIDIA GPU and a CUDA build of torch; nothing checked"]
    assert not list(tmp_path.iterdir())


def test_report_from_synthetic_results(tmp_path):
    gpu_check = load()
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="a" name="ok"/>'
                   '<testcase classname="a" name="bad"><failure message="x"/></testcase>'
                   '<testcase classname="a" name="s"><skipped message="Skipped: needs onnxruntime-gpu"/></testcase>'
                   '</testsuite></testsuites>')
    tests = gpu_check.junit(xml)
    assert tests == {"passed": 1, "failed": ["a::bad"], "skipped": {"needs onnxruntime-gpu": 1}}
    report = {"date": "2026-12-01", "seconds": 300.0, "tests": tests,
              "card": {"name": "NVIDIA H200", "capability": "sm_90", "memory_gib": 139.8, "driver": "580", "torch": "2.11",
                       "cuda": "13.0", "triton": "3.6", "onnxruntime": "1.30", "tensorrt": None},
              "steps": {"gpu tests": {"returncode": 1, "seconds": 200}, "bench_kernels": {"returncode": 0, "seconds": 60}},
              "bench": {"rows": [
                  {"bench": "prefill", "head_dim": 128, "tokens": 4096, "tflops": 400.0, "sdpa_tflops": 450.0,
                   "ratio_vs_sdpa": 0.89},
                  {"bench": "tree_decode", "batch": 1, "cached": 32768, "gb_per_s": 3000, "copy_gb_per_s": 4000,
                   "fraction_of_copy": 0.75},
                  {"bench": "verify", "mode": "greedy", "vocab": 32000, "us": 12.5},
                  {"bench": "kv_compact", "us": 3.0}]},
              "trt_greedy": {"tokens": 24, "equal": False, "first_difference": 7}}
    text = gpu_check.markdown(report)
    assert text.startswith("# edgert GPU check: NVIDIA H200 (sm_90, 139.8 GiB, driver 580)")
    assert "| gpu tests | FAILED (1) | 200 |" in text and "- FAILED a::bad" in text
    assert "| d128 4096 tokens | 400.0 | 450.0 | 0.89x |" in text and "| batch 1, 32768 cached | 3000 | 4000 | 0.75 |" in text
    assert "DIFFERENT to ONNX Runtime over 24 tokens (first difference at 7)" in text
