"""The cloud role as ``edgelearn cloud`` assembles it: consumers that answer from the models
the service warmed up, not from cold copies of their own, and count on the process's one
metrics registry, served on one ``/metrics``; a background part that fails takes the service
down with its error."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from cloud.registry import Registry
from cloud.service import CloudService, CloudSettings
from cloud.serving import deployable
from cloud.trainer import ContinuousTrainer, TrainerSettings
from edgelearn.metrics import scrape
from edgelearn.modes import RAW, Mode
from tests.support.broker import BrokerUnderTest


def _settings(broker: BrokerUnderTest, site: str, registry: Path, **changes: Any) -> CloudSettings:
    """A cloud of its own on ``site`` serving ``registry`` as it is: it trains nothing and
    pushes nothing."""
    settings = CloudSettings(
        broker=broker.config_for("cloud"),
        registry=registry,
        secrets=broker.secrets,
        site=site,
        group=site,
        cloud_id=site,
        training=None,
        push=False,
    )
    return dataclasses.replace(settings, **changes)


@pytest.mark.training
def test_every_consumer_answers_from_the_models_the_warm_up_loaded(
    broker: BrokerUnderTest,
    site: str,
    trained_registry: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str] = []
    cloud_archive = Registry.cloud_archive

    def counted(self: Registry, entry: Any) -> bytes:
        loads.append(entry.version)
        return cloud_archive(self, entry)

    monkeypatch.setattr(Registry, "cloud_archive", counted)
    registry = Registry(trained_registry)
    served = list(deployable(registry, (2,)))  # full too: its float CNN answers samples
    served.append(registry.serving(Mode(RAW)))
    settings = _settings(broker, site, trained_registry, consumers=2, split_ks=(2,))

    async def go() -> None:
        async with CloudService(settings) as service:
            warmed = sorted(loads)
            assert warmed == sorted(entry.version for entry in served)  # each loaded once
            for consumer in service.consumers:
                for entry in served:
                    assert consumer.models.classifier_for(str(entry.mode), entry.version)
            assert sorted(loads) == warmed  # no consumer loaded a model again

    asyncio.run(go())


def test_the_process_serves_one_metrics_registry_whatever_its_consumers(
    broker: BrokerUnderTest, site: str, tmp_path: Path
) -> None:
    settings = _settings(broker, site, tmp_path / "registry", consumers=3)
    announced: list[str] = []

    async def go() -> None:
        async with CloudService(settings, announce=announced.append) as service:
            assert all(consumer.metrics is service.metrics for consumer in service.consumers)
            assert service.metrics_server is not None
            url = service.metrics_server.url
            samples = await asyncio.to_thread(scrape, [url])
            assert samples.total("edgelearn_build_info", role="cloud") == 1
            assert samples.values("edgelearn_cloud_queue_depth") == [({}, 0.0)]
            (started,) = [line for line in announced if "metrics" in line]
            assert started == (
                f"cloud {site}: consumers {site}-c0, {site}-c1, {site}-c2 in group {site}, "
                f"metrics {url}"
            )

    asyncio.run(go())


def test_a_background_part_that_fails_takes_the_service_down_with_its_error(
    broker: BrokerUnderTest, site: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: ContinuousTrainer) -> None:
        raise RuntimeError("a bug in the trainer's loop")

    monkeypatch.setattr(ContinuousTrainer, "_loop", broken)
    settings = _settings(broker, site, tmp_path / "registry", trainer=TrainerSettings())

    async def go() -> None:
        async with CloudService(settings):
            # The TaskGroup cancels whoever runs the service; the error comes out of it.
            await asyncio.wait_for(asyncio.Event().wait(), 60)

    with pytest.raises(BaseExceptionGroup) as caught:
        asyncio.run(go())
    (failure,) = caught.value.exceptions
    assert isinstance(failure, RuntimeError) and "trainer's loop" in str(failure)
