"""The exceptions of the camera role, drawn as a tree::

    CameraError                 base of everything this package raises on purpose
    ├── SourceError             a source cannot deliver frames (missing or unreadable
    │                           video); ``source`` names it, ``reason`` is bounded
    └── TransportError          a frame could not be handed to the network
        └── ConnectError        the broker or CoAP endpoint cannot be reached at start-up

Every exception carries short structured fields (``reason``, and ``camera_id`` where one
camera is concerned) so callers can log and count without parsing messages. The CLI turns
any :class:`CameraError` (and a data set's :class:`edgelearn.datasets.DatasetError`) into a
one-line message on stderr and a non-zero exit.
"""

from __future__ import annotations


class CameraError(Exception):
    """Base of the errors the camera role raises on purpose."""

    def __init__(self, message: str, *, reason: str = "error", camera_id: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.camera_id = camera_id


class SourceError(CameraError):
    """A frame source cannot deliver frames."""

    def __init__(self, message: str, *, source: str, reason: str = "unreadable") -> None:
        super().__init__(message, reason=reason)
        self.source = source


class TransportError(CameraError):
    """A frame could not be sent (the link is down, the peer refused it, ...)."""


class ConnectError(TransportError):
    """The broker or endpoint could not be reached when a camera started."""
