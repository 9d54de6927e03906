"""Object events as JSON on ``edgelearn/v1/<site>/events``, for any MQTT tool.

A result is a binary envelope only this project decodes. The events say the same in JSON,
one object at a time, the way Frigate's ``frigate/events`` do, so Home Assistant, Node-RED
or ``mosquitto_sub | jq`` can use what the pipeline finds:

- ``new``: a tracked object got its first answer;
- ``update``: its class changed, its best score rose by ``rise`` or more, or
  ``update_every`` seconds of video passed since its last event (a fresh box);
- ``end``: it has not been answered for ``end_after`` seconds of its camera's video, or its
  camera has been silent that long by the clock, or the publisher stops.

Each event carries ``before`` (the object as the previous event told it; None for ``new``)
and ``after``. Their schema (``schema`` 1) is in the README. A subscriber de-duplicates by
``(id, seq)``: ``id`` names the object (camera, first capture, track), ``seq`` counts its
events from 0. Whole-frame answers (no tracked object) make no events.

**At least once.** :class:`EventPublisher` reads the results topic on a persistent session
and acknowledges a result (QoS 1) only once the broker has every event made from it. A
publisher killed holding a result gets it again when it comes back. What it knew of open
objects dies with it: an object answered again after a restart is announced again, under a
new ``id`` (its first capture is then a later one). An ``end`` made by the clock is published
until the broker has it, but is lost if the process dies first.

:class:`ObjectEvents` is the logic without I/O: results in, events out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from edgelearn import wire
from edgelearn.config import BrokerConfig
from edgelearn.mqtt import MqttSession, NotConnected, cancel_until_done

log = logging.getLogger(__name__)

SCHEMA = 1
NEW, UPDATE, END = "new", "update", "end"


def events_topic(site: str) -> str:
    return f"{wire.ROOT}/{site}/events"


@dataclass
class _Object:
    """One tracked object as its events tell it."""

    id: str
    site: str
    camera: str
    track: int
    start_ns: int  # its first answered capture
    seq: int = 0  # events published
    label: str = ""
    score: float = 0.0
    top_score: float = 0.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    frame_ns: int = 0  # its latest answered capture
    told_ns: int = 0  # the capture its latest event told
    gateway: str = ""
    model_version: str = ""
    task: str = ""
    computed_at: str = ""
    ended: bool = False

    def view(self) -> dict[str, Any]:
        """What an event says of it (``before``/``after``)."""
        return {
            "id": self.id,
            "camera": self.camera,
            "track": self.track,
            "label": self.label,
            "score": round(self.score, 4),
            "top_score": round(self.top_score, 4),
            "box": list(self.box),
            "frame_time": self.frame_ns / 1e9,
            "start_time": self.start_ns / 1e9,
            "end_time": self.frame_ns / 1e9 if self.ended else None,
            "gateway": self.gateway,
            "model_version": self.model_version,
            "task": self.task,
            "computed_at": self.computed_at,
        }


@dataclass
class _Camera:
    open: dict[int, _Object] = field(default_factory=dict)  # by track
    # Recently ended tracks and their last capture: a late or repeated answer for one
    # opens no new object (a track id reused after a camera restart, much later, does).
    ended: deque[tuple[int, int]] = field(default_factory=lambda: deque(maxlen=1024))
    newest_ns: int = 0  # its newest answered capture
    heard: float = 0.0  # when (the clock) it was last answered


class ObjectEvents:
    """Turns results into object events (JSON-ready dicts), per camera and track."""

    def __init__(
        self,
        *,
        end_after: float = 5.0,
        update_every: float = 5.0,
        rise: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.end_after_ns = int(end_after * 1e9)
        self.end_after = end_after
        self.update_every_ns = int(update_every * 1e9)
        self.rise = rise
        self._clock = clock
        self._cameras: dict[tuple[str, str], _Camera] = {}

    @property
    def open_objects(self) -> int:
        return sum(len(camera.open) for camera in self._cameras.values())

    def observe(self, site: str, result: wire.Result) -> list[dict[str, Any]]:
        """The events one result makes (none for a whole-frame answer or a repeat)."""
        if not result.tracks:
            return []
        camera = self._cameras.setdefault((site, result.camera_id), _Camera())
        camera.heard = self._clock()
        events: list[dict[str, Any]] = []
        names = result.names or tuple(str(c) for c in result.classes)
        for track, box, name, score in zip(
            result.tracks, result.boxes, names, result.scores, strict=True
        ):
            current = camera.open.get(track)
            if current is None:
                if any(
                    t == track and result.capture_ns <= last + self.end_after_ns
                    for t, last in camera.ended
                ):
                    continue  # a late answer for an object that has ended
                current = _Object(
                    id=f"{result.camera_id}-{result.capture_ns}-{track}",
                    site=site,
                    camera=result.camera_id,
                    track=track,
                    start_ns=result.capture_ns,
                )
                camera.open[track] = current
                self._update(current, result, box, name, score)
                events.append(self._event(NEW, current, None))
                continue
            if result.capture_ns <= current.frame_ns:
                continue  # a repeat, or older than what it has told
            before = current.view()
            changed = name != current.label or score >= current.top_score + self.rise
            self._update(current, result, box, name, score)
            if changed or result.capture_ns - current.told_ns >= self.update_every_ns:
                events.append(self._event(UPDATE, current, before))
        camera.newest_ns = max(camera.newest_ns, result.capture_ns)
        events += self._end(camera, lambda o: camera.newest_ns - o.frame_ns > self.end_after_ns)
        return events

    def expire(self) -> list[dict[str, Any]]:
        """The ``end`` of every object of a camera silent for ``end_after`` (the clock)."""
        now = self._clock()
        events: list[dict[str, Any]] = []
        for camera in self._cameras.values():
            if camera.open and now - camera.heard > self.end_after:
                events += self._end(camera, lambda o: True)
        return events

    def close(self) -> list[dict[str, Any]]:
        """The ``end`` of every open object (the publisher stops)."""
        events: list[dict[str, Any]] = []
        for camera in self._cameras.values():
            events += self._end(camera, lambda o: True)
        return events

    def _end(self, camera: _Camera, done: Callable[[_Object], bool]) -> list[dict[str, Any]]:
        events = []
        for track, current in list(camera.open.items()):
            if done(current):
                before = current.view()
                current.ended = True
                del camera.open[track]
                camera.ended.append((track, current.frame_ns))
                events.append(self._event(END, current, before))
        return events

    @staticmethod
    def _update(
        current: _Object, result: wire.Result, box: wire.Box, name: str, score: float
    ) -> None:
        current.label = name
        current.score = score
        current.top_score = max(current.top_score, score)
        current.box = box
        current.frame_ns = result.capture_ns
        current.gateway = result.gateway_id
        current.model_version = result.model_version
        current.task = result.task
        current.computed_at = result.computed_at.name.lower()

    @staticmethod
    def _event(kind: str, current: _Object, before: dict[str, Any] | None) -> dict[str, Any]:
        event = {
            "schema": SCHEMA,
            "type": kind,
            "id": current.id,
            "seq": current.seq,
            "site": current.site,
            "before": before,
            "after": current.view(),
        }
        current.seq += 1
        current.told_ns = current.frame_ns
        return event


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), sort_keys=True).encode()


class EventPublisher:
    """Reads the results of ``site`` (``+``: every site) on the cloud broker and publishes
    their object events at QoS 1 on each site's events topic; a result is acknowledged
    once its events are out (at least once)."""

    def __init__(
        self,
        broker: BrokerConfig,
        site: str,
        client_id: str,
        *,
        events: ObjectEvents | None = None,
        on_event: Callable[[str, int], None] = lambda kind, count: None,
        on_drop: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.events = events or ObjectEvents()
        self._on_event = on_event
        self._on_drop = on_drop
        self._session = MqttSession(
            broker,
            client_id,
            subscriptions=[(wire.Topics(site).all_results(), 1)],
            on_message=self._on_message,
            persistent=True,
            manual_ack=True,
        )
        self._queue: asyncio.Queue[tuple[aiomqtt.Message, int]] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self.published: Counter[str] = Counter()  # events the broker has, by type

    def _on_message(self, message: aiomqtt.Message) -> None:
        self._queue.put_nowait((message, self._session.connection))

    async def _handle(self) -> None:
        while True:
            message, connection = await self._queue.get()
            site = wire.Topics.of(str(message.topic)).site
            try:
                result = wire.decode_as(bytes(message.payload), wire.Result)
            except wire.WireError as exc:
                self._on_drop(exc.reason)
                log.warning("events: an undecodable result on %s dropped: %s", message.topic, exc)
            else:
                try:
                    events = self.events.observe(site, result)
                except Exception:  # a bug here must not stop the events of every camera
                    self._on_drop("failed")
                    log.exception("events: a result of %s made no events", result.camera_id)
                    events = []
                await self._publish(events)
            self._session.ack(message, connection)

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.events.end_after / 2))
            await self._publish(self.events.expire())

    async def _publish(self, events: list[dict[str, Any]]) -> None:
        """Each event, at QoS 1, until the broker has it."""
        for event in events:
            while True:
                try:
                    await self._session.publish(
                        events_topic(event["site"]), encode_event(event), qos=1
                    )
                    break
                except NotConnected:
                    await self._session.connected.wait()
            self.published[event["type"]] += 1
            self._on_event(event["type"], 1)

    async def __aenter__(self) -> EventPublisher:
        await self._session.__aenter__()
        self._workers = [
            asyncio.create_task(self._handle(), name="events"),
            asyncio.create_task(self._expire(), name="events-expire"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop reading; the ``end`` of every open object, if the broker takes it in 5 s."""
        await cancel_until_done(self._workers, patience=5.0)
        ends = self.events.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._publish(ends), 5.0)
        await self._session.__aexit__(*exc_info)
