"""Where accuracy goes (bench.losses): the offline account of a scene is the gateway's and
the cloud's own answer on it, and its stages add up to it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import losses
from cameras.replay import object_frames
from cloud.registry import Registry
from edgelearn import codec, signing, wire
from edgelearn.artifacts import load_deployment
from edgelearn.datasets import load_fashion_mnist
from edgelearn.modes import Mode
from gateway.pipeline import Forward, FramePipeline
from stack import broker as broker_module

SEED, FRAMES, WARMUP = 31, 450, 150


@pytest.mark.training
def test_the_stage_by_stage_account_adds_up_to_what_the_pipeline_answers(
    tmp_path: Path, trained_registry: Path
) -> None:
    registry = Registry(trained_registry)
    mode = Mode.split(2)
    entry = registry.serving(mode)
    size = entry.input_shape[0]
    # What the pipeline answers: the gateway's own code on every frame of one camera (its
    # finder, keyframe rule, crops, int8 lower part), then the cloud's upper part.
    secrets = broker_module.init_secrets(tmp_path / "secrets", cameras=1, gateways=1)
    private = signing.load_private_key(secrets.signing_key)
    public = signing.load_public_key(secrets.directory / signing.PUBLIC_KEY_FILE)
    gateway = FramePipeline("gw-1", mode=mode)
    gateway.deploy(load_deployment(registry.deployment(entry.name, entry.version, private), public))
    upper = registry.load_cloud_model(entry)
    answered: list[tuple[int, int, bool]] = []  # (frame, item, right)
    for frame in object_frames("cam-1", FRAMES, seed=SEED):
        outcome = gateway.process(frame)
        if not isinstance(outcome, Forward) or frame.seq < WARMUP:
            continue
        feature = outcome.envelope
        assert isinstance(feature, wire.Feature)
        values = codec.dequantize(codec.unpack_feature(feature), feature.scale, feature.zero_point)
        classes = np.argmax(upper.predict(values, verbose=0), axis=1)
        answered += [
            (frame.seq, item, int(label) == int(guess))
            for label, item, guess in zip(feature.labels, feature.items, classes, strict=True)
            if label is not None and item is not None
        ]
    # The account of the same scene, offline
    replay = losses.replay_camera(
        load_fashion_mnist("test"), "cam-1", SEED, FRAMES, input_size=size, warmup=WARMUP
    )
    account = losses.account(replay, losses.served(registry, mode))
    assert [(s.frame, s.item) for s in replay.objects] == [(f, i) for f, i, _ in answered]
    measured = sum(right for _, _, right in answered) / len(answered)
    sent = account["accuracy"]["sent"]
    assert sent["objects"] == len(answered) and sent["accuracy"] == pytest.approx(
        measured, abs=1e-3
    )
    assert sent["items"] == len({item for _, item, _ in answered}) >= 5
    # the stages add up: the ceiling, less what the box and the background model cost
    ideal = account["accuracy"]["ideal"]["accuracy"]
    stages = account["losses"]
    assert ideal - sum(stages.values()) == pytest.approx(sent["accuracy"], abs=2e-3)
    assert set(account["by_stood_frames"]) == {"0-19", "20-39", "40-59", "60+"}
