"""Bundle manifests: validation, hashes, atomic writes."""

import json

import pytest

from edgert.runtime.bundle import MANIFEST, Bundle
from edgert.runtime.staging import staged_bundle, write_manifest
from edgert.runtime.errors import BundleError


def test_tiny_bundle_manifest(tiny_bundle):
    bundle = Bundle.load(tiny_bundle)
    m = bundle.manifest
    assert m["schema_version"] == 1 and m["kind"] == "detector"
    assert m["plugin"] == {"name": "tsn", "package": "edgert", "version": m["provenance"]["edgert"]}
    graph = bundle.graph()
    assert [(t.name, t.dtype, t.dims) for t in graph.inputs] == [("video", "float32", ("batch", 3, 3, 32, 32))]
    assert [(t.name, t.dims) for t in graph.outputs] == [("scores", ("batch", 5))]
    assert set(m["files"]) == {"model.onnx", "model.onnx.data"} and len(m["files"]["model.onnx"]) == 64
    assert m["graphs"]["main"]["external_data"] == ["model.onnx.data"]  # the weights, memory-mapped at load
    for key in ("torch", "onnx", "onnxruntime", "opset", "edgert"):
        assert key in m["provenance"]
    report = m["parity"]["graphs"]["main"]
    assert m["parity"]["passed"] and report["tolerance"] == 1e-4
    assert report["inputs"]["video"][0] == 2  # parity ran through the dynamic batch axis
    assert 0 <= report["outputs"]["scores"]["max_rel"] <= 1e-4
    assert m["preprocessing"]["segments"] == 3 and m["preprocessing"]["crop_size"] == 32
    assert len(m["labels"]) == 5


def test_onnx_file_declares_the_manifest_dims(tiny_bundle):
    import onnx

    model = onnx.load(str(tiny_bundle / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 3, 32, 32]
    assert [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == ["batch", 5]


def test_tampered_file(bundle_copy):
    with open(bundle_copy / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x01\x02\x03")
    with pytest.raises(BundleError, match=r"model.onnx: sha256 does not match"):
        Bundle.load(bundle_copy)


def test_a_model_hashes_each_byte_it_uses_once(bundle_copy, monkeypatch):
    """Opening a model checks every file it uses on the bytes it uses, once (it hashed each file
    twice, at load and at read); a file changed on disk is refused all the same, and ``Bundle.load``
    with the default still checks every file at once (``edgert info``, ``sign``)."""
    import hashlib

    import edgert.runtime.bundle as bundle_module
    from edgert.runtime import load

    hashed, real = [], hashlib.sha256

    class Counting:
        def __init__(self, data=b""):
            self.inner = real(data)
            hashed.append(len(data))

        def update(self, data):
            hashed.append(len(data))
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(bundle_module.hashlib, "sha256", Counting)
    model = load(bundle_copy)
    used = sum((bundle_copy / rel).stat().st_size for spec in model.bundle.graphs.values()
               for rel in (spec.file, *spec.external_data))
    assert sum(hashed) == used
    hashed.clear()
    Bundle.load(bundle_copy)
    assert sum(hashed) == sum((bundle_copy / rel).stat().st_size for rel in model.bundle.manifest["files"])
    with open(bundle_copy / "model.onnx", "r+b") as f:
        f.seek(1000)
        f.write(b"\x01\x02\x03")
    assert Bundle.load(bundle_copy, verify="used").kind  # nothing read yet
    with pytest.raises(BundleError, match=r"model.onnx: sha256 does not match"):
        load(bundle_copy)


def test_missing_file(bundle_copy):
    (bundle_copy / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model.onnx: listed in the manifest but missing"):
        Bundle.load(bundle_copy)


def test_unknown_schema_version(bundle_copy):
    path = bundle_copy / MANIFEST
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"manifest.json: unknown manifest schema_version 99.*newer edgert"):
        Bundle.load(bundle_copy)


@pytest.mark.parametrize("mutate,message", [
    (lambda m: m.pop("graphs"), "missing field 'graphs'"),
    (lambda m: m.update(kind="segmenter"), r"kind: 'segmenter' is not one of \['detector', 'decoder'\]"),
    (lambda m: m["graphs"]["main"]["inputs"][0].update(dtype="float99"), r"graphs.main.inputs\[0\].dtype: 'float99' is not one of"),
    (lambda m: m["graphs"]["main"]["inputs"][0].update(dims=[1, None]), r"graphs.main.inputs\[0\].dims\[1\]: given null"),
    (lambda m: m["preprocessing"].update(crop_size=100000), r"preprocessing.crop_size: 100000 is outside \[1, 8192\]"),
    (lambda m: m["graphs"]["main"].update(state=7), r"graphs.main.state: expected a list, given an integer"),
    (lambda m: m["model"].update(seed="0"), r"model.seed: expected an integer, given a string"),
    (lambda m: m["graphs"]["main"].update(file="other.onnx"), "has no sha256"),
])
def test_invalid_manifest(bundle_copy, mutate, message):
    path = bundle_copy / MANIFEST
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        Bundle.load(bundle_copy)


def test_not_json_and_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a bundle directory"):
        Bundle.load(tmp_path / "nope")
    with pytest.raises(BundleError, match="manifest.json: missing"):
        Bundle.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{ not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


def _minimal_manifest():
    return {"schema_version": 1, "kind": "detector", "plugin": {"name": "x", "package": "p", "version": "1"},
            "model": {"options": {}, "seed": 0}, "graphs": {"main": {"file": "a.onnx", "inputs": [{"name": "i", "dtype": "float32", "dims": [1]}],
                                             "outputs": [{"name": "o", "dtype": "float32", "dims": [1]}]}},
            "preprocessing": {}, "labels": [], "precision": "fp32", "provenance": {}, "parity": {"graphs": {}}}


def test_staged_write_is_atomic(tmp_path):
    dest = tmp_path / "b"
    with pytest.raises(RuntimeError):
        with staged_bundle(dest) as stage:
            (stage / "a.onnx").write_bytes(b"half")
            raise RuntimeError("export failed half way")
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left either

    with staged_bundle(dest) as stage:
        (stage / "a.onnx").write_bytes(b"v1")
        write_manifest(stage, _minimal_manifest())
    assert Bundle.load(dest).manifest["files"]["a.onnx"]

    with pytest.raises(BundleError, match="already exists"):
        with staged_bundle(dest):
            pass
    with pytest.raises(RuntimeError):  # a failed overwrite keeps the old bundle intact
        with staged_bundle(dest, overwrite=True) as stage:
            raise RuntimeError("boom")
    assert (dest / "a.onnx").read_bytes() == b"v1"
    with staged_bundle(dest, overwrite=True) as stage:
        (stage / "a.onnx").write_bytes(b"v2")
        write_manifest(stage, _minimal_manifest())
    assert (dest / "a.onnx").read_bytes() == b"v2" and Bundle.load(dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_a_non_bundle(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not an edgert bundle"):
        with staged_bundle(tmp_path, overwrite=True):
            pass
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_a_replaced_graph_leaves_no_dead_weights(tmp_path):
    """A graph exported with its weights in model.onnx.data, then replaced by one that holds its
    own (an int8 graph quantized from it): model.onnx.data ends up with the new weights only.
    onnx appends to that file, and a paper-size oad-trn's int8 bundle once carried its fp32
    weights as dead bytes (1.8 GB for 0.36 GB of int8)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edgert.exporters.graph import weights_beside

    def model(weight: np.ndarray) -> onnx.ModelProto:
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, weight.shape[0]])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, weight.shape[1]])],
                                  [numpy_helper.from_array(weight, "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    path = tmp_path / "model.onnx"
    onnx.save(model(np.ones((512, 512), np.float32)), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").stat().st_size == 512 * 512 * 4
    small = np.full((64, 64), 2.0, np.float32)
    onnx.save(model(small), str(path))  # the replacement holds its weights itself
    weights_beside(path)
    assert (tmp_path / "model.onnx.data").stat().st_size == small.nbytes
    loaded = onnx.load(str(path))
    np.testing.assert_array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), small)
