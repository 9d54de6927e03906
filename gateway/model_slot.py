"""The model slot of a gateway worker: which deployments its pipeline has, and which mode it
runs.

Where it sits::

    MQTT models/{all,<gw>}/+ --> ModelSlot.receive --> verify signature + digest, load (a
                                 thread) --> measure --> FramePipeline.deploy: the next frame
    MQTT plans/<gw>          --> ModelSlot.apply_plan --> mode and keyframe thresholds, taken
                                 up by the pipeline between two frames

A teacher (``models/.../teacher``, :mod:`edgelearn.teacher`) is verified the same way and
held in :attr:`ModelSlot.teacher` for the stage that labels objects; it serves no mode.

A deployment or plan that does not verify is refused and counted
(``edgelearn_gateway_models_rejected_total{reason}``, ``bad_plan`` for a plan); the current
one stays. Until the deployment a mode needs has arrived the pipeline runs ``raw``, and
``edgelearn_gateway_mode_info{mode,effective}`` says both. Each loaded mode's extraction
time is measured once: it is the worker's capacity, in its status and its metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgelearn import signing, wire
from edgelearn.artifacts import ArtifactError, LoadedDeployment, load_deployment, measure_latency
from edgelearn.modes import Mode, ModeError
from edgelearn.secrets import Secrets, default_secrets_dir
from edgelearn.student import STUDENT_KIND, StudentError, load_student
from edgelearn.teacher import TEACHER_KIND, Teacher, TeacherError, load_teacher
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.pipeline import FramePipeline

log = logging.getLogger(__name__)


class ModelSlot:
    """Loads into and re-plans ``pipeline``, which the worker thread reads frame by frame
    (its ``deploy`` and ``set_mode`` may be called from here, the event loop)."""

    def __init__(
        self,
        config: GatewayConfig,
        pipeline: FramePipeline,
        metrics: GatewayMetrics,
        *,
        trusted_key: Any | None = None,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self._metrics = metrics
        self.trusted_key = trusted_key or signing.load_public_key(
            Secrets(config.secrets or default_secrets_dir()).signing_public_key
        )
        self._extract_seconds: dict[str, float] = {}  # by mode, as its text form
        self._plan_version = -1
        self.teacher: Teacher | None = None
        self.teacher_version: str | None = None

    @property
    def extract_seconds(self) -> Mapping[str, float]:
        """Seconds per keyframe of each loaded mode (by its text form), as measured."""
        return self._extract_seconds

    def capacity_fps(self) -> dict[str, float]:
        return {mode: round(1.0 / seconds, 1) for mode, seconds in self._extract_seconds.items()}

    async def receive(self, payload: bytes, topic: str) -> None:
        """A model envelope as it came on ``topic``."""
        try:
            model = wire.decode_as(payload, wire.Model)
        except wire.WireError as exc:
            self._metrics.models_rejected.labels(exc.reason).inc()
            log.warning("refused the model on %s (%s); keeping the current one", topic, exc)
            return
        await self.load(model)

    async def load(self, model: wire.Model) -> bool:
        """Verify, load (in a thread) and swap in ``model``; False if it was refused."""
        if model.kind == TEACHER_KIND:
            return await self._load_teacher(model)
        if model.kind == STUDENT_KIND:
            return await self._load_student(model)
        try:
            deployment = await asyncio.to_thread(load_deployment, model, self.trusted_key)
        except (signing.ModelRejected, ArtifactError) as exc:
            self._metrics.models_rejected.labels(getattr(exc, "reason", "invalid")).inc()
            log.warning(
                "refused model %s %s (%s); keeping the current one", model.name, model.version, exc
            )
            return False
        mode = deployment.mode
        if self.pipeline.model_versions().get(mode) == deployment.version:
            return True  # the same deployment again (retained copy for all and for us)
        extract_seconds = await asyncio.to_thread(self._measure, deployment)
        self._extract_seconds[str(mode)] = extract_seconds
        self.pipeline.deploy(deployment)  # takes effect at the next frame; none dropped
        self._metrics.model_swaps.labels(mode.slot).inc()
        self._metrics.set_model(mode.slot, deployment.version)
        self.update_mode_metric()
        log.info(
            "loaded %s %s (%.2f ms per frame)", mode, deployment.version, extract_seconds * 1e3
        )
        return True

    async def _load_teacher(self, model: wire.Model) -> bool:
        if model.version == self.teacher_version:
            return True  # the same teacher again (retained for all and for us)
        try:
            teacher = await asyncio.to_thread(load_teacher, model, self.trusted_key)
        except (signing.ModelRejected, TeacherError) as exc:
            return self._refused(model, exc)
        self.teacher, self.teacher_version = teacher, model.version
        self._swapped(model)
        log.info("loaded teacher %s %s (%s)", model.name, model.version, teacher.artifact.source)
        return True

    async def _load_student(self, model: wire.Model) -> bool:
        """The teacher task's student for ``full``: it answers the objects of cameras the
        teacher names (the pipeline swaps it in at the next frame)."""
        current = self.pipeline.student
        if current is not None and current.version == model.version:
            return True
        try:
            student = await asyncio.to_thread(load_student, model, self.trusted_key)
        except (signing.ModelRejected, StudentError) as exc:
            return self._refused(model, exc)
        self.pipeline.student = student
        self._swapped(model)
        log.info("loaded student %s %s (reads %s %s)", model.name, model.version,
                 student.edge.mode, student.edge.version)  # fmt: skip
        return True

    def _refused(self, model: wire.Model, exc: Exception) -> bool:
        """A teacher or student that did not verify or load: counted, said, the current one
        kept (False)."""
        self._metrics.models_rejected.labels(getattr(exc, "reason", "bad_artifact")).inc()
        log.warning("refused %s %s %s (%s)", model.kind, model.name, model.version, exc)
        return False

    def _swapped(self, model: wire.Model) -> None:
        """A teacher or student now in use, on the dashboards (its slot is its kind)."""
        self._metrics.model_swaps.labels(model.slot).inc()
        self._metrics.set_model(model.slot, model.version)

    @staticmethod
    def _measure(deployment: LoadedDeployment) -> float:
        shape = deployment.extractor.input_shape
        frames = np.random.default_rng(0).integers(0, 255, (8, *shape), dtype=np.uint8)
        return measure_latency(deployment.extractor, frames, repeats=2)

    def apply_plan(self, payload: bytes) -> None:
        """A plan envelope: a newer plan for this gateway sets the mode and keyframes."""
        if not payload:
            return
        try:
            plan = wire.decode_as(payload, wire.Plan)
            mode = Mode.parse(plan.mode)
            settings = self.config.keyframes_under(plan)
        except (wire.WireError, ModeError, ValueError) as exc:
            self._metrics.models_rejected.labels("bad_plan").inc()
            log.warning("ignored a plan for %s: %s", self.config.gateway_id, exc)
            return
        if plan.gateway_id != self.config.gateway_id or plan.plan_version <= self._plan_version:
            return
        self._plan_version = plan.plan_version
        self.pipeline.set_mode(mode)
        self.pipeline.set_keyframes(settings)
        self.update_mode_metric()
        log.info("plan %d: mode %s, keyframes %s", plan.plan_version, mode, settings)

    def update_mode_metric(self) -> None:
        self._metrics.set_mode(str(self.pipeline.mode), str(self.pipeline.effective_mode()))
