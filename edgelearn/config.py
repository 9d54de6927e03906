"""Typed configuration shared by every service: broker connection and a config loader.

Each service has one frozen dataclass for its settings. :func:`load` fills it from, in
increasing precedence, the dataclass defaults, a TOML file, ``EDGELEARN_<FIELD>`` environment
variables and explicit overrides (the CLI's flags). Unknown keys are an error, as are values
that do not convert to the field's type: a typo in a config file must not be silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgelearn.secrets import Secrets, default_secrets_dir


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key and the source."""


T = TypeVar("T")


def _convert(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        return _convert(value, options[0], where)
    if isinstance(annotation, type) and hasattr(annotation, "parse"):  # a Mode, say
        try:
            return value if isinstance(value, annotation) else annotation.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if annotation in (int, float, str):
            if annotation is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return annotation(value)
        if annotation is Path:
            return Path(value).expanduser()
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            (item_type, *_) = typing.get_args(annotation)
            return tuple(
                _convert(item.strip() if isinstance(item, str) else item, item_type, where)
                for item in items
                if item != ""
            )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r} as {annotation}") from exc
    return value


def load(
    cls: type[T],
    *,
    path: Path | None = None,
    section: str | None = None,
    env_prefix: str = "EDGELEARN_",
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> T:
    """Build ``cls`` (a dataclass) from defaults < TOML ``path`` < environment < overrides.

    ``overrides`` values that are ``None`` are skipped, so argparse namespaces can be passed
    through without clobbering file values with unset flags.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {item.name for item in dataclasses.fields(cls) if item.init}
    values: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        table = document.get(section, {}) if section else document
        unknown = sorted(set(table) - names)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown} (known: {sorted(names)})")
        for key, value in table.items():
            values[key] = _convert(value, hints[key], f"{path}:{key}")
    environ = os.environ if environ is None else environ
    for key in names:
        variable = env_prefix + key.upper()
        if variable in environ:
            values[key] = _convert(environ[variable], hints[key], variable)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in names:
            raise ConfigError(f"unknown setting {key!r} (known: {sorted(names)})")
        values[key] = _convert(value, hints[key], f"--{key.replace('_', '-')}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from exc


def dump(settings: Any, section: str) -> str:
    """``settings`` (a dataclass of scalars and paths) as the ``[section]`` TOML table that
    :func:`load` reads back into the same value; ``None`` fields are left out (their
    default is ``None``). How one process hands another its settings: a file, not an argv
    that each hop spells again."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError(f"{settings!r} is not a dataclass instance")
    lines = [f"[{section}]"]
    for item in dataclasses.fields(settings):
        if not item.init:
            continue
        value = getattr(settings, item.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, str | Path) or hasattr(type(value), "parse"):
            text = json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's
        elif isinstance(value, tuple):
            text = json.dumps([str(v) if isinstance(v, Path) else v for v in value])
        else:
            raise TypeError(f"{item.name}: cannot write {type(value).__name__} to TOML")
        lines.append(f"{item.name} = {text}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BrokerConfig:
    """Where and as whom a client connects. Passwords come from the secrets directory."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"broker port {self.port} is out of range")
        if self.tls and self.ca_file is None:
            raise ConfigError("TLS needs a CA file to verify the broker against")

    @classmethod
    def for_user(
        cls,
        user: str,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        secrets_dir: Path | None = None,
        tls: bool = False,
    ) -> BrokerConfig:
        """Credentials of ``user`` from the secrets directory made by ``broker init``."""
        secrets = Secrets(secrets_dir or default_secrets_dir())
        return cls(
            host=host,
            port=port,
            username=user,
            password=secrets.password(user),
            tls=tls,
            ca_file=secrets.ca_certificate if tls else None,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def apply_to_paho(self, client: Any) -> None:
        """Set credentials and TLS on a ``paho.mqtt.client.Client``."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        context = self.ssl_context()
        if context is not None:
            client.tls_set_context(context)


def parse_address(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":")) if rest.strip(":") else default_port
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    try:
        return host, int(port)
    except ValueError as exc:
        raise ConfigError(f"bad address {text!r}: port must be a number") from exc
