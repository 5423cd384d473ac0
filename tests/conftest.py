from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest

# Triton kernels (trt_plugins) run under Triton's CPU interpreter in the tests: no GPU here or in
# CI. Set before anything imports triton.
os.environ.setdefault("TRITON_INTERPRET", "1")
# A developer's own trust store must not decide which test bundles load (runtime/signing.py).
os.environ.pop("EDGERT_TRUSTED_KEYS", None)
os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="edgert-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], ignore_errors=True)  # one per test process

ROOT = Path(__file__).resolve().parents[1]


def _test_plugins() -> Path:
    """The example third-party plugins (tests/example_plugin, tests/example_head_plugin),
    installed for the tests only: into build/test-plugins, which is put on this process's path and
    on every subprocess's (PYTHONPATH), never into the environment a user exports from (where
    their entry points would list `frame-mean` and put the test head's option in every bundle).
    Installed again when a plugin's files change; one process at a time installs (xdist workers)."""
    import fcntl
    import hashlib

    target = ROOT / "build" / "test-plugins"
    sources = [ROOT / "tests" / "example_plugin", ROOT / "tests" / "example_head_plugin"]
    digest = hashlib.sha256()
    for source in sources:
        for path in sorted(p for p in source.rglob("*") if p.is_file() and ".egg-info" not in str(p)
                           and "__pycache__" not in str(p)):
            digest.update(str(path.relative_to(source)).encode() + path.read_bytes())
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "test-plugins.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = target / ".sources-sha256"
        if not stamp.is_file() or stamp.read_text() != digest.hexdigest():
            shutil.rmtree(target, ignore_errors=True)
            import importlib.util

            # setuptools here: build with it, offline; else pip fetches it for an isolated build
            isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
            done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                                   "--target", str(target), *map(str, sources)], capture_output=True, text=True)
            assert done.returncode == 0, f"installing the example plugins for the tests failed:\n{done.stderr[-3000:]}"
            stamp.write_text(digest.hexdigest())
    return target


TEST_PLUGINS = str(_test_plugins())
if TEST_PLUGINS not in sys.path:
    sys.path.insert(0, TEST_PLUGINS)
os.environ["PYTHONPATH"] = os.pathsep.join([TEST_PLUGINS, *filter(None, [os.environ.get("PYTHONPATH")])])
TINY_TSN = ["--opt", "backbone=resnet18", "--opt", "segments=3", "--opt", "size=32", "--opt", "num_classes=5"]


def load_trt_module(relative: str, name: str):
    """A Python file of trt_plugins/ as a module of its own name (each op folder has a kernel.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "trt_plugins" / relative)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def load_kernel(op: str):
    """trt_plugins/<op>/kernel.py."""
    return load_trt_module(f"{op}/kernel.py", f"trt_plugins_{op}_kernel")


CUBIN_CACHE = ROOT / "build" / "cubin-cache"  # one Triton AOT run for every CMake tree the tests build


def cmake_build(tree: Path, *defines: str) -> str:
    """Configure and build the native parts into ``tree``; returns the log (asserts success).
    One build at a time across test workers (pytest-xdist): the trees share the cubin cache."""
    import fcntl

    log = ""
    CUBIN_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CUBIN_CACHE.parent / "cubin-cache.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for cmd in (["cmake", "-S", str(ROOT), "-B", str(tree), f"-DEDGERT_CUBIN_CACHE={CUBIN_CACHE}", *defines],
                    ["cmake", "--build", str(tree), "-j", "2"]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            log += done.stdout + done.stderr
            assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{log[-3000:]}"
    return log


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgert(*args: str, env: dict | None = None, cwd: Path | None = None, input: str | None = None,
           ) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh process (``input``: what is typed on its stdin)."""
    return subprocess.run([sys.executable, "-m", "edgert", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=600, input=input)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user error: non-zero exit, exactly one 'edgert: error:' line, no traceback, and not the
    catch-all that a bug gets ('internal error: XError')."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgert: error:")]
    assert len(errors) == 1, result.stderr
    assert not errors[0].startswith("edgert: error: internal error:"), errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def trt_llama(tmp_path_factory) -> Path:
    """A folder with ``ckpt`` (a Llama checkpoint, head_dim 64, 4 query heads per kv head) and
    ``bundle``, its TensorRT-flavour export in fp16; shared by the TensorRT tests (read only)."""
    from llm_checkpoints import make_llama

    root = tmp_path_factory.mktemp("trt")
    make_llama(root / "ckpt", hidden=256, heads=4, kv_heads=1)
    result = edgert("export", "llama", "--checkpoint", root / "ckpt", "--out", root / "bundle", "--flavour", "trt",
                    "--precision", "fp16")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A TSN-ResNet18 bundle (3 segments, 32x32, 5 classes) exported through the CLI."""
    out = tmp_path_factory.mktemp("bundles") / "tsn-tiny"
    result = edgert("export", "tsn", "--out", out, *TINY_TSN)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy, for tests that damage it."""
    import shutil

    return Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))


@pytest.fixture(scope="session")
def clip_npy(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (10, 48, 64, 3), dtype=np.uint8))
    return path
