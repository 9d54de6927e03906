"""The exceptions of the model toolkit, drawn as a tree::

    ModelError                  base of everything cloud.models and cloud.registry raise on purpose
    ├── SplitError              a split boundary that does not exist, or upper(lower(x)) != full(x)
    ├── ExportError             a model the LiteRT converter could not turn into int8
    └── RegistryError           the on-disk registry refused an operation
        ├── ModelNotFound       no such name/version (or nothing matches a query)
        ├── VersionExists       versions are immutable: saving over one is refused
        └── CorruptEntry        a file's bytes no longer match the digest in metadata.json

An artifact that does not fit its kind's format raises
:class:`edgelearn.artifacts.ArtifactError`, in the floor, because gateways load artifacts too.

Every exception carries ``reason``, a short bounded string fit for a metric label, and a
human ``detail``. TensorFlow's own errors are wrapped (``raise ... from exc``) where a caller
could sensibly handle them.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of the errors this package raises on purpose."""

    default_reason = "error"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        self.reason = reason or self.default_reason
        self.detail = detail
        super().__init__(f"{self.reason}: {detail}")


class SplitError(ModelError):
    default_reason = "bad_split"


class ExportError(ModelError):
    default_reason = "export_failed"


class RegistryError(ModelError):
    default_reason = "registry"


class ModelNotFound(RegistryError):
    default_reason = "not_found"


class VersionExists(RegistryError):
    default_reason = "version_exists"


class CorruptEntry(RegistryError):
    default_reason = "corrupt"
