"""Live layer placement: the cloud chooses each gateway's mode from what the gateway reports.

Where it sits: in the cloud process (``edgelearn cloud --plan``), beside the consumers. It
reads every gateway worker's retained status (``status/<gateway>/<worker>``), keeps the newest
of each online worker, and after each one re-plans that gateway; when the answer differs from
the plan the gateway has, it publishes a retained :class:`~edgelearn.wire.Plan` on
``plans/<gateway>``. The gateway applies it between two frames and runs ``raw`` until the
model the new mode needs has arrived (the cloud pushes every split it serves, retained, so it
is normally there already); no frame is dropped for a switch.

The decision is paper 003's problem (:mod:`cloud.scheduling.problem`) with one server and
one task per gateway, solved by the paper's offline rule
(:func:`cloud.scheduling.offline.solve_paper_offline`): take the split ``k*`` that saves the
most uplink per unit of edge compute, and move to the nearest ``k`` that fits when the
gateway lacks capacity or bandwidth. The inputs, in the paper's notation:

* the task's input ``d``: frames the gateway extracts per second (its input frame rate times
  the fraction its keyframe filter keeps, both from the status) times the CNN's input size
  (the registry profile's boundary 0);
* ``r_k``: bytes a forwarded frame costs at split ``k`` (the int8 output of the profile's
  boundary ``k`` plus the feature envelope, before entropy coding, so an upper bound) over
  the input size; ``l_k``: the profile's FLOPs of the first ``k`` blocks per input byte;
* the server's capacity ``c``: ``compute_share`` of each online worker's time, in FLOP/s at
  the speed the gateway measured when it loaded its deepest split (small splits run below
  that rate, so they look cheaper than they are, but they cost well under a millisecond);
* its bandwidth ``b``: the uplink capacity the gateway was configured with
  (``--uplink-kbps``; ``default_uplink_bytes_per_second`` when it says nothing), less a
  reserve ``V = reserve_fraction * b`` for status, models and results; ``Q`` = ``latency_bound``.

Two choices are ours, not the paper's. ``full`` (only results go up) is not a candidate for
``k*``: it would starve the cloud of the features it trains on, so it is chosen only when no
split fits. When nothing fits at all (the gateway is overloaded), the plan is ``raw`` if its
JPEGs fit the uplink (no edge compute), otherwise the option that overloads least; the
decision's ``reason`` says which. A gateway keeps a plan for ``hold_seconds`` before it may
get another, so noisy rates cannot make it flap.

A :class:`Planner` is an async context manager owning a TaskGroup with one named loop,
``planner-publish``: statuses are planned as they arrive, and the loop publishes the
decisions, at most one waiting per gateway (a newer one replaces it). A loop that fails
takes its owner down with its error rather than dying unseen.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiomqtt
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from cloud.scheduling.offline import solve_paper_offline
from cloud.scheduling.problem import (
    UNPLACED,
    DeepLearningTasks,
    EdgeServers,
    SchedulingProblem,
)
from cloud.serving import deployable
from edgelearn import wire
from edgelearn.config import BrokerConfig
from edgelearn.keyframes import KeyframeSettings
from edgelearn.modes import FULL, RAW, SPLIT, Mode
from edgelearn.mqtt import MqttSession, NotConnected, cancel_until_done

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannerSettings:
    latency_bound: float = 0.2  # Q, seconds (paper 003's setting)
    reserve_fraction: float = 0.05  # V as a fraction of each uplink
    compute_share: float = 0.5  # of a worker's time; decode and keyframes need the rest
    default_uplink_bytes_per_second: float = 1e9 / 8  # a gateway that reports none: 1 Gb/s
    hold_seconds: float = 30.0  # least time between two plan changes of one gateway
    status_max_age: float = 60.0  # statuses older than this are ignored
    keyframes: bool = True  # the keyframe settings every plan carries (edgelearn.keyframes)
    keyframe_threshold: float = KeyframeSettings.threshold
    keyframe_max_interval: int = KeyframeSettings.max_interval

    def __post_init__(self) -> None:
        if not (self.latency_bound > 0 and 0 <= self.reserve_fraction < 1):
            raise ValueError("latency_bound must be > 0 and reserve_fraction in [0, 1)")
        if not 0 < self.compute_share <= 1:
            raise ValueError("compute_share must be in (0, 1]")


@dataclass(frozen=True)
class Candidate:
    """A mode the cloud serves, at profile boundary ``k``."""

    mode: str
    k: int
    bytes_per_frame: int  # what one forwarded frame costs on the uplink, envelope included
    flops: int  # of the first k blocks, per frame


def _envelope_bytes(mode: str, payload_bytes: int) -> int:
    """Size of a typical envelope for one frame in ``mode`` (typical identifiers)."""
    if mode == FULL:
        result = wire.Result(
            "camera-00", 1 << 40, 1 << 60, 1 << 60, "gw-1", FULL, 3, 3, 0.9, "v12",
            wire.ComputedAt.EDGE, 0, 0,
        )  # fmt: skip
        return len(wire.encode(result))
    feature = wire.Feature(
        "camera-00", 1 << 40, 1 << 60, "gw-1", 3, mode, "v12", wire.DType.INT8,
        (payload_bytes,), 0.05, 0, wire.Codec.NONE, 60_000, 0, 0, b"\0" * payload_bytes,
    )  # fmt: skip
    return len(wire.encode(feature))


def candidates_from_profile(
    profile: Sequence[Mapping[str, Any]], split_ks: Sequence[int], full: bool = True
) -> tuple[int, list[Candidate]]:
    """(input bytes per frame, candidate modes) from a registry CNN profile
    (:mod:`cloud.models.profile` rows ``k = 0..N``) and the splits the cloud serves."""
    rows = {int(row["k"]): row for row in profile}
    if 0 not in rows or len(rows) < 2:
        raise ValueError("the profile needs boundary 0 (the input) and at least one block")
    last = max(rows)
    found = [
        Candidate(
            str(Mode.split(k)),
            k,
            _envelope_bytes(str(Mode.split(k)), int(rows[k]["output_bytes_int8"])),
            int(rows[k]["lower_flops"]),
        )
        for k in sorted(set(split_ks))
        if 0 < k < last and k in rows
    ]
    if full:
        found.append(
            Candidate(FULL, last, _envelope_bytes(FULL, 0), int(rows[last]["lower_flops"]))
        )
    return int(rows[0]["output_bytes_int8"]), found


@dataclass(frozen=True)
class GatewayLoad:
    """One gateway, summed over its online workers' newest statuses."""

    gateway_id: str
    workers: int
    mode: str
    input_fps: float
    input_bytes_per_second: float
    keyframe_ratio: float
    uplink_capacity: float  # bytes/s; 0 when no worker reports one
    seconds_per_frame: dict[str, float]  # mean extraction time per mode the workers measured

    @classmethod
    def from_statuses(cls, statuses: Sequence[wire.Status]) -> GatewayLoad:
        if not statuses:
            raise ValueError("no status")
        fps = sum(s.input_fps for s in statuses)
        kept = sum(s.input_fps * s.keyframe_ratio for s in statuses)
        measured: dict[str, list[float]] = {}
        for status in statuses:
            for mode, capacity in status.capacity_fps.items():
                if capacity > 0:
                    measured.setdefault(mode, []).append(1.0 / capacity)
        return cls(
            gateway_id=statuses[0].gateway_id,
            workers=len(statuses),
            mode=max(statuses, key=lambda s: s.time_ns).mode,
            input_fps=fps,
            input_bytes_per_second=sum(s.input_bytes_per_second for s in statuses),
            keyframe_ratio=kept / fps if fps > 0 else 1.0,
            uplink_capacity=max(s.uplink_capacity_bytes_per_second for s in statuses),
            seconds_per_frame={mode: float(np.mean(v)) for mode, v in measured.items()},
        )


@dataclass(frozen=True)
class Decision:
    gateway_id: str
    mode: str
    reason: str
    # The problem it solved, for the log and the tests: needs per candidate mode.
    capacity: float  # FLOP/s
    bandwidth: float  # bytes/s usable (b - V)
    capacity_need: dict[str, float] = field(default_factory=dict)
    bandwidth_need: dict[str, float] = field(default_factory=dict)


def _problem(
    candidates: Sequence[Candidate], input_bytes: int, load: GatewayLoad, capacity: float,
    settings: PlannerSettings,
) -> SchedulingProblem:  # fmt: skip
    bandwidth = load.uplink_capacity or settings.default_uplink_bytes_per_second
    tasks = DeepLearningTasks.from_layer_profiles(
        [[c.bytes_per_frame / input_bytes for c in candidates]],
        [[c.flops / input_bytes for c in candidates]],
        [settings.latency_bound],
    )
    servers = EdgeServers(
        np.array([capacity]), np.array([bandwidth]), reserve=bandwidth * settings.reserve_fraction
    )
    rate = load.input_fps * load.keyframe_ratio * input_bytes
    return SchedulingProblem(servers, tasks, np.array([[rate]]), name=load.gateway_id)


def measured_flops_per_second(load: GatewayLoad, candidates: Sequence[Candidate]) -> float | None:
    """The gateway's speed in FLOP/s, from its deepest measured candidate."""
    measured = [c for c in candidates if c.mode in load.seconds_per_frame and c.flops > 0]
    if not measured:
        return None
    deepest = max(measured, key=lambda c: c.flops)
    return deepest.flops / load.seconds_per_frame[deepest.mode]


def plan_gateway(
    load: GatewayLoad,
    input_bytes: int,
    candidates: Sequence[Candidate],
    settings: PlannerSettings,
) -> Decision | None:
    """The mode ``load``'s gateway should run; None when it has measured no model yet."""
    speed = measured_flops_per_second(load, candidates)
    if speed is None:
        return None
    capacity = load.workers * settings.compute_share * speed
    problem = _problem(candidates, input_bytes, load, capacity, settings)
    demand_cap = problem.capacity_demand[0, 0]
    demand_bw = problem.bandwidth_demand[0, 0]
    usable = float(problem.servers.available_bandwidth[0])

    def decision(mode: str, reason: str) -> Decision:
        return Decision(
            load.gateway_id,
            mode,
            reason,
            capacity,
            usable,
            {c.mode: float(demand_cap[i]) for i, c in enumerate(candidates)},
            {c.mode: float(demand_bw[i]) for i, c in enumerate(candidates)},
        )

    splits = [i for i, c in enumerate(candidates) if c.mode != FULL]
    if splits:
        split_problem = _problem(
            [candidates[i] for i in splits], input_bytes, load, capacity, settings
        )
        assignment = solve_paper_offline(split_problem)
        if assignment.server[0] != UNPLACED:
            chosen = candidates[splits[int(assignment.split_layer[0]) - 1]]
            return decision(chosen.mode, "the paper's offline rule")
    fits = problem.option_possible[0, 0]
    for i, candidate in enumerate(candidates):
        if candidate.mode == FULL and fits[i]:
            return decision(FULL, "no split's features fit: only results go up")
    raw_need = load.input_bytes_per_second * load.keyframe_ratio / settings.latency_bound
    if raw_need <= usable:
        return decision(RAW, "no mode fits the gateway's capacity: cameras' JPEGs go up")
    overload = np.maximum(demand_cap / capacity, demand_bw / max(usable, 1e-9))
    least = candidates[int(np.argmin(overload))]
    return decision(least.mode, f"overloaded: nothing fits, {least.mode} overloads least")


class PlannerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.plans = Counter(
            "edgelearn_cloud_plans_published",
            "Plans published to gateways, by gateway and mode",
            ["gateway", "mode"],
            registry=registry,
        )
        self.plan = Gauge(
            "edgelearn_cloud_plan_info",
            "The mode the planner last chose per gateway (1 on that mode)",
            ["gateway", "mode"],
            registry=registry,
        )

    def chosen(self, gateway: str, mode: str, previous: str | None) -> None:
        if previous is not None:
            self.plan.remove(gateway, previous)
        self.plan.labels(gateway, mode).set(1)
        self.plans.labels(gateway, mode).inc()


CandidateSource = Callable[[], tuple[int, list[Candidate]]]


class Planner:
    """Reads gateway statuses on ``broker``, publishes plans (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerConfig,
        site: str,
        candidates: CandidateSource,
        settings: PlannerSettings | None = None,
        registry: CollectorRegistry | None = None,
        client_id: str = "cloud-planner",
        announce: Callable[[Decision], None] | None = None,
    ) -> None:
        self.broker = broker
        self.topics = wire.Topics(site)
        self.settings = settings or PlannerSettings()
        self._candidates = candidates
        self.metrics = PlannerMetrics(registry or CollectorRegistry())
        self.client_id = client_id
        self._announce = announce
        self._statuses: dict[str, dict[int, wire.Status]] = {}
        self._sites: dict[str, str] = {}  # gateway -> the site its statuses come from
        self._planned: dict[str, tuple[str, float]] = {}  # gateway -> (mode, monotonic time)
        self.decisions: dict[str, Decision] = {}
        self._session: MqttSession | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._unpublished: dict[str, Decision] = {}  # gateway -> its newest, not yet published
        self._decided = asyncio.Event()
        self._closing = False

    # --- state ---------------------------------------------------------------------------

    def observe(self, status: wire.Status, now_ns: int | None = None) -> Decision | None:
        """Take one status; returns a decision when the gateway should get a new plan."""
        workers = self._statuses.setdefault(status.gateway_id, {})
        if status.online:
            workers[status.worker] = status
        else:
            workers.pop(status.worker, None)
        now_ns = time.time_ns() if now_ns is None else now_ns
        max_age_ns = self.settings.status_max_age * 1e9
        fresh = [s for s in workers.values() if now_ns - s.time_ns <= max_age_ns]
        if not fresh:
            return None
        load = GatewayLoad.from_statuses(fresh)
        if load.input_fps <= 0:
            return None  # nothing arriving: nothing to plan for
        input_bytes, candidates = self._candidates()
        decision = plan_gateway(load, input_bytes, candidates, self.settings)
        if decision is None:
            return None
        self.decisions[load.gateway_id] = decision
        previous = self._planned.get(load.gateway_id)
        if previous is not None:
            mode, when = previous
            if mode == decision.mode or time.monotonic() - when < self.settings.hold_seconds:
                return None
        self._planned[load.gateway_id] = (decision.mode, time.monotonic())
        self.metrics.chosen(load.gateway_id, decision.mode, previous and previous[0])
        return decision

    def plan_message(self, decision: Decision) -> wire.Plan:
        return wire.Plan(
            gateway_id=decision.gateway_id,
            plan_version=time.time_ns(),
            mode=decision.mode,
            keyframes=int(self.settings.keyframes),
            keyframe_threshold=self.settings.keyframe_threshold,
            keyframe_max_interval=self.settings.keyframe_max_interval,
        )

    # --- MQTT ----------------------------------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        if not isinstance(payload, bytes | bytearray) or not payload:
            return  # a cleared retained status
        try:
            status = wire.decode_as(bytes(payload), wire.Status)
        except wire.WireError as exc:
            log.warning("ignored a status on %s: %s", message.topic, exc)
            return
        self._sites[status.gateway_id] = wire.topic_level(str(message.topic), 2)
        try:
            decision = self.observe(status)
        except (ValueError, KeyError) as exc:  # no usable profile in the registry yet
            log.warning("cannot plan %s: %s", status.gateway_id, exc)
            return
        if decision is not None:
            self._unpublished.pop(decision.gateway_id, None)  # the newest goes last
            self._unpublished[decision.gateway_id] = decision
            self._decided.set()

    async def _publish_loop(self) -> None:
        """Publish the decisions as they come, oldest first; when closing, what is left."""
        while True:
            await self._decided.wait()
            self._decided.clear()
            while self._unpublished:
                gateway_id = next(iter(self._unpublished))
                await self._publish(self._unpublished.pop(gateway_id))
            if self._closing:
                return

    async def _publish(self, decision: Decision) -> None:
        assert self._session is not None
        log.info(
            "plan for %s: %s (%s; capacity %.3g FLOP/s, uplink %.3g B/s)",
            decision.gateway_id, decision.mode, decision.reason, decision.capacity,
            decision.bandwidth,
        )  # fmt: skip
        try:
            site = self._sites.get(decision.gateway_id, self.topics.site)
            await self._session.publish(
                wire.Topics(site).plan(decision.gateway_id),
                wire.encode(self.plan_message(decision)),
                qos=1,
                retain=True,
            )
        except NotConnected:
            # Re-planned at the gateway's next status: forget this one so it is not held.
            self._planned.pop(decision.gateway_id, None)
            log.info("plan for %s not published: no connection", decision.gateway_id)
            return
        if self._announce is not None:
            self._announce(decision)

    async def __aenter__(self) -> Planner:
        self._session = MqttSession(
            self.broker,
            self.client_id,
            subscriptions=[(self.topics.all_status(), 1)],
            on_message=self._on_message,
        )
        await self._session.__aenter__()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._publisher = self._tasks.create_task(self._publish_loop(), name="planner-publish")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._tasks is not None:
                assert self._publisher is not None
                self._closing = True
                self._decided.set()  # the loop publishes what is decided, then returns
                await asyncio.wait([self._publisher], timeout=5.0)
                await cancel_until_done([self._publisher], patience=5.0)
                await self._tasks.__aexit__(None, None, None)  # a failed loop raises here
        finally:
            assert self._session is not None
            await self._session.__aexit__(exc_type, exc, traceback)


def registry_candidates(registry: Any, split_ks: Sequence[int]) -> CandidateSource:
    """Candidates from the newest deployable entries of ``registry`` (re-read on each call,
    so a newly trained model set is planned with at once)."""

    def read() -> tuple[int, list[Candidate]]:
        entries = deployable(registry, split_ks)
        served = [e.split_k for e in entries if e.kind == SPLIT]
        has_full = any(e.kind == FULL for e in entries)
        profile = next(
            (e.metadata.get("profile") for e in entries if e.metadata.get("profile")), None
        )
        if not profile:
            raise ValueError("no CNN with a profile in the registry")
        input_bytes, candidates = candidates_from_profile(profile, served, full=has_full)
        if not candidates:
            raise ValueError("the registry serves no split and no full model")
        return input_bytes, candidates

    return read


def format_decision(decision: Decision) -> str:
    needs = ", ".join(
        f"{mode} cap {decision.capacity_need[mode] / max(decision.capacity, 1e-9):.0%} "
        f"bw {decision.bandwidth_need[mode] / max(decision.bandwidth, 1e-9):.0%}"
        for mode in decision.capacity_need
        if math.isfinite(decision.capacity_need[mode])
    )
    return f"{decision.gateway_id}: {decision.mode} ({decision.reason}; {needs})"
