"""A small aiocoap server that receives camera frames: ``POST /frames`` with a Frame envelope.

Where it sits: the gateway end of the CoAP transport (camera --CoAP POST--> gateway). The
camera tests and the benchmark use it as the peer; the gateway's real CoAP endpoint can reuse
:class:`FrameResource` as is (hand it an ``on_frame`` callback that feeds the gateway's
per-camera newest-frame-wins queue) or copy it.

* The body is exactly the bytes a camera publishes over MQTT, checked with
  :func:`edgelearn.wire.decode_as`; a bad envelope gets ``4.00 Bad Request`` with the
  :class:`~edgelearn.wire.WireError` reason as diagnostic payload and is counted, never a
  crash. A good one gets ``2.04 Changed``.
* Block-wise uploads (UDP, 1024-byte blocks) are reassembled by aiocoap before
  :meth:`FrameResource.render_post` sees them; over ``coap+tcp`` a frame arrives as one
  message (aiocoap advertises a 1 MiB Max-Message-Size in its CSM).
* :class:`CoapFrameReceiver` is an async context manager that serves the resource over UDP
  and TCP on one port; ``python -m cameras.coap_receiver --port 5683`` runs it alone and
  prints a line per second with the received frame rate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import aiocoap
import aiocoap.resource

from edgelearn.wire import Frame, WireError, decode_as

log = logging.getLogger(__name__)

FRAMES_PATH = ("frames",)


class FrameResource(aiocoap.resource.Resource):  # type: ignore[misc]
    """``POST`` a Frame envelope. ``on_frame`` is called on the event loop for each valid
    frame; keep it cheap (enqueue, don't process)."""

    def __init__(self, on_frame: Callable[[Frame], None] | None = None) -> None:
        super().__init__()
        self.on_frame = on_frame
        self.received = 0
        self.received_bytes = 0
        self.rejected: Counter[str] = Counter()

    async def render_post(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            frame = decode_as(request.payload, Frame)
        except WireError as exc:
            self.rejected[exc.reason] += 1
            log.warning("rejected a CoAP frame from %s: %s", request.remote, exc)
            return aiocoap.Message(code=aiocoap.BAD_REQUEST, payload=exc.reason.encode())
        self.received += 1
        self.received_bytes += len(request.payload)
        if self.on_frame is not None:
            self.on_frame(frame)
        return aiocoap.Message(code=aiocoap.CHANGED)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (CoAP serves both on one number)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise OSError("no port free for both UDP and TCP")


class CoapFrameReceiver:
    """Serves :class:`FrameResource` at ``/frames`` over UDP and TCP on ``host:port``.

    ``port=0`` picks a free port. :meth:`uri` gives the URI cameras POST to.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_frame: Callable[[Frame], None] | None = None,
        transports: Sequence[str] = ("udp6", "tcpserver"),
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.transports = list(transports)
        self.resource = FrameResource(on_frame)
        self._context: Any = None

    def uri(self, scheme: str = "coap") -> str:
        """``coap://host:port/frames`` or ``coap+tcp://host:port/frames``."""
        return f"{scheme}://{self.host}:{self.port}/{'/'.join(FRAMES_PATH)}"

    async def __aenter__(self) -> Self:
        site = aiocoap.resource.Site()
        site.add_resource(FRAMES_PATH, self.resource)
        self._context = await aiocoap.Context.create_server_context(
            site, bind=(self.host, self.port), transports=self.transports
        )
        log.debug("CoAP frame receiver on %s (%s)", self.uri(), ", ".join(self.transports))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._context is not None:
            await self._context.shutdown()
            self._context = None


async def _serve(host: str, port: int, duration: float | None) -> None:
    async with CoapFrameReceiver(host, port) as receiver:
        print(f"receiving frames on {receiver.uri()} and {receiver.uri('coap+tcp')}", flush=True)
        started = last_time = time.monotonic()
        last_count = 0
        while duration is None or time.monotonic() - started < duration:
            await asyncio.sleep(1.0)  # report interval
            now, count = time.monotonic(), receiver.resource.received
            print(
                f"{count} frames, {(count - last_count) / (now - last_time):.1f}/s, "
                f"rejected {dict(receiver.resource.rejected)}",
                flush=True,
            )
            last_time, last_count = now, count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cameras.coap_receiver",
        description="Receive camera frames over CoAP (UDP block-wise and coap+tcp).",
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
