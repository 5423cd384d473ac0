"""The TensorRT plugins compiled and host-tested against TensorRT's real headers, both majors
(``$EDGERT_TENSORRT_HEADERS/11.1`` and ``/10.16``, default ``../shared/tensorrt`` beside the
clone; each holds ``include/NvInfer*.h``; no libnvinfer, no GPU needed): no warnings from edgert's sources,
exactly two exported symbols, the libnvinfer recorded where one is linked, the CMake version floor,
the load-time major guard (a stand-in libnvinfer of the other major: refused with one line, the
logger finder never called), and tests/native/plugin_host_test.cpp replaying the ONNX parser's
plugin fallback on every custom node a TensorRT-flavour export writes."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, cmake_build, edgert
from trt_spec import REJECTS, SYMBOLS, write_spec

# TensorRT's public headers, one folder per major (11.1/include, 10.16/include): where
# EDGERT_TENSORRT_HEADERS says, else beside the clone (where this project's CI keeps them).
SHARED = Path(os.environ.get("EDGERT_TENSORRT_HEADERS") or ROOT.parent / "shared" / "tensorrt")
VERSIONS = {"11.1": "11.1.0", "10.16": "10.16.1"}
if not SHARED.is_dir():
    pytest.skip(f"needs TensorRT's headers (11.1 and 10.16): set EDGERT_TENSORRT_HEADERS to a folder holding "
                f"11.1/include and 10.16/include ({SHARED} is not there)", allow_module_level=True)
torch = pytest.importorskip("torch")
GPU = torch.cuda.is_available()
STANDINS = ROOT / "build" / "trt-standin"


def tree(version):
    return ROOT / "build" / f"trt-{version}"


def plugin_library(version):
    return tree(version) / "trt_plugins" / "libedgert_trt_plugins.so"


def standin(major: int):
    """libnvinfer.so.<major> with the two version entry points only (tests/native/nvinfer_standin.cpp)."""
    folder = STANDINS / str(major)
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"libnvinfer.so.{major}"
    if not lib.exists():
        subprocess.run(["c++", "-shared", "-fPIC", "-O1", f"-DSTANDIN_MAJOR={major}", f"-Wl,-soname,{lib.name}", "-o",
                        str(lib), str(ROOT / "tests" / "native" / "nvinfer_standin.cpp")], check=True)
        (folder / "libnvinfer.so").unlink(missing_ok=True)
        (folder / "libnvinfer.so").symlink_to(lib.name)
    return lib


@pytest.fixture(scope="module")
def builds():
    """Both header sets; 11.1 links the major-11 stand-in (as a real install would link libnvinfer),
    10.16 links none. The cubins come from one AOT run (EDGERT_CUBIN_CACHE)."""
    assert shutil.which("cmake") and shutil.which("nvcc"), "cmake and nvcc are needed to build the plugins"
    logs = {}
    for version in VERSIONS:
        link = [f"-DTENSORRT_LIBRARY={standin(11).parent / 'libnvinfer.so'}"] if version == "11.1" else []
        logs[version] = cmake_build(tree(version), f"-DTENSORRT_ROOT={SHARED / version}", *link)
    return logs


@pytest.fixture(scope="module")
def bundle(trt_llama):
    return trt_llama / "bundle"  # head_dim 64, 4 query heads per kv head


def host_test(version, *args):
    exe = tree(version) / "tests" / "native" / "plugin_host_test"
    return subprocess.run([str(exe), str(plugin_library(version)), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("version", VERSIONS)
def test_compiles_against_the_headers_without_warnings(builds, version):
    log = builds[version]
    assert f"edgert: building the TensorRT plugins with TensorRT {VERSIONS[version]} headers" in log
    assert [line for line in log.splitlines() if "warning" in line.lower()] == []  # TensorRT's own: SYSTEM headers
    assert plugin_library(version).is_file()


def test_the_cubins_are_compiled_once_for_both_builds(builds):
    assert "Triton AOT" not in builds["10.16"]  # the second tree found the first one's cubins


@pytest.mark.parametrize("version", VERSIONS)
def test_exports_exactly_the_two_entry_points(builds, version):
    symbols = subprocess.run(["nm", "-D", "--defined-only", str(plugin_library(version))], capture_output=True,
                             text=True, check=True).stdout.split()
    assert sorted(symbols[2::3]) == ["getCreators", "setLoggerFinder"]
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(plugin_library(version))], capture_output=True,
                               text=True, check=True).stdout
    assert "nvinfer1" not in undefined and "getInferLib" not in undefined  # no libnvinfer symbol is needed


def test_records_the_libnvinfer_it_was_linked_with(builds):
    def needed(version):
        dynamic = subprocess.run(["readelf", "-d", str(plugin_library(version))], capture_output=True, text=True).stdout
        return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic)

    assert "libnvinfer.so.11" in needed("11.1")
    assert not [n for n in needed("10.16") if n.startswith("libnvinfer")]


@pytest.mark.parametrize("version", VERSIONS)
def test_host_test_replays_the_parser_on_every_exported_node(builds, bundle, version, tmp_path):
    spec = tmp_path / "spec.txt"
    nodes = write_spec(bundle, spec)
    assert sorted(nodes) == sorted(["layers.0.attention", "layers.1.attention", "verify.greedy", "verify.typical"]
                                   + [f"compact.{i}.{p}" for i in range(2) for p in ("key", "value")])
    major = int(version.split(".")[0])
    preload = [] if version == "11.1" else ["--preload", standin(major)]  # 11.1 loads its linked stand-in itself
    done = host_test(version, spec, *preload, *([] if GPU else ["--enqueue"]))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len([line for line in lines if line.startswith("ok node ")]) == len(nodes)
    assert len([line for line in lines if line.startswith("ok reject ")]) == len(REJECTS)
    assert done.stderr == ""
    # The workspace each plugin asks for at build time is the kernel library's need at the profile's maximum.
    kernels = ctypes.CDLL(str(tree(version) / "trt_plugins" / "libedgert_kernels.so"))
    size = ctypes.c_size_t()
    batch, tokens, capacity = SYMBOLS["batch"][2], min(SYMBOLS["sequence_length"][2], 64), SYMBOLS["capacity"][2]
    assert kernels.edgert_attention_workspace_size(batch, 4, tokens, capacity, 64, ctypes.byref(size)) == 0
    workspace = dict(re.findall(r"^ok node (\S+) \S+ workspace (\d+)$", done.stdout, re.M))
    assert int(workspace["layers.0.attention"]) == size.value > 0
    assert kernels.edgert_tree_verify_workspace_size(batch, SYMBOLS["nodes"][2], ctypes.byref(size)) == 0
    assert int(workspace["verify.typical"]) == size.value > 0
    assert workspace["compact.0.key"] == "0"


@pytest.fixture(scope="module")
def eagle_bundle(tmp_path_factory):
    """The TensorRT flavour of an 8-layer target (head_dim 64) with an EAGLE-3 head: its draft
    layer's attention is the same plugin, over the draft's own in-place cache."""
    from llm_checkpoints import make_llama

    from edgert.exporters.llm.llama import DecoderConfig
    from edgert.plugins.eagle.model import EagleDraft, save_eagle

    root = tmp_path_factory.mktemp("eagle-trt")
    make_llama(root / "ckpt", layers=8, hidden=256, heads=4, kv_heads=1)
    save_eagle(EagleDraft(DecoderConfig.from_dir(root / "ckpt")), root / "eagle.safetensors")
    result = edgert("export", "llama", "--checkpoint", root / "ckpt", "--out", root / "bundle", "--flavour", "trt",
                    "--precision", "fp16", "--opt", f"eagle={root / 'eagle.safetensors'}")
    assert result.returncode == 0, result.stderr
    return root / "bundle"


@pytest.mark.parametrize("version", VERSIONS)
def test_host_test_covers_the_eagle_draft_nodes(builds, eagle_bundle, version, tmp_path):
    import json

    manifest = json.loads((eagle_bundle / "manifest.json").read_text())
    assert manifest["decoder"]["taps"] == [2, 4, 5] and manifest["parity"]["graphs"]["eagle"]["passed"]
    assert "TensorRT" in manifest["parity"]["graphs"]["eagle"]["backend"]
    spec = tmp_path / "spec.txt"
    nodes = write_spec(eagle_bundle, spec)
    assert "eagle.0.attention" in nodes and sum(n.startswith("layers.") for n in nodes) == 8
    major = int(version.split(".")[0])
    preload = [] if version == "11.1" else ["--preload", standin(major)]
    done = host_test(version, spec, *preload, *([] if GPU else ["--enqueue"]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^ok node eagle\.0\.attention ", done.stdout, re.M), done.stdout
    assert len([line for line in done.stdout.splitlines() if line.startswith("ok node ")]) == len(nodes)


def test_the_host_test_fails_when_the_graph_and_the_plugin_disagree(builds, bundle, tmp_path):
    spec = tmp_path / "spec.txt"
    write_spec(bundle, spec)
    text = spec.read_text()
    wrong = {"output present.0.key FLOAT16 batch 1 capacity 64": "output present.0.key FLOAT16 batch 2 capacity 64",
             "alias 2 4\n": "alias 2 3\n", "attr head_dim INT 64": "attr head_dim INT 32",
             "node verify.greedy EdgertTreeVerify 1 edgert": "node verify.greedy EdgertTreeVerify 2 edgert"}
    for old, new in wrong.items():
        assert old in text
        (tmp_path / "wrong.txt").write_text(text.replace(old, new, 1))
        done = host_test("11.1", tmp_path / "wrong.txt")
        assert done.returncode == 1 and done.stdout.count("FAIL ") == 1, (old, done.stdout)
    # A declared field the node lacks is the parser's warning, a failure here (the exports carry all of them).
    (tmp_path / "wrong.txt").write_text(text.replace("attr delta FLOAT 0.3", "", 1))
    done = host_test("11.1", tmp_path / "wrong.txt")
    assert done.returncode == 1 and "attribute 'delta' not found in plugin node" in done.stdout


@pytest.mark.parametrize("version, other", [("11.1", 10), ("10.16", 11)])
def test_another_major_is_refused_with_one_line(builds, version, other):
    done = host_test(version, "--refused", "--preload", standin(other))
    assert done.returncode == 0, done.stdout + done.stderr  # no creators, the logger finder never called
    assert "ok refused: 0 creators, logger finder called 0 times" in done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"edgert: libedgert_trt_plugins.so was built for TensorRT {VERSIONS[version]} but this "
                           f"process runs TensorRT {other} (")
    assert f"rebuild it with -DTENSORRT_ROOT=<TensorRT {other}>" in line


def configure(tmp_path, *defines):
    """CMake's configure step alone: TensorRT is checked before anything slow."""
    return subprocess.run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "tree"), *defines], capture_output=True,
                          text=True, timeout=300)


def edgert_errors(done):
    return [line.strip() for line in done.stderr.splitlines() if line.strip().startswith("edgert:")]


@pytest.mark.parametrize("header", [
    "#define NV_TENSORRT_MAJOR 10\n#define NV_TENSORRT_MINOR 2\n#define NV_TENSORRT_PATCH 0\n",
    "#define TRT_MAJOR_ENTERPRISE 9\n#define TRT_MINOR_ENTERPRISE 3\n#define TRT_PATCH_ENTERPRISE 0\n"
    "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n",
])
def test_cmake_refuses_headers_older_than_10_3(tmp_path, header):
    (tmp_path / "old" / "include").mkdir(parents=True)
    (tmp_path / "old" / "include" / "NvInferVersion.h").write_text(header)
    done = configure(tmp_path, f"-DTENSORRT_ROOT={tmp_path / 'old'}")
    version = "10.2.0" if "10\n" in header else "9.3.0"
    assert done.returncode != 0
    assert edgert_errors(done) == [f"edgert: TENSORRT_ROOT={tmp_path / 'old'} holds TensorRT {version}; edgert's "
                                   "plugins need TensorRT >= 10.3"]


def test_cmake_refuses_a_root_without_headers_or_a_library_of_another_major(tmp_path):
    (tmp_path / "empty").mkdir()
    done = configure(tmp_path, f"-DTENSORRT_ROOT={tmp_path / 'empty'}")
    assert done.returncode != 0
    assert edgert_errors(done) == [f"edgert: TENSORRT_ROOT={tmp_path / 'empty'} has no include/NvInferVersion.h; "
                                   "edgert's plugins need TensorRT >= 10.3 headers"]
    done = configure(tmp_path, f"-DTENSORRT_ROOT={SHARED / '10.16'}",
                     f"-DTENSORRT_LIBRARY={standin(11).parent / 'libnvinfer.so'}")
    assert done.returncode != 0
    (line,) = edgert_errors(done)
    assert "is TensorRT 11 (libnvinfer.so.11), the headers at" in line and "are 10.16.1" in line
