"""JSON object events (cloud.events): the logic on made-up results, then a short real run
read by ``mosquitto_sub``, a client this project did not write."""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from cameras.replay import object_frames
from cloud.events import EventPublisher, ObjectEvents, events_topic
from edgelearn import wire
from edgelearn.modes import Mode
from edgelearn.service import serve_in_thread
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import run_gateway
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for
from tests.test_pipeline_e2e import _deploy_all, run_consumer

SPLIT = Mode.parse("split:2").slot

# The schema of README's "Object events", version 1: every key and its type.
OBJECT_KEYS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "camera": str,
    "track": int,
    "label": str,
    "score": float,
    "top_score": float,
    "box": list,
    "frame_time": float,
    "start_time": float,
    "end_time": (float, type(None)),
    "gateway": str,
    "model_version": str,
    "task": str,
    "computed_at": str,
}
EVENT_KEYS: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "type": str,
    "id": str,
    "seq": int,
    "site": str,
    "before": (dict, type(None)),
    "after": dict,
}


def check_schema(event: dict[str, Any]) -> None:
    assert set(event) == set(EVENT_KEYS), event
    for key, kind in EVENT_KEYS.items():
        assert isinstance(event[key], kind), (key, event)
    assert event["schema"] == 1 and event["type"] in ("new", "update", "end")
    assert (event["before"] is None) == (event["type"] == "new"), event
    for view in (event["before"], event["after"]):
        if view is None:
            continue
        assert set(view) == set(OBJECT_KEYS), view
        for key, kind in OBJECT_KEYS.items():
            assert isinstance(view[key], kind) or (kind is float and type(view[key]) is int)
        assert view["id"] == event["id"] and len(view["box"]) == 4
        assert 0.0 <= view["score"] <= view["top_score"] <= 1.0 or view["label"] == "unknown"
    assert (event["after"]["end_time"] is not None) == (event["type"] == "end"), event


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _result(capture_s: float, objects: dict[int, tuple[str, float]], seq: int = 0) -> wire.Result:
    tracks = tuple(objects)
    return wire.Result(
        camera_id="cam-1",
        seq=seq,
        capture_ns=int(capture_s * 1e9),
        result_ns=int(capture_s * 1e9) + 1,
        gateway_id="gw-1",
        mode="split:2",
        label=None,
        predicted=0,
        score=0.5,
        model_version="v1",
        computed_at=wire.ComputedAt.CLOUD,
        held_back=0,
        held_mismatched=0,
        tracks=tracks,
        boxes=tuple((10 * t, 10, 10 * t + 8, 20) for t in tracks),
        labels=(None,) * len(tracks),
        classes=(0,) * len(tracks),
        scores=tuple(score for _, score in objects.values()),
        items=(),
        names=tuple(name for name, _ in objects.values()),
    )


def test_an_object_is_new_once_updated_on_change_and_ended_once() -> None:
    clock = _Clock()
    events = ObjectEvents(end_after=5.0, update_every=5.0, rise=0.05, clock=clock)
    told = events.observe("s", _result(100.0, {7: ("person", 0.6)}))
    assert [e["type"] for e in told] == ["new"] and told[0]["after"]["label"] == "person"
    # the same capture again (a re-published result) and a small rise: nothing to tell
    assert events.observe("s", _result(100.0, {7: ("person", 0.6)})) == []
    assert events.observe("s", _result(101.0, {7: ("person", 0.62)})) == []
    changed = events.observe("s", _result(102.0, {7: ("other moving object", 0.7)}))
    assert [e["type"] for e in changed] == ["update"]
    assert changed[0]["before"]["label"] == "person"
    assert changed[0]["after"]["label"] == "other moving object"
    # five seconds of video without a change: a fresh box; a second object appears
    later = events.observe(
        "s", _result(107.5, {7: ("other moving object", 0.7), 8: ("person", 0.9)})
    )
    assert sorted(e["type"] for e in later) == ["new", "update"]
    # track 7 is not answered for more than end_after seconds of its camera's video: ended
    # (and 8 has gone update_every without an event: its fresh box)
    ended = events.observe("s", _result(113.0, {8: ("person", 0.9)}))
    assert [(e["type"], e["after"]["track"]) for e in ended] == [("update", 8), ("end", 7)]
    assert ended[1]["after"]["end_time"] == 107.5
    # a late answer for the ended object opens nothing
    assert events.observe("s", _result(107.0, {7: ("person", 0.9)})) == []
    # the camera falls silent: its open object ends by the clock
    clock.now = 3.0
    assert events.expire() == []
    clock.now = 6.0
    assert [(e["type"], e["after"]["track"]) for e in events.expire()] == [("end", 8)]
    assert events.open_objects == 0
    every = told + changed + later + ended
    for event in every:
        check_schema(json.loads(json.dumps(event)))
    seqs = defaultdict(list)
    for event in every:
        seqs[event["id"]].append(event["seq"])
    assert all(s == list(range(len(s))) for s in seqs.values()), seqs


def test_whole_frame_answers_make_no_events_and_a_reused_track_later_is_a_new_object() -> None:
    events = ObjectEvents(end_after=5.0)
    frame = _result(1.0, {})
    assert events.observe("s", frame) == []
    first = events.observe("s", _result(10.0, {3: ("person", 0.8)}))
    events.observe("s", _result(20.0, {4: ("person", 0.8)}))  # 3 ends here
    again = events.observe("s", _result(30.0, {3: ("person", 0.8)}))  # a restarted camera
    assert [e["type"] for e in again if e["after"]["track"] == 3] == ["new"]
    assert again[0]["id"] != first[0]["id"]
    assert [e["type"] for e in again if e["after"]["track"] == 4] == ["end"]
    assert [(e["type"], e["after"]["track"]) for e in events.close()] == [("end", 3)]


def test_mosquitto_sub_reads_the_json_events_of_a_short_run(
    broker: BrokerUnderTest,
    mqtt_probe: Any,
    site: str,
    trained_registry: Path,
    tmp_path: Path,
) -> None:
    """Camera frames -> gateway (split:2) -> cloud consumer -> results -> the event
    publisher -> ``mosquitto_sub`` as the observer: every event parses with a standard JSON
    parser and matches the schema, and each object has one ``new`` and one ``end``."""
    secrets = broker.secrets
    out = tmp_path / "events.jsonl"
    reader = subprocess.Popen(
        [
            "stdbuf", "-oL",  # each line as it comes, to the file
            "mosquitto_sub", "-V", "5", "-h", broker.host, "-p", str(broker.port),
            "-u", "observer", "-P", secrets.password("observer"),
            "-t", events_topic(site), "-q", "1", "-d",
        ],
        stdout=out.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    listener = mqtt_probe("cloud")
    listener.subscribe(wire.Topics(site).all_results())
    try:
        wait_for(lambda: b"SUBACK" in out.read_bytes(), 20, "mosquitto_sub subscribed")
        _deploy_all(broker, mqtt_probe("cloud"), site, trained_registry)
        camera: MqttProbe = mqtt_probe("cam-12")
        frames = object_frames("cam-12", 120, seed=23, first=150)
        with (
            serve_in_thread(
                lambda: EventPublisher(
                    broker.config_for("cloud"), site, f"{site}-events",
                    events=ObjectEvents(end_after=2.0),
                ),
                "events",
            ) as (publisher, _),
            run_consumer(broker, site, trained_registry) as consumer,
            run_gateway(
                broker, site=site, gateway_id="gw-2", mode="split:2", keyframes=True,
                queue_depth=256,
            ) as gateway,
        ):  # fmt: skip
            wait_for(
                lambda: gateway.sample("edgelearn_gateway_model_swaps_total", slot=SPLIT) >= 1,
                60,
                "the model",
            )
            topic = wire.Topics(site).frame("cam-12")
            for frame in frames:
                assert not camera.publish_and_wait(topic, wire.encode(frame)).is_failure
            gateway.drain()
            forwarded = gateway.total(
                "edgelearn_gateway_frames_processed_total", outcome="forwarded"
            )
            wait_for(lambda: consumer.metrics.acked._value.get() >= forwarded, 60, "answers")
            wait_for(lambda: len(listener.payloads()) >= consumer.results_published, 10, "all")
            # the camera is silent now: every object ends by the clock
            wait_for(lambda: publisher.events.open_objects == 0, 20, "every object ended")

            def lines() -> list[bytes]:
                return [ln for ln in out.read_bytes().splitlines() if ln.startswith(b"{")]

            published = sum(publisher.published.values())
            wait_for(lambda: len(lines()) >= published, 20, "mosquitto_sub read all")
    finally:
        reader.terminate()
        reader.wait(10)
    results = [wire.decode_as(p, wire.Result) for p in listener.payloads()]
    answered = {(r.camera_id, t) for r in results for t in r.tracks}
    events = [json.loads(line) for line in lines()]  # a standard JSON parser
    assert events, "no events"
    for event in events:
        check_schema(event)
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        kinds[event["id"]][event["type"]] += 1
    assert all(k["new"] == 1 and k["end"] == 1 for k in kinds.values()), kinds
    # every answered track is some object's track, and the labels are class names
    told = {(e["after"]["camera"], e["after"]["track"]) for e in events}
    assert told == answered
    names = {e["after"]["label"] for e in events}
    assert names and not any(name.isdigit() for name in names), names
