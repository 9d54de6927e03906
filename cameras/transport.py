"""The small interface every camera transport implements, and an in-memory one for tests.

Last stage in the flow of a frame (source -> JPEG -> **transport**): a camera hands the
encoded :class:`edgelearn.wire.Frame` envelope to its :class:`FrameLink`, one link per
camera (its own MQTT client id and credentials, or its own CoAP requests). Implementations:

* :class:`cameras.mqtt_link.MqttLink` - MQTT v5 over paho-mqtt on the event loop, QoS 0 or 1,
  reconnects by itself with backoff;
* :class:`cameras.coap_link.CoapLink` - CoAP POST of the same bytes to a gateway's endpoint
  (``coap://`` block-wise over UDP, or ``coap+tcp://``);
* :class:`MemoryLink` - keeps what was sent in a list (tests, pacing checks, benchmarks of
  the camera itself).

A link is an async context manager; entering it connects (raising
:class:`~cameras.errors.ConnectError` if the peer cannot be reached at all) and leaving it
stops every background loop and closes the connection. :meth:`FrameLink.send` returns when
the transport has taken the frame (QoS 0: written to the socket; QoS 1: acknowledged; CoAP:
response received) and raises :class:`~cameras.errors.TransportError` otherwise; the camera
bounds how many sends are in flight and counts every frame it has to skip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, Self

from cameras.errors import TransportError


class FrameLink(Protocol):
    """One camera's connection to where its frames go."""

    @property
    def connected(self) -> bool:
        """False while the link is down (reconnecting); sends would fail at once."""
        ...

    async def send(self, envelope: bytes) -> None:
        """Deliver one encoded envelope; raise :class:`TransportError` if it was not taken."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, *exc_info: object) -> None: ...


LinkFactory = Callable[[str], FrameLink]
"""Builds the link of one camera from its id (the id is also its broker user name)."""


@dataclass
class MemoryLink:
    """A link that appends ``(camera_id, envelope)`` to a shared list.

    ``delay`` makes each send take that long (a slow network, to exercise backpressure);
    ``fail`` makes sends raise as a link that is down would.
    """

    camera_id: str
    sent: list[tuple[str, bytes]] = field(default_factory=list)
    delay: float = 0.0
    fail: bool = False

    @property
    def connected(self) -> bool:
        return not self.fail

    async def send(self, envelope: bytes) -> None:
        if self.fail:
            raise TransportError(
                "memory link is down", reason="disconnected", camera_id=self.camera_id
            )
        if self.delay:
            await asyncio.sleep(self.delay)  # simulated transmission time, not a sync point
        self.sent.append((self.camera_id, envelope))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


def memory_links(sent: list[tuple[str, bytes]], delay: float = 0.0) -> LinkFactory:
    """A :data:`LinkFactory` whose links all append to ``sent``."""

    def factory(camera_id: str) -> FrameLink:
        return MemoryLink(camera_id, sent, delay)

    return factory
