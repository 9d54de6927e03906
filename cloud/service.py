"""The cloud role in one process: consumers, model generations, deployments, the planner.

Where it sits: ``edgelearn cloud`` (:mod:`cloud.cli`) loads a
:class:`~cloud.config.CloudConfig` (a ``[cloud]`` TOML table, the environment, its flags),
makes the :class:`CloudSettings` of it and runs a :class:`CloudService`; tests and benchmarks
run one in-process. On entering, the service

1. serves its one metrics registry on one ``/metrics`` (:class:`~cloud.metrics.CloudMetrics`,
   created once: every consumer, trainer and the planner count there);
2. starts ``consumers`` :class:`~cloud.consumer.CloudConsumer` in one shared-subscription
   group, every one answering from the same :class:`~cloud.serving.RegistryModels`, so a
   model loaded (or warmed up) once serves every consumer;
   Beside them, an :class:`~cloud.events.EventPublisher` reads the results back and
   publishes them as JSON object events (``events``);
3. trains the first generation of models when the registry lacks one (``training``, with
   its progress); the cloud-only CNN serves (``serving raw``) as soon as it is saved, while
   the edge halves are exported;
4. loads and runs once the cloud half of every mode it serves (the warm-up), so the first
   features do not wait seconds for TensorFlow;
5. pushes the newest signed deployment of every edge mode to the retained model topics;
6. with ``plan``, runs the :class:`~cloud.planner.Planner` beside the consumers;
7. with ``grow``, runs the :class:`~cloud.grower.ModelGrower`: the training plan's next
   generations, trained in the background and promoted through the judge;
8. with ``trainer``, runs the :class:`~cloud.trainer.ContinuousTrainer`: it fine-tunes the
   cloud halves on what arrives and promotes what beats the serving one; and beside it the
   :class:`~cloud.students.StudentTrainer`, which trains the teacher task's student (the
   answer for cameras without labels) from the teacher's labels. The consumers answer those
   cameras with the serving student (``<registry>/students``), or ``unknown``.

The trainers share one niced training process (:mod:`cloud.background`); their loops run
in threads as named tasks (``grower``, ``trainer``) of the service's TaskGroup, so a loop
that fails takes the service down with its error. The consumers keep their inference
threads of their own (compute stays off the event loop) and the planner its own TaskGroup.
Leaving the service stops them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from cloud.adaptation import ClassMix
from cloud.background import BackgroundLoop, TrainingProcess
from cloud.bootstrap import (
    Progress,
    TrainingPlan,
    ensure_first_generation,
    log_progress,
    with_splits,
)
from cloud.consumer import CloudConsumer, ConsumerConfig
from cloud.database import StoreUnavailable
from cloud.events import EventPublisher
from cloud.feature_store import FeatureStore
from cloud.grower import ModelGrower
from cloud.lease import Lease
from cloud.metrics import CloudMetrics
from cloud.models.errors import RegistryError
from cloud.models.teacher import TeacherSpec
from cloud.planner import Planner, PlannerSettings, format_decision, registry_candidates
from cloud.registry import DatabasePointer, FilePointer, ModelEntry, Registry
from cloud.serving import (
    SERVING_POLL_SECONDS,
    RegistryModels,
    Scoreboard,
    ServingWatch,
    deployable,
    edge_modes,
)
from cloud.shadow import ShadowBoard
from cloud.students import StudentBoard, StudentSettings, StudentTrainer
from cloud.trainer import ContinuousTrainer, TrainerSettings
from edgelearn import signing, wire
from edgelearn.config import BrokerConfig
from edgelearn.datasets import FASHION_MNIST, DatasetSpec
from edgelearn.metrics import MetricsServer, register_build_info, serve_metrics
from edgelearn.modes import RAW, Mode
from edgelearn.mqtt import MqttSession
from edgelearn.secrets import Secrets
from edgelearn.student import Student

log = logging.getLogger(__name__)

Announce = Callable[[str], None]


@dataclass(frozen=True)
class CloudSettings:
    broker: BrokerConfig
    registry: Path
    secrets: Secrets
    site: str = wire.DEFAULT_SITE  # "+": every site on the broker
    # Where results go: None, the site each feature came from; else this site's results
    # topics (a second cloud judged beside the first, as bench drift's static one is).
    results_site: str | None = None
    push_sites: tuple[str, ...] = ()  # where the models go; () with one site: that site
    group: str = "cloud"
    # This process's name in the group: its MQTT client ids derive from it (never the pid),
    # so a restarted process resumes its own sessions. Two processes of one group need two.
    cloud_id: str = "cloud"
    consumers: int = 1
    split_ks: tuple[int, ...] = (1, 2, 3)
    # The model generations to train (None: never train, serve what the registry has).
    training: TrainingPlan | None = field(default_factory=TrainingPlan.default)
    grow: bool = True  # train the plan's later generations in the background
    push: bool = True
    # Where what arrived is recorded (arrivals.sqlite: the de-duplication ledger, and the
    # labeled features when keep_features); a postgresql:// URL: shared by every cloud
    # process of the deployment, whose trainers then take turns by a lease; None: in
    # memory, forgotten on a restart.
    feature_store: Path | str | None = None
    keep_features: bool = True
    metrics_port: int = 0  # the process's one /metrics port; 0: a free one
    plan: PlannerSettings | None = None  # None: no planner
    trainer: TrainerSettings | None = None  # None: the models stay as trained
    # the teacher task's student trainer, which runs beside ``trainer`` (and only with it)
    students: StudentSettings = field(default_factory=StudentSettings)
    # with ``push``: also push a detector to the gateways as their teacher (converted once,
    # kept in the registry): cameras without labels learn from it. By default the packaged
    # person detector; ``teacher_spec`` can name a user's file instead.
    teacher: bool = True
    teacher_spec: TeacherSpec = field(default_factory=TeacherSpec)
    # JSON object events (cloud.events) on each site's events topic, made from the results
    events: bool = True
    dataset: DatasetSpec = field(default_factory=lambda: DatasetSpec(FASHION_MNIST))


async def push_deployments(
    broker: BrokerConfig,
    site: str,
    deployments: list[wire.Model],
    gateway: str = wire.ALL_GATEWAYS,
    client_id: str = "cloud-push",
) -> dict[str, int]:
    """Publish ``deployments`` retained, each on its slot's model topic for ``gateway``
    (a mode's, or the teacher's); the bytes published per mode (or ``teacher``)."""
    topics = wire.Topics(site)
    published: dict[str, int] = {}
    async with MqttSession(broker, client_id) as session:
        for model in deployments:
            payload = wire.encode(model)
            await session.publish(topics.deployment(gateway, model), payload, qos=1, retain=True)
            what = (
                model.slot
                if model.kind in (wire.TEACHER_KIND, wire.STUDENT_KIND)
                else str(model.mode)
            )
            published[what] = published.get(what, 0) + len(payload)
    return published


class CloudService:
    def __init__(
        self,
        settings: CloudSettings,
        *,
        progress: Progress = log_progress,
        announce: Announce = lambda line: None,
    ) -> None:
        self.settings = settings
        self.store = FeatureStore(settings.feature_store, keep_features=settings.keep_features)
        # Several machines share a store: what serves is theirs to agree on, in the database.
        self.pointer = (
            DatabasePointer.at(str(settings.feature_store), seed=FilePointer(settings.registry))
            if self.store.shared
            else None
        )
        self.registry = Registry(settings.registry, pointer=self.pointer)
        self.models = RegistryModels(self.registry)
        self.scoreboard = Scoreboard()
        self._progress = progress
        self._announce = announce
        # One registry for the process, served on one port; the consumers count on the same
        # metric objects (the dashboards sum over them), the trainers and planner beside them.
        self.metric_registry = CollectorRegistry()
        register_build_info(self.metric_registry, "cloud")
        self.metrics = CloudMetrics(self.metric_registry)
        self.store.on_retry(self.metrics.store_retries.inc)
        # One trainer across the processes that share a store; a store of its own: this one.
        self.lease = (
            Lease(
                str(settings.feature_store),
                "trainer",
                on_change=self._lease_changed,
            )
            if self.store.shared
            else None
        )
        self.metrics.trainer_lease.set(0 if self.lease is not None else 1)
        self.metrics_server: MetricsServer | None = None
        # A learning cloud watches its promotions in shadow and re-weights answers to each
        # camera's class mix; a static one answers as its models do.
        self.shadows = ShadowBoard() if settings.trainer is not None else None
        self.class_mix = (
            ClassMix(on_fit=self._note_prior)
            if settings.trainer is not None and settings.trainer.class_prior
            else None
        )
        # The teacher task's students (cloud.students), beside the registry's models.
        self.students = StudentBoard(
            self.registry.root / "students",
            classes=settings.teacher_spec.task(),
            source=f"teacher:{settings.teacher_spec.name}",
        )
        if settings.push:
            self.students.on_serving = self._push_student_from_thread
        self.consumers = [
            CloudConsumer(
                ConsumerConfig(
                    # One id per slot, never the pid: a restarted slot resumes its session.
                    consumer_id=f"{settings.cloud_id}-c{index}",
                    site=settings.site,
                    results_site=settings.results_site,
                    group=settings.group,
                ),
                settings.broker,
                self.models,
                store=self.store,
                scoreboard=self.scoreboard,
                metrics=self.metrics,
                class_mix=self.class_mix,
                shadows=self.shadows,
                students=self.students,
            )
            for index in range(settings.consumers)
        ]
        self._stack = contextlib.AsyncExitStack()
        self._tasks: asyncio.TaskGroup | None = None  # the background parts, named
        self.trainer: ContinuousTrainer | None = None
        self.student_trainer: StudentTrainer | None = None
        self.grower: ModelGrower | None = None
        self.events: EventPublisher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> CloudService:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        settings = self.settings
        self.metrics_server = serve_metrics(self.metric_registry, settings.metrics_port)
        self._stack.callback(self.metrics_server.close)
        # Entered before the parts it waits for on the way out: they are stopped by then.
        self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
        if settings.events:  # entered first: it stops after the consumers' last results
            self.events = EventPublisher(
                settings.broker,
                settings.results_site or settings.site,
                f"{settings.cloud_id}-events",
                on_event=self._count_event,
                on_drop=lambda reason: self.metrics.events_dropped.labels(reason).inc(),
            )
            await self._stack.enter_async_context(self.events)
        for consumer in self.consumers:
            await self._stack.enter_async_context(consumer)
        self._announce(
            f"cloud {settings.cloud_id}: consumers "
            f"{', '.join(consumer.config.consumer_id for consumer in self.consumers)} in group "
            f"{settings.group}, metrics {self.metrics_server.url}"
        )
        self._loop = asyncio.get_running_loop()
        plan = (
            None if settings.training is None else with_splits(settings.training, settings.split_ks)
        )
        if plan is not None:
            await self._first_generation(plan)
        # what serves, seen before the warm-up resolves it: a change from here on is followed
        watch = await asyncio.to_thread(ServingWatch, self.registry)
        warmed = await asyncio.to_thread(self.models.warm_up, settings.split_ks)
        self._announce(f"serving {', '.join(warmed)}")
        # TensorFlow, for big batches: after serving began
        self.models.build_graphs(lambda: self._announce("graphs built for big batches"))
        follow = self._tasks.create_task(self._follow_serving(watch), name="serving-watch")
        self._stack.callback(follow.cancel)  # before the TaskGroup waits for its tasks
        if settings.push:
            deployments = deployable(self.registry, settings.split_ks)
            await self._push(deployments)
            self._announce(
                "pushed " + ", ".join(f"{entry.mode} {entry.version}" for entry in deployments)
            )
        if settings.push and settings.teacher:
            self._tasks.create_task(self._push_teacher(), name="teacher")
        if settings.push:  # what a restarted cloud serves, for gateways in full
            for student in self.students.serving_students():
                self._tasks.create_task(self._push_student(student), name="student")
        if settings.plan is not None:
            planner = Planner(
                settings.broker,
                settings.site,
                registry_candidates(self.registry, settings.split_ks),
                settings.plan,
                registry=self.metric_registry,
                client_id=f"{settings.cloud_id}-planner",
                announce=lambda decision: self._announce(f"plan {format_decision(decision)}"),
            )
            await self._stack.enter_async_context(planner)
            self._announce("planning gateway modes from their status")
        grows = plan is not None and settings.grow
        if grows or settings.trainer is not None:
            process = self._stack.enter_context(TrainingProcess())
            # On the way out, both trainers stop taking work first; then the training
            # process stops (abandoning a job in progress), and the TaskGroup waits for
            # their loops.
            self._stack.callback(self._stop_training)
        if grows:
            assert plan is not None
            self.grower = ModelGrower(
                self.registry,
                self.models,
                plan,
                settings.dataset,
                process,
                self.metrics,
                announce=self._announce,
                push=self._push_from_thread if settings.push else None,
            )
            self._run_in_background(self.grower)
        if settings.trainer is not None:
            self.trainer = ContinuousTrainer(
                self.registry,
                self.models,
                self.store,
                self.scoreboard,
                self.metrics,
                edge_modes(settings.split_ks),
                settings.trainer,
                announce=self._announce,
                push=(lambda entry: self._push_from_thread([entry])) if settings.push else None,
                process=process,
                shadows=self.shadows,
            )
            self._run_in_background(self.trainer)
            self._announce(
                f"continuous trainer on: every {settings.trainer.every} labeled objects, or a "
                f"camera {settings.trainer.accuracy_drop:.0%} under its level"
            )
            self.student_trainer = StudentTrainer(
                self.registry,
                self.store,
                self.students,
                self.metrics,
                edge_modes(settings.split_ks),
                settings.students,
                announce=self._announce,
            )
            self._run_in_background(self.student_trainer)

    async def _follow_serving(self, watch: ServingWatch) -> None:
        """Resolve every feature again when another process changed what serves (a
        promotion on the machine that holds the trainer's lease)."""
        while True:
            await asyncio.sleep(SERVING_POLL_SECONDS)
            try:
                changed = await asyncio.to_thread(watch.changed)
            except (StoreUnavailable, RegistryError) as exc:
                log.warning("cannot read what serves: %s", exc)
                continue
            if changed:
                log.info("what serves changed; resolving the cloud halves again")
                self.models.refresh()

    def _lease_changed(self, held: bool) -> None:
        self.metrics.trainer_lease.set(1 if held else 0)
        self._announce(
            f"cloud {self.settings.cloud_id}: trainer lease "
            + ("taken: this process trains" if held else "lost: another process trains")
        )

    def _count_event(self, kind: str, count: int) -> None:
        self.metrics.events.labels(kind).inc(count)
        if self.events is not None:
            self.metrics.events_open.set(self.events.events.open_objects)

    def _run_in_background(self, part: BackgroundLoop) -> None:
        """``part``'s loop in a thread (it blocks on training jobs and judges), as a named
        task of the service's TaskGroup: a loop that fails takes the service down with its
        error instead of dying unseen in a thread of its own."""
        assert self._tasks is not None
        part.lease = self.lease
        self._tasks.create_task(asyncio.to_thread(part.run_loop), name=part.name)

    async def _push(self, entries: list[ModelEntry]) -> int:
        """Sign ``entries`` and publish them retained to every site's gateways; bytes sent."""
        settings = self.settings
        key = signing.load_private_key(settings.secrets.signing_key)
        deployments = [self.registry.deployment(e.name, e.version, key) for e in entries]
        sites = settings.push_sites or (settings.site,)
        if wire.ANY_SITE in sites:
            raise ValueError("a cloud serving every site (+) pushes to named sites only")
        total = 0
        for site in sites:
            published = await push_deployments(
                settings.broker, site, deployments, client_id=f"{settings.cloud_id}-push"
            )
            for mode, size in published.items():
                self.metrics.model_pushed_bytes.labels(mode).inc(size)
                total += size
        return total

    async def _push_teacher(self) -> None:
        """Convert the teacher (once: cached in the registry) and push it signed to every
        site's gateways. Without it (the package missing, a user's file that cannot run)
        the cloud says so and goes on: only cameras without labels miss it."""
        from cloud.models.errors import ExportError
        from cloud.models.teacher import cached_teacher
        from edgelearn.teacher import TeacherError, artifact_from_bytes, sign_teacher

        spec = self.settings.teacher_spec
        try:
            data = await asyncio.to_thread(cached_teacher, self.registry.root, spec)
            artifact = artifact_from_bytes(data)
        except (ExportError, TeacherError, OSError, ValueError) as exc:
            self._announce(f"no teacher for the gateways: {exc}")
            return
        key = signing.load_private_key(self.settings.secrets.signing_key)
        model = sign_teacher(artifact, key, name=spec.name)
        if not await self._push_model(model, "the teacher"):
            return
        self._announce(
            f"pushed teacher {model.name} {model.version} ({len(model.artifact)} bytes), "
            f"labeling {', '.join(artifact.classes)}"
        )

    async def _push_student(self, student: Student) -> None:
        """Push ``student`` signed, with the serving edge half of its mode (the one the
        gateways run), to every site's gateways: those in ``full`` answer their video
        cameras with it. A student of an edge half no longer served is not pushed."""
        from edgelearn.student import sign_student

        try:
            entry = self.registry.serving(Mode.parse(student.mode))
        except RegistryError:
            return
        if entry.version not in student.versions:
            return
        key = signing.load_private_key(self.settings.secrets.signing_key)
        model = sign_student(student, self.registry.deployment(entry.name, entry.version, key), key)
        if not await self._push_model(model, f"student {student.version}"):
            return
        self._announce(
            f"pushed student {student.mode} {student.version} ({len(model.artifact)} bytes)"
        )

    async def _push_model(self, model: wire.Model, what: str) -> bool:
        """Publish one signed model that serves no mode (a teacher, a student) retained to
        every site's gateways; False, said and not hidden, when a site's push failed (the
        cloud serves on without it)."""
        for site in self.settings.push_sites or (self.settings.site,):
            try:
                published = await push_deployments(
                    self.settings.broker, site, [model], client_id=f"{self.settings.cloud_id}-push"
                )
            except Exception as exc:
                log.exception("pushing %s to %s failed", what, site)
                self._announce(f"{what} not pushed to {site}: {exc}")
                return False
            for slot, size in published.items():
                self.metrics.model_pushed_bytes.labels(slot).inc(size)
        return True

    def _push_student_from_thread(self, student: Student) -> None:
        """:meth:`_push_student`, from the student trainer's thread."""
        if self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._push_student(student), self._loop)
        try:
            future.result(timeout=60)
        except Exception as exc:  # the cloud answers on; the full gateways keep the last one
            log.exception("pushing student %s failed", student.version)
            self._announce(f"student {student.version} not pushed: {exc}")

    def _note_prior(self, mode: str, camera: str, prior: Any) -> None:
        """A camera's class mix, as the dashboards show it."""
        gauge = self.metrics.class_prior
        for index, value in enumerate(prior):
            gauge.labels(mode, camera, str(index)).set(float(value))

    def _push_from_thread(self, entries: list[ModelEntry]) -> int:
        """:meth:`_push` of ``entries``, from a trainer's thread."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(self._push(entries), self._loop)
        sent = future.result(timeout=60)
        pushed = ", ".join(f"{entry.mode} {entry.version}" for entry in entries)
        self._announce(f"pushed {pushed} ({sent} bytes)")
        return sent

    def _stop_training(self) -> None:
        for trainer in (self.grower, self.trainer, self.student_trainer):
            if trainer is not None:
                trainer.stop()

    async def _first_generation(self, plan: TrainingPlan) -> None:
        """The plan's first generation, when the registry has none. The cloud-only CNN and
        the deepest split (the mode a gateway starts in) serve, and the split is pushed, as
        soon as they are saved (``serving``); the other edge halves follow."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Queue[list[ModelEntry]] = asyncio.Queue()

        def first_ready(entries: list[ModelEntry]) -> None:
            loop.call_soon_threadsafe(ready.put_nowait, entries)

        training = asyncio.ensure_future(
            asyncio.to_thread(
                ensure_first_generation,
                self.registry,
                plan,
                self._progress,
                self.settings.dataset,
                first_ready,
            )
        )
        training.add_done_callback(lambda _: ready.put_nowait([]))
        try:
            entries = await ready.get()
            if entries and not training.done():
                for entry in entries:
                    await asyncio.to_thread(self.models.prepare, entry)
                if self.settings.push:
                    await self._push([e for e in entries if e.mode.kind != RAW])
                serving = ", ".join(f"{e.mode} ({e.version})" for e in entries)
                self._announce(f"serving {serving} while the other edge halves are exported")
            outcome = await training
        finally:
            training.cancel()  # leaving early: nobody waits for it (its thread runs out)
        if outcome["trained"]:
            metrics = self.metrics
            metrics.training_runs.labels("bootstrap").inc()
            metrics.training_seconds.labels("bootstrap").observe(outcome["seconds"])
            dataset = outcome["dataset"]
            self._announce(
                f"trained generation 1 of {len(plan)} on {dataset['name']} "
                f"({len(dataset['classes'])} classes: {', '.join(dataset['classes'][:12])}"
                f"{', ...' if len(dataset['classes']) > 12 else ''}; {dataset['train_items']} "
                f"items, {dataset['held_out_items']} held out"
                + (
                    f", {dataset['skipped_items']} items skipped: nothing of them is opaque"
                    if dataset["skipped_items"]
                    else ""
                )
                + f") in {outcome['seconds']} s; held-out accuracy "
                f"{json.dumps(outcome['accuracy'])}"
            )

    async def drain(self, timeout: float = 5.0) -> None:
        for consumer in self.consumers:
            await consumer.drain(timeout)

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._stack.aclose()  # a background part's failure is raised here
        finally:
            if self.lease is not None:  # another process may train now
                self.lease.release()
            if self.pointer is not None:
                self.pointer.close()
            self.store.close()
