"""The bundle manifest, written the same way by every exporter (the video driver, the decoder
exporter): who made it, from what, with which versions, and how well it matched PyTorch.
"""

from __future__ import annotations

import datetime as _dt
import platform
from typing import Any

from edgert.runtime.bundle import SCHEMA_VERSION, GraphSpec
from edgert.runtime.staging import write_manifest


def versions() -> dict[str, str]:
    from importlib.metadata import version

    import onnx
    import onnxruntime
    import torch

    return {
        "edgert": version("edgert"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": version("onnxscript"),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


def bundle_manifest(registered, *, options: dict[str, Any], details: dict[str, Any], seed: int,
                    checkpoint: dict[str, str] | None, graphs: list[GraphSpec], precision: str, opset: int,
                    parity: dict[str, Any], preprocessing: dict | None = None, labels: list[str] | None = None,
                    paper: str | None = None, training_only: list[str] | tuple = (), **sections: Any) -> dict[str, Any]:
    """The manifest of a bundle made by ``registered`` (the host's entry for the plugin);
    ``sections``: kind-specific ones (``decoder``, ``quantization``); ``paper``: the model's own
    where the plugin covers several (default: the plugin's); ``training_only``: the options
    that shape training only, not the graph (``Option.training``). ``files`` is added by
    :func:`write` when the bundle's files are final."""
    plugin = registered.obj
    manifest = {
        "schema_version": SCHEMA_VERSION, "kind": registered.kind,
        "plugin": {"name": plugin.name, "package": registered.plugin.package, "version": registered.plugin.version},
        "model": {"name": plugin.name, "paper": paper or plugin.paper, "options": options, "details": details, "seed": seed,
                  "checkpoint": checkpoint, **({"training_only": sorted(training_only)} if training_only else {})},
        "graphs": {g.name: g.to_json() for g in graphs},
        "preprocessing": preprocessing or {}, "labels": labels or [], "precision": precision,
        "provenance": {**versions(), "opset": opset, "exporter": "torch.onnx.export(dynamo=True)",
                       "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "parity": {"passed": True, "graphs": parity},
    }
    manifest.update({k: v for k, v in sections.items() if v is not None})
    return manifest


write = write_manifest
