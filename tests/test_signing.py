"""Signed bundles (runtime/signing.py): Ed25519 over the manifest's bytes, which pin every file.
With trusted keys configured (argument, --trusted-key, EDGERT_TRUSTED_KEYS, the config folder),
an unsigned bundle, another key's signature, one altered byte in any file or in the manifest, a
graph swapped with its sha256 recomputed, a removed or garbled signature: each refused in one line."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil

import pytest

from conftest import assert_user_error, edgert

pytest.importorskip("cryptography", reason="signing needs cryptography (sign extra)")

from edgert.runtime import load  # noqa: E402
from edgert.runtime.bundle import Bundle  # noqa: E402
from edgert.runtime.errors import BundleError, EdgertError  # noqa: E402
from edgert.runtime.signing import generate_key, sign  # noqa: E402


@pytest.fixture
def signed(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    private, public, _ = generate_key(tmp_path / "key")
    _, other_public, _ = generate_key(tmp_path / "other")
    key = sign(bundle, private)
    return bundle, public, other_public, key


def test_a_signed_bundle_loads_against_its_key(signed):
    bundle, public, _, key = signed
    assert load(bundle, trusted_keys=[public]).bundle.signer == key
    assert Bundle.load(bundle).signer is None  # no trusted key configured: not checked
    info = edgert("info", bundle, "--trusted-key", public)
    assert info.returncode == 0 and f"signature  ed25519, key {key} (verified" in info.stdout
    assert (public.parent / "key").stat().st_mode & 0o777 == 0o600


def tamper_file(bundle):
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))


def tamper_manifest(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["labels"][0] = "forged"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def swap_graph(bundle):
    """Another graph in place of the signed one, its sha256 written into the manifest."""
    data = (bundle / "model.onnx").read_bytes() + b"\0"
    (bundle / "model.onnx").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["model.onnx"] = hashlib.sha256(data).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def remove_signature(bundle):
    (bundle / "manifest.sig").unlink()


def garble_signature(bundle):
    record = json.loads((bundle / "manifest.sig").read_text())
    record["signature"] = base64.b64encode(b"\1" * 64).decode()
    (bundle / "manifest.sig").write_text(json.dumps(record))


def not_json_signature(bundle):
    (bundle / "manifest.sig").write_bytes(b"\xff\xfe garbage")


@pytest.mark.parametrize("attack, words", [
    (tamper_file, "model.onnx: sha256 does not match the manifest"),
    (tamper_manifest, "the signature does not match"),
    (swap_graph, "the signature does not match"),
    (remove_signature, "not signed (manifest.sig missing) and trusted keys are configured"),
    (garble_signature, "the signature does not match"),
    (not_json_signature, "manifest.sig: unreadable signature"),
])
def test_every_alteration_is_refused(signed, attack, words):
    bundle, public, _, _ = signed
    attack(bundle)
    with pytest.raises(BundleError, match=words.replace("(", r"\(").replace(")", r"\)")):
        load(bundle, trusted_keys=[public])
    assert_user_error(edgert("run", bundle, "--input", bundle / "x.npy", "--trusted-key", public), words)


def test_another_key_is_refused(signed):
    bundle, _, other, key = signed
    with pytest.raises(BundleError, match=f"signed by key {key[:16]}\\.\\.\\., which is not among the 1 trusted keys"):
        load(bundle, trusted_keys=[other])


def test_the_trust_store_is_enforced_without_being_asked(signed, tmp_path, monkeypatch, tiny_bundle):
    bundle, public, other, _ = signed
    monkeypatch.setenv("EDGERT_TRUSTED_KEYS", str(public))
    assert load(bundle).bundle.signer
    with pytest.raises(BundleError, match="not signed"):
        load(tiny_bundle)
    monkeypatch.delenv("EDGERT_TRUSTED_KEYS")
    store = tmp_path / "config" / "edgert" / "trusted_keys"
    store.mkdir(parents=True)
    shutil.copy(other, store / "other.pub")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    assert_user_error(edgert("info", bundle, env={"XDG_CONFIG_HOME": str(tmp_path / "config")}),
                      "which is not among the 1 trusted keys")
    assert load(bundle, trusted_keys=[]).bundle.signer is None  # an explicit empty list: no check


def test_keys_are_checked(signed, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    bundle, public, _, _ = signed
    with pytest.raises(EdgertError, match="already exists; refusing to overwrite a key"):
        generate_key(tmp_path / "key")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (tmp_path / "rsa.pem").write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    assert_user_error(edgert("sign", bundle, "--key", tmp_path / "rsa.pem"), "edgert signs with Ed25519 keys")
    (tmp_path / "junk.pub").write_text("not a key")
    assert_user_error(edgert("info", bundle, "--trusted-key", tmp_path / "junk.pub"), "junk.pub: not a PEM public key")
    tamper_file(bundle)
    assert_user_error(edgert("sign", bundle, "--key", tmp_path / "key"), "sha256 does not match")  # never signs a damaged bundle


def test_a_signed_bundle_can_be_re_exported_with_force(signed):
    from conftest import TINY_TSN

    bundle, public, _, _ = signed
    assert edgert("export", "tsn", "--out", bundle, *TINY_TSN, "--force").returncode == 0
    assert not (bundle / "manifest.sig").exists()  # the new manifest is not the one that was signed


def test_keygen_never_writes_through_a_planted_link(tmp_path):
    """A dangling symlink where KEY.pub goes: refused in one line, the link's target never
    created, no private key left behind."""
    target = tmp_path / "elsewhere" / "owned"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "key.pub").symlink_to(target)
    assert_user_error(edgert("keygen", "--out", tmp_path / "key"), "key.pub: already exists; refusing to overwrite a key")
    assert not target.exists() and not (tmp_path / "key").exists()
    done = edgert("keygen", "--out", tmp_path / "fresh")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o600 and (tmp_path / "fresh.pub").is_file()
