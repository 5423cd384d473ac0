"""The README's install path, as a new user follows it: build the wheel from the clone, install
it into a fresh virtual environment (the base install, what an edge app needs), and run a
bundle with the `edgert` that install put on the venv's path.

The commands are read from README.md's "Installing" section, so the README cannot drift from
what works. The wheel's dependencies come from pip's configured indexes (PyPI, or a local
mirror), as they would for the user."""

from __future__ import annotations

import os
import re
import subprocess
import venv
from pathlib import Path

from conftest import ROOT


def _readme_commands() -> tuple[str, str]:
    """The two commands of README.md's "Installing" prose: the wheel build and its install."""
    section = ROOT.joinpath("README.md").read_text().split("## Installing", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"`(pip [^`]+)`", section)
    build = next(c for c in commands if c.startswith("pip wheel"))
    install = next(c for c in commands if c.startswith("pip install 'dist/"))
    return build, install


def test_the_readme_install_gives_a_working_edgert(tiny_bundle, clip_npy, tmp_path):
    build, install = _readme_commands()
    assert build == "pip wheel --no-deps -w dist ." and "[EXTRAS]" in install, (build, install)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    bin_dir = env_dir / "bin"
    # a clean environment: nothing of this one (PYTHONPATH would put build/test-plugins and the
    # clone's own imports in reach), the venv's bin first on PATH as `activate` does
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    def sh(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{command}: rc {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result

    # the clone is read, never written (setuptools writes build/ and *.egg-info beside the
    # sources): the wheel is built from a copy of its files as a fresh clone has them, edits included
    clone = tmp_path / "clone"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            (clone / rel).write_bytes(source.read_bytes())
    sh(build, clone)
    wheels = sorted((clone / "dist").glob("edgert-*.whl"))
    assert len(wheels) == 1, wheels
    sh(install.replace("[EXTRAS]", "").replace("dist/edgert-0.1.0-py3-none-any.whl", str(wheels[0])), tmp_path)

    edgert = bin_dir / "edgert"
    assert edgert.is_file(), "the wheel installs no edgert command"
    # outside the clone: the installed package, not the checkout's edgert/ folder, is what runs
    plugins = sh(f"{edgert} plugins", tmp_path).stdout
    assert "tsn" in plugins and "frame-mean" not in plugins  # no test plugin in a user's install
    ran = sh(f"{edgert} run {tiny_bundle} --input {clip_npy} --json", tmp_path).stdout
    assert '"top"' in ran
    probe = sh(f"{bin_dir / 'python'} -c \"import importlib.util as u; print(u.find_spec('torch') is None)\"", tmp_path)
    assert probe.stdout.strip() == "True", "the base install pulled torch in"
    # the export extra is absent: one line, before any work or progress line, and no traceback
    refused = subprocess.run(f"{edgert} export tsn --out {tmp_path / 'x'}", shell=True, cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr == "edgert: error: 'export' needs torch: pip install 'edgert[export]'\n", refused.stderr

