"""Versioned model artifacts on disk, and the signed deployments built from them.

Where it sits: the trainer (:mod:`cloud.models`) saves every model it produces here; the
scheduler and the model publisher pick an entry (:meth:`Registry.latest`), and
:meth:`Registry.deployment` turns its edge artifact into a signed :class:`edgelearn.wire.Model`
that the lead's publisher puts on the retained ``models/<gateway>`` topic. Gateways verify
and load it with :func:`edgelearn.artifacts.load_deployment`; the cloud loads the other
half with :meth:`Registry.load_cloud_model`.

Layout (one immutable directory per version)::

    <root>/<name>/<version>/
        metadata.json     what, how good, how to run it (below)
        edge.tflite       the gateway half: int8 LiteRT (split, full, autoencoder) ...
        edge.npz          ... or the PCA projection (pca)
        cloud.keras       the cloud half: upper layers, feature classifier, or raw-mode CNN

An entry pairs the two halves of one deployment, so the ``model_version`` a gateway stamps
on its features names the upper part the cloud must run. Versions are unique across the
whole registry (automatic ones are ``v1``, ``v2``, ... from one counter) so a version alone
finds its entry (:meth:`Registry.by_version`). A version is written to a staging directory
and renamed into place, so readers never see half an entry; saving over an existing version
is refused (:class:`~cloud.models.errors.VersionExists`).

``metadata.json``::

    {"format": 1, "name", "version", "kind", "task", "split_k", "input_shape": [96, 96, 1],
     "created": ISO-8601 UTC, "accuracy": held-out accuracy of the served path or null,
     "sha256": digest of the edge artifact (of the cloud one for cloud-only kinds),
     "files": {"edge": {"path", "sha256", "bytes"}, "cloud": {...}},
     "quantization": {"input": {...}, "output": {dtype, shape, scale, zero_point}},
     "profile": per-boundary rows (CNNs, see cloud.models.profile), "extra": {...}}

Which version serves a mode is the newest entry, unless the serving pointer (written by the
continuous trainer, :meth:`Registry.set_serving`) names an entry of the same edge artifact:
a promotion (a new cloud half for features the gateways already make) or a rollback to an
older one points there. An entry with new edge bytes (a new first training) wins over the
pointer. The pointer is ``serving.json`` in the registry folder (:class:`FilePointer`) for
one machine, and a table in the shared PostgreSQL (:class:`DatabasePointer`) when several
cloud machines share a store: the model files are written once and never change, so a shared
folder holds them safely, but the pointer is the one thing they overwrite, and the database
gives every machine the same answer to "what serves now".

Every read of an artifact re-checks its sha256 (:class:`~cloud.models.errors.CorruptEntry`):
the registry never signs or serves bytes that changed on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud.database import Connection, Database
from cloud.models.errors import CorruptEntry, ModelNotFound, RegistryError, VersionExists
from edgelearn import signing, wire
from edgelearn.artifacts import ALL_KINDS, EDGE_KINDS, KIND_CLOUD_CLASSIFIER, KIND_PCA
from edgelearn.modes import RAW, SPLIT, Mode

log = logging.getLogger(__name__)

FORMAT: Final = 1
METADATA_FILE: Final = "metadata.json"
SERVING_FILE: Final = "serving.json"
CLOUD_FILE: Final = "cloud.keras"
EDGE: Final = "edge"
CLOUD: Final = "cloud"
_STAGING: Final = ".staging"
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_AUTO_VERSION = re.compile(r"^v(\d+)$")
# Fields a gateway needs; the rest of metadata.json (profile, extra) stays in the cloud.
_DEPLOYMENT_FIELDS: Final = (
    "task",
    "kind",
    "split_k",
    "created",
    "accuracy",
    "input_shape",
    "class_names",
)


def edge_file_name(kind: str) -> str:
    return "edge.npz" if kind == KIND_PCA else "edge.tflite"


def _check_ident(what: str, value: str) -> None:
    # Names become directory names and wire identifiers: no separators, no leading dot.
    if not _IDENT.match(value):
        raise RegistryError(
            f"{what} {value!r}: use 1-64 of [A-Za-z0-9_.-], not starting with a dot",
            reason="bad_name",
        )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One saved version; ``metadata`` is the parsed ``metadata.json``."""

    path: Path
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def version(self) -> str:
        return str(self.metadata["version"])

    @property
    def kind(self) -> str:
        return str(self.metadata["kind"])

    @property
    def task(self) -> str:
        return str(self.metadata["task"])

    @property
    def split_k(self) -> int:
        return int(self.metadata["split_k"])

    @property
    def mode(self) -> Mode:
        """The gateway mode this entry serves (the cloud-only CNN serves ``raw``)."""
        if self.kind == KIND_CLOUD_CLASSIFIER:
            return Mode(RAW)
        return Mode.of(self.kind, self.split_k)

    @property
    def model_input(self) -> str:
        """How the model's input was cut: :data:`edgelearn.roi.CROP_RULE` (an object's crop,
        :func:`edgelearn.roi.crop`), an older crop rule, or ``frame`` (the whole frame's
        centre square: every entry saved before objects existed)."""
        return str((self.metadata.get("extra") or {}).get("preprocessing", "frame"))

    @property
    def camera(self) -> str | None:
        """The camera this cloud half was specialised for (None: every camera)."""
        value = (self.metadata.get("extra") or {}).get("camera")
        return None if value is None else str(value)

    @property
    def trained_items(self) -> tuple[int, ...]:
        """The items of the cameras' data set (arrivals) this cloud half was trained on,
        its own and its parents' (the continuous trainer records them): no evidence for it."""
        extra = self.metadata.get("extra") or {}
        return tuple(int(item) for item in extra.get("trained_items", []))

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.metadata["input_shape"])

    @property
    def created(self) -> str:
        return str(self.metadata["created"])

    @property
    def accuracy(self) -> float | None:
        value = self.metadata.get("accuracy")
        return None if value is None else float(value)

    @property
    def sha256(self) -> str:
        return str(self.metadata["sha256"])

    def has(self, role: str) -> bool:
        return role in self.metadata["files"]

    def file_path(self, role: str) -> Path:
        if not self.has(role):
            raise ModelNotFound(
                f"{self.name} {self.version} has no {role} artifact", reason="no_artifact"
            )
        return self.path / str(self.metadata["files"][role]["path"])

    def read(self, role: str = EDGE) -> bytes:
        """The artifact's bytes, after checking them against the recorded digest."""
        path = self.file_path(role)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptEntry(f"{path}: {exc}", reason="unreadable") from exc
        if _sha256(data) != self.metadata["files"][role]["sha256"]:
            raise CorruptEntry(
                f"{path} does not match its sha256 in {METADATA_FILE}", reason="bad_digest"
            )
        return data


def _sort_key(entry: ModelEntry) -> tuple[str, int, str]:
    match = _AUTO_VERSION.match(entry.version)
    return (entry.created, int(match.group(1)) if match else -1, entry.version)


class ServingPointer(Protocol):
    """Which entry serves each mode (key ``split:2``) or a mode for one camera
    (``split:2@cam-1``), where it is not simply the newest."""

    def read(self) -> dict[str, str]: ...

    def write(self, key: str, version: str | None) -> None:
        """Point ``key`` at ``version`` (None: remove it), atomically for every reader."""


class FilePointer:
    """``serving.json`` in the registry folder: one machine's pointer."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / SERVING_FILE

    def read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring %s: %s", self.path, exc)
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def write(self, key: str, version: str | None) -> None:
        pointer = self.read()
        if version is None:
            pointer.pop(key, None)
        else:
            pointer[key] = version
        # written beside and renamed into place: a reader sees the old pointer or the new one
        handle, temporary = tempfile.mkstemp(prefix=".serving-", dir=self.path.parent)
        with os.fdopen(handle, "w") as file:
            json.dump(pointer, file, indent=2, sort_keys=True)
        os.replace(temporary, self.path)


_POINTER_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS serving_pointer (
    key TEXT PRIMARY KEY,
    version TEXT NOT NULL
);
"""
_SEEDED: Final = "(seeded)"  # a row that says the table took over from a folder's file


class DatabasePointer:
    """The pointer in the database every cloud machine shares (``--store
    postgresql://...``): a promotion one machine's trainer makes is what every machine's
    consumers resolve next (:class:`cloud.serving.ServingWatch`). The first time a store
    meets a registry, it takes over the folder's ``serving.json``, so the promotions made
    on one machine survive the move to several."""

    def __init__(self, database: Database, seed: FilePointer | None = None) -> None:
        self._db = database
        self._db.prepare(lambda connection: None)
        if seed is not None:
            rows = [(key, version) for key, version in seed.read().items()]
            self._db.run(lambda db: self._seed(db, rows))

    @classmethod
    def at(cls, location: str | Path, seed: FilePointer | None = None) -> DatabasePointer:
        """The pointer in the database at ``location`` (a PostgreSQL URL; an SQLite file
        works the same on one machine)."""
        return cls(Database(location, schema=_POINTER_SCHEMA), seed)

    @staticmethod
    def _seed(db: Connection, rows: list[tuple[str, str]]) -> None:
        with db.transaction():
            taken = db.execute(
                "INSERT INTO serving_pointer (key, version) VALUES (?, ?) ON CONFLICT DO NOTHING",
                (_SEEDED, ""),
            )
            if taken.rowcount == 1:  # the first process to meet this store
                for key, version in rows:
                    db.execute(
                        "INSERT INTO serving_pointer (key, version) VALUES (?, ?)"
                        " ON CONFLICT DO NOTHING",
                        (key, version),
                    )

    def read(self) -> dict[str, str]:
        rows = self._db.run(
            lambda db: db.execute("SELECT key, version FROM serving_pointer").fetchall()
        )
        return {str(key): str(version) for key, version in rows if key != _SEEDED}

    def write(self, key: str, version: str | None) -> None:
        def write(db: Connection) -> None:
            with db.transaction():
                if version is None:
                    db.execute("DELETE FROM serving_pointer WHERE key = ?", (key,))
                else:
                    db.execute(
                        "INSERT INTO serving_pointer (key, version) VALUES (?, ?)"
                        " ON CONFLICT (key) DO UPDATE SET version = excluded.version",
                        (key, version),
                    )

        self._db.run(write)

    def close(self) -> None:
        self._db.close()


class Registry:
    """Model versions under ``root`` (created if missing); which serves, by ``pointer``
    (default: ``serving.json`` under ``root``)."""

    def __init__(self, root: Path, pointer: ServingPointer | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.pointer: ServingPointer = pointer or FilePointer(self.root)
        # An entry never changes once published (a version is written once, renamed into
        # place), so each is read once: the trainers ask what serves every few seconds, and
        # parsing every metadata.json each time cost the cloud a tenth of a core.
        self._entries: dict[Path, ModelEntry] = {}

    # -- writing ---------------------------------------------------------------------------

    def save(
        self,
        *,
        name: str,
        kind: str,
        task: str,
        input_shape: Sequence[int],
        edge_artifact: bytes | None = None,
        cloud_artifact: bytes | None = None,
        split_k: int = 0,
        accuracy: float | None = None,
        quantization: Mapping[str, Any] | None = None,
        profile: Sequence[Mapping[str, Any]] | None = None,
        class_names: Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> ModelEntry:
        """Store a new version and return it. ``version=None`` takes the next ``vN``.

        Edge kinds (``pca``, ``autoencoder``, ``split``, ``full``) need an
        ``edge_artifact``; ``cloud-classifier`` needs a ``cloud_artifact`` and has no edge
        half. ``extra`` must be JSON-serialisable.
        """
        _check_ident("name", name)
        if kind not in ALL_KINDS:
            raise RegistryError(f"kind {kind!r}; known: {sorted(ALL_KINDS)}", reason="bad_kind")
        if kind in EDGE_KINDS and edge_artifact is None:
            raise RegistryError(f"a {kind} model needs an edge artifact", reason="missing_artifact")
        if kind not in EDGE_KINDS and (edge_artifact is not None or cloud_artifact is None):
            raise RegistryError(
                f"a {kind} model has a cloud artifact only", reason="missing_artifact"
            )
        if version is not None:
            _check_ident("version", version)
            if self._version_taken(version):
                raise VersionExists(f"version {version} exists", reason="version_exists")
        files: dict[str, bytes] = {}
        if edge_artifact is not None:
            files[EDGE] = edge_artifact
        if cloud_artifact is not None:
            files[CLOUD] = cloud_artifact
        file_names = {EDGE: edge_file_name(kind), CLOUD: CLOUD_FILE}
        metadata: dict[str, Any] = {
            "format": FORMAT,
            "name": name,
            "version": "",
            "kind": kind,
            "task": task,
            "split_k": int(split_k),
            "input_shape": [int(d) for d in input_shape],
            "created": datetime.now(UTC).isoformat(timespec="microseconds"),
            "accuracy": None if accuracy is None else float(accuracy),
            "sha256": _sha256(files[EDGE] if EDGE in files else files[CLOUD]),
            "files": {
                role: {"path": file_names[role], "sha256": _sha256(data), "bytes": len(data)}
                for role, data in files.items()
            },
            "quantization": dict(quantization or {}),
            "profile": [dict(row) for row in profile] if profile is not None else None,
            "class_names": list(class_names) if class_names is not None else None,
            "extra": dict(extra or {}),
        }
        staging_root = self.root / _STAGING
        staging_root.mkdir(exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="entry-", dir=staging_root))
        try:
            for role, data in files.items():
                (staging / file_names[role]).write_bytes(data)
            return self._publish(staging, name, version, metadata)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def save_like(
        self,
        entry: ModelEntry,
        *,
        edge_artifact: bytes | None = None,
        cloud_artifact: bytes | None = None,
        quantization: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> ModelEntry:
        """A new version of ``entry``'s model (name, kind, task, shape, split, accuracy,
        profile, classes) with the parts given replaced; the others are ``entry``'s
        (``extra``: entirely replaced when given)."""
        metadata = entry.metadata
        return self.save(
            name=entry.name,
            kind=entry.kind,
            task=entry.task,
            input_shape=entry.input_shape,
            edge_artifact=edge_artifact
            if edge_artifact is not None
            else (entry.read(EDGE) if entry.has(EDGE) else None),
            cloud_artifact=cloud_artifact if cloud_artifact is not None else entry.read(CLOUD),
            split_k=entry.split_k,
            accuracy=entry.accuracy,
            quantization=quantization if quantization is not None else metadata.get("quantization"),
            profile=metadata.get("profile"),
            class_names=metadata.get("class_names"),
            extra=extra if extra is not None else metadata.get("extra"),
        )

    def _publish(
        self, staging: Path, name: str, version: str | None, metadata: dict[str, Any]
    ) -> ModelEntry:
        (self.root / name).mkdir(exist_ok=True)
        # Automatic versions race with other writers: on a clash, take the next number.
        number = 0
        for _ in range(100):
            number = max(number + 1, self._next_number())
            chosen = version or f"v{number}"
            if version is None and self._version_taken(chosen):
                continue
            metadata["version"] = chosen
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True))
            target = self.root / name / chosen
            try:
                os.rename(staging, target)  # atomic; fails if the target exists and is not empty
            except OSError as exc:
                if version is not None:
                    raise VersionExists(
                        f"{name} {version} exists", reason="version_exists"
                    ) from exc
                continue
            log.info("saved model %s %s (%s) in %s", name, chosen, metadata["kind"], target)
            return ModelEntry(target, metadata)
        raise RegistryError(f"could not find a free version for {name}", reason="version_race")

    def _next_number(self) -> int:
        numbers = [int(m.group(1)) for e in self.list() if (m := _AUTO_VERSION.match(e.version))]
        return max(numbers, default=0) + 1

    def _version_taken(self, version: str) -> bool:
        return any(path.is_dir() for path in self.root.glob(f"[!.]*/{version}"))

    # -- reading ---------------------------------------------------------------------------

    def _load(self, path: Path) -> ModelEntry:
        cached = self._entries.get(path)
        if cached is not None:
            return cached
        entry = self._read(path)
        self._entries[path] = entry
        return entry

    def _read(self, path: Path) -> ModelEntry:
        try:
            metadata = json.loads((path / METADATA_FILE).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptEntry(f"{path / METADATA_FILE}: {exc}", reason="bad_metadata") from exc
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
            raise CorruptEntry(
                f"{path / METADATA_FILE}: not format {FORMAT}", reason="bad_metadata"
            )
        if metadata.get("name") != path.parent.name or metadata.get("version") != path.name:
            raise CorruptEntry(
                f"{path}: metadata names {metadata.get('name')} {metadata.get('version')}",
                reason="bad_metadata",
            )
        return ModelEntry(path, metadata)

    def list(self, name: str | None = None) -> list[ModelEntry]:
        """Every readable entry (of ``name``), oldest first. Unreadable ones are skipped
        with a WARNING rather than hiding all the others."""
        pattern = f"{name}/*/{METADATA_FILE}" if name else f"[!.]*/*/{METADATA_FILE}"
        if name:
            _check_ident("name", name)
        entries = []
        for metadata_path in self.root.glob(pattern):
            try:
                entries.append(self._load(metadata_path.parent))
            except CorruptEntry as exc:
                log.warning("skipping registry entry %s: %s", metadata_path.parent, exc)
        return sorted(entries, key=_sort_key)

    def get(self, name: str, version: str | None = None) -> ModelEntry:
        """``name`` at ``version``, or its newest version."""
        _check_ident("name", name)
        if version is None:
            entries = self.list(name)
            if not entries:
                raise ModelNotFound(f"no model named {name}")
            return entries[-1]
        _check_ident("version", version)
        path = self.root / name / version
        if not (path / METADATA_FILE).is_file():
            raise ModelNotFound(f"no model {name} {version}")
        return self._load(path)

    def by_version(self, version: str) -> ModelEntry:
        """The entry with this version (versions are unique across names)."""
        _check_ident("version", version)
        for path in self.root.glob(f"[!.]*/{version}/{METADATA_FILE}"):
            return self._load(path.parent)
        raise ModelNotFound(f"no model with version {version}")

    def latest(
        self,
        *,
        kind: str | None = None,
        name: str | None = None,
        task: str | None = None,
        split_k: int | None = None,
    ) -> ModelEntry:
        """The newest entry matching every given filter (a camera's specialised cloud half
        is never the newest of anything: :meth:`serving_for` finds those)."""
        matches = [
            entry
            for entry in self.list(name)
            if entry.camera is None
            and (kind is None or entry.kind == kind)
            and (task is None or entry.task == task)
            and (split_k is None or entry.split_k == split_k)
        ]
        if not matches:
            raise ModelNotFound(
                f"no model with kind={kind} name={name} task={task} split_k={split_k}"
            )
        return matches[-1]

    def serving(self, mode: Mode) -> ModelEntry:
        """The entry that serves ``mode`` (``raw``: the cloud-only CNN): the newest, or the
        one ``serving.json`` names if it shares the newest one's edge artifact."""
        if mode.kind == RAW:
            newest = self.latest(kind=KIND_CLOUD_CLASSIFIER)
        else:  # a full model records its block count as split_k; only a split's k names it
            newest = self.latest(
                kind=mode.kind, split_k=mode.split_k if mode.kind == SPLIT else None
            )
        pointed = self.serving_pointer().get(str(mode))
        if pointed is None or pointed == newest.version:
            return newest
        try:
            entry = self.by_version(pointed)
        except RegistryError:
            return newest
        return entry if entry.sha256 == newest.sha256 and entry.kind == newest.kind else newest

    def serving_for(self, mode: Mode, camera: str) -> ModelEntry:
        """What serves ``mode`` for ``camera``: its specialised cloud half when
        ``serving.json`` names one of the serving entry's edge artifact, else the serving
        entry itself."""
        serving = self.serving(mode)
        pointed = self.serving_pointer().get(_camera_key(mode, camera))
        if pointed is None:
            return serving
        try:
            entry = self.by_version(pointed)
        except RegistryError:
            return serving
        return entry if entry.sha256 == serving.sha256 and entry.camera == camera else serving

    def trained_items(self, task: str) -> set[int]:
        """Every arrival item a model of ``task`` in this registry was trained on: what a
        live accuracy of this task must leave out to rest on items no model saw."""
        return {item for entry in self.list() if entry.task == task for item in entry.trained_items}

    def lineage(self, entry: ModelEntry) -> tuple[ModelEntry, ...]:
        """Every entry with ``entry``'s edge artifact (same kind and split), oldest first:
        gateways running any of them send features of one space, one training set."""
        return tuple(
            other
            for other in self.list()
            if other.kind == entry.kind
            and other.split_k == entry.split_k
            and other.sha256 == entry.sha256
        )

    def serving_pointer(self) -> dict[str, str]:
        """The pointer as it stands: key (``split:2``, ``split:2@cam-1``) -> version."""
        return self.pointer.read()

    def set_serving(self, mode: Mode, version: str | None, camera: str | None = None) -> None:
        """Serve ``version`` for ``mode`` (for one ``camera``: its specialised cloud half;
        None: that camera goes back to the global one) from now on: a promotion or a
        rollback. Atomic: a reader sees the old pointer or the new one."""
        key = str(mode) if camera is None else _camera_key(mode, camera)
        if version is not None:
            self.by_version(version)  # it must exist
        self.pointer.write(key, version)

    # -- deploying -------------------------------------------------------------------------

    def deployment(
        self, name: str, version: str | None, private_key: Ed25519PrivateKey
    ) -> wire.Model:
        """The signed envelope of ``name``/``version``'s edge artifact, for every gateway."""
        entry = self.get(name, version)
        _check_deployable(entry)
        return build_deployment(entry, entry.read(EDGE), private_key)

    def cloud_archive(self, entry: ModelEntry) -> bytes:
        """The cloud half's ``.keras`` archive, as saved: serving answers it in numpy
        (:class:`cloud.models.numpy_half.NumpyHalf`), without TensorFlow."""
        return entry.read(CLOUD)

    def load_cloud_model(self, entry: ModelEntry) -> Any:
        """The cloud half as a Keras model (imports TensorFlow): for training."""
        return keras_from_bytes(self.cloud_archive(entry))


def _camera_key(mode: Mode, camera: str) -> str:
    return f"{mode}@{camera}"


def keras_to_bytes(model: Any) -> bytes:
    """A Keras model as the bytes of its ``.keras`` zip (architecture + weights): the
    registry's format of every cloud half."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / CLOUD_FILE
        model.save(path)
        return path.read_bytes()


def keras_from_bytes(data: bytes) -> Any:
    """The inverse of :func:`keras_to_bytes` (safe mode: no arbitrary code in the file;
    imports TensorFlow)."""
    import keras

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / CLOUD_FILE
        path.write_bytes(data)
        return keras.models.load_model(path, compile=False, safe_mode=True)


def _check_deployable(entry: ModelEntry) -> None:
    if entry.kind not in EDGE_KINDS:
        raise RegistryError(
            f"{entry.name} {entry.version} is {entry.kind}; nothing runs at the edge",
            reason="not_deployable",
        )


def deployment_metadata(entry: ModelEntry) -> str:
    """``metadata_json`` of a deployment: what a gateway needs to run and report the model
    (``output`` quantisation, input shape, class names for ``full``), within the envelope's
    4 KiB text limit. The per-boundary profile and ``extra`` stay in the registry."""
    metadata = {key: entry.metadata.get(key) for key in _DEPLOYMENT_FIELDS}
    metadata["format"] = FORMAT
    metadata["preprocessing"] = entry.model_input  # the edge half takes object crops or frames
    quantization = entry.metadata.get("quantization") or {}
    if "output" in quantization:
        metadata["output"] = quantization["output"]
    if "input" in quantization:
        metadata["model_input"] = quantization["input"]
    text = json.dumps(metadata, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) > wire.MAX_TEXT_LENGTH:
        raise RegistryError(
            f"deployment metadata is {len(text.encode())} bytes", reason="metadata_too_long"
        )
    return text


def build_deployment(
    entry: ModelEntry, artifact: bytes, private_key: Ed25519PrivateKey
) -> wire.Model:
    """Pure: the signed :class:`wire.Model` for ``entry`` carrying ``artifact``.

    Refuses cloud-only kinds and an artifact whose digest is not the entry's (so a caller
    cannot sign bytes the registry did not store).
    """
    _check_deployable(entry)
    if _sha256(artifact) != entry.sha256:
        raise CorruptEntry(
            f"artifact does not match {entry.name} {entry.version}", reason="bad_digest"
        )
    return signing.sign_model(
        private_key,
        name=entry.name,
        version=entry.version,
        kind=entry.kind,
        split_k=entry.split_k,
        input_shape=entry.input_shape,
        metadata_json=deployment_metadata(entry),
        artifact=artifact,
    )


__all__ = [
    "CLOUD",
    "EDGE",
    "ModelEntry",
    "Registry",
    "build_deployment",
    "deployment_metadata",
    "edge_file_name",
    "keras_from_bytes",
    "keras_to_bytes",
]
