"""The cloud's state shared in a real PostgreSQL (``--store postgresql://...``): two cloud
processes' stores record a capture once between them, a retry answered by the other one is
answered again with the same bytes and never scored or stored twice, a restarted server
loses nothing, and the trainer's lease moves when its holder is killed."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cameras.replay import scene_frames
from cloud.background import BackgroundLoop
from cloud.consumer import CloudConsumer
from cloud.feature_store import Arrival, FeatureStore
from cloud.lease import Lease
from edgelearn import wire
from stack.postgres import RunningPostgres
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import run_gateway
from tests.support.mqtt import MqttProbe, open_probe
from tests.support.waiting import wait_for
from tests.test_delivery import _outbox_items, _send, run_consumer


def _feature(seq: int, label: int | None = 3) -> wire.Feature:
    values = np.full((1, 8), seq % 100, np.int8)
    return wire.Feature(
        camera_id="cam-1", seq=seq, capture_ns=1_000_000_000 + seq, gateway_id="gw-1",
        label=None, mode="split:2", model_version="v1", dtype=wire.DType.INT8, shape=(1, 8),
        scale=0.1, zero_point=0, codec=wire.Codec.NONE, raw_bytes=1000, held_back=0,
        held_mismatched=0, payload=values.tobytes(), tracks=(seq,), boxes=((0, 0, 10, 20),),
        labels=(label,),
    )  # fmt: skip


def _arrival(seq: int) -> Arrival:
    feature = _feature(seq)
    values = np.frombuffer(feature.payload, np.int8).reshape(feature.shape)
    return Arrival("s", feature, 100, values, result=f"answer {seq}".encode())


def test_a_batch_whose_commit_was_lost_is_still_new_to_the_call_that_wrote_it(
    postgres_url: str,
) -> None:
    """The server went away as the batch committed: the commit happened, the store could
    not know, and ran the batch again. Its rows are its own: new, kept once."""
    store = FeatureStore(postgres_url)
    run = store._db.run

    def commit_then_lose_the_outcome(operation: Any) -> Any:
        run(operation)  # committed
        return run(operation)  # and again, as after a connection lost during the commit

    store._db.run = commit_then_lose_the_outcome  # type: ignore[method-assign]
    assert store.record([_arrival(seq) for seq in range(10)]) == [True] * 10
    store._db.run = run  # type: ignore[method-assign]
    assert store.record([_arrival(seq) for seq in range(5)]) == [False] * 5  # a real retry
    assert store.arrived() == 10
    assert len(store.labeled_rows("split:2", ["v1"], newest=100)) == 10


def test_two_stores_on_one_postgres_record_each_capture_once(postgres_url: str) -> None:
    """Two cloud processes (a store each, its own connection) take the same 300 captures
    at once, as when a retry lands on the other machine: each is new to exactly one of
    them, its labeled row is kept once, and both read the answer the first one stored."""
    stores = [FeatureStore(postgres_url), FeatureStore(postgres_url)]
    new: list[list[bool]] = [[], []]

    def take(index: int) -> None:
        order = range(300) if index == 0 else range(299, -1, -1)  # they meet in the middle
        for start in range(0, 300, 10):
            batch = [_arrival(seq) for seq in list(order)[start : start + 10]]
            new[index] += stores[index].record(batch)

    threads = [threading.Thread(target=take, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert sum(new[0]) + sum(new[1]) == 300  # each capture new to one store only
        assert 0 < sum(new[0]) < 300 and 0 < sum(new[1]) < 300, (sum(new[0]), sum(new[1]))
        assert stores[0].arrived() == stores[1].arrived() == 300
        assert stores[1].count("split:2", ["v1"]) == (300, stores[0].count("split:2", ["v1"])[1])
        rows = stores[1].labeled_rows("split:2", ["v1"], newest=1000)
        assert len(rows) == 300 and len(set(rows.tracks.tolist())) == 300
        records = stores[1].recorded([("s", _feature(seq)) for seq in (0, 150, 299)])
        assert [r.result if r else None for r in records] == [
            b"answer 0",
            b"answer 150",
            b"answer 299",
        ]
        assert stores[0].recorded([("s", _feature(300))]) == [None]
    finally:
        for store in stores:
            store.close()


def test_a_postgres_restart_under_load_loses_nothing_and_counts_retries(
    postgres_server: RunningPostgres, postgres_url: str
) -> None:
    """The server is killed (SIGKILL, as a crash) while a store records batch after batch,
    and started again 2 s later: every batch is recorded once, the store waited for the
    server, and said so."""
    store = FeatureStore(postgres_url, reconnect_for=60)
    recorded: list[bool] = []
    done = threading.Event()

    def load() -> None:
        try:
            for start in range(0, 600, 10):
                recorded.extend(store.record([_arrival(seq) for seq in range(start, start + 10)]))
        finally:
            done.set()

    worker = threading.Thread(target=load)
    worker.start()
    try:
        wait_for(lambda: len(recorded) >= 100, 30, "load before the crash")
        postgres_server.kill()
        stopped = threading.Event()
        stopped.wait(2.0)  # the outage itself: the server is down for this long
        postgres_server.start()
        wait_for(done.is_set, 60, "every batch recorded")
        worker.join(5)
        assert len(recorded) == 600 and all(recorded)  # each new, none lost or twice
        assert store.arrived() == 600
        assert store.count("split:2", ["v1"])[0] == 600
        assert store.retries >= 1, "the outage was not noticed"
    finally:
        store.close()


_HOLDER = """
import sys, threading
from cloud.lease import Lease
lease = Lease(sys.argv[1], "trainer")
assert lease.hold()
print("held", flush=True)
threading.Event().wait()
"""


class _Steps(BackgroundLoop):
    """A trainer's loop that counts the steps it is allowed to take."""

    def __init__(self) -> None:
        super().__init__(None)
        self.steps = 0

    def _loop(self) -> None:
        self._every(0.05, self.step, "steps")

    def step(self) -> None:
        self.steps += 1


def test_the_trainer_lease_moves_to_another_process_when_its_holder_is_killed(
    postgres_url: str,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, postgres_url], stdout=subprocess.PIPE, text=True
    )
    steps = _Steps()
    changes: list[bool] = []
    steps.lease = Lease(postgres_url, "trainer", on_change=changes.append)
    steps.LEASE_POLL = 0.1
    loop = threading.Thread(target=steps.run_loop)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        loop.start()
        # the other process holds it: this loop takes no step, however long it polls
        wait_for(lambda: steps.lease is not None and not steps.lease.held, 5, "a first try")
        before = steps.steps
        assert Lease(postgres_url, "trainer").hold() is False
        assert before == 0 and changes == []
        holder.kill()  # SIGKILL: its session ends, and the lock with it
        holder.wait(10)
        wait_for(lambda: steps.steps >= 3, 30, "steps once the lease is ours")
        assert changes == [True]
        assert Lease(postgres_url, "trainer").hold() is False  # and no third process gets it
    finally:
        steps.stop()
        loop.join(10)
        holder.kill()
        holder.wait(10)
        if steps.lease is not None:
            steps.lease.release()


@contextmanager
def _consumer(
    broker: BrokerUnderTest, site: str, registry: Path, url: str
) -> Iterator[tuple[CloudConsumer, FeatureStore]]:
    store = FeatureStore(url, keep_features=True)
    try:
        with run_consumer(broker, site, registry, store) as consumer:
            yield consumer, store
    finally:
        store.close()


def test_a_retry_answered_by_the_other_cloud_process_is_answered_again_not_twice(
    broker: BrokerUnderTest, site: str, trained_registry: Path, postgres_url: str
) -> None:
    """Cloud A answers 20 captures; a gateway's retries of all of them reach cloud B, which
    shares A's PostgreSQL: B publishes A's stored answers again, byte for byte, and records,
    scores and stores none of them."""
    topics = wire.Topics(site)
    listener = open_probe(broker, "observer")
    listener.subscribe(topics.all_results(), qos=1)
    tap = open_probe(broker, "observer")
    tap.subscribe(topics.all_features(), qos=1)
    camera = open_probe(broker, "cam-3")
    gateway_user: MqttProbe | None = None
    try:
        with (
            _consumer(broker, site, trained_registry, postgres_url) as (first, store),
            run_gateway(
                broker, site=site, gateway_id="gw-1", mode="raw", keyframes=False,
                queue_depth=256,
            ) as gateway,
        ):  # fmt: skip
            _send(camera, site, scene_frames("cam-3", 20, seed=9))
            wait_for(lambda: store.arrived() == 20 and _outbox_items(gateway) == 0, 60, "20")
            wait_for(lambda: len(listener.payloads()) >= first.results_published, 10, "out")
        answers = list(listener.payloads())
        sent = list(tap.payloads())
        assert len(sent) == 20 and first.results_published == len(answers) > 0
        gateway_user = open_probe(broker, "gw-1")
        with _consumer(broker, site, trained_registry, postgres_url) as (second, other):
            for payload in sent:  # the gateway's retries, as it would send them
                feature = wire.decode_as(payload, wire.Feature)
                topic = topics.feature("gw-1", feature.camera_id)
                assert not gateway_user.publish_and_wait(topic, payload).is_failure
            republished = second.metrics.results_republished
            wait_for(lambda: republished._value.get() >= len(answers), 30, "answers again")
            wait_for(lambda: len(listener.payloads()) >= 2 * len(answers), 10, "seen again")
            registry = second.metrics.registry
            scored = sum(
                sample.value
                for family in registry.collect()
                for sample in family.samples
                if sample.name == "edgelearn_cloud_frames_scored_total"
            )
            assert scored == 0 and second.results_published == 0
            assert other.arrived() == 20 and other.retries == 0
        again = listener.payloads()[len(answers) :]
        assert sorted(again) == sorted(answers)  # the same bytes: de-duplicated by capture
    finally:
        for probe in (listener, tap, camera, gateway_user):
            if probe is not None:
                probe.close()
