"""Writing a bundle without losing anything of the user's.

``staged_bundle(dest)`` yields an empty staging directory beside ``dest`` and, when the block
succeeds, renames it into place; when anything raises (or the process is told to stop) the
staging directory goes and ``dest`` is left exactly as it was. What it will and will not touch:

* ``dest`` is replaced only with ``overwrite`` (``--force``) and only when it is an edgert bundle:
  its manifest.json valid, and nothing in it the manifest does not list (a labels.txt the user
  keeps there makes it refuse, naming the file, rather than delete it). Any other non-empty
  directory, or a file, is refused.
* One export per ``dest`` at a time: an exclusive lock (``.NAME.lock`` beside it, flock) is
  held from the first check to the rename; a second export fails at once with one line.
* Staging directories are ``.NAME.<random>.partial`` with an ``.edgert-staging`` marker inside;
  under the lock, any left by a killed export to the same ``dest`` are stale and removed (only
  those with the marker: nothing edgert did not write). A replaced bundle is first moved into
  ``.NAME.<random>.old``; one a killed export left there, with no ``dest``, is put back.
* The bundle's permissions follow the umask (a temporary directory is 0700 by default).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .bundle import MANIFEST, sha256_file, validate_manifest
from .errors import BundleError
from .signing import SIGNATURE

MARKER = ".edgert-staging"


def _umask() -> int:
    try:  # Linux 4.7+: read it; setting and restoring it would race with other threads creating files
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _lock(dest: Path) -> Iterator[None]:
    path = dest.with_name(f".{dest.name}.lock")
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as err:
            raise BundleError(f"{dest.parent}: cannot write there ({err.strerror}); nothing was written") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise BundleError(f"{dest}: another export to it is running; nothing was written") from None
            raise
        try:  # the file may have been unlinked by the previous holder between our open and our lock
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _check_replaceable(dest: Path) -> None:
    """``dest`` may be replaced: an edgert bundle holding only what its manifest lists."""
    if not dest.is_dir() or dest.is_symlink():
        raise BundleError(f"{dest}: exists and is not a directory; refusing to replace it")
    manifest = dest / MANIFEST
    if not any(dest.iterdir()):
        return
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        validate_manifest(data, manifest)
    except (OSError, UnicodeDecodeError, ValueError, BundleError):
        raise BundleError(f"{dest}: exists and is not an edgert bundle (no valid {MANIFEST}); refusing to replace "
                          "it") from None
    listed = set(data["files"]) | {MANIFEST, SIGNATURE}
    extra = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")
                   if (p.is_file() or p.is_symlink()) and p.relative_to(dest).as_posix() not in listed)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise BundleError(f"{dest}: holds files its manifest does not list ({shown}); move them out or export "
                          "elsewhere, nothing was replaced")


def _remove_stale(dest: Path) -> None:
    """What a killed export to ``dest`` left; an old bundle set aside but never replaced comes back."""
    for path in dest.parent.glob(f".{dest.name}.*"):
        if not path.name.endswith((".partial", ".old")) or path.is_symlink() or not (path / MARKER).is_file():
            continue
        if path.name.endswith(".old") and (path / "bundle").is_dir() and not dest.exists():
            os.rename(path / "bundle", dest)
        shutil.rmtree(path, ignore_errors=True)


def check_destination(dest: str | os.PathLike, overwrite: bool = False) -> None:
    """What :func:`staged_bundle` would refuse about ``dest`` as things stand: an exporter asks
    first, so that a refusal that needs no work comes before minutes of it."""
    dest = Path(dest).absolute()
    if dest.exists() and not overwrite:
        raise BundleError(f"{dest}: already exists (pass --force to replace it)")
    if dest.exists():
        _check_replaceable(dest)


@contextmanager
def staged_bundle(dest: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; on success it atomically becomes ``dest``."""
    dest = Path(dest).absolute()

    def check() -> None:
        check_destination(dest, overwrite)

    check()  # before the parent is created or anything locked
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BundleError(f"{dest.parent}: cannot create it ({err.strerror}); nothing was written") from None
    with _lock(dest):
        _remove_stale(dest)
        check()  # again: a killed export's old bundle may just have come back
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
        try:
            os.chmod(stage, 0o777 & ~_umask())
            (stage / MARKER).write_text(f"{os.getpid()}\n")
            yield stage
            (stage / MARKER).unlink()
            if dest.exists():  # an edgert export cannot have made it meanwhile (the lock): check what is there now
                check()
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
                (old / MARKER).write_text(f"{os.getpid()}\n")
                os.replace(dest, old / "bundle")  # the old bundle goes aside in one step...
                os.rename(stage, dest)            # ...and the new one comes in the next
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(stage, dest)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)


def write_manifest(stage: Path, manifest: dict[str, Any]) -> None:
    """Hash every file in ``stage`` into ``manifest['files']`` and write manifest.json."""
    manifest = dict(manifest)
    manifest["graphs"] = {name: dict(graph) for name, graph in manifest["graphs"].items()}
    for graph in manifest["graphs"].values():  # torch.onnx writes a large model's weights to <file>.data
        if (stage / f"{graph['file']}.data").is_file():
            graph["external_data"] = [f"{graph['file']}.data"]
    manifest["files"] = {
        p.relative_to(stage).as_posix(): sha256_file(p)
        for p in sorted(stage.rglob("*")) if p.is_file() and p.name not in (MANIFEST, MARKER)
    }
    validate_manifest(manifest, stage / MANIFEST)
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


__all__ = ["staged_bundle", "write_manifest"]
