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


def test_two_plugins_claiming_one_name_disable_it_and_nothing_else(capsys):
    host = build_host({"clash": _Clash()})  # every command keeps working...
    assert "detector name 'tsn' is claimed by two plugins: 'tsn' (edgert) and 'clash' (<in-process>); uninstall one; " \
           "'clash''s detector 'tsn' is disabled" in capsys.readouterr().err
    assert host.get("detector", "tsm").name == "tsm"
    with pytest.raises(PluginError, match=r"detector name 'tsn' is claimed by two plugins: 'tsn' \(edgert\) and 'clash'"):
        host.get("detector", "tsn")  # ...but the contested name, asked for, names both


class _ExitsAtImport:
    @hookimpl
    def edgert_register_detectors(self):
        raise SystemExit(3)


class _Broken:
    @hookimpl
    def edgert_register_strategies(self):
        class Bad:
            name = "bad"
            description = "raises"

            def decode(self, d):
                yield [1]
                raise ZeroDivisionError("division by zero")

            def helper(self):
                return {}["missing"]

        return [Bad()]


def test_a_plugin_exiting_in_its_hook_does_not_stop_the_host():
    host = build_host({"quitter": _ExitsAtImport()})
    assert host.failures == [("quitter", "SystemExit: 3")] and "tsn" in host.registry["detector"]


def test_a_plugin_raising_at_run_time_is_one_line_naming_it():
    strategy = build_host({"broken": _Broken()}).get("strategy", "bad").obj
    with pytest.raises(PluginError, match=r"^plugin 'broken' \(<in-process>\): strategy 'bad'.helper failed: KeyError: "):
        strategy.helper()
    steps = strategy.decode(None)
    assert next(steps) == [1]
    with pytest.raises(PluginError, match=r"strategy 'bad'.decode failed: ZeroDivisionError: division by zero"):
        next(steps)
    assert strategy.description == "raises"


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
