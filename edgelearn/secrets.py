"""The secrets directory made by ``edgelearn broker init`` and read by every client.

Layout (all files owner-only)::

    credentials.toml     user -> {password, role}: what clients read to log in
    passwd               the same users, hashed for mosquitto (PBKDF2-SHA512, "$7$")
    acl                  per-role access rules for mosquitto
    ca.crt / ca.key      the site's certificate authority
    server.crt / .key    the broker's TLS certificate, signed by the CA
    model-signing.key / .pub   Ed25519 key pair the cloud signs models with

It lives outside the repository (default ``~/.local/state/edgelearn/secrets``, or
``$EDGELEARN_SECRETS``) so no credential is ever committed.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROLES = ("camera", "gateway", "cloud", "bridge", "observer")


class SecretsError(RuntimeError):
    """The secrets directory is missing or lacks what a client needs."""


def default_secrets_dir() -> Path:
    explicit = os.environ.get("EDGELEARN_SECRETS")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgelearn" / "secrets"


def default_state_dir() -> Path:
    """Where a host keeps what must outlive a process: secrets, registry, outboxes, ledgers."""
    return default_secrets_dir().parent


def registry_dir(explicit: Path | None = None) -> Path:
    """The model registry: ``explicit``, else ``$EDGELEARN_REGISTRY``, else the state's."""
    chosen = explicit or os.environ.get("EDGELEARN_REGISTRY")
    return Path(chosen) if chosen else default_state_dir() / "registry"


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password: str


@dataclass(frozen=True)
class Secrets:
    directory: Path

    @property
    def credentials_file(self) -> Path:
        return self.directory / "credentials.toml"

    @property
    def password_file(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_file(self) -> Path:
        return self.directory / "acl"

    @property
    def ca_certificate(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_certificate(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def signing_key(self) -> Path:
        return self.directory / "model-signing.key"

    @property
    def signing_public_key(self) -> Path:
        return self.directory / "model-signing.pub"

    def exists(self) -> bool:
        return self.credentials_file.is_file()

    def users(self) -> list[User]:
        if not self.exists():
            raise SecretsError(f"no secrets in {self.directory}: run `edgelearn broker init` first")
        document = tomllib.loads(self.credentials_file.read_text())
        return [
            User(name=name, role=str(entry["role"]), password=str(entry["password"]))
            for name, entry in document.get("users", {}).items()
        ]

    def password(self, user: str) -> str:
        for entry in self.users():
            if entry.name == user:
                return entry.password
        raise SecretsError(
            f"user {user!r} is not in {self.credentials_file}: "
            f"add it with `edgelearn broker add-user`"
        )
