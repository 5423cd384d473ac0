"""The plugin host: entry points, failure isolation, name clashes."""


import pytest

from edgert.runtime import PluginError
from edgert.runtime.hookspecs import hookimpl
from edgert.runtime.host import build_host

from conftest import edgert


def test_builtins_and_third_party_are_registered_through_entry_points():
    host = build_host()
    assert host.get("detector", "tsn").plugin.package == "edgert"
    example = host.get("detector", "frame-mean")
    assert (example.plugin.name, example.plugin.package, example.plugin.version) == ("example", "edgert-example-plugin", "0.3.1")
    assert {"onnxruntime", "tensorrt"} <= set(host.registry["backend"])
    assert host.failures == []


def test_plugins_command_lists_third_party():
    result = edgert("plugins")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "edgert-example-plugin 0.3.1" in rows["frame-mean"] and "detector" in rows["frame-mean"]
    assert "edgert 0.1.0" in rows["tsn"]


def test_unknown_name():
    with pytest.raises(PluginError, match=r"no detector named 'i3d' \(installed detectors: .*tsn"):
        build_host().get("detector", "i3d")


class _Clash:
    @hookimpl
    def edgert_register_detectors(self):
        class Fake:
            name = "tsn"
        return [Fake()]


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    with pytest.raises(PluginError, match=r"detector name 'tsn' is claimed by two plugins: 'tsn' \(edgert\) and 'clash'"):
        build_host({"clash": _Clash()})


class _RaisesInHook:
    @hookimpl
    def edgert_register_detectors(self):
        raise RuntimeError("weights directory not configured")


def test_plugin_raising_in_a_hook_is_reported_and_skipped(capsys):
    host = build_host({"flaky": _RaisesInHook()})
    assert host.failures == [("flaky", "RuntimeError: weights directory not configured")]
    assert "tsn" in host.registry["detector"]
    assert "plugin 'flaky' (<in-process>) raised in edgert_register_detectors" in capsys.readouterr().err


@pytest.fixture
def broken_plugin_path(tmp_path):
    """A real installed distribution (dist-info with an entry point) whose module raises on import."""
    (tmp_path / "broken_edgert_plugin.py").write_text("raise ImportError('needs libfoo.so.3')\n")
    info = tmp_path / "broken_edgert_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-edgert-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[edgert]\nbroken = broken_edgert_plugin\n")
    return tmp_path


def test_third_party_plugin_raising_on_import(broken_plugin_path, tiny_bundle, clip_npy):
    env = {"PYTHONPATH": str(broken_plugin_path)}
    listed = edgert("plugins", env=env)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert ("edgert: warning: plugin 'broken' (broken-edgert-plugin) failed to load and was skipped: "
            "ImportError: needs libfoo.so.3") in listed.stderr
    assert "tsn" in listed.stdout and "(failed) plugin broken" in listed.stdout
    ran = edgert("run", tiny_bundle, "--input", clip_npy, env=env)  # the host goes on
    assert ran.returncode == 0, ran.stderr


def test_hookspecs_are_documented():
    from edgert.runtime import hookspecs

    for name in ("edgert_register_detectors", "edgert_register_decoders", "edgert_register_backends"):
        assert len(getattr(hookspecs, name).__doc__) > 100
