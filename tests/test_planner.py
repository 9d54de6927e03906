"""The cloud's live planner (issue 6, part 3): gateway statuses in, one retained plan per
gateway out, chosen by paper 003's offline rule on the registry's profile of the real CNN.

The decision tests use the profile of the CNN as built here (no training needed: output
sizes and FLOPs depend on the architecture only). The live test runs two gateway workers,
a camera and the planner against a real mosquitto with a trained registry."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cameras.replay import scene_frames
from cloud import planner as planner_module
from cloud.planner import Candidate, GatewayLoad, Planner, PlannerSettings, plan_gateway
from cloud.registry import Registry
from edgelearn import signing, wire
from edgelearn.modes import Mode
from edgelearn.service import serve_in_thread
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

Probe = Callable[..., MqttProbe]
SPLITS = (2, 4, 6, 8)


@pytest.fixture(scope="module")
def profile() -> list[dict[str, Any]]:
    from cloud.models import cnn
    from cloud.models.profile import profile_as_dicts, profile_cnn

    return profile_as_dicts(profile_cnn(cnn.build_cnn()))


@pytest.fixture(scope="module")
def candidates(profile: list[dict[str, Any]]) -> tuple[int, list[Candidate]]:
    return planner_module.candidates_from_profile(profile, SPLITS)


def _load(uplink_kbps: float, *, fps: float = 30.0, seconds: float = 3e-4) -> GatewayLoad:
    return GatewayLoad(
        gateway_id="gw-x",
        workers=1,
        mode="split:6",
        input_fps=fps,
        input_bytes_per_second=fps * 50_000,
        keyframe_ratio=0.3,
        uplink_capacity=uplink_kbps * 1000 / 8,
        seconds_per_frame={"split:8": seconds},
    )


def _fits(decision: planner_module.Decision) -> bool:
    mode = decision.mode
    return (
        decision.capacity_need[mode] <= decision.capacity
        and decision.bandwidth_need[mode] <= decision.bandwidth
    )


def test_candidates_carry_the_profile_sizes_and_the_envelope(
    profile: list[dict[str, Any]], candidates: tuple[int, list[Candidate]]
) -> None:
    input_bytes, found = candidates
    rows = {row["k"]: row for row in profile}
    assert input_bytes == rows[0]["output_bytes_int8"]
    assert [c.mode for c in found] == [*(f"split:{k}" for k in SPLITS), "full"]
    assert [c.flops for c in found] == sorted(c.flops for c in found)
    for candidate in found[:-1]:
        # The int8 output of that block plus a feature envelope of a few dozen bytes.
        assert 0 < candidate.bytes_per_frame - rows[candidate.k]["output_bytes_int8"] < 200
        assert candidate.flops == rows[candidate.k]["lower_flops"]
    full = found[-1]
    assert full.k == max(rows)
    assert full.bytes_per_frame < min(c.bytes_per_frame for c in found[:-1])


def test_a_narrower_uplink_never_gets_a_mode_that_sends_more(
    candidates: tuple[int, list[Candidate]],
) -> None:
    input_bytes, found = candidates
    size = {c.mode: c.bytes_per_frame for c in found}
    chosen = []
    for kbps in (1_000_000, 10_000, 1_000, 100, 40):
        decision = plan_gateway(_load(kbps), input_bytes, found, PlannerSettings())
        assert decision is not None
        assert _fits(decision), decision
        chosen.append(decision.mode)
    assert [size[m] for m in chosen] == sorted((size[m] for m in chosen), reverse=True)
    assert chosen[0] != chosen[-1] == "full", chosen


def test_an_uplink_too_narrow_even_for_results_is_reported_as_overloaded(
    candidates: tuple[int, list[Candidate]],
) -> None:
    input_bytes, found = candidates
    decision = plan_gateway(_load(1), input_bytes, found, PlannerSettings())
    assert decision is not None and decision.reason.startswith("overloaded")
    assert not _fits(decision)


def test_a_gateway_without_compute_for_any_split_sends_raw_if_the_uplink_takes_it(
    candidates: tuple[int, list[Candidate]],
) -> None:
    input_bytes, found = candidates
    slow = _load(1_000_000, seconds=0.5)  # half a second per frame for the deepest split
    decision = plan_gateway(slow, input_bytes, found, PlannerSettings())
    assert decision is not None and decision.mode == "raw"
    assert plan_gateway(dataclasses.replace(slow, seconds_per_frame={}), input_bytes, found,
                        PlannerSettings()) is None  # fmt: skip


def _status(gateway: str, worker: int, kbps: float, online: int = 1) -> wire.Status:
    return wire.Status(
        gateway_id=gateway,
        worker=worker,
        online=online,
        time_ns=time.time_ns(),
        mode="split:6",
        model_version="v1",
        capacity_fps={"split:8": 3000.0},
        uplink_bytes_per_second=0.0,
        queue_depths={},
        note="",
        input_fps=30.0,
        input_bytes_per_second=1.5e6,
        keyframe_ratio=0.3,
        uplink_capacity_bytes_per_second=kbps * 125,
    )


def test_plans_change_only_when_the_answer_does_and_not_within_the_hold(
    broker: BrokerUnderTest, candidates: tuple[int, list[Candidate]]
) -> None:
    planner = Planner(broker.config_for("cloud"), "s", lambda: candidates, PlannerSettings())
    first = planner.observe(_status("gw-a", 0, 1_000_000))
    assert first is not None
    assert planner.observe(_status("gw-a", 0, 1_000_000)) is None  # same answer
    # A far narrower uplink changes the answer, but the plan is held for hold_seconds.
    assert planner.observe(_status("gw-a", 0, 40)) is None
    assert planner.decisions["gw-a"].mode != first.mode
    unheld = Planner(
        broker.config_for("cloud"), "s", lambda: candidates, PlannerSettings(hold_seconds=0)
    )
    assert unheld.observe(_status("gw-a", 0, 1_000_000)) is not None
    changed = unheld.observe(_status("gw-a", 0, 40))
    assert changed is not None and changed.mode == "full"
    # The worker went offline (its last will): nothing left to plan for.
    assert unheld.observe(_status("gw-a", 0, 40, online=0)) is None
    assert unheld.plan_message(changed).plan_version > 0


# --- live: two gateways, one planner, a real broker -------------------------------------------


@contextmanager
def run_planner(broker: BrokerUnderTest, site: str, registry: Path) -> Iterator[Planner]:
    planner = Planner(
        broker.config_for("cloud"),
        site,
        planner_module.registry_candidates(Registry(registry), (2,)),
        PlannerSettings(hold_seconds=0),
        registry=CollectorRegistry(),
        client_id=f"{site}-planner",
    )
    with serve_in_thread(lambda: planner, "planner") as (running, _):
        yield running


def test_two_gateways_with_different_uplinks_get_different_plans_and_switch(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, trained_registry: Path
) -> None:
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    key = signing.load_private_key(broker.secrets.signing_key)
    registry = Registry(trained_registry)
    for name in ("cnn-split", "cnn-full"):
        model = registry.deployment(name, None, key)
        published = cloud.publish_and_wait(
            topics.model("all", model.mode), wire.encode(model), retain=True
        )
        assert not published.is_failure
    camera = mqtt_probe("cam-1")
    frames = scene_frames("cam-1", 20, seed=4)
    common = dict(site=site, mode="raw", keyframes=True, queue_depth=8)
    gateways: dict[str, RunningGateway]
    with (
        # Different groups: each gateway sees every frame of the camera.
        run_gateway(broker, gateway_id="gw-3", group="wide", uplink_kbps=100_000, **common)
        as wide,
        run_gateway(broker, gateway_id="gw-4", group="narrow", uplink_kbps=64, **common)
        as narrow,
        run_planner(broker, site, trained_registry) as planner,
    ):  # fmt: skip
        gateways = {"gw-3": wide, "gw-4": narrow}
        for gateway in gateways.values():
            wait_for(
                lambda g=gateway: (
                    set(g.worker.pipeline.model_versions()) >= {Mode.split(2), Mode.parse("full")}
                ),
                60,
                "both models to load",
            )
        stop = threading.Event()

        def publish() -> None:
            # A camera at ~20 fps: the statuses report its rate, the planner plans for it.
            index = 0
            while not stop.is_set():
                frame = dataclasses.replace(frames[index % len(frames)], seq=index)
                camera.publish(topics.frame("cam-1"), wire.encode(frame), qos=0)
                index += 1
                stop.wait(0.05)

        feeder = threading.Thread(target=publish, daemon=True)
        feeder.start()
        try:
            for gateway_id, gateway in gateways.items():
                wait_for(
                    lambda g=gateway, i=gateway_id: (
                        i in planner.decisions
                        and str(g.worker.pipeline.effective_mode()) == planner.decisions[i].mode
                    ),
                    60,
                    f"{gateway_id} to run its plan",
                )
        finally:
            stop.set()
            feeder.join(10)
        plans = {gateway_id: planner.decisions[gateway_id].mode for gateway_id in gateways}
        # The wide uplink carries split:2's features (the only split served); the narrow one
        # cannot, so that gateway runs the whole model and sends results only.
        assert plans == {"gw-3": "split:2", "gw-4": "full"}, plans
        for gateway_id, gateway in gateways.items():
            assert (
                gateway.sample(
                    "edgelearn_gateway_mode_info",
                    mode=plans[gateway_id],
                    effective=plans[gateway_id],
                )
                == 1
            )
            # It switched from raw (its start) to the planned mode: a different model runs.
            assert str(gateway.worker.pipeline.mode) != "raw"
        for gateway_id, mode in plans.items():
            labels = {"gateway": gateway_id, "mode": mode}
            assert planner.metrics.registry.get_sample_value("edgelearn_cloud_plan_info", labels)
