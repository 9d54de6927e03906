"""The dashboards, rules and scrape config against a real Prometheus scraping a real pipeline.

One short run for the whole module: real cameras (``cameras.camera.CameraFleet``, 720p
labeled scenes over MQTT), a gateway worker (``run_gateway``), a cloud consumer with small
but real scikit-learn classifiers, and Prometheus started from a copy of
``dashboards/prometheus`` with a 1 s scrape interval and the file_sd targets file the stack
would write. The gateway starts in ``raw`` (the cloud-only baseline), receives a signed PCA
model, is switched to ``pca`` by a plan and finally to ``split:2`` without a model (so it
runs raw and says so). One bad envelope is sent to the gateway, one to the cloud and one bad
model: every drop and refusal panel then has a series, as in a real network.

Then every PromQL expression of every panel, recording rule and alert rule must parse and
return at least one series; ``promtool`` must accept the config, the rules and every
process's ``/metrics``; and ``edgelearn report`` must draw its charts from this Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from cameras.camera import CameraFleet, CameraSettings
from cameras.metrics import CameraMetrics
from cameras.mqtt_link import MqttLink
from cameras.scene import FrameSource
from cameras.sources import SourceSpec
from cameras.transport import FrameLink
from cloud.consumer import CloudConsumer, ConsumerConfig
from cloud.metrics import CloudMetrics
from cloud.models.data import RenderSettings, render_inputs
from cloud.serving import Classifier
from edgelearn import wire
from edgelearn.artifacts import PcaProjection
from edgelearn.datasets import DEFAULT_ROOT, LabeledImages, load_fashion_mnist
from edgelearn.metrics import MetricsServer, register_build_info, serve_metrics
from edgelearn.modes import AUTOENCODER, PCA, Mode
from edgelearn.ports import free_port
from stack import report
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import RunningGateway, pca_deployment, run_gateway
from tests.support.waiting import wait_for
from tests.test_dashboards import (
    PROMETHEUS,
    RULE_FILES,
    all_rules,
    label_values_selector,
    metric_names,
    panel_queries,
    pending_metric_names,
    read_rules,
    strip_condition,
    substitute_variables,
    variable_queries,
)

PROMETHEUS_BIN = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").exists(),
        reason="Debian's dataset-fashion-mnist is not installed (setup.sh installs it)",
    ),
]

CAMERAS = ("cam-1", "cam-2")
GATEWAY = "gw-1"

# What this run cannot produce, and why. An expression that returns nothing is excused only
# if it reads one of these names *and* no scraped process exposes a sample of it, so the day
# a role exports it the expression is checked for real. Names must still be right: each is
# either declared (HELP/TYPE) by a scraped process or comes from prometheus_client itself.
NOT_IN_THIS_RUN = {
    "edgelearn_cloud_store_retries_total": "this run's store is never away "
    "(tests/test_shared_store.py restarts PostgreSQL under load)",
    "edgelearn_cloud_events_total": "this run's consumers run without the cloud service's "
    "event publisher (tests/test_events.py reads its events with mosquitto_sub)",
    "edgelearn_cloud_events_dropped_total": "no result is undecodable in a healthy run "
    "(tests/test_events.py)",
    "process_cpu_seconds_total": "the roles' registries have no ProcessCollector yet "
    "(proposed: ProcessCollector(registry=registry) in register_build_info)",
    "process_resident_memory_bytes": "as process_cpu_seconds_total",
    "edgelearn_cloud_training_runs_total": "this run trains nothing (tests/test_trainer.py "
    "runs the continuous trainer)",
    "edgelearn_cloud_trainer_heldout_accuracy_ratio": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_trainer_promotions_total": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_trainer_triggers_total": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_trainer_specialised_cameras": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_trainer_rejections_total": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_trainer_rollbacks_total": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_trainer_live_accuracy_ratio": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_shadow_objects_total": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_class_prior_ratio": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_model_pushed_bytes_total": "this run's consumers serve a ClassifierSource "
    "and push no model (edgelearn cloud counts its pushes)",
    "edgelearn_cloud_training_seconds_sum": "as edgelearn_cloud_training_runs_total",
    "edgelearn_cloud_training_seconds_count": "as edgelearn_cloud_training_runs_total",
    "edgelearn_gateway_features_dropped_total": "a healthy run gives up no feature "
    "(tests/test_outbox.py fills an outbox on purpose)",
    "edgelearn_gateway_frames_out_of_order_total": "each camera has one worker: no frame "
    "comes out of order (tests/test_gateway_cli.py checks it stays at zero)",
    "edgelearn_cloud_duplicates_total": "no feature is sent twice in a healthy run "
    "(tests/test_delivery.py makes retries on purpose)",
    "edgelearn_cloud_model_info": "no process sets it yet (consumers take models from a "
    "ClassifierSource and do not report their versions)",
    "edgelearn_cloud_objects_classified_total": "this run's models take whole frames (one "
    "item in the middle); tests/test_pipeline_e2e.py classifies objects one by one",
    "edgelearn_cloud_frames_without_objects_total": "as edgelearn_cloud_objects_classified_total",
    "edgelearn_cloud_model_generation": "this run's consumers serve a ClassifierSource: no "
    "registry, no training plan (tests/test_generations.py grows generations)",
    "edgelearn_cloud_model_heldout_accuracy_ratio": "as edgelearn_cloud_model_generation",
    "edgelearn_cloud_model_heldout_items": "as edgelearn_cloud_model_generation",
    "edgelearn_cloud_generations_total": "as edgelearn_cloud_model_generation",
    "edgelearn_gateway_teacher_looks_total": "no teacher is pushed in this run (the stage "
    "waits for one; tests/test_gateway_service.py pushes one and counts its looks)",
    "edgelearn_gateway_teacher_labels_total": "as edgelearn_gateway_teacher_looks_total",
    "edgelearn_gateway_teacher_busy_total": "as edgelearn_gateway_teacher_looks_total",
    "edgelearn_gateway_teacher_cpu_seconds_total": "as edgelearn_gateway_teacher_looks_total",
    "edgelearn_gateway_teacher_labels_sent_total": "as edgelearn_gateway_teacher_looks_total",
    "edgelearn_gateway_teacher_agreement": "as edgelearn_gateway_teacher_looks_total (set "
    "once the cloud answers a labeled track; tests/test_teacher.py drives the rate)",
    "edgelearn_gateway_teacher_rate": "as edgelearn_gateway_teacher_agreement",
    "edgelearn_cloud_teacher_agreement_ratio": "no teacher labels in this run "
    "(tests/test_students.py sends them)",
    "edgelearn_cloud_student_runs_total": "as edgelearn_cloud_teacher_agreement_ratio",
    "edgelearn_cloud_teacher_task_answers_total": "this run's cameras are labeled scenes: no "
    "object is the teacher's (tests/test_students.py)",
}
# Label values this run cannot produce: a split mode needs a TensorFlow-trained int8 LiteRT
# model, too heavy for this test. Such selectors are checked widened to every mode instead.
WIDENED_MATCHERS = {'mode=~"split:.*"': 'mode=~".+"'}


# --- a small real classifier per mode ---------------------------------------------------------


@dataclass
class SklearnClassifier:
    """A fitted scikit-learn model behind the consumer's ``Classifier`` protocol."""

    model: LogisticRegression
    takes_frames: bool
    input_size: int
    classes: int
    channels: int = 1
    objects: bool = False  # fitted on whole frames' centre squares (train_models)
    version: str = ""

    def predict(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        rows = batch.reshape(batch.shape[0], -1).astype(np.float32)
        if self.takes_frames:
            rows /= 255.0
        probabilities = np.zeros((batch.shape[0], self.classes), np.float32)
        probabilities[:, self.model.classes_] = self.model.predict_proba(rows)
        return probabilities


@dataclass
class Models:
    """The test's ClassifierSource: raw frames and PCA features of one deployment."""

    raw: Classifier
    pca: Classifier
    pca_version: str

    def class_names(self, model_version: str) -> tuple[str, ...]:
        return ()

    def classifier_for(
        self, extractor: str, model_version: str, camera: str = ""
    ) -> Classifier | None:
        if extractor == "raw":
            return self.raw
        if extractor == "pca" and model_version == self.pca_version:
            return self.pca
        return None


def whole_frame(input_size: int) -> RenderSettings:
    """The whole-frame render path (the scene's centre square), which these models use."""
    return RenderSettings(input_size=input_size, objects=False)


def train_models(data: LabeledImages, model: wire.Model, count: int = 300) -> Models:
    """Fit on ``count`` items rendered through the camera path (cloud.models.data renders
    at the gateway's reduced size, which its docstring shows equals the 720p path)."""
    indices = np.arange(count)
    labels = data.labels[indices]
    classes = int(data.labels.max()) + 1
    small = render_inputs(
        data.images, seed=11, indices=indices, settings=whole_frame(input_size=32), workers=1
    ).inputs
    full = render_inputs(
        data.images, seed=11, indices=indices, settings=whole_frame(input_size=96), workers=1
    ).inputs
    projection = PcaProjection.from_bytes(model.artifact)
    features = projection.output.dequantize(projection.output.quantize(projection.project(full)))
    # One BLAS thread: on a shared 2-core machine more threads only fight each other.
    with threadpool_limits(1):
        raw = LogisticRegression(C=0.1, max_iter=2000).fit(small.reshape(count, -1) / 255.0, labels)
        pca = LogisticRegression(C=1.0, max_iter=2000).fit(features, labels)
    return Models(
        raw=SklearnClassifier(raw, takes_frames=True, input_size=32, classes=classes),
        pca=SklearnClassifier(pca, takes_frames=False, input_size=96, classes=classes),
        pca_version=model.version,
    )


# --- processes --------------------------------------------------------------------------------


class Publisher:
    """One broker user publishing QoS 1 and waiting for the broker to take it."""

    def __init__(self, broker: BrokerUnderTest, user: str) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"obs-{user}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        broker.config_for(user).apply_to_paho(self.client)
        connected = threading.Event()
        self.client.on_connect = lambda *args: connected.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert connected.wait(10), f"{user} could not connect"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class RunningConsumer:
    consumer: CloudConsumer
    loop: asyncio.AbstractEventLoop
    metrics_url: str  # its registry, served as a cloud process serves its one

    def total(self, name: str, **match: str) -> float:
        return sum(
            sample.value
            for family in self.consumer.metrics.registry.collect()
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items())
        )

    def drain(self, timeout: float = 30.0) -> None:
        asyncio.run_coroutine_threadsafe(self.consumer.drain(timeout), self.loop).result(
            timeout + 5
        )


@contextmanager
def run_consumer(broker: BrokerUnderTest, site: str, models: Models) -> Iterator[RunningConsumer]:
    """A CloudConsumer in its own event-loop thread until the block ends, its metrics
    served as :class:`cloud.service.CloudService` serves the process's one registry."""
    config = ConsumerConfig(consumer_id=f"cloud-obs-{uuid.uuid4().hex[:8]}", site=site)
    registry = CollectorRegistry()
    register_build_info(registry, "cloud")
    metrics = CloudMetrics(registry)
    consumer = CloudConsumer(config, broker.config_for("cloud"), models, metrics=metrics)
    ready = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["stop"], holder["loop"] = stop, asyncio.get_running_loop()
        try:
            async with consumer:
                ready.set()
                await stop.wait()
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="consumer", daemon=True)
    thread.start()
    assert ready.wait(30), "cloud consumer did not start"
    if failure:
        raise failure[0]
    server = serve_metrics(registry, 0)
    try:
        yield RunningConsumer(consumer, holder["loop"], server.url)
    finally:
        server.close()
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "cloud consumer did not stop"


class CameraThread:
    """A real CameraFleet (MQTT links, 720p labeled scenes) in its own event loop."""

    def __init__(self, broker: BrokerUnderTest, site: str, registry: CollectorRegistry) -> None:
        topics = wire.Topics(site)
        spec = SourceSpec("fashion-mnist", split="test")
        data = spec.load_data()

        def sources(index: int) -> FrameSource:
            # One item at a time in the middle: these cameras feed whole-frame models.
            return spec.open(
                index, cameras=len(CAMERAS), seed=7, dwell_frames=5, data=data, scene="single"
            )

        def links(camera_id: str) -> FrameLink:
            return MqttLink(camera_id, broker.config_for(camera_id), topics.frame(camera_id))

        self._fleet = CameraFleet(
            CAMERAS,
            sources=sources,
            links=links,
            settings=CameraSettings(fps=5.0, quality=70),
            metrics=CameraMetrics(registry),
        )
        self._started = threading.Event()
        self._failure: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="cameras")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            async with self._fleet:
                self._started.set()
                await self._fleet.wait()
        except BaseException as exc:
            self._failure.append(exc)
        finally:
            self._started.set()

    def start(self) -> None:
        self._thread.start()
        assert self._started.wait(30), "cameras did not start"
        if self._failure:
            raise self._failure[0]

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._fleet.stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "cameras did not stop"
        if self._failure:
            raise self._failure[0]


class PrometheusServer:
    """``prometheus`` on a free loopback port, from a copy of dashboards/prometheus."""

    def __init__(self, root: Path, targets: list[dict[str, Any]]) -> None:
        assert PROMETHEUS_BIN, "prometheus is not installed (setup.sh installs it)"
        self.config_dir = root / "prometheus"
        shutil.copytree(PROMETHEUS, self.config_dir, ignore=shutil.ignore_patterns("*.json"))
        config = self.config_dir / "prometheus.yml"
        text = config.read_text(encoding="utf-8")
        for old, new in (
            ("scrape_interval: 5s", "scrape_interval: 1s"),
            ("scrape_timeout: 4s", "scrape_timeout: 1s"),
            ("evaluation_interval: 5s", "evaluation_interval: 1s"),
        ):
            assert old in text, f"prometheus.yml no longer says {old!r}"
            text = text.replace(old, new)
        config.write_text(text, encoding="utf-8")
        # Exactly what the stack writes: one file_sd file under targets/.
        (self.config_dir / "targets" / "targets.json").write_text(json.dumps(targets, indent=2))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(self._ready, 30, "Prometheus to be ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def api(self, endpoint: str, **params: str) -> dict[str, Any]:
        """The API's JSON answer, errors included (a query that does not parse is a 400
        whose body says why)."""
        url = f"{self.url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        return body

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def value(self, expr: str) -> float:
        """Sum of the instant values of ``expr`` (0 when it has none)."""
        body = self.query(expr)
        if body["status"] != "success":
            return 0.0
        return sum(float(item["value"][1]) for item in body["data"]["result"])

    def series_count(self, expr: str) -> int:
        body = self.query(expr)
        return len(body["data"]["result"]) if body["status"] == "success" else 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()


@dataclass
class ObservedRun:
    prometheus: PrometheusServer
    metrics_urls: dict[str, str]  # job -> http://host:port/metrics
    gateway: RunningGateway
    consumer: RunningConsumer


def _host_port(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _plan(version: int, mode: str) -> wire.Plan:
    return wire.Plan(
        gateway_id=GATEWAY,
        plan_version=version,
        mode=mode,
        keyframes=1,
        keyframe_threshold=0.02,
        keyframe_max_interval=45,
    )


def _wait_for_prometheus(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """wait_for at a pace Prometheus (scraping every second) can usefully answer."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)  # between polls; the condition is what we wait for


@pytest.fixture(scope="module")
def observed(
    broker: BrokerUnderTest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ObservedRun]:
    root = tmp_path_factory.mktemp("observability")
    site = f"obs-{uuid.uuid4().hex[:8]}"
    topics = wire.Topics(site)
    model = pca_deployment(broker.secrets_dir, dim=32, version="pca-obs-1")
    models = train_models(load_fashion_mnist("test"), model)
    with ExitStack() as stack:
        gateway = stack.enter_context(
            run_gateway(
                broker, site=site, gateway_id=GATEWAY, mode="raw", queue_depth=4, metrics_port=0
            )
        )
        consumer = stack.enter_context(run_consumer(broker, site, models))
        camera_registry = CollectorRegistry()
        register_build_info(camera_registry, "camera")
        camera_server: MetricsServer = serve_metrics(camera_registry, 0)
        stack.callback(camera_server.close)
        cloud = Publisher(broker, "cloud")
        stack.callback(cloud.close)

        # A signed PCA model for every gateway, as the cloud's registry publishes it, and a
        # broken one on another slot: the gateway must load the first and refuse the second.
        cloud.publish(topics.model(wire.ALL_GATEWAYS, Mode(PCA)), wire.encode(model), retain=True)
        cloud.publish(topics.model(wire.ALL_GATEWAYS, Mode(AUTOENCODER)), b"not a model envelope")
        wait_for(
            lambda: (
                gateway.sample("edgelearn_gateway_model_swaps_total", slot="pca") == 1
                and gateway.total("edgelearn_gateway_models_rejected_total") >= 1
            ),
            30,
            "the PCA model to load and the broken one to be refused",
        )

        assert gateway.worker.metrics_server is not None
        metrics_urls = {
            "gateway": gateway.worker.metrics_server.url,
            "cloud": consumer.metrics_url,
            "camera": camera_server.url,
        }
        targets = [
            {
                "targets": [_host_port(metrics_urls["gateway"])],
                "labels": {"job": "gateway", "gateway": GATEWAY, "worker": "0"},
            },
            {
                "targets": [_host_port(metrics_urls["cloud"])],
                "labels": {"job": "cloud"},
            },
            {"targets": [_host_port(metrics_urls["camera"])], "labels": {"job": "camera"}},
        ]
        prometheus = PrometheusServer(root, targets)
        stack.callback(prometheus.stop)
        _wait_for_prometheus(
            lambda: prometheus.series_count("up == 1") == 3, 30, "Prometheus to scrape 3 targets"
        )

        cameras = CameraThread(broker, site, camera_registry)
        cameras.start()
        stack.callback(cameras.stop)

        def results(mode: str) -> float:
            return consumer.total("edgelearn_cloud_results_total", mode=mode)

        def scrapes_with_new_results(mode: str) -> float:
            return prometheus.value(
                f'sum(changes(edgelearn_cloud_results_total{{mode="{mode}"}}[1m]))'
            )

        # Each phase lasts until Prometheus has seen results rise in 4 scrapes, so rates and
        # quantiles have a few points per mode (a phase takes 4-6 s).
        # Phase 1: cloud-only (raw).
        _wait_for_prometheus(
            lambda: scrapes_with_new_results("raw") >= 4, 60, "raw results in Prometheus"
        )
        # Phase 2: the scheduler plans pca for this gateway.
        plan = _plan(1, "pca")
        cloud.publish(topics.plan(GATEWAY), wire.encode(plan), retain=True)
        _wait_for_prometheus(
            lambda: scrapes_with_new_results("pca") >= 4, 60, "pca results in Prometheus"
        )
        wait_for(
            lambda: gateway.total("edgelearn_gateway_capacity_frames_per_second") > 0,
            10,
            "the gateway to report its pca capacity",
        )
        # A misbehaving camera and a misbehaving gateway: one bad envelope each.
        bad_camera = Publisher(broker, "cam-3")
        stack.callback(bad_camera.close)
        bad_camera.publish(topics.frame("cam-3"), b"not a frame envelope")
        bad_gateway = Publisher(broker, GATEWAY)
        stack.callback(bad_gateway.close)
        bad_gateway.publish(topics.feature(GATEWAY, "cam-1"), b"not a feature envelope")
        wait_for(
            lambda: (
                gateway.total("edgelearn_gateway_frames_dropped_total", camera="cam-3") == 1
                and consumer.total("edgelearn_cloud_features_dropped_total") >= 1
            ),
            15,
            "both bad envelopes to be counted as drops",
        )
        # Phase 3: a plan for a split mode whose model never comes: it runs raw meanwhile.
        plan = _plan(2, "split:2")
        cloud.publish(topics.plan(GATEWAY), wire.encode(plan), retain=True)
        wait_for(
            lambda: (
                gateway.sample("edgelearn_gateway_mode_info", mode="split:2", effective="raw") == 1
            ),
            10,
            "the split:2 plan to apply",
        )
        raw_before = results("raw")
        wait_for(lambda: results("raw") >= raw_before + 2, 60, "raw results after the plan")
        cameras.stop()
        gateway.drain()
        consumer.drain()
        # Prometheus has seen the end of the run once the last plan and the drops are scraped.
        _wait_for_prometheus(
            lambda: (
                prometheus.series_count(
                    'edgelearn_gateway_mode_info{mode="split:2", gateway="gw-1"}'
                )
                == 1
                and prometheus.series_count("edgelearn_cloud_features_dropped_total") >= 1
                and prometheus.series_count(
                    'edgelearn_gateway_frames_dropped_total{camera="cam-3"}'
                )
                == 1
            ),
            30,
            "Prometheus to scrape the end of the run",
        )
        yield ObservedRun(prometheus, metrics_urls, gateway, consumer)


# --- checks -----------------------------------------------------------------------------------


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _exposed(texts: list[str]) -> tuple[set[str], set[str]]:
    """(sample names with a value, names declared by HELP/TYPE) over every scraped text."""
    samples, declared = set(), set()
    for text in texts:
        for line in text.splitlines():
            if line.startswith("# TYPE ") or line.startswith("# HELP "):
                declared.add(line.split()[2])
            elif line and not line.startswith("#"):
                samples.add(line.split("{", 1)[0].split(" ", 1)[0])
    return samples, declared


def _declared(name: str, declared: set[str]) -> bool:
    family = name
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        family = family.removesuffix(suffix)
    return bool({name, family, family + "_total"} & declared)


def _check_expressions(
    run: ObservedRun, expressions: list[tuple[str, str, str]]
) -> tuple[list[str], list[str]]:
    """``(problems, excused)`` for ``(where, expr as written, expr to query for data)``."""
    samples, declared = _exposed([_scrape(url) for url in run.metrics_urls.values()])
    pending = pending_metric_names()
    problems, excused = [], []
    for where, written, for_data in expressions:
        parsed = run.prometheus.query(written)
        if parsed["status"] != "success":
            problems.append(f"{where}: does not parse: {parsed.get('error')}\n    {written}")
            continue
        body = run.prometheus.query(for_data)
        if body["status"] == "success" and body["data"]["result"]:
            continue
        widened = for_data
        for old, new in WIDENED_MATCHERS.items():
            widened = widened.replace(old, new)
        if widened != for_data and run.prometheus.series_count(widened):
            continue
        absent = [
            name
            for name in metric_names(for_data) & NOT_IN_THIS_RUN.keys()
            if name not in samples and (_declared(name, declared) or name in pending)
        ]
        if absent:
            excused.append(f"{where}: {absent[0]}: {NOT_IN_THIS_RUN[absent[0]]}")
        else:
            problems.append(f"{where}: no series\n    {for_data}")
    return problems, excused


def _poll(
    check: Callable[[], tuple[list[str], list[str]]], timeout: float
) -> tuple[list[str], list[str]]:
    """Re-run ``check`` until it finds no problem (rules need an evaluation or two after the
    last scrape) or ``timeout`` passes; returns the last outcome."""
    deadline = time.monotonic() + timeout
    while True:
        problems, excused = check()
        if not problems or time.monotonic() > deadline:
            return problems, excused
        time.sleep(0.5)  # between polls of Prometheus; the condition is re-checked each time


def test_promtool_accepts_the_config_and_the_rules() -> None:
    assert PROMTOOL, "promtool is not installed (setup.sh installs prometheus)"
    config = subprocess.run(
        [PROMTOOL, "check", "config", str(PROMETHEUS / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    assert "2 rule files found" in config.stdout
    rules = subprocess.run(
        [PROMTOOL, "check", "rules", *map(str, RULE_FILES)], capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    for path in RULE_FILES:
        assert f"SUCCESS: {len(read_rules(path))} rules found" in rules.stdout


def test_prometheus_loaded_every_rule_the_files_define(observed: ObservedRun) -> None:
    body = observed.prometheus.api("rules")
    assert body["status"] == "success"
    loaded = {rule["name"]: rule for group in body["data"]["groups"] for rule in group["rules"]}
    assert set(loaded) == {rule.name for rule in all_rules()}
    broken = {
        name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] == "err"
    }
    assert not broken


def test_every_target_is_scraped_with_its_labels(observed: ObservedRun) -> None:
    body = observed.prometheus.api("targets", state="active")
    targets = body["data"]["activeTargets"]
    assert {t["labels"]["job"] for t in targets} == {"camera", "gateway", "cloud"}
    assert all(t["health"] == "up" for t in targets), targets
    gateway = next(t for t in targets if t["labels"]["job"] == "gateway")
    assert gateway["labels"]["gateway"] == GATEWAY


def test_every_dashboard_query_parses_and_returns_data(observed: ObservedRun) -> None:
    expressions = [
        (where, substitute_variables(expr), substitute_variables(expr))
        for where, expr in panel_queries()
    ]
    assert len(expressions) > 40
    problems, excused = _poll(lambda: _check_expressions(observed, expressions), 60)
    for note in excused:
        warnings.warn(f"not checked for data in this run: {note}", stacklevel=1)
    assert not problems, "\n".join(problems)


def test_every_rule_parses_and_returns_data(observed: ObservedRun) -> None:
    # Alert expressions are conditions (up == 0 is empty while all is well): their left side,
    # the series the condition is about, must have data; the whole expression must parse.
    expressions = [
        (
            f"{rule.file}: {rule.name}",
            rule.expr,
            strip_condition(rule.expr) if rule.kind == "alert" else rule.expr,
        )
        for rule in all_rules()
    ]
    problems, excused = _poll(lambda: _check_expressions(observed, expressions), 60)
    assert not problems, "\n".join(problems)
    assert not excused, excused


def test_template_variables_have_values(observed: ObservedRun) -> None:
    for where, query in variable_queries():
        selector, label = label_values_selector(query)
        body = observed.prometheus.query(f"count by ({label}) ({substitute_variables(selector)})")
        assert body["status"] == "success", (where, body)
        values = {item["metric"].get(label) for item in body["data"]["result"]}
        values.discard(None)
        assert values, f"{where}: no values for {label}"
        if label == "camera":
            assert set(CAMERAS) <= values
        if label == "gateway":
            assert values == {GATEWAY}


def test_promtool_finds_no_problem_in_any_metrics_endpoint(observed: ObservedRun) -> None:
    assert PROMTOOL
    for job, url in observed.metrics_urls.items():
        text = _scrape(url)
        assert "edgelearn_build_info" in text, job
        checked = subprocess.run(
            [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert checked.returncode == 0, f"{job}: {checked.stdout}{checked.stderr}"
        assert not checked.stdout.strip() and not checked.stderr.strip(), job


def test_the_run_shows_what_the_dashboards_are_for(observed: ObservedRun) -> None:
    """A few values, not just series: the panels would show a real picture of this run."""
    query = observed.prometheus.query

    def values(expr: str) -> dict[str, float]:
        body = query(expr)
        assert body["status"] == "success", body
        return {
            json.dumps(item["metric"], sort_keys=True): float(item["value"][1])
            for item in body["data"]["result"]
        }

    modes = {
        json.loads(key)["mode"]: value
        for key, value in values(
            "sum by (mode) (edgelearn_cloud_received_bytes_total)"
            " / sum by (mode) (edgelearn_cloud_features_received_total)"
        ).items()
    }
    assert modes.keys() == {"raw", "pca"}
    assert modes["pca"] * 20 < modes["raw"], modes  # a feature vector against a 720p JPEG
    accuracy = values("sum(edgelearn_cloud_frames_scored_total)")
    assert sum(accuracy.values()) > 0
    models = values("edgelearn_gateway_model_info")
    assert [json.loads(key)["version"] for key in models] == ["pca-obs-1"]


def test_report_draws_charts_from_this_prometheus(
    observed: ObservedRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report"
    status = report.cli(
        ["--prometheus", observed.prometheus.url, "--since", "3m", "--output-dir", str(out)]
    )
    printed = capsys.readouterr()
    assert status == 0, printed.err
    written = {Path(line).name for line in printed.out.split()}
    assert written == {
        "uplink_bytes_per_mode.png",
        "reduction_ratio_over_time.png",
        "accuracy.png",
        "keyframe_ratio.png",
        "latency_distribution.png",
    }, printed.err
    for name in written:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    assert "skipped" not in printed.err


def test_report_says_so_when_prometheus_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()  # nothing listens there
    status = report.cli(["--prometheus", f"http://127.0.0.1:{port}", "--output-dir", str(tmp_path)])
    assert status == 2
    assert "cannot query Prometheus" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
