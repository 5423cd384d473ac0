"""A third-party speculative head (tests/example_head_plugin, its own package and entry point)
exports with a decoder and decodes losslessly, without touching edgert's own files: the proof
that heads are an extension point."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import assert_user_error, edgert  # noqa: E402
from llm_checkpoints import make_llama  # noqa: E402

from edgert.exporters.driver import export  # noqa: E402
from edgert.runtime.llm.generator import Generator  # noqa: E402
from edgert.runtime.llm.sampling import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def repeat_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeat")
    make_llama(root / "ckpt")
    (root / "repeat.json").write_text(json.dumps({"length": 3}))
    export("llama", root / "bundle", {"repeat": str(root / "repeat.json")}, checkpoint=str(root / "ckpt"))
    return root


def test_the_head_is_registered_by_its_own_package():
    listing = edgert("plugins").stdout
    rows = [line.split() for line in listing.splitlines()]
    assert ["repeat", "head", "edgert-repeat-head", "0.1.0"] in [row[:4] for row in rows]
    assert ["repeat", "strategy", "edgert-repeat-head", "0.1.0"] in [row[:4] for row in rows]


def test_export_carries_its_graph_and_entry(repeat_bundle):
    manifest = json.loads((repeat_bundle / "bundle" / "manifest.json").read_text())
    assert manifest["decoder"]["heads"] == {"repeat": {"graph": "repeat", "length": 3}}
    assert manifest["graphs"]["repeat"]["file"] == "repeat.onnx" and "repeat.onnx" in manifest["files"]
    assert manifest["parity"]["graphs"]["repeat"]["passed"]
    info = edgert("info", repeat_bundle / "bundle").stdout
    assert "repeat head (graph 'repeat', length 3)" in info


def test_its_strategy_equals_ar_and_accepts_repeats(repeat_bundle):
    gen = Generator(repeat_bundle / "bundle")
    params = SamplingParams(max_new_tokens=40)
    for prompt in ["The quick brown fox", "0 0 0 0 0 0 0 0", "def add(a, b):\n    return", "Edge devices run"]:
        ar = gen.generate(prompt, params)
        ours = gen.generate(prompt, params, strategy="repeat")
        assert ours.tokens == ar.tokens, prompt
        assert ours.stats.accepted and all(1 <= a <= 4 for a in ours.stats.accepted)  # verified chains of 1 + 3


def test_a_bundle_without_the_head_and_a_bad_head_file_are_one_line(repeat_bundle, tmp_path):
    export("llama", tmp_path / "plain", checkpoint=str(repeat_bundle / "ckpt"))
    assert_user_error(edgert("generate", tmp_path / "plain", "--prompt", "hi", "--strategy", "repeat"),
                      "needs a bundle exported with a repeat head", "--opt repeat=FILE")
    (tmp_path / "bad.json").write_text("{}")
    assert_user_error(edgert("export", "llama", "--checkpoint", repeat_bundle / "ckpt", "--out", tmp_path / "b",
                             "--opt", f"repeat={tmp_path / 'bad.json'}"), "not a repeat-head file")
    assert not (tmp_path / "b").exists()
    assert_user_error(edgert("export", "llama", "--checkpoint", repeat_bundle / "ckpt", "--out", tmp_path / "b",
                             "--flavour", "trt", "--precision", "fp16", "--opt", f"repeat={tmp_path / 'bad.json'}"),
                      "does not carry a repeat head")


def test_decoders_run_on_any_backend_through_the_interface(repeat_bundle, monkeypatch):
    """A backend without IO binding (the Backend interface's default run_into copies) runs the
    decoder and the head's graph and gives the same tokens as ONNX Runtime's bound path."""
    import edgert.runtime.host as host_module
    from edgert.runtime.backends.base import Backend
    from edgert.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgert.runtime.hookspecs import hookimpl

    calls = []

    class Copying(OnnxRuntimeBackend):
        name = "copying"
        run_into = Backend.run_into  # what a backend that cannot bind memory gets
        binding = Backend.binding

        def run(self, feeds):
            calls.append(self.path.name)
            return super().run(feeds)

    class Plugin:
        @hookimpl
        def edgert_register_backends(self):
            return [Copying]

    monkeypatch.setattr(host_module, "_HOST", host_module.build_host(extra_plugins={"copying-backend": Plugin()}))
    params = SamplingParams(max_new_tokens=24)
    reference = Generator(repeat_bundle / "bundle")
    copying = Generator(repeat_bundle / "bundle", backend="copying")
    for prompt in ["The quick brown fox", "0 0 0 0 0 0"]:
        for strategy in ("ar", "repeat"):
            assert copying.generate(prompt, params, strategy=strategy).tokens == \
                reference.generate(prompt, params, strategy=strategy).tokens, (prompt, strategy)
    assert {"decoder.onnx", "repeat.onnx"} <= set(calls)


def test_a_head_can_tap_the_hidden_states_entering_layers(repeat_bundle, tmp_path, monkeypatch):
    """A head that asks for taps (what EAGLE-3 needs) gets them as decoder outputs equal to
    transformers' hidden_states[i], and a strategy reads the accepted tokens' in d.extra; a
    bundle without such a head has none."""
    import numpy as np
    import torch
    import transformers

    import edgert.runtime.host as host_module
    from edgert.runtime.bundle import GraphSpec, TensorSpec
    from edgert.runtime.hookspecs import hookimpl
    from edgert.runtime.llm.generator import Decoding, GenerationStats
    from edgert.runtime.llm.sampling import Sampler

    class Probe:
        name, description, paper, file_help, flavours = "probe", "reads taps", "none", "anything", ("onnx",)

        def taps(self, config):
            return (0, config.num_layers - 1)

        def plan(self, ctx, source):
            from edgert.exporters.llm.plan import GraphJob

            spec = GraphSpec("probe", "probe.onnx", (TensorSpec("x", "float32", ("batch", 4)),),
                             (TensorSpec("y", "float32", ("batch", 4)),))
            case = {"x": np.ones((2, 4), np.float32)}
            return [GraphJob(spec, torch.nn.Identity(), case, ctx.parity(torch.nn.Identity(), {"x": case}))], \
                {"graph": "probe"}

        def open(self, target, entry):
            return target.open_backend(entry["graph"])

    class Plugin:
        @hookimpl
        def edgert_register_heads(self):
            return [Probe()]

    monkeypatch.setattr(host_module, "_HOST", host_module.build_host(extra_plugins={"probe-head": Plugin()}))
    export("llama", tmp_path / "tapped", {"probe": "x"}, checkpoint=str(repeat_bundle / "ckpt"))
    manifest = json.loads((tmp_path / "tapped" / "manifest.json").read_text())
    assert manifest["decoder"]["taps"] == [0, 1]
    outputs = [t["name"] for t in manifest["graphs"]["decoder"]["outputs"]]
    assert outputs[:4] == ["logits", "hidden_states", "hidden_states.0", "hidden_states.1"]
    plain = json.loads((repeat_bundle / "bundle" / "manifest.json").read_text())
    assert "taps" not in plain["decoder"] and len(plain["graphs"]["decoder"]["outputs"]) == 2 + 2 * 2

    gen = Generator(tmp_path / "tapped")
    ids = gen.tokenizer.encode("The quick brown fox jumps")
    d = Decoding(gen.session, ids, Sampler(SamplingParams()), len(ids) + 1, GenerationStats())
    d.prefill()
    reference = transformers.AutoModelForCausalLM.from_pretrained(repeat_bundle / "ckpt").eval()
    with torch.no_grad():
        states = reference(torch.tensor([ids]), output_hidden_states=True).hidden_states
    for layer in (0, 1):
        want = states[layer][0].numpy()
        np.testing.assert_allclose(d.extra[f"hidden_states.{layer}"], want, atol=1e-4 * np.abs(want).max())
