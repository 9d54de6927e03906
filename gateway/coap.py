"""The gateway's CoAP endpoint: ``POST /frames`` with the envelope cameras publish over MQTT.

Where it sits in the flow of a frame::

    camera --CoAP POST /frames--> FrameResource --> the gateway's ingest (the one MQTT uses)

* The body is exactly the bytes a camera publishes over MQTT. The resource hands it to an
  ``ingest`` callable with the camera the poster authenticated as; ``ingest`` returns ``None``
  when it took the frame (``2.04 Changed``) or the reason it refused it (``4.00 Bad Request``
  with the reason as diagnostic payload). A bad envelope is a counted drop, never a crash.
* Cameras authenticate with OSCORE (:mod:`edgelearn.coap_security` says why): with
  ``credentials``, the site is wrapped so protected requests are unprotected with the
  camera's context, and a request that is not protected is refused (``4.01 Unauthorized``,
  reason ``unauthenticated``, counted through ``ingest``). Without credentials (the gateway's
  ``--coap-insecure``) anyone who reaches the port can post as any camera.
* Block-wise uploads (UDP, 1024-byte blocks) are reassembled by aiocoap before
  :meth:`FrameResource.render_post` sees them; over ``coap+tcp`` a frame arrives as one
  message (aiocoap advertises a 1 MiB Max-Message-Size in its CSM).
* :class:`CoapEndpoint` is an async context manager that serves the resource over UDP and
  TCP on one port (0 picks one free for both).
* ``python -m gateway.coap --port 5683`` runs the endpoint alone with a :class:`FrameCounter`
  as its ingest and prints the received frame rate once a second: a peer for the camera
  tests and benchmark, and a quick check that a site's cameras reach the gateway box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final, Self

import aiocoap
import aiocoap.resource

from edgelearn.coap_security import authenticated_camera
from edgelearn.ports import free_port
from edgelearn.wire import Frame, WireError, decode_as

log = logging.getLogger(__name__)

FRAMES_PATH = ("frames",)

Ingest = Callable[[bytes, str | None], str | None]
"""Takes one posted body and the camera its poster authenticated as (None on an insecure
endpoint); returns ``None`` if the frame was taken, else why it was not."""
UNAUTHENTICATED: Final = "unauthenticated"


class FrameResource(aiocoap.resource.Resource):  # type: ignore[misc]
    """``POST`` a Frame envelope; ``ingest`` runs on the event loop, so keep it cheap. With
    ``secure``, an unprotected request is refused and reported to ``on_refused``."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        secure: bool = False,
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        super().__init__()
        self._ingest = ingest
        self._secure = secure
        self._on_refused = on_refused

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        camera = authenticated_camera(request) if self._secure else None
        if self._secure and camera is None:
            self._on_refused(UNAUTHENTICATED)
            return aiocoap.Message(code=aiocoap.UNAUTHORIZED, payload=UNAUTHENTICATED.encode())
        reason = self._ingest(request.payload, camera)
        if reason is not None:
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=reason.encode())
        return aiocoap.Message(code=aiocoap.CHANGED)


class FrameCounter:
    """An ingest that checks and counts envelopes and keeps nothing but, with ``keep``, the
    frames: the endpoint on its own, without a gateway behind it."""

    def __init__(self, *, keep: bool = False) -> None:
        self.frames: list[Frame] = []
        self._keep = keep
        self.received = 0
        self.received_bytes = 0
        self.rejected: Counter[str] = Counter()

    def __call__(self, payload: bytes, camera: str | None = None) -> str | None:
        try:
            frame = decode_as(payload, Frame)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            log.warning("rejected a CoAP frame envelope: %s", exc)
            return exc.reason
        self.received += 1
        self.received_bytes += len(payload)
        if self._keep:
            self.frames.append(frame)
        return None


class CoapEndpoint:
    """Serves :class:`FrameResource` at ``/frames`` over UDP and TCP on ``host:port``.

    ``port=0`` picks a free port; :meth:`uri` gives the URI cameras POST to. ``credentials``
    (:func:`edgelearn.coap_security.gateway_credentials`) makes it accept OSCORE-protected
    posts only; None serves anyone (insecure).
    """

    def __init__(
        self,
        ingest: Ingest,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        credentials: Any = None,
        on_refused: Callable[[str], None] = lambda reason: None,
        transports: Sequence[str] = ("udp6", "tcpserver"),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.transports = list(transports)
        self.credentials = credentials
        self.resource = FrameResource(ingest, secure=credentials is not None, on_refused=on_refused)
        self._context: Any = None

    def uri(self, scheme: str = "coap") -> str:
        """``coap://host:port/frames`` or ``coap+tcp://host:port/frames``."""
        return f"{scheme}://{self.host}:{self.port}/{'/'.join(FRAMES_PATH)}"

    async def __aenter__(self) -> Self:
        site: Any = aiocoap.resource.Site()
        site.add_resource(FRAMES_PATH, self.resource)
        if self.credentials is not None:
            from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

            site = OscoreSiteWrapper(site, self.credentials)
        self._context = await aiocoap.Context.create_server_context(
            site, bind=(self.host, self.port), transports=self.transports
        )
        log.debug("CoAP frame endpoint on %s (%s)", self.uri(), ", ".join(self.transports))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._context is not None:
            await self._context.shutdown()
            self._context = None


async def _serve(host: str, port: int, duration: float | None) -> None:
    counter = FrameCounter()
    async with CoapEndpoint(counter, host, port) as endpoint:
        print(f"receiving frames on {endpoint.uri()} and {endpoint.uri('coap+tcp')}", flush=True)
        started = last_time = time.monotonic()
        last_count = 0
        while duration is None or time.monotonic() - started < duration:
            await asyncio.sleep(1.0)  # report interval
            now, count = time.monotonic(), counter.received
            print(
                f"{count} frames, {(count - last_count) / (now - last_time):.1f}/s, "
                f"rejected {dict(counter.rejected)}",
                flush=True,
            )
            last_time, last_count = now, count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.coap",
        description="Receive camera frames over CoAP (UDP block-wise and coap+tcp) and count "
        "them, without a gateway behind the endpoint.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5683, help="UDP and TCP port (default 5683)")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: run until interrupted)",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
