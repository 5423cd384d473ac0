"""Which bundles a server serves, under which names, and what each is served as.

A bundle is served as one of three things, read off its manifest (:func:`edgert.runtime.usage.usage_of`):

* ``decoder``: an LLM decoder, behind the OpenAI-compatible completions and chat routes;
* ``stream``: a detector whose graph carries state (online TSM, oad-trn, OadTR), behind the
  streaming-session routes; its steps are frames, or feature vectors (``step`` says which);
* ``detector``: any other detector (a clip recognizer, a feature extractor), behind
  ``/v1/detect``, requests batched on the graph's batch axis.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgert.runtime.bundle import Bundle
from edgert.runtime.errors import EdgertError
from edgert.runtime.usage import usage_of

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ServedModel:
    name: str
    path: str        # absolute; the same path must hold the bundle on every node a replica may run on
    kind: str        # decoder | detector | stream
    step: str = ""   # stream: "frame" or "feature" (what one step consumes)
    plugin: str = ""
    extractor: bool = False  # a detector exported with --opt output=features: a stream may chain it

    def to_json(self) -> dict:
        return {"id": self.name, "object": "model", "owned_by": "edgert", "kind": self.kind,
                **({"step": self.step} if self.step else {}), "plugin": self.plugin}


def served_model(spec: str | os.PathLike) -> ServedModel:
    """``PATH`` or ``NAME=PATH``: the bundle verified (manifest and hashes) and classified; the
    name defaults to the bundle folder's."""
    text = str(spec)
    name, sep, path = text.partition("=")
    if not sep or os.sep in name or not name:
        name, path = Path(text).name, text
    if not NAME.match(name):
        raise EdgertError(f"serve: model name {name!r}: use letters, digits, '.', '_' and '-' (at most 64), "
                          "or give one as NAME=PATH")
    bundle = Bundle.load(path, verify="used")  # classified here; each replica checks the bytes it uses
    usage, root, plugin = usage_of(bundle), str(bundle.root.resolve()), bundle.plugin_name
    if usage.kind in ("decoder", "stream"):
        return ServedModel(name, root, usage.kind, usage.step, plugin)
    return ServedModel(name, root, "detector", plugin=plugin, extractor=usage.kind == "extractor")


def catalogue(specs) -> dict[str, ServedModel]:
    """Every bundle to serve, by name; two with one name is an error naming both."""
    models: dict[str, ServedModel] = {}
    for spec in specs:
        model = served_model(spec)
        if model.name in models:
            raise EdgertError(f"serve: two bundles are named {model.name!r} ({models[model.name].path} and {model.path}); "
                              "name one with NAME=PATH")
        models[model.name] = model
    if not models:
        raise EdgertError("serve: give at least one bundle")
    return models


def check_drafts(drafts: dict[str, str], trusted_keys) -> None:
    """Each served draft model (``edgert serve --draft NAME=BUNDLE``) verified at start, under the
    server's signature policy, and a decoder bundle; a request then picks one by name."""
    for name, path in drafts.items():
        if not NAME.match(name):
            raise EdgertError(f"serve: --draft {name}=...: a draft name uses letters, digits, '.', '_' and '-' "
                              "(at most 64)")
        bundle = Bundle.load(path, verify="used", trusted_keys=trusted_keys)
        if bundle.kind != "decoder":
            raise EdgertError(f"serve: --draft {name}={path}: a draft model must be a decoder bundle, this is a "
                              f"{bundle.kind} bundle")
