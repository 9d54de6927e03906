"""``edgelearn bench faults``: every fault we know of, injected on a real stack, counted end to
end.

The stack is ``edgelearn up``'s (:func:`stack.launcher.launch`): 2 sites, each an edge
mosquitto with a gateway pool of 2 workers and 2 labeled cameras at 15 fps, bridged through a
TCP relay (the WAN link, which the bench can cut) into one cloud mosquitto with a cloud
process of 2 consumers in one group, in ``split:2`` with keyframes. A
:class:`stack.supervisor.Supervisor` restarts what dies, as ``up`` does. The faults, one after
the other: cloud broker killed and restarted after an outage, edge broker the same, a gateway
worker killed, the cloud process killed, the cloud paused, the bridge cut, the outbox's disk
full (``RLIMIT_FSIZE`` on the workers: every write fails), garbage and oversize frames with a
camera's credential, tampered models.

**Counting, not assuming.** An observer on each edge broker records every feature a gateway
published and every result that came back to the site (QoS 1, a persistent session, so it
survives the broker's restart); the cloud's de-duplication ledger (``arrivals.sqlite``) says
what the cloud recorded, and which captures it answered (the stored answer). A capture the
ledger answered whose result the observer never saw is a *result lost*; one it saw twice or
more, a result repeated (at least once allows it; a subscriber drops it by capture).
*Copies per feature* is what the gateways sent (first sends and re-sends) over what they
produced. For each fault, the
features *captured* from its start until ``observe`` seconds after the part is back must all
be in the ledger within ``settle`` seconds: what is not is *lost*. *Duplicated* is what the
cloud received more than once and ignored (its counter, kept across its restarts); a retry
never reaches accuracy or training data, which the ledger's key and the features table are
checked for. *Recovery* is from the moment the part is back until a feature captured after that
moment is in the ledger, for every camera of the site concerned. RSS is the sum over every
process of the stack, before the fault and after it settled.

``--soak-minutes N`` repeats the faults for N minutes and reports the RSS growth after the
first round (the warm-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import resource
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.clients import close_client, mqtt_client
from bench.registry import bench_registry
from bench.runs import poll_until
from cameras.replay import scene_frames
from cloud.feature_store import FILE_NAME
from edgelearn import wire
from edgelearn.config import BrokerConfig, ConfigError
from edgelearn.metrics import fetch, machine_info, parse_samples
from edgelearn.modes import Mode
from edgelearn.ports import free_port
from stack.launcher import RunningStack, Site, StackSettings, launch
from stack.supervisor import CounterTotals, Supervisor, children_of

log = logging.getLogger(__name__)

SITES, WORKERS, CAMERAS_PER_SITE = 2, 2, 2
# Every fault, in the order they run: the FaultBench method that injects it, and the sites
# watched (the first one, or every one). The last two need more than one cloud process.
FAULTS: Final = {
    "cloud_broker_kill_and_restart": ("cloud_broker", "every"),
    "edge_broker_kill_and_restart": ("edge_broker", "first"),
    "gateway_worker_kill": ("gateway_worker", "first"),
    "cloud_consumer_kill": ("cloud_process", "every"),
    "cloud_paused": ("cloud_paused", "every"),
    "bridge_cut": ("bridge_cut", "every"),
    "outbox_disk_full": ("disk_full", "first"),
    "garbage_and_oversize_frames": ("garbage", "first"),
    "tampered_models": ("tampered_models", "first"),
    "cloud_machine_kill": ("cloud_machine", "every"),
    "database_kill_and_restart": ("database", "every"),
}
CLOUDS_FAULTS: Final = ("cloud_machine_kill", "database_kill_and_restart")


def fault_names(clouds: int) -> list[str]:
    """The faults a stack of ``clouds`` cloud processes runs, in order."""
    return [name for name in FAULTS if clouds > 1 or name not in CLOUDS_FAULTS]


MODE = "split:2"
Key = tuple[str, str, int, int]  # site, camera, seq, capture_ns: the ledger's key


@dataclass(frozen=True)
class Budget:
    down: float  # seconds a broker stays down
    pause: float  # seconds the cloud is stopped (SIGSTOP)
    cut: float  # seconds the bridge is cut
    disk: float  # seconds the outbox's disk is full
    observe: float  # seconds of traffic watched once the part is back
    settle: float  # at most this long for everything to arrive
    garbage: int  # garbage frames

    @classmethod
    def of(cls, quick: bool) -> Budget:
        if quick:
            return cls(down=5, pause=10, cut=15, disk=10, observe=5, settle=60, garbage=300)
        return cls(down=20, pause=30, cut=60, disk=30, observe=10, settle=120, garbage=1000)


# --- the WAN link ----------------------------------------------------------------------------


class Relay:
    """A TCP relay from the edge brokers' bridges to the cloud broker. :meth:`cut` closes
    every connection and refuses new ones for a while: the link between sites and cloud is
    down (a clean cut: the bridges see it at once, not after a keepalive)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut_until = 0.0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the relay did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._cut_until:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:  # the cloud broker is down: so is the link
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()
            self._writers.discard(sink)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self, seconds: float) -> None:
        def cut_now() -> None:
            self._cut_until = time.monotonic() + seconds
            for writer in list(self._writers):
                writer.close()
            self._writers.clear()

        self._loop.call_soon_threadsafe(cut_now)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


# --- what was produced, what arrived ---------------------------------------------------------


class EdgeWatch:
    """Every feature the gateways of one site published, from the site's broker."""

    def __init__(self, config: BrokerConfig, site: str) -> None:
        self.site = site
        self.seen: Counter[Key] = Counter()
        self.results: Counter[Key] = Counter()  # results that came back to the site
        self.models: dict[str, bytes] = {}
        self.lock = threading.Lock()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-watch-{site}", protocol=mqtt.MQTTv5
        )
        config.apply_to_paho(client)
        client.reconnect_delay_set(1, 1)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 3600  # keeps what arrives while we reconnect
        topics = wire.Topics(site)

        def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
            client.subscribe(
                [
                    (topics.all_features(), 1),
                    (f"{topics.base}/models/#", 1),
                    (topics.all_results(), 1),
                ]
            )

        client.on_connect = on_connect
        client.on_message = self._on_message
        client.connect(config.host, config.port, clean_start=False, properties=properties)
        client.loop_start()
        self.client = client

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if "/models/" in message.topic:
            if message.payload:
                self.models[message.topic] = bytes(message.payload)
            return
        if "/results/" in message.topic:
            try:
                result = wire.decode_as(bytes(message.payload), wire.Result)
            except wire.WireError:
                return
            with self.lock:
                self.results[(self.site, *wire.capture_of(result))] += 1
            return
        try:
            feature = wire.decode_as(bytes(message.payload), wire.Feature)
        except wire.WireError:
            return
        with self.lock:
            self.seen[(self.site, *wire.capture_of(feature))] += 1

    def results_seen(self, keys: set[Key]) -> dict[Key, int]:
        """How often the site saw a result of each of ``keys``."""
        with self.lock:
            return {key: self.results[key] for key in keys if key in self.results}

    def captured(self, start_ns: int, end_ns: int) -> set[Key]:
        with self.lock:
            return {key for key in self.seen if start_ns <= key[3] < end_ns}

    def close(self) -> None:
        close_client(self.client)


class Ledger:
    """The cloud's de-duplication ledger, read as it grows: its SQLite file (WAL: readers
    never block the cloud), or the PostgreSQL the clouds share."""

    def __init__(self, location: Path | str) -> None:
        self.location = location
        self.arrived: dict[Key, float] = {}
        self.answered: set[Key] = set()  # captures the cloud published an answer for
        self._rowid = 0
        self._since = 0.0  # PostgreSQL: what arrived from then on is read again

    def _rows(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        if isinstance(self.location, str):
            import psycopg

            try:
                with psycopg.connect(self.location, connect_timeout=5) as db:
                    return db.execute(sql.replace("?", "%s"), params).fetchall()
            except psycopg.OperationalError:  # the database restarting: read it next time
                return []
        if not self.location.exists():
            return []
        with contextlib.closing(sqlite3.connect(f"file:{self.location}?mode=ro", uri=True)) as db:
            return db.execute(sql, params).fetchall()

    def read(self) -> dict[Key, float]:
        if isinstance(self.location, str):  # no rowid: by arrival time, a little overlap
            rows = self._rows(
                "SELECT 0, site, camera, seq, capture_ns, arrived, result IS NOT NULL "
                "FROM arrivals WHERE arrived >= ?",
                (self._since,),
            )
        else:
            rows = self._rows(
                "SELECT rowid, site, camera, seq, capture_ns, arrived, result IS NOT NULL "
                "FROM arrivals WHERE rowid > ? ORDER BY rowid",
                (self._rowid,),
            )
        for rowid, site, camera, seq, capture_ns, arrived, answered in rows:
            self.arrived[(site, camera, seq, capture_ns)] = arrived
            if answered:
                self.answered.add((site, camera, seq, capture_ns))
            self._rowid = max(self._rowid, rowid)
            self._since = max(self._since, arrived - 30)  # a slow transaction commits late
        return self.arrived

    def double_counted(self) -> int:
        """Training rows kept more than once (must be 0): a row is one object of one capture
        (``track``; -1 for a whole-frame feature)."""
        ((total, distinct),) = self._rows(
            "SELECT count(*), count(DISTINCT site || '/' || camera || '/' || seq || '/' || "
            "capture_ns || '/' || track) FROM features",
            (),
        )
        return int(total - distinct)


# --- processes -------------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for child in children_of(pid):
        pids += _tree(child)
    return pids


def _rss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def pool_workers(supervisor: int) -> list[int]:
    """The worker processes of a gateway pool (its multiprocessing children, not helpers
    such as the resource tracker), oldest first."""
    workers = []
    for pid in children_of(supervisor):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
    return sorted(workers)


def gateway_workers(site: Site) -> list[int]:
    assert site.gateway is not None
    return pool_workers(site.gateway.process.pid)


# --- the run ---------------------------------------------------------------------------------


class FaultBench:
    def __init__(
        self, stack: RunningStack, relay: Relay, budget: Budget, store: Path | str
    ) -> None:
        self.stack = stack
        self.relay = relay
        self.budget = budget
        self.ledger = Ledger(store if isinstance(store, str) else store / FILE_NAME)
        self.totals = CounterTotals(fetch)
        secrets = stack.secrets.directory
        self.watches = [
            EdgeWatch(
                BrokerConfig.for_user("observer", port=site.broker.port, secrets_dir=secrets),
                site.name,
            )
            for site in stack.sites
        ]

        def restarted(part: object) -> None:
            for url in getattr(part, "metrics_urls", []):
                self.totals.restarted(url)

        self.supervisor = Supervisor(stack.parts, on_restart=restarted)
        self.held = threading.Event()  # set: supervision paused (a part is kept down)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="supervise", daemon=True)
        self._thread.start()

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):  # the supervision period
            if not self.held.is_set():
                for event in self.supervisor.check():
                    log.warning("%s", event)
            self.totals.read(self.stack.metrics_urls)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for watch in self.watches:
            watch.close()

    # --- measurements --------------------------------------------------------------------

    def counters(self) -> dict[str, float]:
        _, samples = self.totals.read(self.stack.metrics_urls)
        return {
            "produced": samples.total(
                "edgelearn_gateway_frames_processed_total", outcome="forwarded"
            ),
            "duplicates": samples.total("edgelearn_cloud_duplicates_total"),
            "resent": samples.total("edgelearn_gateway_features_resent_total"),
            "frames_published": samples.total("edgelearn_camera_frames_published_total"),
            "frames_received": samples.total("edgelearn_gateway_frames_received_total"),
            **{
                f"frames_dropped.{reason}": value
                for reason, value in samples.by_label(
                    "edgelearn_gateway_frames_dropped_total", "reason"
                ).items()
            },
            **{
                f"features_given_up.{reason}": value
                for reason, value in samples.by_label(
                    "edgelearn_gateway_features_dropped_total", "reason"
                ).items()
            },
            "outbox_failures": samples.total("edgelearn_gateway_outbox_failures_total"),
            "models_rejected": samples.total("edgelearn_gateway_models_rejected_total"),
        }

    def rss_kb(self) -> int:
        pids = [part.running.process.pid for part in [self.stack.cloud_broker_part]]
        pids += [site.broker.running.process.pid for site in self.stack.sites]
        for child in self.stack.children.children:
            pids += _tree(child.process.pid)
        return sum(_rss_kb(pid) for pid in pids)

    def restarts(self) -> dict[str, int]:
        counts = {name: health.restarts for name, health in self.supervisor.health.items()}
        for site in self.stack.sites:  # worker restarts inside a pool, from its log
            assert site.gateway is not None
            log_file = self.stack.children.log_dir / f"{site.gateway.name}.log"
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            counts[f"{site.gateway.name} workers"] = text.count("; restarting")
        return counts

    def wait_flowing(self, timeout: float = 120) -> None:
        """Until every camera of every site has a feature captured in the last 2 s in the
        ledger."""

        def flowing() -> bool:
            recent = time.time_ns() - 2_000_000_000
            cameras = {(k[0], k[1]) for k, _ in self.ledger.read().items() if k[3] >= recent}
            return len(cameras) == SITES * CAMERAS_PER_SITE

        if not poll_until(flowing, timeout):
            raise RuntimeError("features do not flow from every camera to the cloud")

    def measure(
        self, name: str, inject: Callable[[], tuple[float, dict[str, Any]]], sites: list[str]
    ) -> dict[str, Any]:
        """Run one fault: ``inject`` returns when the part is back, with that wall time and
        what it wants reported."""
        log.warning("fault %s", name)
        rss_before = self.rss_kb()
        counts_before = self.counters()
        restarts_before = self.restarts()
        start_ns = time.time_ns()
        back, extra = inject()
        time.sleep(self.budget.observe)  # traffic after the part is back, to be counted
        end_ns = time.time_ns()
        produced: set[Key] = set()
        for watch in self.watches:
            produced |= watch.captured(start_ns, end_ns)

        def results_seen() -> dict[Key, int]:
            seen: dict[Key, int] = {}
            for watch in self.watches:
                seen |= watch.results_seen(produced & self.ledger.answered)
            return seen

        def delivered() -> bool:
            return produced <= self.ledger.read().keys() and self._outboxes_empty()

        settled = poll_until(delivered, self.budget.settle)
        # then the answers, a little longer: a result is not re-sent by anyone once its
        # capture is acknowledged, so one still missing after this is lost
        poll_until(lambda: (produced & self.ledger.answered) <= results_seen().keys(), 10)
        arrived = self.ledger.read()
        lost = produced - arrived.keys()
        answered = produced & self.ledger.answered
        seen = results_seen()
        counts_after = self.counters()
        delta = {
            key: round(counts_after.get(key, 0) - counts_before.get(key, 0))
            for key in sorted(set(counts_after) | set(counts_before))
        }
        restarts_after = self.restarts()
        return {
            "features_produced": len(produced),
            "features_delivered": len(produced & arrived.keys()),
            "features_lost": len(lost),
            "features_duplicated": delta.pop("duplicates", 0),
            "copies_per_feature": round(
                (len(produced) + delta.get("resent", 0)) / max(1, len(produced)), 3
            ),
            # what an independent subscriber at the site saw of the cloud's answers
            "results_answered": len(answered),
            "results_seen": len(seen),
            "results_lost": len(answered - seen.keys()),
            "results_repeated": sum(count - 1 for count in seen.values()),
            "settled": settled,
            "recovery_seconds": self._recovery(back, sites, arrived),
            "restarts": {
                name: restarts_after[name] - restarts_before.get(name, 0)
                for name in restarts_after
                if restarts_after[name] != restarts_before.get(name, 0)
            },
            "rss_kb_before": rss_before,
            "rss_kb_after": self.rss_kb(),
            "counters": {key: value for key, value in delta.items() if value},
            **extra,
        }

    def _outboxes_empty(self) -> bool:
        per_url, _ = self.totals.read(self.stack.metrics_urls)
        return all(
            samples.total("edgelearn_gateway_outbox_items") == 0 for samples in per_url.values()
        )

    def _recovery(self, back: float, sites: list[str], arrived: dict[Key, float]) -> float | None:
        """Seconds from ``back`` until every camera of ``sites`` had a feature captured
        after it recorded by the cloud."""
        back_ns = int(back * 1e9)
        first: dict[tuple[str, str], float] = {}
        for (site, camera, _, capture_ns), when in arrived.items():
            if site in sites and capture_ns >= back_ns:
                key = (site, camera)
                first[key] = min(first.get(key, when), when)
        if len(first) < CAMERAS_PER_SITE * len(sites):
            return None
        return round(max(first.values()) - back, 2)

    # --- the faults -------------------------------------------------------------------------

    def _broker_outage(self, part: Any, seconds: float) -> tuple[float, dict[str, Any]]:
        self.held.set()
        try:
            os.kill(part.running.process.pid, signal.SIGKILL)
            part.running.process.wait()
            time.sleep(seconds)  # the outage
        finally:
            self.held.clear()
        if not poll_until(lambda: part.exit_code() is None and part.responsive(), 30):
            raise RuntimeError(f"{part.name} did not come back")
        return time.time(), {"outage_seconds": seconds}

    def cloud_broker(self) -> tuple[float, dict[str, Any]]:
        return self._broker_outage(self.stack.cloud_broker_part, self.budget.down)

    def edge_broker(self) -> tuple[float, dict[str, Any]]:
        return self._broker_outage(self.stack.sites[0].broker, self.budget.down)

    def gateway_worker(self) -> tuple[float, dict[str, Any]]:
        workers = gateway_workers(self.stack.sites[0])
        os.kill(workers[0], signal.SIGKILL)
        return time.time(), {"killed_pid": workers[0]}

    def cloud_process(self) -> tuple[float, dict[str, Any]]:
        """The cloud is back when it says it serves again (its models loaded): from then on
        recovery is counted; the start-up itself is reported apart."""
        cloud = self.stack.cloud
        old, lines = cloud.process.pid, cloud.line_count
        killed = time.time()
        os.kill(old, signal.SIGKILL)
        if not poll_until(lambda: cloud.process.pid != old, 30):
            raise RuntimeError("the cloud was not restarted")
        self.stack.children.wait_for_line(cloud, "serving", timeout=300, after=lines)
        ready = time.time()
        return ready, {"kill_to_serving_seconds": round(ready - killed, 2)}

    def cloud_machine(self) -> tuple[float, dict[str, Any]]:
        """One of several cloud machines dies (SIGKILL, its process tree) and stays down for
        the outage; the others serve alone. It is back when it says it serves again."""
        cloud = self.stack.clouds[-1]
        old, lines = cloud.process.pid, cloud.line_count
        self.held.set()
        try:
            for pid in reversed(_tree(old)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            cloud.process.wait()
            time.sleep(self.budget.down)  # the outage
        finally:
            self.held.clear()
        if not poll_until(lambda: cloud.process.pid != old, 30):
            raise RuntimeError(f"{cloud.name} was not restarted")
        self.stack.children.wait_for_line(cloud, "serving", timeout=300, after=lines)
        return time.time(), {"outage_seconds": self.budget.down, "machine": cloud.name}

    def database(self) -> tuple[float, dict[str, Any]]:
        """The clouds' PostgreSQL dies (SIGKILL, with its backends) and starts again after
        the outage, recovering from its WAL."""
        postgres = self.stack.postgres
        assert postgres is not None
        postgres.kill()
        time.sleep(self.budget.down)  # the outage
        postgres.start()
        return time.time(), {"outage_seconds": self.budget.down}

    def cloud_paused(self) -> tuple[float, dict[str, Any]]:
        pid = self.stack.cloud.process.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.budget.pause)  # the pause
        finally:
            os.kill(pid, signal.SIGCONT)
        return time.time(), {"paused_seconds": self.budget.pause}

    def bridge_cut(self) -> tuple[float, dict[str, Any]]:
        self.relay.cut(self.budget.cut)
        time.sleep(self.budget.cut)  # the cut
        return time.time(), {"cut_seconds": self.budget.cut}

    def disk_full(self) -> tuple[float, dict[str, Any]]:
        workers = gateway_workers(self.stack.sites[0])
        limits = {pid: resource.prlimit(pid, resource.RLIMIT_FSIZE) for pid in workers}
        for pid, (_, hard) in limits.items():
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, hard))  # no file may grow
        try:
            time.sleep(self.budget.disk)  # the disk stays full
        finally:
            for pid, limit in limits.items():
                with contextlib.suppress(ProcessLookupError):
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, limit)
        return time.time(), {"full_seconds": self.budget.disk}

    def garbage(self) -> tuple[float, dict[str, Any]]:
        site = self.stack.sites[0]
        camera = "cam-1"
        config = BrokerConfig.for_user(
            camera, port=site.broker.port, secrets_dir=self.stack.secrets.directory
        )
        client = mqtt_client(config, "bench-garbage")
        topic = wire.Topics(site.name).frame(camera)
        good = wire.encode(scene_frames(camera, 1)[0])
        other = wire.encode(scene_frames("cam-2", 1)[0])
        rng = random.Random(12)
        # Over the gateway's frame limit, under the broker's message limit (8 MiB).
        oversize = dataclasses.replace(scene_frames(camera, 1)[0], payload=b"\xff" * (6 << 20))
        flood = (
            [rng.randbytes(rng.randint(1, 2000)) for _ in range(self.budget.garbage // 3)]
            + [good[: rng.randint(1, len(good) - 1)] for _ in range(self.budget.garbage // 3)]
            + [other] * (self.budget.garbage - 2 * (self.budget.garbage // 3))
        )
        # Mixed, as a real flood would be: the per-camera feed bound refuses most of it
        # (worker_busy) before a worker reads it, and every kind must reach a worker.
        rng.shuffle(flood)
        payloads = [wire.encode(oversize)] * 3 + flood  # oversize first, not behind the flood
        log_file = self.stack.children.log_dir / f"{site.gateway.name}.log"  # type: ignore[union-attr]
        lines_before = _warnings(log_file)
        try:
            for payload in payloads:
                client.publish(topic, payload, qos=1).wait_for_publish(10)
        finally:
            close_client(client)
        back = time.time()
        time.sleep(2)  # let the workers log what they refused
        return back, {
            "garbage_frames": len(payloads),
            "gateway_warning_lines": _warnings(log_file) - lines_before,
        }

    def tampered_models(self) -> tuple[float, dict[str, Any]]:
        site = self.stack.sites[0]
        mode = Mode.parse(MODE)
        genuine_bytes = self.watches[0].models[
            wire.Topics(site.name).model(wire.ALL_GATEWAYS, mode)
        ]
        genuine = wire.decode_as(genuine_bytes, wire.Model)
        flipped = bytearray(genuine.artifact)
        flipped[len(flipped) // 2] ^= 0xFF
        variants = [
            wire.encode(dataclasses.replace(genuine, artifact=bytes(flipped))),
            wire.encode(dataclasses.replace(genuine, version="tampered")),
            wire.encode(dataclasses.replace(genuine, signature=bytes(len(genuine.signature)))),
            wire.encode(dataclasses.replace(genuine, sha256=bytes(32))),
            wire.encode(dataclasses.replace(genuine, key_id="someone-else")),
            genuine_bytes[: len(genuine_bytes) // 2],
            b"garbage instead of a model",
        ]
        cloud = BrokerConfig.for_user(
            "cloud", port=self.stack.cloud_broker.port, secrets_dir=self.stack.secrets.directory
        )
        before = self.counters()["models_rejected"]
        client = mqtt_client(cloud, "bench-tamper")
        try:  # on the gateway's own slot, not retained: what an attacker on the link sends
            for payload in variants:
                topic = wire.Topics(site.name).model(site.gateway_id, mode)
                client.publish(topic, payload, qos=1).wait_for_publish(10)
        finally:
            close_client(client)
        expected = len(variants) * WORKERS
        refused = poll_until(lambda: self.counters()["models_rejected"] - before >= expected, 30)
        assert site.gateway is not None
        still_genuine = all(
            _scrape_total(url, "edgelearn_gateway_model_info", version=genuine.version) >= 1
            for url in site.gateway.metrics_urls
        )
        return time.time(), {
            "tampered_variants": len(variants),
            "all_refused_by_every_worker": refused,
            "workers_still_on_the_genuine_model": still_genuine,
        }

    def all_faults(self) -> list[tuple[str, Callable[[], tuple[float, dict[str, Any]]], list[str]]]:
        sites = {
            "first": [self.stack.sites[0].name],
            "every": [site.name for site in self.stack.sites],
        }
        return [
            (name, getattr(self, FAULTS[name][0]), sites[FAULTS[name][1]])
            for name in fault_names(len(self.stack.clouds))
        ]


def _scrape_total(url: str, name: str, **match: str) -> float:
    text = fetch(url)
    return 0.0 if text is None else parse_samples(text).total(name, **match)


def _warnings(log_file: Path) -> int:
    if not log_file.exists():
        return 0
    return sum(" WARNING " in line for line in log_file.read_text(errors="replace").splitlines())


@contextlib.contextmanager
def _stack(work: Path, clouds: int = 1) -> Iterator[tuple[RunningStack, Relay]]:
    registry = work / "registry"
    source, _ = bench_registry((2,))
    shutil.copytree(source.root, registry)
    cloud_port = free_port()
    relay = Relay(cloud_port)
    settings = StackSettings(
        run_dir=work / "run",
        secrets=work / "secrets",
        registry=registry,
        edge_port=0,
        cloud_port=cloud_port,
        prometheus=False,
        mode=MODE,
        split_ks=(2,),
        budget="quick",
        workers=WORKERS,
        sites=SITES,
        consumers=2,
        clouds=clouds,
        labeled_cameras=CAMERAS_PER_SITE,
        videos=(),
        bridge_address=("127.0.0.1", relay.port),
        echo=False,
    )
    try:
        with launch(settings) as stack:
            yield stack, relay
    finally:
        relay.close()


def run(
    quick: bool, soak_minutes: float = 0.0, clouds: int = 1, only: Sequence[str] = ()
) -> dict[str, Any]:
    """Every fault in turn on one local stack (``only``: just these, by name); ``clouds``
    cloud processes (more than one: on a PostgreSQL, and the faults add a cloud machine
    killed and the database restarted)."""
    known = fault_names(clouds)
    unknown = sorted(set(only) - set(known))
    if unknown:
        known_names = ", ".join(sorted(known))
        raise ConfigError(f"no such fault: {', '.join(unknown)} (known: {known_names})")
    budget = Budget.of(quick)
    started = time.monotonic()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"edgelearn-bench-faults-{os.getpid()}"
    work.mkdir(parents=True)
    try:
        with _stack(work, clouds) as (stack, relay):
            store: Path | str = work / "run" / "features"
            if stack.postgres is not None:
                store = stack.postgres.url
            bench = FaultBench(stack, relay, budget, store)
            try:
                bench.wait_flowing()
                faults = {
                    name: bench.measure(name, inject, sites)
                    for name, inject, sites in bench.all_faults()
                    if not only or name in only
                }
                soak = _soak(bench, soak_minutes) if soak_minutes else None
                double = bench.ledger.double_counted()
            finally:
                bench.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "machine": machine_info(),
        "stack": {
            "sites": SITES,
            "gateway_workers_per_site": WORKERS,
            "cameras_per_site": CAMERAS_PER_SITE,
            "cloud_consumers": 2,
            "cloud_processes": clouds,
            "store": "postgresql" if clouds > 1 else "sqlite",
            "mode": MODE,
            "fps": 15,
        },
        "budget": dataclasses.asdict(budget),
        "faults": faults,
        "features_lost": sum(f["features_lost"] for f in faults.values()),
        "results_lost": sum(f["results_lost"] for f in faults.values()),
        "training_rows_double_counted": double,
        "soak": soak,
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }


def _soak(bench: FaultBench, minutes: float) -> dict[str, Any]:
    """The faults again and again for ``minutes``; RSS after the first round is the
    baseline."""
    deadline = time.monotonic() + minutes * 60
    rounds: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        lost = 0
        for name, inject, sites in bench.all_faults():
            lost += bench.measure(name, inject, sites)["features_lost"]
            if time.monotonic() >= deadline:
                break
        rounds.append({"rss_kb": bench.rss_kb(), "features_lost": lost})
    baseline = rounds[0]["rss_kb"]
    return {
        "minutes": minutes,
        "rounds": rounds,
        "rss_growth_after_warmup": (rounds[-1]["rss_kb"] - baseline) / baseline
        if baseline
        else None,
    }
