"""Inputs are checked against the manifest before any backend sees them.

Backends give cryptic errors for a wrong shape (or, worse, broadcast silently); the manifest
knows each input's name, dtype and dims, so the mistake is reported here, naming the input and
what was expected against what was given.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .bundle import GraphSpec
from .errors import InputError, first_line


def check_inputs(graph: GraphSpec, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Return ``feeds`` as numpy arrays, or raise :class:`InputError` with one clear line."""
    expected = {t.name: t for t in graph.inputs}
    unknown = sorted(set(feeds) - set(expected))
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r} for graph {graph.name!r}; its inputs are {sorted(expected)}")
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise InputError(f"missing input {missing[0]!r} for graph {graph.name!r} (expected {sorted(expected)})")
    checked: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for name, spec in expected.items():
        value = feeds[name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r}: expected a numpy array, given {type(value).__name__}")
        if value.dtype != np.dtype(spec.dtype):
            raise InputError(f"input {name!r}: expected dtype {spec.dtype}, given {value.dtype}")
        if value.ndim != len(spec.dims):
            raise InputError(f"input {name!r}: expected rank {len(spec.dims)} {spec.shape_text()}, given shape {list(value.shape)}")
        for axis, (dim, size) in enumerate(zip(spec.dims, value.shape)):
            if isinstance(dim, int) and dim != size:
                raise InputError(f"input {name!r}: expected shape {spec.shape_text()}, given {list(value.shape)} (dim {axis} must be {dim})")
            if isinstance(dim, str):
                if size == 0:
                    raise InputError(f"input {name!r}: dim {axis} ({dim}) is 0 in shape {list(value.shape)}")
                seen = symbols.setdefault(dim, (size, name))
                if seen[0] != size:
                    raise InputError(f"input {name!r}: dim {axis} ({dim}) is {size} but input {seen[1]!r} has {dim}={seen[0]}")
        checked[name] = value
    return checked


MAX_ARRAY_BYTES = 8 << 30  # an input file larger than this is not a clip or a feature file


def load_npy(path, what: str = "array", max_bytes: int = MAX_ARRAY_BYTES) -> np.ndarray:
    """A .npy file as the user gives it: no pickles, the header read first and the array's size
    bounded before anything is allocated, every failure one line naming the file."""
    import os

    fmt = np.lib.format
    try:
        with open(path, "rb") as f:  # one descriptor: the array read is the one whose header was checked
            version = fmt.read_magic(f)
            shape, _, dtype = fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
            if dtype.hasobject:
                raise InputError(f"{path}: holds Python objects (a pickle), which edgert never loads ({what})")
            size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if size > max_bytes:
                raise InputError(f"{path}: a {list(shape)} {dtype} array is {size} bytes; at most {max_bytes} ({what})")
            if size > os.fstat(f.fileno()).st_size:
                raise InputError(f"{path}: header says {list(shape)} {dtype} ({size} bytes) but the file is shorter ({what})")
            f.seek(0)
            return fmt.read_array(f, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({what})") from None
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable .npy array ({what}: {first_line(err)})") from None


MAX_TEXT_BYTES = 64 << 20  # a configuration, template or tree file the user names is far smaller


def read_text(path, what: str = "", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A small text file the user named (a checkpoint's config, a template, a tree): a regular
    file, at most ``max_bytes``, UTF-8; otherwise one line naming the file (``what``: how the
    user named it, e.g. ``--opt tree``)."""
    import os
    import stat

    name = f"{what} {path}" if what else str(path)
    try:  # O_NONBLOCK: a FIFO's open would wait for a writer before the check below could refuse it
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise InputError(f"{name}: not a regular file")
            if info.st_size > max_bytes:
                raise InputError(f"{name}: {info.st_size} bytes; at most {max_bytes} expected for this file")
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise InputError(f"{name}: cannot read ({err.strerror})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{name}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start})") from None


def read_json(path, what: str = "", max_bytes: int = MAX_TEXT_BYTES):
    """:func:`read_text`, parsed as JSON; a file that is not JSON is one line too."""
    import json

    text = read_text(path, what, max_bytes)
    name = f"{what} {path}" if what else str(path)
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(f"{name}: JSON nested too deeply") from None
    except ValueError as err:
        raise InputError(f"{name}: not valid JSON ({first_line(err)})") from None
