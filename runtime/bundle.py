"""Bundles: the directory an export writes and the runtime loads.

Layout::

    my-bundle/
      manifest.json     what the graphs are, how to feed them, where they came from
      model.onnx        one file per graph (plus model.plan when a TensorRT engine is built)

The manifest (schema version 1) holds: ``kind`` and ``plugin`` (name, package, version);
``model`` (the export options, seed and checkpoint they were built from); ``graphs``, each
with its file(s) and its inputs and outputs (name, dtype, dims; a dim is an int or a symbolic
name such as ``"batch"``); ``preprocessing``; ``labels``; ``precision``; ``provenance``
(edgert, torch, onnx, opset and onnxruntime versions); ``files`` (sha256 of every file) and
``parity`` (the export's check against PyTorch).

Loading checks the schema and every hash, so a missing, truncated or tampered file, or a
manifest from a future edgert, is refused with a message naming the file. Writing
(:mod:`.staging`) is atomic and never deletes what edgert did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import BundleError, first_line
from .schema import MANIFEST as MANIFEST_SCHEMA, SchemaError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # labels and templates included; more is not a manifest edgert wrote


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output. ``dims`` mixes ints (static) and names (dynamic)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.dims) + "]"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(data["name"], data["dtype"], tuple(data["dims"]))


@dataclass(frozen=True)
class GraphSpec:
    name: str
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    engine: str | None = None  # serialized TensorRT engine beside the ONNX file, if built
    # Streaming graphs: (input, output) pairs whose output is fed back as the input at the
    # next step (shift buffers, recurrent state). Empty for clip graphs.
    state: tuple[tuple[str, str], ...] = ()
    # Files holding the graph's weights outside the ONNX file (large models): read and checked by
    # the bundle and handed to the backend from memory, like the graph itself.
    external_data: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = {"file": self.file, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs]}
        if self.engine:
            data["engine"] = self.engine
        if self.state:
            data["state"] = [list(pair) for pair in self.state]
        if self.external_data:
            data["external_data"] = list(self.external_data)
        return data


def safe_relative(rel: Any) -> bool:
    """A path a manifest may name: relative POSIX, inside the bundle, nothing odd on the way."""
    if not isinstance(rel, str) or not rel or len(rel) > 1024 or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))


def _named_paths(data: dict) -> list[tuple[str, Any]]:
    """(field, path) for every path the manifest names besides ``files`` itself."""
    named = []
    for gname, graph in data["graphs"].items():
        named += [(f"graphs.{gname}.{key}", graph[key]) for key in ("file", "engine") if key in graph]
        named += [(f"graphs.{gname}.external_data", rel) for rel in graph.get("external_data", [])]
    decoder = data.get("decoder")
    if isinstance(decoder, dict):
        for key in ("tokenizer", "kv_compact"):
            if key in decoder:
                named.append((f"decoder.{key}", decoder[key]))
        verify = decoder.get("verify")
        if isinstance(verify, dict):
            named += [(f"decoder.verify.{mode}", rel) for mode, rel in verify.items()]
    return named


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _require(cond: bool, where: Path, what: str) -> None:
    if not cond:
        raise BundleError(f"{where}: invalid manifest: {what}")


def validate_manifest(data: Any, where: Path) -> None:
    """Check the manifest's structure; every message names ``where`` and the field at fault."""
    _require(isinstance(data, dict), where, "top level is not a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{where}: unknown manifest schema_version {version!r}; this edgert reads version {SCHEMA_VERSION}"
            + (" (the bundle was written by a newer edgert: upgrade edgert)" if isinstance(version, int) and version > SCHEMA_VERSION else "")
        )
    try:
        MANIFEST_SCHEMA.check(data, "")
    except SchemaError as err:
        raise BundleError(f"{where}: invalid manifest: {err}") from None
    if data["kind"] == "decoder":
        _require("decoder" in data, where, "missing field 'decoder' (a decoder bundle)")
    for gname, graph in data["graphs"].items():
        names = {side: {t["name"]: t for t in graph[side]} for side in ("inputs", "outputs")}
        for pair in graph.get("state", []):
            _require(isinstance(pair, list) and len(pair) == 2 and pair[0] in names["inputs"] and pair[1] in names["outputs"],
                     where, f"graphs.{gname}.state: {pair!r} is not an [input, output] pair of the graph")
            _require(names["inputs"][pair[0]]["dims"] == names["outputs"][pair[1]]["dims"], where,
                     f"graphs.{gname}.state: {pair[0]} and {pair[1]} have different dims")
    for rel, digest in data["files"].items():
        _require(safe_relative(rel), where, f"files: {rel!r} is not a relative path inside the bundle")
        _require(isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest), where,
                 f"files.{rel}: not a sha256 hex digest")
    for field, rel in _named_paths(data):
        _require(safe_relative(rel), where, f"{field} {rel!r} is not a relative path inside the bundle")
        _require(rel in data["files"], where, f"{field} {rel!r} has no sha256 in 'files'")


class Bundle:
    """A verified bundle on disk. ``Bundle.load`` is the only way in."""

    def __init__(self, root: Path, manifest: dict[str, Any]):
        self.root = root
        self.manifest = manifest
        self.manifest_bytes: bytes | None = None
        self.signer: str | None = None  # the trusted key id that signed it, when one was checked
        self.trusted_keys: list | None = None  # the keys it was held to (None: not loaded through load())
        self.graphs = {
            name: GraphSpec(name, g["file"], tuple(map(TensorSpec.from_json, g["inputs"])),
                            tuple(map(TensorSpec.from_json, g["outputs"])), g.get("engine"),
                            tuple(tuple(pair) for pair in g.get("state", [])), tuple(g.get("external_data", [])))
            for name, g in manifest["graphs"].items()
        }

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool | str = True, trusted_keys=None) -> "Bundle":
        """Verify and open ``path``. ``trusted_keys``: public key files the bundle must be signed
        by (None: the configured trust store, :mod:`.signing`; an empty list: no signature check).

        ``verify``: True hashes every file now (``edgert info``, ``sign``); ``"used"`` hashes each
        file as it is used instead, on the bytes used (:meth:`read`, :meth:`checked_path`), so
        that opening a model hashes each byte once rather than twice and never hashes what it
        does not use (what the runtime's loaders do); False hashes nothing."""
        from . import signing

        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: not a bundle directory (it does not exist or is not a directory)")
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"{manifest_path}: missing; {root} is not an edgert bundle")
        for folder, dirs, names in os.walk(root):  # a link anywhere could lead a graph's external data outside
            for name in dirs + names:
                if os.path.islink(os.path.join(folder, name)):
                    raise BundleError(f"{os.path.join(folder, name)}: a symbolic link inside the bundle; refusing it "
                                      "(it could point outside)")
        with open(manifest_path, "rb") as f:  # read once: these bytes are verified, parsed and kept
            raw = f.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{manifest_path}: more than {MAX_MANIFEST_BYTES} bytes; a manifest is at most "
                              f"{MAX_MANIFEST_BYTES} bytes")
        keys = signing.trusted_key_files() if trusted_keys is None else [Path(k) for k in trusted_keys]
        signer = signing.verify(root, raw, keys) if keys else None
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
            raise BundleError(f"{manifest_path}: not valid JSON ({first_line(err)})") from None
        validate_manifest(data, manifest_path)
        bundle = cls(root, data)
        # ``trusted_keys``: the policy it was opened under, which any bundle it names (a draft) is held to
        bundle.manifest_bytes, bundle.signer, bundle.trusted_keys = raw, signer, keys
        for rel in data["files"]:
            bundle.path(rel)  # confined: no symlink on the way, a regular file
            if verify is True:
                bundle._check(rel, sha256_file(root / rel))
        return bundle

    def _check(self, rel: str, digest: str) -> None:
        if digest != self.manifest["files"][rel]:
            raise BundleError(f"{self.root / rel}: sha256 does not match the manifest (the file is corrupt or was modified)")

    def checked_path(self, rel: str) -> Path:
        """:meth:`path`, its file hashed first: for a consumer that can only open a path (a
        TensorRT parser reading external weights), where :meth:`read` cannot hand it the bytes."""
        path = self.path(rel)
        self._check(rel, sha256_file(path))
        return path

    def path(self, rel: str) -> Path:
        """The file ``rel`` of the bundle: listed in ``files``, a regular file, reached through
        real directories only (a symlink anywhere on the way could lead outside)."""
        if rel not in self.manifest["files"]:
            raise BundleError(f"{self.root}: {rel!r} is not listed in the manifest's files")
        here = self.root
        for part in rel.split("/"):
            here = here / part
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                raise BundleError(f"{self.root / rel}: listed in the manifest but missing from the bundle") from None
            if stat.S_ISLNK(mode):
                raise BundleError(f"{here}: a symbolic link inside the bundle; refusing it (it could point outside)")
        if not stat.S_ISREG(mode):
            raise BundleError(f"{self.root / rel}: not a regular file")
        return here

    def onnx_sources(self, graph: GraphSpec) -> dict[str, Any]:
        """What an ONNX session of ``graph`` is built from: its checked bytes (``model=``) and, when
        it has external weights, theirs (``external_data=``), as a backend's keywords."""
        sources: dict[str, Any] = {"model": self.read(graph.file)}
        if graph.external_data:
            sources["external_data"] = self.external_data(graph)
        return sources

    def external_data(self, graph: GraphSpec) -> dict[str, bytes]:
        """The graph's external weight files, checked, by the name relative to the graph's folder."""
        return {name: self.read(rel) for name, rel in self._external(graph).items()}

    def _external(self, graph: GraphSpec) -> dict[str, str]:
        base = graph.file.rsplit("/", 1)[0] + "/" if "/" in graph.file else ""
        for rel in graph.external_data:
            if not rel.startswith(base):
                raise BundleError(f"{self.root}: graph {graph.name!r}: external data {rel!r} is not beside {graph.file!r}")
        return {rel[len(base):]: rel for rel in graph.external_data}

    @contextmanager
    def external_copies(self, graph: GraphSpec) -> Iterator[Path]:
        """A folder holding private copies of the graph's external weight files, each hashed as it
        is copied and checked against the manifest, removed when the block ends. A backend that
        memory-maps weight files (ONNX Runtime: the pages it does not repack are never copied)
        maps these, which only this process's user can write, not the bundle's own files, which
        whoever can write the bundle could change after the check."""
        folder = Path(tempfile.mkdtemp(prefix="edgert-weights-"))  # 0700
        try:
            for name, rel in self._external(graph).items():
                digest = hashlib.sha256()
                source = os.open(self.path(rel), os.O_RDONLY | os.O_NOFOLLOW)
                target = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
                try:
                    while block := os.read(source, 4 << 20):
                        digest.update(block)
                        view = memoryview(block)
                        while view:
                            view = view[os.write(target, view):]
                finally:
                    os.close(source)
                    os.close(target)
                self._check(rel, digest.hexdigest())
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # a mapping keeps its pages until the session goes

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``, read once and checked against the manifest's sha256 (no file can
        be swapped between the check and the use)."""
        data = self.path(rel).read_bytes()
        self._check(rel, hashlib.sha256(data).hexdigest())
        return data

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def plugin_name(self) -> str:
        return self.manifest["plugin"]["name"]

    @property
    def labels(self) -> list[str]:
        return self.manifest["labels"]

    @property
    def preprocessing(self) -> dict[str, Any]:
        return self.manifest["preprocessing"]

    def graph(self, name: str | None = None) -> GraphSpec:
        """The graph ``name``; by default the bundle's only one, or its ``main`` graph where it has
        others beside it (an online detector's offline twin: the run-time path uses ``main``)."""
        if name is None:
            if len(self.graphs) == 1:
                return next(iter(self.graphs.values()))
            if "main" not in self.graphs:
                raise BundleError(f"{self.root}: bundle has graphs {sorted(self.graphs)}; name one")
            name = "main"
        if name not in self.graphs:
            raise BundleError(f"{self.root}: no graph {name!r} (graphs: {sorted(self.graphs)})")
        return self.graphs[name]


__all__ = ["Bundle", "GraphSpec", "TensorSpec", "SCHEMA_VERSION", "sha256_file", "validate_manifest"]
