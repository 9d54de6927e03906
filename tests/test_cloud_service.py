"""The cloud role as ``edgelearn cloud`` assembles it: consumers that answer from the models
the service warmed up, not from cold copies of their own."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cloud.registry import Registry
from cloud.service import CloudService, CloudSettings
from cloud.serving import deployable
from edgelearn.modes import RAW, Mode
from tests.support.broker import BrokerUnderTest


@pytest.mark.training
def test_every_consumer_answers_from_the_models_the_warm_up_loaded(
    broker: BrokerUnderTest,
    site: str,
    trained_registry: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[str] = []
    load_cloud_model = Registry.load_cloud_model

    def counted(self: Registry, entry: Any) -> Any:
        loads.append(entry.version)
        return load_cloud_model(self, entry)

    monkeypatch.setattr(Registry, "load_cloud_model", counted)
    registry = Registry(trained_registry)
    served = list(deployable(registry, (2,)))  # full too: its float CNN answers samples
    served.append(registry.serving(Mode(RAW)))
    settings = CloudSettings(
        broker=broker.config_for("cloud"),
        registry=trained_registry,
        secrets=broker.secrets,
        site=site,
        group=site,
        consumers=2,
        split_ks=(2,),
        training=None,
        push=False,
    )

    async def go() -> None:
        async with CloudService(settings) as service:
            warmed = sorted(loads)
            assert warmed == sorted(entry.version for entry in served)  # each loaded once
            for consumer in service.consumers:
                for entry in served:
                    assert consumer.models.classifier_for(str(entry.mode), entry.version)
            assert sorted(loads) == warmed  # no consumer loaded a model again

    asyncio.run(go())
