"""Hostile input, as a red team sends it (#13): bundles that name paths outside themselves, links,
forged listings; exports aimed at the user's own files, raced, killed; pickles planted where
edgert reads. Each must end in exactly one `edgert: error:` line and exit 1 (or a clean success),
with no traceback, nothing outside the bundle opened (an audit hook watches every open), nothing
of the user's deleted and no payload run."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, TINY_TSN, assert_user_error, edgert

AUDITED = """
import os, sys
opened = []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))
sys.addaudithook(hook)
from edgert.cli import main
code = main(sys.argv[2:])
watch = os.path.realpath(sys.argv[1])
with open(os.path.join(watch, "opened.json"), "w") as f:
    import json
    json.dump([p for p in opened if os.path.realpath(p).startswith(watch + os.sep)], f)
sys.exit(code)
"""


def audited(watch: Path, *args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI; also return every file it opened under ``watch``."""
    done = subprocess.run([sys.executable, "-c", AUDITED, str(watch), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    log = watch / "opened.json"
    opened = json.loads(log.read_text()) if log.is_file() else []
    log.unlink(missing_ok=True)
    return done, [os.path.realpath(p) for p in opened]


@pytest.fixture
def copy(tiny_bundle, tmp_path):
    """A private copy of the tiny TSN bundle, and a victim file outside it."""
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (tmp_path / "victim").mkdir()
    shutil.copy(bundle / "model.onnx", tmp_path / "victim" / "model.onnx")
    return bundle


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory):
    """One small Llama checkpoint for the module; each test takes a copy."""
    pytest.importorskip("transformers")
    from llm_checkpoints import make_llama

    path = tmp_path_factory.mktemp("llama") / "ckpt"
    make_llama(path)
    return path


def edit(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def rename_file(manifest, old, new):
    manifest["files"][new] = manifest["files"].pop(old)
    for graph in manifest["graphs"].values():
        if graph["file"] == old:
            graph["file"] = new


ESCAPES = {
    "absolute": ("{victim}/model.onnx", "is not a relative path inside the bundle"),
    "dotdot": ("../victim/model.onnx", "is not a relative path inside the bundle"),
    "dotdot inside": ("sub/../../victim/model.onnx", "is not a relative path inside the bundle"),
    "backslash": ("..\\\\victim\\\\model.onnx", "is not a relative path inside the bundle"),
    "empty part": ("sub//model.onnx", "is not a relative path inside the bundle"),
    "dot part": ("./model.onnx", "is not a relative path inside the bundle"),
    "nul": ("model.onnx\u0000.txt", "is not a relative path inside the bundle"),
    "etc shadow": ("/etc/shadow", "is not a relative path inside the bundle"),
}


@pytest.mark.parametrize("case", ESCAPES)
def test_a_manifest_path_outside_the_bundle_is_refused_before_anything_opens_it(copy, case):
    rel, words = ESCAPES[case]
    rel = rel.format(victim=copy.parent / "victim")
    edit(copy, lambda m: rename_file(m, "model.onnx", rel))
    for command in (["info", copy], ["run", copy, "--input", copy / "missing.npy"]):
        done, opened = audited(copy.parent, *command)
        assert_user_error(done, "invalid manifest", words)
        assert not [p for p in opened if "victim" in p]


def test_a_graph_not_listed_in_files_is_refused(copy):
    edit(copy, lambda m: m["graphs"]["main"].update(file="other.onnx"))
    assert_user_error(edgert("info", copy), "graphs.main.file 'other.onnx' has no sha256 in 'files'")


def test_a_digest_that_is_not_sha256_is_refused(copy):
    edit(copy, lambda m: m["files"].update({"model.onnx": "../../etc"}))
    assert_user_error(edgert("info", copy), "files.model.onnx: not a sha256 hex digest")


def test_a_symlinked_graph_is_refused_even_with_the_right_hash(copy):
    (copy / "model.onnx").unlink()
    (copy / "model.onnx").symlink_to(copy.parent / "victim" / "model.onnx")  # same bytes, same sha256
    done, opened = audited(copy.parent, "info", copy)
    assert_user_error(done, "a symbolic link inside the bundle", "model.onnx")
    assert not [p for p in opened if "victim" in p]


def test_a_symlinked_folder_or_manifest_is_refused(copy, tmp_path):
    (copy / "data").symlink_to(tmp_path / "victim", target_is_directory=True)
    assert_user_error(edgert("info", copy), "data: a symbolic link inside the bundle")
    (copy / "data").unlink()
    shutil.move(copy / "manifest.json", tmp_path / "manifest.json")
    (copy / "manifest.json").symlink_to(tmp_path / "manifest.json")
    assert_user_error(edgert("info", copy), "manifest.json: a symbolic link inside the bundle")


def test_a_listed_path_that_is_not_a_regular_file_is_refused(copy):
    os.mkfifo(copy / "pipe")  # a FIFO would block the hash forever
    edit(copy, lambda m: m["files"].update({"pipe": "0" * 64}))
    assert_user_error(edgert("info", copy), "pipe: not a regular file")


def test_an_oversized_manifest_is_refused_unread(copy):
    edit(copy, lambda m: m.update(labels=["x" * 1000] * 20000))
    assert_user_error(edgert("info", copy), "a manifest is at most 16777216 bytes")


def test_the_graph_is_checked_and_used_from_the_same_bytes(copy, monkeypatch):
    """A file swapped after its hash was checked is never the one that runs: ONNX Runtime gets
    the bytes the bundle read and checked."""
    import onnxruntime

    from edgert.runtime import load
    from edgert.runtime.bundle import Bundle

    given = []
    real = onnxruntime.InferenceSession

    def spy(model, *args, **kwargs):
        given.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    load(copy)
    assert given == [(copy / "model.onnx").read_bytes()]
    real_read = Bundle.read

    def swapped(self, rel):  # the file changes on disk between the load's check and the read
        shutil.copy(copy.parent / "victim" / "model.onnx", copy / rel)
        (copy / rel).write_bytes((copy / rel).read_bytes() + b"\0")
        return real_read(self, rel)

    monkeypatch.setattr(Bundle, "read", swapped)
    with pytest.raises(Exception, match="sha256 does not match the manifest"):
        load(copy)


# --- exports aimed at the user's files ---------------------------------------------------------

def export(out: Path, *extra):
    return edgert("export", "tsn", "--out", out, *TINY_TSN, *extra)


def test_force_never_replaces_a_folder_that_is_not_an_edgert_bundle(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    (site / "index.html").write_text("<html>mine</html>")
    assert_user_error(export(site, "--force"), "is not an edgert bundle", "refusing to replace it")
    assert (site / "index.html").read_text() == "<html>mine</html>"
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    assert_user_error(export(file, "--force"), "exists and is not a directory")
    assert file.read_text() == "mine"


def test_force_never_deletes_files_the_manifest_does_not_list(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "labels.txt").write_text("mine")
    before = sorted(p.name for p in bundle.iterdir())
    assert_user_error(export(bundle, "--force"), "holds files its manifest does not list (labels.txt)")
    assert sorted(p.name for p in bundle.iterdir()) == before and (bundle / "labels.txt").read_text() == "mine"
    (bundle / "labels.txt").unlink()
    assert export(bundle, "--force").returncode == 0  # a bundle holding only its own files is replaced


def test_a_second_export_to_the_same_out_fails_while_the_first_runs(tmp_path):
    out = tmp_path / "b"
    fd = os.open(tmp_path / ".b.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running export holds
    try:
        assert_user_error(export(out), f"{out}: another export to it is running; nothing was written")
    finally:
        os.close(fd)
    assert not out.exists()


def test_stale_staging_is_removed_and_only_edgert_s(tmp_path):
    stale = tmp_path / ".b.k3j2.partial"
    stale.mkdir()
    (stale / ".edgert-staging").write_text("12345\n")
    (stale / "model.onnx").write_bytes(b"x" * 1000)
    mine = tmp_path / ".b.notes.partial"  # the user's, no marker: not edgert's to delete
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    assert export(tmp_path / "b").returncode == 0
    assert not stale.exists() and (mine / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.notes.partial", "b"]


def test_an_old_bundle_a_killed_export_set_aside_comes_back(tiny_bundle, tmp_path):
    aside = tmp_path / ".b.x1.old"
    aside.mkdir()
    (aside / ".edgert-staging").write_text("1\n")
    shutil.copytree(tiny_bundle, aside / "bundle")
    assert_user_error(export(tmp_path / "b"), "already exists (pass --force to replace it)")
    assert (tmp_path / "b" / "manifest.json").is_file() and not aside.exists()


def test_the_bundle_follows_the_umask(tmp_path):
    done = subprocess.run(["sh", "-c", f"umask 027 && exec {sys.executable} -m edgert export tsn --out {tmp_path / 'b'} "
                           + " ".join(TINY_TSN)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "b" / "manifest.json").stat().st_mode & 0o777 == 0o640


def test_sigterm_mid_export_leaves_nothing_behind(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "edgert", "export", "tsn", "--out", str(tmp_path / "b"), *TINY_TSN],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".b.*.partial")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, "the export ended before it could be interrupted"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0 and "Traceback" not in err and "edgert: interrupted" in err
    assert list(tmp_path.iterdir()) == []


# --- pickles planted where edgert reads ---------------------------------------------------------

PAYLOAD = """
import os, pickle
class Boom:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
"""


def plant(path: Path, marker: Path) -> None:
    namespace: dict = {}
    exec(PAYLOAD.format(marker=marker), namespace)
    import pickle

    path.write_bytes(pickle.dumps(namespace["Boom"]()))


@pytest.mark.parametrize("suffix", [".partial.pt", ".partial.safetensors"])
def test_a_planted_resume_file_runs_nothing(llama_checkpoint, tmp_path, suffix):
    from llm_checkpoints import CORPUS

    shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    (tmp_path / "text.txt").write_text("\n".join(CORPUS[:3]))
    out = tmp_path / "heads.safetensors"
    marker = tmp_path / "payload-ran"
    plant(out.with_name(out.name + suffix), marker)
    done = edgert("train", "medusa", "--checkpoint", tmp_path / "ckpt", "--data", tmp_path / "text.txt", "--out", out,
                  "--steps", "2", "--samples", "4", "--prompt-len", "4", "--new-tokens", "8", "--heads", "2")
    assert done.returncode == 0, done.stderr
    assert not marker.exists() and out.is_file()


@pytest.mark.parametrize("name", ["weights.pth", "weights.pt", "weights.tar"])
def test_a_pickled_checkpoint_runs_nothing(tmp_path, name):
    marker = tmp_path / "payload-ran"
    plant(tmp_path / name, marker)
    done = edgert("export", "tsn", "--out", tmp_path / "b", *TINY_TSN, "--checkpoint", tmp_path / name)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert not marker.exists() and not (tmp_path / "b").exists()


# --- names and strings that would harm a terminal or a library ---------------------------------

def test_control_characters_from_a_manifest_are_escaped_on_the_terminal(copy):
    evil = "\x1b[2J\x1b]0;owned\x07label\r\nnext\u202e"
    edit(copy, lambda m: m.update(labels=[evil] + m["labels"][1:]))
    info = edgert("info", copy)
    assert info.returncode == 0 and "\x1b" not in info.stdout and "\r" not in info.stdout and "\u202e" not in info.stdout
    assert "\\x1b[2J\\x1b]0;owned\\x07label\\x0d\\x0anext\\u202e" in info.stdout
    edit(copy, lambda m: m.update(kind="\x1b[31mred"))
    line = assert_user_error(edgert("info", copy), "kind")
    assert "\x1b" not in line


def test_a_file_name_that_is_not_utf8_never_crashes_opencv(copy, tmp_path):
    import cv2
    import numpy as np

    raw = os.fsdecode(bytes(tmp_path) + b"/clip\xff.avi")  # surrogate-escaped, as Python hands it over
    writer = cv2.VideoWriter(str(tmp_path / "tmp.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(12):
        writer.write(np.full((48, 64, 3), i * 20, np.uint8))
    writer.release()
    os.replace(tmp_path / "tmp.avi", raw)
    folder = os.fsdecode(bytes(tmp_path) + b"/frames\xfe")
    os.mkdir(folder)
    for i in range(4):
        cv2.imencode(".png", np.full((48, 64, 3), i * 50, np.uint8))[1].tofile(os.path.join(folder, f"{i}.png"))
    junk = os.fsdecode(bytes(tmp_path) + b"/junk\xfd.mp4")
    Path(junk).write_bytes(b"not a video")
    for source in (raw, folder):
        done = subprocess.run([sys.executable, "-m", "edgert", "run", str(copy), "--input", source], capture_output=True,
                              cwd=ROOT, timeout=300)
        assert done.returncode == 0 and b"class_" in done.stdout, done.stderr
    done = edgert("run", copy, "--input", junk)
    assert_user_error(done, "cannot decode video")


# --- fuzzing the manifest -----------------------------------------------------------------------

def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, prefix + (i,))


def test_no_mutation_of_a_manifest_gives_more_than_one_line(copy, capsys):
    """Random values at random places of a valid manifest (seeded, bounded): `edgert info` and
    `edgert.runtime.load` either work or raise one EdgertError; never a traceback or an internal error."""
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    from edgert.cli import main
    from edgert.runtime import load
    from edgert.runtime.errors import EdgertError

    original = json.loads((copy / "manifest.json").read_text())
    paths = [p for p in _paths(original) if p and p[0] != "files"] + [("files",)]
    scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
               | st.text(max_size=12) | st.sampled_from(["../x", "/etc/passwd", "model.onnx", "batch", "float32"]))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                                 max_size=3), max_leaves=6)

    @hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.data())
    def mutate(data):
        manifest = json.loads(json.dumps(original))
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(paths))
            parent = manifest
            try:
                for key in path[:-1]:
                    parent = parent[key]
                op = data.draw(st.sampled_from(["replace", "delete"]))
                if op == "delete" and isinstance(parent, dict):
                    parent.pop(path[-1], None)
                else:
                    parent[path[-1]] = data.draw(values)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier mutation moved the path away
        (copy / "manifest.json").write_text(json.dumps(manifest))
        code = main(["info", str(copy)])
        err = capsys.readouterr().err
        assert code in (0, 1) and "internal error" not in err and "Traceback" not in err, err
        if code == 1:
            assert len([line for line in err.splitlines() if line.startswith("edgert: error:")]) == 1, err
        try:
            load(copy)
        except EdgertError as error:
            assert "\n" not in str(error)

    mutate()


# --- numbers and files at the one boundary ------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["run", "{b}", "--input", "x.npy", "--threads", "0"], "argument --threads: 0 is outside [1, 1024]"),
    (["run", "{b}", "--input", "x.npy", "--threads", "-4"], "argument --threads: -4 is outside [1, 1024]"),
    (["run", "{b}", "--input", "x.npy", "--top-k", "0"], "argument --top-k: 0 is outside"),
    (["run", "{b}", "--input", "x.npy", "--window", "0", "--stream"], "argument --window: 0 is outside"),
    (["bench", "{b}", "--batch", "1000000"], "argument --batch: 1000000 is outside [1, 1024]"),
    (["bench", "{b}", "--iters", "two"], "argument --iters: 'two' is not an integer"),
    (["export", "tsn", "--out", "{t}/o", "--tolerance", "nan"], "argument --tolerance: nan is outside (0, 1000.0]"),
    (["export", "tsn", "--out", "{t}/o", "--tolerance", "-1"], "argument --tolerance: -1.0 is outside (0, 1000.0]"),
    (["export", "tsn", "--out", "{t}/o", "--seed", "-1"], "argument --seed: -1 is outside [0, "),
    (["export", "tsn", "--out", "{t}/o", "--engine-max-batch", "0"], "argument --engine-max-batch: 0 is outside"),
    (["generate", "{b}", "--prompt", "x", "--temperature", "inf"], "argument --temperature: inf is outside [0, 100]"),
    (["generate", "{b}", "--prompt", "x", "--top-k", "-1"], "argument --top-k: -1 is outside"),
    (["train", "medusa", "--checkpoint", "c", "--data", "d", "--out", "o", "--lr", "0"], "argument --lr: 0.0 is outside"),
    (["train", "medusa", "--checkpoint", "c", "--data", "d", "--out", "o", "--heads", "1000"], "argument --heads: 1000"),
    (["run", "{b}"], "the following arguments are required: --input"),
    (["frobnicate"], "argument COMMAND: invalid choice: 'frobnicate'"),
])
def test_bad_numbers_and_arguments_are_one_line(copy, tmp_path, args, words):
    done = edgert(*[a.format(b=copy, t=tmp_path) for a in args])
    assert done.returncode == 2
    assert_user_error(done, words)
    assert "usage:" not in done.stderr


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00" + b"\x00" * 4), "not a readable .npy array"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (2,), }".ljust(128, b" ")
                             + b"\n"), "holds Python objects (a pickle), which edgert never loads"),
    (lambda p: p.write_bytes(__import__("numpy").lib.format.MAGIC_PREFIX), "not a readable .npy array"),
    (lambda p: p.write_bytes(b"not numpy at all"), "not a readable .npy array"),
])
def test_a_broken_or_pickled_npy_is_one_line(copy, tmp_path, make, words):
    path = tmp_path / "clip.npy"
    make(path)
    assert_user_error(edgert("run", copy, "--input", path), words)
    assert_user_error(edgert("eval", "--scores", path, "--labels", path), words)


def test_an_npy_claiming_a_huge_array_is_refused_before_allocating(copy, tmp_path):
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (100000, 4096, 4096, 3)})
    (tmp_path / "bomb.npy").write_bytes(buffer.getvalue() + b"\0" * 64)  # the header holds the magic
    assert_user_error(edgert("run", copy, "--input", tmp_path / "bomb.npy"), "bytes; at most 8589934592 (clip)")
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": (8, 64, 64, 3)})
    (tmp_path / "short.npy").write_bytes(buffer.getvalue() + b"\0" * 64)
    assert_user_error(edgert("run", copy, "--input", tmp_path / "short.npy"), "but the file is shorter")


def test_frames_too_large_are_refused(copy, tmp_path):
    import cv2
    import numpy as np

    frames = tmp_path / "frames"
    frames.mkdir()
    cv2.imwrite(str(frames / "0.png"), np.zeros((8, 9000, 3), np.uint8))
    assert_user_error(edgert("run", copy, "--input", frames), "frames of 9000x8; at most 8192 pixels on a side")
    np.save(tmp_path / "wide.npy", np.zeros((1, 4, 8200, 3), np.uint8))
    assert_user_error(edgert("run", copy, "--input", tmp_path / "wide.npy"), "frames of 8200x4")


@pytest.mark.parametrize("template, words", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "ran longer than 2 s"),
    # 2,000 lines, not 100,000: the character bound, not the clock, must be what stops it on a loaded machine
    ("{% for i in range(2000) %}{{ 'y' * 1000 }}{% endfor %}", "renders more than 1048576 characters"),
    ("{{ 'y' * 1000000000 }}", "builds a value over 1048576 characters"),
    ("{{ 9 ** (9 ** 9) }}", "raises to the power 387420489"),
    ("{% set ns = namespace(x='a') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
     "used more than 256 MB"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "fails to render"),
    ("{{ cycler.__init__.__globals__.os.system('touch /tmp/edgert-pwned') }}", "fails to render"),
    # bounds inside one expression, where no line check can stop it
    ("{{ lipsum(1000000) }}", "'lipsum' is undefined"),
    ("{{ '%0999999999d' % 1 }}", "formats a field wider than 1048576 characters"),
    ("{{ '%.999999999f' % 1.5 }}", "formats a field wider than 1048576 characters"),
    ("{{ 'ab'" + ".replace('a', 'aaaa')" * 12 + " }}", "builds a value over 1048576 characters"),
    ("{{ (range(3000) | list) * 3000 }}", "builds a value over 1048576 characters"),
    ("{{ (((9 ** 64) ** 64) ** 64) ** 64 }}", "computes a power over 1048576 bits"),
    # the template's own failures, named
    ("{{ 1 / 0 }}", "fails to render: ZeroDivisionError: division by zero"),
    ("{% include 'other.jinja' %}", "fails to render: TypeError: no loader for this environment specified"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "fails to render: RecursionError"),
])
def test_a_hostile_chat_template_is_stopped(template, words):
    from edgert.runtime.errors import BundleError
    from edgert.runtime.llm.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.__new__(TextTokenizer)
    tokenizer.info = {"chat_template": template, "bos_token": "<s>", "eos_token": "</s>"}
    with pytest.raises(BundleError, match=words):
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert not Path("/tmp/edgert-pwned").exists()


def test_pickled_medusa_heads_run_nothing(llama_checkpoint, tmp_path):
    shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    marker = tmp_path / "payload-ran"
    plant(tmp_path / "heads.pt", marker)
    done = edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b", "--opt",
                  f"medusa={tmp_path / 'heads.pt'}")
    assert_user_error(done, "heads.pt")
    assert not marker.exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("shard, words", [
    ("../outside/model.safetensors", "is not a .safetensors file name inside"),
    ("/etc/passwd", "is not a .safetensors file name inside"),
    ("model.bin", "is not a .safetensors file name inside"),
])
def test_a_checkpoint_index_never_reads_outside_its_folder(llama_checkpoint, tmp_path, shard, words):
    shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    (tmp_path / "outside").mkdir()
    shutil.copy(tmp_path / "ckpt" / "model.safetensors", tmp_path / "outside" / "model.safetensors")
    (tmp_path / "ckpt" / "model.safetensors").unlink()
    (tmp_path / "ckpt" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": shard}}))
    done, opened = audited(tmp_path, "export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b")
    assert_user_error(done, words)
    assert not [p for p in opened if "/outside/" in p]


def test_a_damaged_shard_is_one_line(llama_checkpoint, tmp_path):
    shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\xff" * 64)
    assert_user_error(edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b"),
                      "model.safetensors: not a readable safetensors file")


@pytest.mark.parametrize("change, words", [
    ({"num_attention_heads": 0}, "num_attention_heads: 0 is outside [1, 1024]"),
    ({"num_hidden_layers": 10**9}, "num_hidden_layers: 1000000000 is outside [1, 1024]"),
    ({"num_key_value_heads": 3}, "num_attention_heads 8 is not a multiple of num_key_value_heads 3"),
    ({"hidden_size": "64"}, "hidden_size: expected an integer, given a string"),
    ({"rope_theta": -1}, "rope_theta: -1 is outside"),
])
def test_a_hostile_config_json_is_one_line(llama_checkpoint, tmp_path, change, words):
    shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    config.update(change)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
    assert_user_error(edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b"),
                      "config.json", words)


@pytest.mark.parametrize("name, content, words", [
    ("config.json", b'{"model_type": "llama", "x": "\xff"}', "config.json: not UTF-8 text (byte 0xff at offset 30)"),
    ("tokenizer_config.json", b'{"chat_template": "\xfe"}', "tokenizer_config.json: not UTF-8 text (byte 0xfe"),
    ("tokenizer_config.json", b"[1, 2]", "tokenizer_config.json: expected a JSON object, got list"),
    ("generation_config.json", b"[" * 100_000, "generation_config.json: JSON nested too deeply"),
    ("chat_template.jinja", b"{{ '\xff' }}", "chat_template.jinja: not UTF-8 text"),
])
def test_a_checkpoint_file_that_is_not_utf8_json_is_one_line(llama_checkpoint, tmp_path, name, content, words):
    shutil.copytree(llama_checkpoint, tmp_path / "ckpt")
    (tmp_path / "ckpt" / name).write_bytes(content)
    assert_user_error(edgert("export", "llama", "--checkpoint", tmp_path / "ckpt", "--out", tmp_path / "b"), words)
    assert not (tmp_path / "b").exists()


def test_a_named_text_file_that_is_a_fifo_is_refused_without_waiting(tmp_path):
    """read_text (configs, templates, tree files) opens without blocking: a FIFO with no writer is
    refused at once (an open that waited would hang the command)."""
    from edgert.runtime.errors import InputError
    from edgert.runtime.inputs import read_json

    os.mkfifo(tmp_path / "config.json")
    with pytest.raises(InputError, match="config.json: not a regular file"):
        read_json(tmp_path / "config.json")


def test_a_full_disk_is_one_line(monkeypatch, capsys, tmp_path):
    """No space left (ENOSPC, a quota) is the machine's state, not a bug: one line naming what was
    being written, exit 1. (A real full disk needs a mount the test cannot make everywhere.)"""
    import errno

    import edgert.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "b" / "model.onnx"))

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub = next(a for a in parser._actions if a.dest == "command")
    sub.choices["export"].set_defaults(func=full)
    assert cli.main(["export", "tsn", "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err == (f"edgert: error: no space left on the device writing {tmp_path / 'b' / 'model.onnx'} "
                                       "(No space left on device)\n")
    sub.choices["export"].set_defaults(func=lambda args: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")))
    assert cli.main(["export", "tsn", "--out", str(tmp_path / "b")]) == 1
    assert capsys.readouterr().err == f"edgert: error: no space left on the device writing {tmp_path / 'b'} (Disk quota exceeded)\n"


def test_an_out_under_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    assert_user_error(export(tmp_path / "notes.txt" / "b"), "notes.txt: cannot create it")
    assert_user_error(export(tmp_path / "notes.txt" / "sub" / "b"), "cannot create it")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs, words", [
    ({"threads": 0}, "threads 0: expected an integer from 1 to 1024"),
    ({"threads": "2"}, "threads '2': expected an integer"),
    ({"threads": True}, "threads True: expected an integer"),
    ({"device": 3}, "device 3: expected a name"),
])
def test_the_python_api_checks_its_arguments(copy, kwargs, words):
    from edgert.runtime import load
    from edgert.runtime.errors import EdgertError

    with pytest.raises(EdgertError, match=words):
        load(copy, **kwargs)


def test_external_weights_are_checked_and_what_runs(tmp_path, monkeypatch):
    """A model's weights outside its ONNX file (<file>.data) are listed, hashed once as they are
    copied into a private folder, and ONNX Runtime maps those copies: a weight file swapped in the
    bundle after its check is not what runs, one swapped before is refused; with no room for the
    copies they go from memory, checked the same way."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import helper, numpy_helper

    from edgert.runtime import load
    from edgert.runtime.bundle import Bundle
    from edgert.runtime.staging import staged_bundle, write_manifest

    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    manifest = {"schema_version": 1, "kind": "detector", "plugin": {"name": "tsn", "package": "edgert", "version": "1"},
                "model": {"options": {}, "seed": 0},
                "graphs": {"main": {"file": "model.onnx", "inputs": [{"name": "x", "dtype": "float32", "dims": [4]}],
                                    "outputs": [{"name": "y", "dtype": "float32", "dims": [4]}]}},
                "preprocessing": {}, "labels": [], "precision": "fp32", "provenance": {}, "parity": {"graphs": {}}}
    with staged_bundle(tmp_path / "b") as stage:
        onnx.save(model, stage / "model.onnx", save_as_external_data=True, location="model.onnx.data", size_threshold=0)
        write_manifest(stage, manifest)
    written = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert written["graphs"]["main"]["external_data"] == ["model.onnx.data"] and "model.onnx.data" in written["files"]
    given = []
    real = onnxruntime.SessionOptions.add_external_initializers_from_files_in_memory
    monkeypatch.setattr(onnxruntime.SessionOptions, "add_external_initializers_from_files_in_memory",
                        lambda self, names, buffers, lengths: (given.append((names, [bytes(b) for b in buffers])),
                                                               real(self, names, buffers, lengths)))
    original = (tmp_path / "b" / "model.onnx.data").read_bytes()
    real_read = Bundle.read
    import edgert.runtime.bundle as bundle_module

    made, real_mkdtemp = [], bundle_module.tempfile.mkdtemp
    monkeypatch.setattr(bundle_module.tempfile, "mkdtemp", lambda prefix: made.append(real_mkdtemp(prefix=prefix)) or made[-1])

    def swap_after_the_copy(self, rel):  # the graph is read after the weights were copied and checked
        (tmp_path / "b" / "model.onnx.data").write_bytes(np.full(4, 100, np.float32).tobytes())
        return real_read(self, rel)

    monkeypatch.setattr(Bundle, "read", swap_after_the_copy)
    out = load(tmp_path / "b").run({"x": np.ones(4, np.float32)})["y"]
    assert out.tolist() == [1, 2, 3, 4] and given == []  # the checked copy ran, not the swapped file
    monkeypatch.setattr(Bundle, "read", real_read)
    with pytest.raises(Exception, match="model.onnx.data: sha256 does not match the manifest"):
        load(tmp_path / "b")  # swapped before: refused
    (tmp_path / "b" / "model.onnx.data").write_bytes(original)
    assert len(made) == 2 and not any(Path(folder).exists() for folder in made)  # the copies are gone
    monkeypatch.setattr(bundle_module.tempfile, "mkdtemp", lambda prefix: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    assert load(tmp_path / "b").run({"x": np.ones(4, np.float32)})["y"].tolist() == [1, 2, 3, 4]
    assert given == [(["model.onnx.data"], [original])]
    edit(tmp_path / "b", lambda m: m["graphs"]["main"].update(external_data=["../w.data"]))
    assert_user_error(edgert("info", tmp_path / "b"), "graphs.main.external_data '../w.data' is not a relative path")


def test_train_out_is_checked_before_training(llama_checkpoint, tmp_path):
    from llm_checkpoints import CORPUS

    (tmp_path / "text.txt").write_text("\n".join(CORPUS[:3]))
    for out, words in [(tmp_path / "missing" / "heads.safetensors", f"the folder {tmp_path / 'missing'} does not exist"),
                       (tmp_path, "a folder; --out names the .safetensors file to write")]:
        done = edgert("train", "medusa", "--checkpoint", llama_checkpoint, "--data", tmp_path / "text.txt", "--out", out,
                      "--steps", "2")
        assert_user_error(done, words)
        assert "self-distillation" not in done.stdout + done.stderr  # refused before any training work


def test_a_hostile_tokenizer_is_one_line(llama_checkpoint, tmp_path):
    """A normalizer chain that multiplies text (six Replace a -> 100 x a: 10**12 times) aborted
    the process; a pre-tokenizer regex that backtracks ends in a Rust panic, a BaseException.
    The first is refused when the tokenizer loads, the second when it meets such a text."""
    def planted(name: str, change) -> Path:
        shutil.copytree(llama_checkpoint, tmp_path / name)
        data = json.loads((tmp_path / name / "tokenizer.json").read_text())
        change(data)
        (tmp_path / name / "tokenizer.json").write_text(json.dumps(data))
        return tmp_path / name

    grow = planted("grow", lambda t: t.update(normalizer={"type": "Sequence", "normalizers": [
        {"type": "Replace", "pattern": {"String": "a"}, "content": "a" * 100}] * 6}))
    assert_user_error(edgert("export", "llama", "--checkpoint", grow, "--out", tmp_path / "b"),
                      "its normalizers can make a text 1e+12 times longer; edgert refuses more than 8")
    assert not (tmp_path / "b").exists()
    regex = planted("regex", lambda t: t.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(a+)+$"},
                                                               "behavior": "Isolated", "invert": False}))
    assert edgert("export", "llama", "--checkpoint", regex, "--out", tmp_path / "b").returncode == 0
    done = edgert("generate", tmp_path / "b", "--prompt", "a" * 40 + "b", "--max-new-tokens", "2")
    assert_user_error(done, "the bundle's tokenizer failed on this text", "retry-limit-in-match")
