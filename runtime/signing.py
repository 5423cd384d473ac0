"""Signed bundles: an Ed25519 signature over the exact bytes of manifest.json (``cryptography``).

The manifest pins every file of the bundle by sha256 and the runtime checks each file's bytes at
the moment it uses them (:meth:`Bundle.read`), so one signature over the manifest's bytes covers
the whole bundle, and the bytes verified are the bytes parsed: nothing is read twice. (OpenSSF
model-signing was the other candidate: it re-hashes every file itself, apart from the bytes the
runtime then uses, and brings some thirty packages - sigstore, pydantic, requests - onto an edge
device for a check `cryptography` does alone.)

    manifest.sig   {"format": "edgert-signature/1", "algorithm": "ed25519", "key_id": ..., "signature": ...}

``key_id`` is the sha256 of the raw public key. Keys are PEM files (``edgert keygen``: PKCS#8
private key, mode 0600, and SubjectPublicKeyInfo public key). Trust comes from keys passed to
:func:`edgert.load` (``trusted_keys=``), ``--trusted-key`` on the CLI, ``EDGERT_TRUSTED_KEYS``
(files or folders, ``os.pathsep``-separated) and ``$XDG_CONFIG_HOME/edgert/trusted_keys/*.pub``
(``~/.config`` by default). When any trusted key is configured, a bundle that is unsigned, signed
by another key or altered after signing is refused with one line. What it protects: which bundle
runs (its graphs, engines, tokenizer, labels, options), wherever it was downloaded from. What it
does not: the device itself, a key that leaked, or inputs given at run time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from .errors import BundleError, EdgertError

SIGNATURE = "manifest.sig"
FORMAT = "edgert-signature/1"
_configured: list[Path] = []  # --trusted-key, for this process


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgertError("signed bundles need the 'cryptography' package (pip install 'edgert[sign]')") from None
    return serialization, ed25519


def key_id(public_key) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def generate_key(private_path: str | os.PathLike) -> tuple[Path, Path, str]:
    """A new Ed25519 key pair: ``private_path`` (0600) and ``private_path.pub``, and its key id."""
    serialization, ed25519 = _crypto()
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):  # a dangling symlink too: it would be written through
            raise EdgertError(f"{path}: already exists; refusing to overwrite a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    written = []
    try:
        for path, data, mode in ((private_path, pem, 0o600), (public_path, public, 0o644)):
            # O_EXCL: never through a link planted since the check, never over a file
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
            written.append(path)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    except OSError as err:
        for path in written:  # only what this call created
            path.unlink(missing_ok=True)
        raise EdgertError(f"{err.filename}: cannot write the key ({err.strerror})") from None
    return private_path, public_path, key_id(key.public_key())


def _read_key(path: Path, private: bool):
    serialization, ed25519 = _crypto()
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise EdgertError(f"{path}: cannot read the key ({err.strerror})") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as err:
        raise EdgertError(f"{path}: not a PEM {'private' if private else 'public'} key ({err})") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise EdgertError(f"{path}: a {type(key).__name__}; edgert signs with Ed25519 keys (edgert keygen)")
    return key


def sign(bundle: str | os.PathLike, private_key: str | os.PathLike) -> str:
    """Write ``manifest.sig`` for ``bundle`` (verified first); returns the key id."""
    from .bundle import Bundle

    loaded = Bundle.load(bundle, trusted_keys=())
    key = _read_key(Path(private_key), private=True)
    manifest = loaded.manifest_bytes
    record = {"format": FORMAT, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
              "signature": base64.b64encode(key.sign(manifest)).decode()}
    tmp = loaded.root / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, loaded.root / SIGNATURE)
    return record["key_id"]


def configure(paths) -> None:
    """Add trusted public keys for this process (the CLI's ``--trusted-key``)."""
    _configured.extend(Path(p) for p in paths)


def trusted_key_files(extra=()) -> list[Path]:
    """Every configured trusted key file: ``extra``, --trusted-key, EDGERT_TRUSTED_KEYS, the config folder."""
    files: list[Path] = [Path(p) for p in extra] + list(_configured)
    for entry in filter(None, os.environ.get("EDGERT_TRUSTED_KEYS", "").split(os.pathsep)):
        path = Path(entry)
        files += sorted(path.glob("*.pub")) if path.is_dir() else [path]
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "edgert" / "trusted_keys"
    if config.is_dir():
        files += sorted(config.glob("*.pub"))
    return files


def verify(root: Path, manifest: bytes, key_files: list[Path]) -> str:
    """Check ``root``'s signature over ``manifest`` against ``key_files``; returns the key id."""
    path = root / SIGNATURE
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{root}: not signed ({SIGNATURE} missing) and trusted keys are configured; sign it with "
                          "`edgert sign` or load it where no trusted key is configured")
    try:
        record = json.loads(path.read_bytes()[:1 << 16].decode("utf-8"))
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("algorithm") != "ed25519":
            raise ValueError("not an edgert Ed25519 signature")
        signature = base64.b64decode(str(record["signature"]), validate=True)
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        raise BundleError(f"{path}: unreadable signature ({err})") from None
    keys = {key_id(k): k for k in (_read_key(f, private=False) for f in key_files)}
    key = keys.get(record.get("key_id"))
    if key is None:
        raise BundleError(f"{path}: signed by key {str(record.get('key_id'))[:16]}..., which is not among the "
                          f"{len(keys)} trusted keys")
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, manifest)
    except InvalidSignature:
        raise BundleError(f"{path}: the signature does not match {root / 'manifest.json'} (altered after signing)") from None
    return record["key_id"]
