"""Model generations: an empty registry answers within a minute, better models follow in the
background, and a promotion loses no feature and answers none twice."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud.bootstrap import TrainingPlan, family_of
from cloud.judge import paired, sign_test
from edgelearn import wire
from edgelearn.metrics import scrape
from edgelearn.modes import Mode
from edgelearn.ports import free_port, port_in_use
from edgelearn.secrets import Secrets
from stack import broker as broker_module
from tests.support.waiting import wait_for

# --- the judge ------------------------------------------------------------------------------


def test_the_sign_test_is_exact_and_one_sided() -> None:
    assert sign_test(0, 0) == 1.0
    assert sign_test(10, 0) == pytest.approx(2**-10)
    assert sign_test(5, 5) == pytest.approx(0.623046875)  # P(X >= 5), X ~ Bin(10, 1/2)
    assert sign_test(0, 10) == pytest.approx(1.0)


def test_the_judge_counts_items_not_objects() -> None:
    # 40 items seen 10 times each: the candidate is right on 24 items, the serving model on
    # 16. The same outcomes counted per object would look like 400 pieces of evidence.
    items = [item for item in range(40) for _ in range(10)]
    candidate = np.asarray([item < 24 for item in items])
    serving = np.asarray([item < 16 for item in items])
    verdict = paired(candidate, serving, items)
    assert (verdict.wins, verdict.losses, verdict.items, verdict.objects) == (8, 0, 40, 400)
    # 8 items differ, all the same way: 1 in 2^8 sign flips does as well
    assert verdict.better and verdict.p_value == pytest.approx(2**-8, abs=0.003)
    assert verdict.gain == pytest.approx(0.2) and verdict.low <= 0.2 <= verdict.high
    # a gain of one item in 40 is no evidence
    assert not paired(candidate, np.asarray([item < 23 for item in items]), items).better
    # worse is never better
    assert not paired(serving, candidate, items).better


# --- an empty registry, end to end ------------------------------------------------------------


class ResultWatch:
    """The cloud broker's features and results, as a subscriber outside the project sees
    them: every capture forwarded with objects, and every result for it."""

    def __init__(self, port: int, secrets: Path) -> None:
        self.lock = threading.Lock()
        self.features: dict[wire.Capture, float] = {}  # forwarded with objects: first seen
        self.results: dict[wire.Capture, int] = {}
        self.versions: list[tuple[float, str]] = []  # (when, the edge model of a result)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="generations-watch", protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set("observer", Secrets(secrets).password("observer"))
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("edgelearn/v1/+/features/#", 1), ("edgelearn/v1/+/results/+", 1)])
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        envelope = wire.decode(message.payload)
        now = time.monotonic()
        with self.lock:
            if message.topic.split("/")[3] == "results":
                assert isinstance(envelope, wire.Result)
                capture = wire.capture_of(envelope)
                self.results[capture] = self.results.get(capture, 0) + 1
                self.versions.append((now, envelope.model_version))
            elif isinstance(envelope, wire.Feature) and envelope.tracks:
                self.features.setdefault(wire.capture_of(envelope), now)

    def first_result(self) -> float | None:
        with self.lock:
            return self.versions[0][0] if self.versions else None

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.e2e
def test_an_empty_registry_answers_first_then_promotes_a_better_generation_losing_nothing(
    tmp_path: Path,
) -> None:
    secrets, registry, run_dir = tmp_path / "secrets", tmp_path / "registry", tmp_path / "run"
    broker_module.init_secrets(secrets, cameras=4, gateways=2)
    cloud_port = free_port()
    command = [
        sys.executable, "-m", "stack", "up", "--budget", "smoke", "--split-ks", "2",
        "--mode", "split:2", "--cameras", "2", "--video", "none", "--no-learn",
        "--secrets", str(secrets), "--registry", str(registry), "--run-dir", str(run_dir),
        "--edge-port", "0", "--cloud-port", str(cloud_port), "--no-prometheus",
        "--interval", "5", "--fps", "6",  # the climb, not the load: training is niced
    ]  # fmt: skip
    console = tmp_path / "console.txt"
    started = time.monotonic()
    up = subprocess.Popen(command, stdout=console.open("w"), stderr=subprocess.STDOUT, text=True)
    watch: ResultWatch | None = None
    promoted_at = stopped_at = None
    try:
        wait_for(
            lambda: port_in_use("127.0.0.1", cloud_port) or up.poll() is not None,
            60,
            "the cloud broker",
        )
        watch = ResultWatch(cloud_port, secrets)
        cloud_log = run_dir / "cloud.log"
        wait_for(lambda: watch.first_result() is not None or up.poll() is not None, 240,
                 "a first result")  # fmt: skip
        assert up.poll() is None, console.read_text()[-3000:]
        first = watch.first_result()
        assert first is not None
        # the first training's progress reached the console (a file, not a terminal)
        assert re.search(r"cloud \| edgelearn cloud: \[\d+/\d+\] ", console.read_text())
        # answered before generation 2 was judged (generation 1 may still export the rest)
        assert "generation 2 cnn" not in cloud_log.read_text()
        wait_for(lambda: "training generation 2 in the background" in cloud_log.read_text()
                 or up.poll() is not None, 240, "generation 2 to start")  # fmt: skip

        def promoted() -> bool:
            return "generation 2 cnn" in cloud_log.read_text() or up.poll() is not None

        wait_for(promoted, 600, "generation 2 to be judged")
        promoted_at = time.monotonic()
        log = cloud_log.read_text()
        assert "generation 2 cnn" in log and "promoted" in log.split("generation 2 cnn")[1], log
        # the dashboards see the climb: generation 2 serves, a promotion counted
        (url,) = re.findall(r"cloud cloud: consumers .*, metrics (\S+)", log)
        metrics = scrape([url])
        assert metrics.total("edgelearn_cloud_model_generation", family="cnn") == 2
        assert metrics.total("edgelearn_cloud_generations_total", family="cnn",
                             outcome="promoted") == 1  # fmt: skip
        held_out = TrainingPlan.smoke().n_held_out
        assert metrics.total("edgelearn_cloud_model_heldout_items", mode="split:2") >= held_out
        # the gateways run the new edge half: results of its features arrive
        new_split = serving_generation_version(registry)
        wait_for(
            lambda: any(version == new_split for _, version in watch.versions), 120,
            "results of the promoted model",
        )  # fmt: skip
        since = time.monotonic()
        wait_for(lambda: len(watch.versions) > 20 and time.monotonic() > since + 20, 60,
                 "more results after it")  # fmt: skip
        stopped_at = time.monotonic()
        up.send_signal(signal.SIGTERM)
        up.wait(120)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        if watch is not None:
            watch.close()
    assert up.returncode == 0, console.read_text()[-3000:]
    assert watch is not None and promoted_at is not None and stopped_at is not None
    with watch.lock:  # every feature with objects forwarded until 15 s before the stop
        settled = [c for c, seen in watch.features.items() if seen < stopped_at - 15]
        assert len(settled) > 50 and any(seen > promoted_at for seen in watch.features.values())
        lost = [capture for capture in settled if capture not in watch.results]
        twice = {capture: n for capture, n in watch.results.items() if n > 1}
    assert lost == [] and twice == {}
    assert first - started < 240  # (the smoke plan; the default's target is in the benchmark)


def serving_generation_version(registry: Path) -> str:
    """The split:2 version the registry serves now (generation 2's)."""
    from cloud.registry import Registry

    entry = Registry(registry).serving(Mode.split(2))
    assert int(entry.metadata["extra"]["generation"]) == 2
    return entry.version


def test_a_plan_grows_its_items_and_the_cnn_modes_are_one_family() -> None:
    plan = TrainingPlan.default()
    items = [generation.items for generation in plan.generations]
    assert items == sorted(items) and items[-1] == 60_000  # every Fashion-MNIST item, last
    assert not plan.generation(1).autoencoder  # the first one is for a first result, fast
    assert {family_of(Mode.parse(text)) for text in ("raw", "split:3", "full")} == {"cnn"}
