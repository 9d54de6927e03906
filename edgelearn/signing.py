"""Ed25519 signing of model deployments: the cloud signs, gateways verify before loading.

The key pair is made by ``edgelearn broker init`` (``model-signing.key`` / ``.pub`` in the
secrets directory). A deployment carries the artifact's sha256 and a signature over
:meth:`edgelearn.wire.Model.signed_bytes`; a receiver recomputes the digest from the bytes
it got and checks the signature against the public key it trusts. Anything else is refused
with a :class:`ModelRejected` whose ``reason`` is a bounded metric label.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edgelearn import wire

PRIVATE_KEY_FILE = "model-signing.key"
PUBLIC_KEY_FILE = "model-signing.pub"


class ModelRejected(Exception):
    """A deployment that must not be loaded. ``reason``: unsigned, bad_digest, bad_signature,
    unknown_key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def generate_key_pair(directory: Path) -> None:
    """Write a new key pair (private key readable by the owner only)."""
    key = Ed25519PrivateKey.generate()
    private = directory / PRIVATE_KEY_FILE
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    (directory / PUBLIC_KEY_FILE).write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint naming the key in deployments (so rotation can be told apart)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign_model(
    private_key: Ed25519PrivateKey,
    *,
    name: str,
    version: str,
    kind: str,
    split_k: int,
    input_shape: tuple[int, ...],
    metadata_json: str,
    artifact: bytes,
) -> wire.Model:
    """Build a signed deployment envelope for ``artifact``."""
    unsigned = wire.Model(
        name=name,
        version=version,
        kind=kind,
        split_k=split_k,
        input_shape=input_shape,
        metadata_json=metadata_json,
        sha256=hashlib.sha256(artifact).digest(),
        key_id=key_id(private_key.public_key()),
        signature=bytes(64),
        artifact=artifact,
    )
    return dataclasses.replace(unsigned, signature=private_key.sign(unsigned.signed_bytes()))


def verify_model(model: wire.Model, trusted: Ed25519PublicKey) -> None:
    """Raise :class:`ModelRejected` unless ``model`` is intact and signed by ``trusted``."""
    if model.signature == bytes(64):
        raise ModelRejected("unsigned", f"{model.name} {model.version} carries no signature")
    if hashlib.sha256(model.artifact).digest() != model.sha256:
        raise ModelRejected("bad_digest", f"{model.name} {model.version}: artifact altered")
    if model.key_id != key_id(trusted):
        raise ModelRejected("unknown_key", f"signed by {model.key_id}, we trust {key_id(trusted)}")
    try:
        trusted.verify(model.signature, model.signed_bytes())
    except InvalidSignature as exc:
        raise ModelRejected("bad_signature", f"{model.name} {model.version}") from exc
