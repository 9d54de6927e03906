"""Per-camera OSCORE credentials for CoAP, from the secrets directory.

Over MQTT a camera's identity is its broker credential. Over CoAP it is its OSCORE security
context (RFC 8613): the camera protects each POST with keys only it and the gateways share,
the gateway's endpoint unprotects it and learns which camera sent it, and the gateway then
refuses an envelope naming another camera (``camera_mismatch``), as over MQTT.

Why OSCORE rather than DTLS-PSK or ``coaps+tcp``: the gateway serves CoAP over UDP
(block-wise) and over TCP, and OSCORE protects the message itself, so one mechanism covers
both. It needs only pure-Python packages besides ``cryptography`` (aiocoap's ``oscore``
extra), and it has replay protection built in. aiocoap's DTLS-PSK server needs the native
tinydtls binding and is marked experimental; Python's ``ssl`` offers no PSK before 3.13, so
``coaps+tcp`` would need certificates per camera. The cost: libcoap's ``coap-client`` in
Debian 12 (4.3.1) has no OSCORE, so a camera needs aiocoap (ours does).

* The master secret of camera ``C`` is HKDF-SHA256 of ``C``'s broker password (info
  ``edgelearn oscore C``): one credential per camera, rotated with its password, and the
  password itself never keys CoAP.
* Sender IDs: a camera's is 6 bytes of SHA-256 of its id (OSCORE allows 7 with AES-CCM);
  the gateway's is ``gw``.
* A security context holds sequence numbers and a replay window, so it must never be used by
  two processes or copied: each side keeps its own under its state directory
  (``oscore/<owner>/<camera>/``), made on first use and re-keyed when the password changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgelearn.secrets import Secrets

GATEWAY_KID: Final = b"gw"


def camera_kid(camera: str) -> bytes:
    return hashlib.sha256(camera.encode()).digest()[:6]


def master_secret(secrets: Secrets, camera: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"edgelearn oscore {camera}".encode()
    ).derive(secrets.password(camera).encode())


def security_context(directory: Path, secret: bytes, sender: bytes, recipient: bytes) -> Any:
    """The OSCORE context kept in ``directory`` (aiocoap's FilesystemSecurityContext)."""
    from aiocoap.oscore import FilesystemSecurityContext

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    wanted = {
        "sender-id_hex": sender.hex(),
        "recipient-id_hex": recipient.hex(),
        "secret_hex": secret.hex(),
    }
    path = directory / "secret.json"
    if not path.exists() or json.loads(path.read_text()) != wanted:
        # New or re-keyed: sequence numbers start over with the new keys.
        (directory / "sequence.json").unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(wanted, file)
    return FilesystemSecurityContext(str(directory))


def camera_users(secrets: Secrets) -> list[str]:
    return sorted(user.name for user in secrets.users() if user.role == "camera")


def gateway_credentials(secrets: Secrets, state_dir: Path) -> Any:
    """The gateway's side: one context per camera user in the secrets; a request
    unprotected with one carries that camera's id as its authenticated claim."""
    from aiocoap.credentials import CredentialsMap

    credentials = CredentialsMap()
    for camera in camera_users(secrets):
        context = security_context(
            state_dir / camera, master_secret(secrets, camera), GATEWAY_KID, camera_kid(camera)
        )
        context.authenticated_claims = [camera]
        credentials[f":{camera}"] = context
    return credentials


def camera_context(secrets: Secrets, state_dir: Path, camera: str) -> Any:
    """A camera's side of its context with the gateways."""
    return security_context(
        state_dir / camera, master_secret(secrets, camera), camera_kid(camera), GATEWAY_KID
    )


def authenticated_camera(request: Any) -> str | None:
    """The camera an OSCORE-protected request came from; None if it was not protected."""
    claims = getattr(request.remote, "authenticated_claims", None) or []
    return str(claims[0]) if claims else None
