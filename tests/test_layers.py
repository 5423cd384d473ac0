"""The layering, enforced: edgert/ (the CLI) -> runtime/ <- plugins/, exporters/ -> runtime/.
runtime/ never imports the exporters, the plugins or the CLI (an edge app installs it without
torch and without them), and it never imports torch (checked at run time by test_cli). The
server (edgert/serve/) runs bundles like an app does: the runtime only. Inside the runtime,
runtime/llm/ never imports the video contract (detector, model, stream, video, chain)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "runtime": ("edgert.exporters", "edgert.plugins", "edgert.cli", "torch", "onnx", "onnxscript", "transformers"),
    "plugins": ("edgert.cli",),
    "exporters": ("edgert.cli", "edgert.plugins"),
    "edgert/serve": ("edgert.exporters", "edgert.plugins", "edgert.cli", "torch", "onnx", "onnxscript", "transformers"),
    # the LLM side stands on the shared floor (bundle, options, backends, host), not on the
    # video contract
    "runtime/llm": ("edgert.runtime.detector", "edgert.runtime.model", "edgert.runtime.stream",
                    "edgert.runtime.video", "edgert.runtime.chain"),
}


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (absolute names; relative ones resolved inside edgert)."""
    parts = path.relative_to(ROOT).parts
    package = list(parts[:-1]) if parts[0] == "edgert" else ["edgert", parts[0], *parts[1:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(layer):
    bad = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for line, name in imports(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder,source,expected", [
    ("runtime/llm", "from ...exporters import driver\nimport torch\n", ["edgert.exporters", "torch"]),
    ("runtime/llm", "from ..detector import Option\nfrom ..options import Option\n",
     ["edgert.runtime.detector", "edgert.runtime.options"]),
    ("edgert/serve", "from ..exporters import driver\nfrom .api import Api\n", ["edgert.exporters", "edgert.serve.api"]),
])
def test_the_check_sees_a_violation(folder, source, expected):
    """The scan resolves relative imports, in the layers under edgert/ too: a runtime module
    reaching ``..exporters`` is caught."""
    probe = ROOT / folder / "_layer_probe.py"
    probe.write_text(source)
    try:
        names = [name for _, name in imports(probe)]
    finally:
        probe.unlink()
    assert names == expected
