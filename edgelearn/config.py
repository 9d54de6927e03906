"""Typed configuration shared by every service: broker connection and a config loader.

Each service has one frozen dataclass for its settings. :func:`load` fills it from, in
increasing precedence, the dataclass defaults, a TOML file, ``EDGELEARN_<FIELD>`` environment
variables and explicit overrides (the CLI's flags). Unknown keys are an error, as are values
that do not convert to the field's type: a typo in a config file must not be silently ignored.
A service with parts (the cloud's planner, its trainer) nests them: a field whose type is a
dataclass is read from a sub-table of its own, ``[cloud.plan]``, by the same rules.
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


def _part(annotation: Any) -> type[Any] | None:
    """The dataclass a field of this type is read from, as a table of its own; or None
    (a value with ``parse()``, a Mode say, is one setting written as its text)."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return None if hasattr(annotation, "parse") else annotation
    return None


def setting_names(cls: type[Any]) -> frozenset[str]:
    """Every setting of ``cls`` by the name :func:`load` takes in ``overrides``: a field's
    name, and ``part.name`` for each setting of a part (a field whose type is a dataclass)."""
    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for item in dataclasses.fields(cls):
        if not item.init:
            continue
        part = _part(hints[item.name])
        if part is None:
            names.add(item.name)
        else:
            names.update(f"{item.name}.{name}" for name in setting_names(part))
    return frozenset(names)


def flag_overrides(
    cls: type[Any], flags: Mapping[str, Any], renames: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The settings of ``cls`` among a command's parsed ``flags`` (``vars(args)``), keyed as
    :func:`load`'s ``overrides`` takes them; ``renames`` maps a flag's dest to its setting
    (``plan_hold`` to ``plan.hold``). Flags that are no setting (``config``, ``verbose``)
    are left out; unset ones stay None, which :func:`load` skips."""
    names, renames = setting_names(cls), renames or {}
    return {
        renames.get(dest, dest): value
        for dest, value in flags.items()
        if renames.get(dest, dest) in names
    }


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

    A field whose type is itself a dataclass is a *part* of the service with settings of
    its own: they are read from the sub-table ``[section.field]`` (unknown keys refused there
    too), from ``EDGELEARN_<FIELD>_<SETTING>`` variables and from ``field.setting``
    overrides. A part starts from its own class's defaults, so the field's default must be
    just that (``field(default_factory=ThePart)``).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    table: dict[str, Any] = {}
    if path is not None:
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        table = document.get(section, {}) if section else document
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {section} must be a table, [{section}]")
    return _build(
        cls,
        table,
        source=str(path) if path is not None else "",
        section=section,
        environ=os.environ if environ is None else environ,
        env_prefix=env_prefix,
        overrides=overrides or {},
        part="",
    )


def _build(
    cls: type[T],
    table: dict[str, Any],
    *,
    source: str,
    section: str | None,
    environ: Mapping[str, str],
    env_prefix: str,
    overrides: Mapping[str, Any],
    part: str,
) -> T:
    """``cls`` from its TOML ``table``, the environment and ``overrides``; ``part`` is the
    dotted path of ``cls`` within the service's settings ("" for the whole service), whose
    own parts are built the same way, each from its sub-table."""
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls) if item.init]  # type: ignore[arg-type]
    parts = {name: kind for name in names if (kind := _part(hints[name])) is not None}
    header = ".".join(level for level in (section, part.rstrip(".")) if level)
    where = f"{source} [{header}]" if part else source
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown} (known: {sorted(names)})")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in parts:
            if not isinstance(value, dict):
                table_name = ".".join(level for level in (header, key) if level)
                raise ConfigError(f"{source}: {part}{key} must be a table, [{table_name}]")
        else:
            values[key] = _convert(value, hints[key], f"{source}:{part}{key}")
    for key in names:
        variable = env_prefix + key.upper()
        if key not in parts and variable in environ:
            values[key] = _convert(environ[variable], hints[key], variable)
    for_parts: dict[str, dict[str, Any]] = {name: {} for name in parts}
    for key, value in overrides.items():
        if value is None:
            continue
        head, dot, rest = key.partition(".")
        if dot and head in parts:
            for_parts[head][rest] = value
        elif key in names and key not in parts:
            flag = "--" + f"{part}{key}".replace("_", "-").replace(".", "-")
            values[key] = _convert(value, hints[key], flag)
        else:
            known = sorted(part + name for name in setting_names(cls))
            raise ConfigError(f"unknown setting {part + key!r} (known: {known})")
    for key, kind in parts.items():
        clash = {f"{key}_{name}" for name in setting_names(kind)} & set(names)
        if clash:  # one variable, EDGELEARN_<KEY>_<NAME>, would set both
            raise TypeError(f"{cls.__name__}: {sorted(clash)} clash with part {key}'s settings")
        values[key] = _build(
            kind,
            table.get(key, {}),
            source=source,
            section=section,
            environ=environ,
            env_prefix=f"{env_prefix}{key.upper()}_",
            overrides=for_parts[key],
            part=f"{part}{key}.",
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{part.rstrip('.')}: {exc}" if part else str(exc)) from exc


def dump(settings: Any, section: str) -> str:
    """``settings`` (a dataclass of scalars and paths) as the ``[section]`` TOML table that
    :func:`load` reads back into the same value; ``None`` fields are left out (their
    default is ``None``), and each part (a field that is a dataclass) follows as its
    sub-table ``[section.field]``. How one process hands another its settings: a file, not
    an argv that each hop spells again."""
    if not dataclasses.is_dataclass(settings) or isinstance(settings, type):
        raise TypeError(f"{settings!r} is not a dataclass instance")
    lines = [f"[{section}]"]
    parts = []
    for item in dataclasses.fields(settings):
        if not item.init:
            continue
        value = getattr(settings, item.name)
        if value is None:
            continue
        if _part(type(value)) is not None:
            parts.append(dump(value, f"{section}.{item.name}"))  # after this table's keys
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
    return "\n".join(lines) + "\n" + "".join("\n" + part for part in parts)


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
