"""Reading users' checkpoints into our modules, strictly.

Accepts ``.pt/.pth/.tar`` (torch.load with ``weights_only=True``: no arbitrary code from a
downloaded file) and ``.safetensors``; unwraps the usual containers (``state_dict``, ``model``,
``model_state_dict``) and DataParallel's ``module.`` prefix. Loading is all or nothing: any
missing, unexpected or mis-shaped key is an error that lists them, never a silent partial load.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Mapping

from edgert.runtime.errors import EdgertError, first_line

CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")


def read_state_dict(path: str | Path) -> dict:
    """The checkpoint's tensors by name (a new dict; the tensors are shared with a memo of the
    last file read, since an export reads it twice: for its options, then its weights)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as err:
        raise EdgertError(f"{path}: cannot read checkpoint: {err.strerror}") from None
    return dict(_read(path.resolve(), (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)))


@lru_cache(maxsize=1)
def _read(path: Path, version: tuple) -> dict:
    """``version``: what identifies the file's contents without reading them (a rewrite changes it)."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise EdgertError(f"{path}: cannot read checkpoint: {first_line(err)}") from None
    for key in CONTAINER_KEYS:
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
            break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise EdgertError(f"{path}: not a state_dict (expected a mapping of names to tensors)")
    if data and all(k.startswith("module.") for k in data):
        data = {k[len("module."):]: v for k, v in data.items()}
    return dict(data)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_keys(expected: Mapping, state: Mapping, source: str | Path, what: str = "checkpoint",
               target: str = "the model", noun: str = "keys") -> None:
    """Raise one line, listing them, unless ``state`` has exactly ``expected``'s names and shapes:
    the strict check every checkpoint reader uses (video weights, decoders, Medusa heads, MTP
    modules), never a silent partial load. ``what`` / ``target`` / ``noun`` word the message
    (``{source}: {what} does not fit {target}; missing {noun}: ...``)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    parts = []
    if missing:
        parts.append(f"missing {noun}: {_listing(missing)}")
    if unexpected:
        parts.append(f"unexpected {noun}: {_listing(unexpected)}")
    if not parts:
        wrong = [f"{k} {list(state[k].shape)} (expected {list(v.shape)})" for k, v in expected.items()
                 if tuple(state[k].shape) != tuple(v.shape)]
        if wrong:
            parts.append(f"{noun} of the wrong shape: {_listing(wrong, 4)}")
    if parts:
        raise EdgertError(f"{source}: {what} does not fit {target}; " + "; ".join(parts))


def load_strict(module, state: Mapping, source: str | Path) -> None:
    """Load ``state`` into ``module``; every key must match by name and shape."""
    check_keys(module.state_dict(), state, source)
    module.load_state_dict(state, strict=True)
