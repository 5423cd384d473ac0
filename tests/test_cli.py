"""The CLI as users meet it: export, info, run, bench, and the errors they get."""

import json

import numpy as np
import pytest

from conftest import TINY_TSN, assert_user_error, edgert


def test_info(tiny_bundle):
    result = edgert("info", tiny_bundle)
    assert result.returncode == 0, result.stderr
    assert "detector: tsn" in result.stdout and "input    video        float32  [batch, 3, 3, 32, 32]" in result.stdout
    assert "parity     main/scores: max_rel" in result.stdout and "sha256 verified" in result.stdout
    as_json = json.loads(edgert("info", tiny_bundle, "--json").stdout)
    assert as_json["parity"]["passed"] is True
    # dropout shapes training only: the manifest keeps it (a rebuild needs it), `info` does not
    # show it as something the bundle was built with
    assert "dropout" in as_json["model"]["options"] and as_json["model"]["training_only"] == ["dropout"]
    options = next(line for line in result.stdout.splitlines() if line.startswith("options"))
    assert "segments=3" in options and "dropout" not in options


def test_a_reader_that_leaves_ends_the_output_quietly(tiny_bundle):
    """`edgert info B | head -1`: the reader closes the pipe; edgert stops with the SIGPIPE exit
    status (128 + 13) and says nothing, as `yes | head` does, not 'internal error: BrokenPipeError'."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        result = subprocess.run([sys.executable, "-m", "edgert", "info", str(tiny_bundle)], stdout=write,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == "", result.stderr


def test_the_clone_without_edgert_installed_says_so():
    """`python3 -m edgert` in the clone with a Python where edgert is not installed (here: no site
    packages) finds the clone's edgert/ folder: one line saying what to do, not a traceback."""
    import subprocess
    import sys

    from conftest import ROOT

    result = subprocess.run([sys.executable, "-S", "-m", "edgert", "plugins"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("edgert: error: edgert is not installed in this Python") and "make demo" in result.stderr


def test_an_existing_out_is_refused_before_any_work(tiny_bundle, tmp_path):
    """The refusal that needs no work comes first: the checkpoint is never opened (here it is
    not even there, which would be the error after the --out check) and nothing is built."""
    for model, checkpoint in (("tsn", tmp_path / "missing.pth"), ("llama", tmp_path / "missing-checkpoint")):
        result = edgert("export", model, "--out", tiny_bundle, "--checkpoint", checkpoint)
        assert_user_error(result, f"{tiny_bundle}: already exists (pass --force to replace it)")
        assert "building" not in result.stderr and "loading" not in result.stderr


def test_bench_compare_torch_without_torch_is_refused_first(tiny_bundle, monkeypatch, capsys):
    import sys

    import edgert.cli as cli

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a runtime-only install
    assert cli.main(["bench", str(tiny_bundle), "--compare", "torch", "--iters", "2"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "edgert: error: bench --compare torch needs torch: pip install 'edgert[export]'\n"


def test_an_export_without_weights_says_so(tmp_path):
    result = edgert("export", "tsn", *TINY_TSN, "--out", tmp_path / "b")
    assert result.returncode == 0, result.stderr
    assert "edgert: warning: no --checkpoint: tsn gets random weights (seed 0)" in result.stderr


def test_run_npy_video_and_frames(tiny_bundle, clip_npy, tmp_path):
    import cv2

    from edgert.exporters.synthetic import write_video

    clip = np.load(clip_npy)
    write_video(tmp_path / "clip.mp4", clip)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(clip):
        cv2.imwrite(str(frames / f"img_{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    result = edgert("run", tiny_bundle, "--input", clip_npy, "--input", tmp_path / "clip.mp4", "--input", frames,
                    "--json", "--threads", "1")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r["top"]) == 5 for r in rows)
    assert abs(sum(p for _, p in rows[0]["top"]) - 1.0) < 1e-5  # all 5 classes: probabilities sum to 1
    assert rows[0]["top"] == rows[2]["top"]  # lossless frames give the same answer as the array
    text = edgert("run", tiny_bundle, "--input", clip_npy)
    assert "1. class_" in text.stdout and "time per clip:" in text.stdout


def test_bench_compare_torch(tiny_bundle):
    result = edgert("bench", tiny_bundle, "--compare", "torch", "--iters", "3", "--warmup", "1", "--threads", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("onnxruntime (cpu)") and "p50" in line and "p90" in line for line in lines)
    assert any(line.startswith("pytorch eager") for line in lines)
    assert any(line.startswith("ratio onnxruntime/pytorch: throughput") for line in lines)


def test_fp16_export(tmp_path, clip_npy):
    out = tmp_path / "fp16"
    result = edgert("export", "tsn", "--out", out, "--precision", "fp16", *TINY_TSN)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp16"
    report = manifest["parity"]["graphs"]["main"]
    assert report["tolerance"] == 1e-2 and report["outputs"]["scores"]["max_rel"] <= 1e-2
    import onnx

    types = {init.data_type for init in onnx.load(str(out / "model.onnx")).graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    assert edgert("run", out, "--input", clip_npy).returncode == 0


def test_failed_parity_leaves_nothing(tmp_path):
    out = tmp_path / "b"
    result = edgert("export", "tsn", "--out", out, "--tolerance", "1e-30", *TINY_TSN)
    assert_user_error(result, "parity check failed for tsn", "output 'scores'", "no bundle was written")
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_to_overwrite_without_force(tiny_bundle):
    assert_user_error(edgert("export", "tsn", "--out", tiny_bundle, *TINY_TSN), "already exists (pass --force")


@pytest.mark.parametrize("args,fragments", [
    (["export", "i3d", "--out", "x"], ["no exportable model named 'i3d'", "tsn"]),
    (["export", "tsn", "--out", "x", "--opt", "backbone=vgg16"], ["--opt backbone=vgg16: expected one of"]),
    (["export", "tsn", "--out", "x", "--opt", "segments=0"], ["--opt segments=0: expected a positive integer"]),
    (["export", "tsn", "--out", "x", "--opt", "colour=red"], ["unknown option 'colour'"]),
    (["export", "tsn", "--out", "x", "--opt", "segments"], ["expected key=value"]),
    (["export", "tsn", "--out", "x", "--checkpoint", "/nonexistent.pt"], ["/nonexistent.pt: checkpoint file not found"]),
    (["info", "/nonexistent/bundle"], ["not a bundle directory"]),
])
def test_user_errors(args, fragments):
    assert_user_error(edgert(*args), *fragments)


def test_run_errors(tiny_bundle, tmp_path):
    assert_user_error(edgert("run", tiny_bundle, "--input", tmp_path / "missing.mp4"), "missing.mp4: no such file")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"definitely not a video" * 50)
    assert_user_error(edgert("run", tiny_bundle, "--input", junk), "junk.mp4: cannot decode video")
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((4, 32, 32, 3), np.float32))
    assert_user_error(edgert("run", tiny_bundle, "--input", floats), "expected a T x H x W x 3 uint8 RGB array", "given float32 [4, 32, 32, 3]")
    np.save(tmp_path / "narrow.npy", np.zeros((4, 32, 0, 3), np.uint8))
    assert_user_error(edgert("run", tiny_bundle, "--input", tmp_path / "narrow.npy"),
                      "narrow.npy: frames of 0x32; a frame has at least one pixel on a side")
    assert_user_error(edgert("run", tiny_bundle, "--input", floats, "--backend", "tensorrt"),
                      "the tensorrt backend needs the 'tensorrt' and 'polygraphy' packages")


def test_tampered_and_corrupt_bundles(bundle_copy, clip_npy):
    onnx_path = bundle_copy / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    assert_user_error(edgert("run", bundle_copy, "--input", clip_npy), "model.onnx: sha256 does not match the manifest")

    # A corrupt ONNX file whose hash was (re)recorded: the backend refuses it with one line.
    from edgert.runtime.bundle import sha256_file

    onnx_path.write_bytes(b"\x08\x07garbage that is not a protobuf")
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = sha256_file(onnx_path)
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(edgert("run", bundle_copy, "--input", clip_npy), "model.onnx: onnxruntime cannot load this graph")

    manifest["schema_version"] = 7
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    assert_user_error(edgert("info", bundle_copy), "unknown manifest schema_version 7")


def test_example_plugin_exports_and_runs(tmp_path, clip_npy):
    out = tmp_path / "fm"
    result = edgert("export", "frame-mean", "--out", out, "--opt", "classes=4")
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["plugin"] == {"name": "frame-mean", "package": "edgert-example-plugin", "version": "0.3.1"}
    ran = edgert("run", out, "--input", clip_npy, "--top-k", "2")
    assert ran.returncode == 0, ran.stderr
    assert "1. pattern-" in ran.stdout


def test_runtime_never_imports_torch(tiny_bundle, clip_npy, tmp_path):
    """Loading and running a bundle, through the API and the CLI's code path, leaves torch out."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "import edgert\n"
        "from edgert.cli import main\n"
        f"model = edgert.load({str(tiny_bundle)!r})\n"
        f"print(model.predict({str(clip_npy)!r}).top[0])\n"
        f"assert main(['run', {str(tiny_bundle)!r}, '--input', {str(clip_npy)!r}]) == 0\n"
        f"assert main(['info', {str(tiny_bundle)!r}]) == 0\n"
        "assert main(['plugins']) == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxscript', 'transformers'))\n"
        "assert not heavy, heavy\n"
        "print('torch-free')\n"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "torch-free" in result.stdout


def test_the_previous_releases_spellings_still_work_and_warn(tiny_bundle, clip_npy, tmp_path):
    """One word per TensorRT knob (--flavour trt, --engine, backend tensorrt, device tensorrt-ep);
    the old spellings are aliases for one release, each with a warning naming the new one."""
    result = edgert("export", "tsn", "--out", tmp_path / "v", "--backend", "trt", *TINY_TSN)
    assert_user_error(result, "--flavour trt --precision fp32", "only LLM decoders have a TensorRT-plugin flavour")
    assert "--backend is deprecated, use --flavour" in result.stderr
    result = edgert("export", "tsn", "--out", tmp_path / "x", "--trt-engine", *TINY_TSN)
    assert_user_error(result, "--engine needs the 'tensorrt' and 'polygraphy' packages")
    assert "--trt-engine is deprecated, use --engine" in result.stderr
    result = edgert("export", "tsn", "--out", tmp_path / "y", "--trt-max-batch", "0", *TINY_TSN)
    assert result.returncode == 2 and "argument --trt-max-batch: 0 is outside" in result.stderr
    result = edgert("run", tiny_bundle, "--input", clip_npy, "--device", "trt", "--threads", "1")
    assert result.returncode == 0, result.stderr  # no TensorRT EP here: a warning and the CPU
    assert "--device trt is deprecated, use --device tensorrt-ep" in result.stderr
    assert "TensorrtExecutionProvider" in result.stderr and "falling back to CPUExecutionProvider" in result.stderr


def test_a_labels_file_that_is_not_utf8_is_one_line(tmp_path):
    (tmp_path / "labels.txt").write_bytes(b"walk\nr\xffun\n")
    assert_user_error(edgert("export", "tsn", "--out", tmp_path / "b", *TINY_TSN[:-2], "--opt", "num_classes=2",
                             "--opt", f"labels={tmp_path / 'labels.txt'}"),
                      "labels.txt: labels file is not UTF-8 text (byte 0xff at offset 6)")
    assert not (tmp_path / "b").exists()
