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
from edgelearn.modes import PCA, RAW, Mode
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


@pytest.mark.training
def test_a_promotion_made_on_one_cloud_machine_is_served_by_the_other(
    broker: BrokerUnderTest, site: str, registry_copy: Path, postgres_url: str
) -> None:
    """Two cloud processes on one PostgreSQL and one registry folder: what serves lives in
    the database, and a process that did not make a promotion resolves it within seconds,
    and a rollback too."""
    from cloud.registry import DatabasePointer, FilePointer

    registry = Registry(registry_copy)
    parent = registry.serving(Mode(PCA))
    copy = registry.save_like(parent, extra={**parent.metadata["extra"], "parent": parent.version})
    registry.set_serving(Mode(PCA), parent.version)  # serving.json: the newest does not serve
    before = FilePointer(registry_copy).read()
    shared = dataclasses.replace(
        _settings(broker, site, registry_copy, split_ks=(2,)), feature_store=postgres_url
    )
    machines = [dataclasses.replace(shared, cloud_id=f"{site}-{n}") for n in (1, 2)]

    def answering(service: CloudService) -> str | None:
        half = service.models.classifier_for(PCA, parent.version)
        return None if half is None else half.version

    async def until(condition: Any, what: str) -> None:
        for _ in range(int(15 / 0.1)):
            if condition():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"not within 15 s: {what}")

    async def go() -> None:
        async with CloudService(machines[0]) as one, CloudService(machines[1]) as two:
            # the folder's pointer was taken over by the database, once
            assert one.registry.serving(Mode(PCA)).version == parent.version
            assert [answering(one), answering(two)] == [parent.version] * 2
            one.registry.set_serving(Mode(PCA), copy.version)  # a promotion on machine one
            await until(lambda: answering(two) == copy.version, "machine two serves it")
            assert answering(one) == copy.version
            two.registry.set_serving(Mode(PCA), parent.version)  # a rollback on machine two
            await until(lambda: answering(one) == parent.version, "machine one rolls back")

    asyncio.run(go())
    assert FilePointer(registry_copy).read() == before  # the folder's file was not written
    pointer = DatabasePointer.at(postgres_url, seed=FilePointer(registry_copy))
    assert pointer.read() == {"pca": parent.version}  # not seeded again from the file
    pointer.close()
