"""A camera's CoAP link: POST each Frame envelope to a gateway's CoAP endpoint (aiocoap).

Transport stage of the flow of a frame, the alternative to MQTT for constrained cameras.
The body is the same envelope bytes as on MQTT; the URI names the gateway's resource, e.g.
``coap://gateway:5683/frames`` (UDP) or ``coap+tcp://gateway:5683/frames`` (TCP, RFC 8323).

Choice of transport and block size (measured with ``edgelearn bench cameras --quick`` on
this project's 2 shared cores, camera and receiver in separate processes, loopback, two
frames in flight; the numbers move with the other load on the machine):

* **UDP** carries a frame larger than one block as a block-wise (RFC 7959) Block1 transfer
  of 1024-byte blocks - 1024 (SZX 6) is the largest block CoAP over UDP allows, and every
  smaller size only adds round trips (BERT, SZX 7, exists only for TCP). Each block is a
  confirmable request and its response in lock step, so the cost is per block: aiocoap
  moved about 950-1,900 blocks/s here. A 720p frame of the labeled scene at quality 80
  (~56 kB, 55 blocks) then goes at 17-24 frames/s per link, and two cameras together
  reached ~20 frames/s - barely one camera at 15 fps. At paper 003's 3000 kb/s (25 kB a
  frame at 15 fps, ``--bitrate 3000``) a link carries 36-53 frames/s: two or three cameras.
* **TCP** (``coap+tcp``) needs no block-wise transfer: aiocoap advertises a 1 MiB
  Max-Message-Size in its CSM, so each frame is one request on a persistent connection.
  A link delivered 1,000-2,200 frames/s of 25-56 kB, so the camera process is bound by
  rendering and JPEG encoding (70-150 frames/s for two labeled-scene cameras), not by CoAP.

So: use ``coap+tcp`` for 720p cameras at camera rates; use UDP only with ``--bitrate`` (or a
low ``--quality``) and a few cameras per gateway.

Errors: a response other than 2.xx raises :class:`~cameras.errors.TransportError` with
reason ``refused``; no response (retransmissions exhausted, connection refused, timeout)
raises one with reason ``send_failed``. CoAP has no session to lose, so the link is always
"connected"; the camera's in-flight limit bounds outstanding requests. Each request carries
its own Request-Tag (RFC 9175) so that two block-wise uploads of one camera in flight at once
are reassembled separately by the server.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final, Self
from urllib.parse import urlsplit

import aiocoap
import aiocoap.error

from cameras.errors import ConnectError, TransportError

log = logging.getLogger(__name__)

SCHEMES: Final = ("coap", "coap+tcp")
OCTET_STREAM: Final = 42  # CoAP Content-Format application/octet-stream


def check_uri(uri: str) -> str:
    """Validate a frame endpoint URI; returns it. Raises ``ValueError`` with advice."""
    parts = urlsplit(uri)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError(
            f"CoAP endpoint {uri!r}: use coap://HOST[:PORT]/PATH or coap+tcp://HOST[:PORT]/PATH"
        )
    return uri


class CoapLink:
    """One camera's CoAP endpoint. ``context`` shares one aiocoap client context between
    cameras; without it the link makes and closes its own. ``security`` is the camera's
    OSCORE context (:func:`edgelearn.coap_security.camera_context`): every POST is protected
    with it, and the gateway knows the camera by it. Without it the POSTs are plain, which
    only a gateway started with ``--coap-insecure`` accepts."""

    def __init__(
        self,
        camera_id: str,
        uri: str,
        *,
        context: Any = None,
        security: Any = None,
        timeout: float = 10.0,
    ) -> None:
        self.camera_id = camera_id
        self.uri = check_uri(uri)
        self.timeout = timeout
        self.security = security
        if security is not None and context is not None:
            raise ValueError("an OSCORE camera needs a client context of its own")
        self._context = context
        self._owns_context = context is None
        self._tag = 0

    @property
    def connected(self) -> bool:
        return self._context is not None

    async def send(self, envelope: bytes) -> None:
        if self._context is None:
            raise TransportError(
                f"{self.camera_id}: CoAP link is closed",
                reason="disconnected",
                camera_id=self.camera_id,
            )
        request = aiocoap.Message(
            code=aiocoap.POST, uri=self.uri, payload=envelope, content_format=OCTET_STREAM
        )
        # Request-Tag (RFC 9175) keeps concurrent block-wise uploads of one camera apart:
        # without it the server would splice the blocks of two frames into one body.
        self._tag = (self._tag + 1) % 2**32
        request.opt.request_tag = [self._tag.to_bytes(4, "big")]
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._context.request(request).response
        except TimeoutError as exc:
            raise TransportError(
                f"{self.camera_id}: no CoAP response from {self.uri} in {self.timeout}s",
                reason="send_failed",
                camera_id=self.camera_id,
            ) from exc
        except aiocoap.error.Error as exc:
            raise TransportError(
                f"{self.camera_id}: CoAP POST to {self.uri} failed: {exc}",
                reason="send_failed",
                camera_id=self.camera_id,
            ) from exc
        if not response.code.is_successful():
            raise TransportError(
                f"{self.camera_id}: {self.uri} answered {response.code}: "
                f"{response.payload[:100]!r}",
                reason="refused",
                camera_id=self.camera_id,
            )

    async def __aenter__(self) -> Self:
        if self._context is None:
            try:
                self._context = await aiocoap.Context.create_client_context()
            except OSError as exc:
                raise ConnectError(
                    f"cannot create a CoAP client: {exc}",
                    reason="unreachable",
                    camera_id=self.camera_id,
                ) from exc
            if self.security is not None:  # every request to that endpoint is protected
                endpoint = self.uri.rsplit("/", 1)[0]
                self._context.client_credentials[f"{endpoint}/*"] = self.security
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._owns_context and self._context is not None:
            await self._context.shutdown()
        self._context = None
