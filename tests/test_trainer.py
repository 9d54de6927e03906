"""The continuous trainer: trigger, train, judge, promote, serve, roll back.

The loop runs in a real cloud service against a real mosquitto: labeled PCA features (the
deployed projection run on rendered held-out items, as a gateway computes them) are published
on the features topic and answered by the consumers; the trainer reads what the consumers
stored. The world changes by the labels: after the change, the items of class ``c`` are
called ``c + 1`` (a camera network relabeled), which the serving model cannot know and a
model tuned on the arrivals can learn, so whether a run promotes is clear-cut."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud.feature_store import FeatureStore, LabeledRows
from cloud.registry import Registry
from cloud.service import CloudService, CloudSettings
from cloud.trainer import TrainerSettings, time_split
from edgelearn import wire
from edgelearn.artifacts import load_edge_artifact
from edgelearn.modes import PCA, Mode
from edgelearn.service import serve_in_thread
from tests.support.broker import BrokerUnderTest
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

GATEWAY = "gw-1"
CAMERAS = ("cam-1", "cam-2")


# --- the pure part -------------------------------------------------------------------------


def _rows(cameras: list[str], tracks: list[int], items: list[int] | None = None) -> LabeledRows:
    n = len(cameras)
    return LabeledRows(
        np.arange(1, n + 1, dtype=np.int64),
        tuple(cameras),
        np.asarray(tracks, np.int64),
        np.zeros(n, np.int64),
        np.zeros((n, 2), np.int8),
        np.asarray(items if items is not None else [-1] * n, np.int64),
        np.full(n, -1, np.int64),  # box heights: not known
    )


def test_the_time_split_holds_out_each_cameras_newest_rows_and_their_objects() -> None:
    cameras = ["a"] * 8 + ["b"] * 4
    tracks = [1, 1, 2, 2, 3, 3, 4, 4, -1, -1, -1, -1]
    train, held = time_split(_rows(cameras, tracks), 0.25, recent_from=1)
    assert held.tolist() == [6, 7, 11]  # a's newest two (track 4), b's newest one
    assert train.tolist() == [0, 1, 2, 3, 4, 5, 8, 9, 10]
    # an object seen before and after the split is not trained on either
    train, held = time_split(_rows(cameras, [1, 1, 2, 2, 3, 4, 4, 3] + [-1] * 4), 0.25, 1)
    assert held.tolist() == [6, 7, 11]
    assert 4 not in train.tolist() and 5 not in train.tolist()  # tracks 3 and 4


def test_an_item_held_out_on_one_camera_is_trained_on_by_no_camera() -> None:
    # item 9 is held out on camera a (its newest rows) and was shown on b before: one item,
    # one piece of evidence, so b's rows of it are not trained on either
    cameras = ["a", "a", "a", "a", "b", "b", "b", "b"]
    tracks = [1, 1, 2, 2, 5, 5, 6, 6]
    items = [3, 3, 9, 9, 9, 9, 4, 4]
    train, held = time_split(_rows(cameras, tracks, items), 0.5, recent_from=1)
    assert held.tolist() == [2, 3, 6, 7]
    assert train.tolist() == [0, 1]


# --- the loop, through a real broker -------------------------------------------------------


class FeatureSource:
    """PCA features of rendered Fashion-MNIST test items, made with the deployed projection
    (what the gateway would send), labeled as the world currently names them."""

    def __init__(self, registry: Registry) -> None:
        from cloud.training_jobs import _held_out_inputs

        self.entry = registry.serving(Mode(PCA))
        extractor = load_edge_artifact(
            self.entry.kind, self.entry.read("edge"), self.entry.metadata.get("quantization")
        )
        size, _, channels = self.entry.input_shape[:3]
        inputs, self.labels = _held_out_inputs(2400, size, channels)
        self.values = extractor.run_batch(inputs)
        self.output = extractor.output
        self.position = 0
        self.seq = 0

    def envelopes(
        self, count: int, shift: int, camera_shift: dict[str, int] | None = None
    ) -> Iterator[tuple[str, bytes, int]]:
        for _ in range(count):
            index = self.position % len(self.labels)
            self.position += 1
            self.seq += 1
            camera = CAMERAS[self.seq % len(CAMERAS)]
            label = int((self.labels[index] + (camera_shift or {}).get(camera, shift)) % 10)
            feature = self.output.encode(self.values[index]).feature(
                camera_id=camera,
                seq=self.seq,
                capture_ns=self.seq,
                gateway_id=GATEWAY,
                label=label,
                mode=str(Mode(PCA)),
                model_version=self.entry.version,
                raw_bytes=80_000,
                held_back=0,
                held_mismatched=0,
            )
            yield camera, wire.encode(feature), label


def _publish(
    gateway: MqttProbe,
    site: str,
    source: FeatureSource,
    count: int,
    shift: int,
    camera_shift: dict[str, int] | None = None,
) -> None:
    topics = wire.Topics(site)
    for camera, payload, _ in source.envelopes(count, shift, camera_shift):
        gateway.publish(topics.feature(GATEWAY, camera), payload, qos=1)


def _settings(
    broker: BrokerUnderTest, site: str, registry: Path, store: Path, trainer: TrainerSettings
) -> CloudSettings:
    return CloudSettings(
        broker=broker.config_for("cloud"),
        registry=registry,
        secrets=broker.secrets,
        site=site,
        group=site,
        cloud_id=f"{site}-cloud",
        split_ks=(2,),
        training=None,
        push=False,
        feature_store=store,
        trainer=trainer,
    )


def _running(settings: CloudSettings) -> Any:
    @asynccontextmanager
    async def enter() -> Any:
        async with CloudService(settings) as service:
            yield service

    return serve_in_thread(enter, "cloud", start_timeout=120)


def _sample(service: CloudService, name: str, **labels: str) -> float:
    value = service.metric_registry.get_sample_value(name, labels)
    return value or 0.0


@pytest.mark.training
def test_new_arrivals_trigger_a_run_whose_promoted_version_serves(
    broker: BrokerUnderTest,
    site: str,
    registry_copy: Path,
    tmp_path: Path,
    mqtt_probe: Any,
) -> None:
    registry = Registry(registry_copy)
    source = FeatureSource(registry)
    before = registry.serving(Mode(PCA)).version
    trainer = TrainerSettings(
        every=600, window=900, replay=300, epochs=8, learning_rate=3e-3, poll_seconds=0.5,
        specialise=False,
    )  # fmt: skip
    gateway = mqtt_probe(GATEWAY)
    settings = _settings(broker, site, registry_copy, tmp_path / "store", trainer)
    with _running(settings) as (service, _):
        assert service.trainer is not None
        _publish(gateway, site, source, 700, shift=1)  # the world renamed its classes
        wait_for(lambda: service.trainer.reports, 180, "a continuous-training run")
        report = service.trainer.reports[0]
        assert report.trigger == "new_objects"
        assert report.serving == before
        assert report.promoted is not None, report
        evidence = report.judgement
        assert evidence["candidate"] > evidence["serving"] + 0.3
        assert evidence["p_value"] < 0.05 and evidence["wins"] > evidence["losses"]
        assert set(evidence["cameras"]) == set(CAMERAS) and not evidence["worse_on"]
        promoted = registry.by_version(report.promoted)
        assert registry.serving(Mode(PCA)).version == promoted.version
        assert promoted.sha256 == registry.by_version(before).sha256  # same edge half
        assert promoted.metadata["extra"]["parent"] == before
        assert _sample(service, "edgelearn_cloud_trainer_promotions_total", mode="pca") == 1
        # the gateways still stamp the old version; the new cloud half answers them
        _publish(gateway, site, source, 200, shift=1)
        wait_for(
            lambda: service.scoreboard.served_accuracy("pca", promoted.version, 200)[1] >= 150,
            60,
            "answers from the promoted version",
        )
        live, _ = service.scoreboard.served_accuracy("pca", promoted.version, 200)
        # the replaced model names every class one off in this world: about 0.1
        assert live is not None and live > 0.4
    # a restarted cloud serves the promoted version too
    assert Registry(registry_copy).serving(Mode(PCA)).version == promoted.version


def shuffled_labels_fit(serving: Any, train: Any, held_out: Any, settings: TrainerSettings) -> Any:
    """A deliberately worse candidate: trained on the arrivals with their labels shuffled
    (module-level: the training process imports it)."""
    from cloud.models.training import train_feature_classifier

    shuffled = type(train)(
        train.values, np.random.default_rng(0).permutation(train.labels), train.quantization
    )
    return train_feature_classifier(shuffled, held_out, classes=10, epochs=3).model


@pytest.mark.training
def test_a_worse_candidate_is_not_promoted(
    broker: BrokerUnderTest, site: str, registry_copy: Path, tmp_path: Path, mqtt_probe: Any
) -> None:
    registry = Registry(registry_copy)
    source = FeatureSource(registry)
    before = registry.serving(Mode(PCA)).version
    versions = {entry.version for entry in registry.list()}
    trainer = TrainerSettings(every=500, poll_seconds=0.5)
    settings = _settings(broker, site, registry_copy, tmp_path / "store", trainer)
    gateway = mqtt_probe(GATEWAY)
    with _running(settings) as (service, _):
        assert service.trainer is not None
        service.trainer._fit = shuffled_labels_fit  # runs in the training process
        _publish(gateway, site, source, 600, shift=0)
        wait_for(lambda: service.trainer.reports, 180, "a continuous-training run")
        report = service.trainer.reports[0]
        assert report.promoted is None and report.reason in ("not_significant", "camera_worse")
        assert report.judgement["candidate"] < report.judgement["serving"]
        assert (
            _sample(
                service, "edgelearn_cloud_trainer_rejections_total", mode="pca",
                reason=report.reason,
            )
            == 1
        )  # fmt: skip
        assert registry.serving(Mode(PCA)).version == before
        assert {entry.version for entry in registry.list()} == versions  # nothing saved


@pytest.mark.training
def test_a_promotion_worse_in_shadow_is_rolled_back_and_an_equal_one_is_not(
    broker: BrokerUnderTest, site: str, registry_copy: Path, tmp_path: Path, mqtt_probe: Any
) -> None:
    """After a promotion the replaced model answers the same objects in shadow; the watch
    settles on their paired comparison. A copy of the serving model promoted is kept; a
    cloud half that names every class one off (an operator's manual promotion, say, that
    passed no judge) is rolled back."""
    from cloud.models import cnn
    from cloud.registry import keras_to_bytes

    registry = Registry(registry_copy)
    source = FeatureSource(registry)
    parent = registry.serving(Mode(PCA))
    extra = {**parent.metadata["extra"], "parent": parent.version}
    copy = registry.save_like(parent, extra=extra)
    model = cnn.clone_with_weights(registry.load_cloud_model(parent))
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    bad = registry.save_like(parent, cloud_artifact=keras_to_bytes(model), extra=extra)
    registry.set_serving(Mode(PCA), parent.version)  # the newest entry is not what serves
    trainer = TrainerSettings(every=10**6, rollback_items=60, poll_seconds=0.3)
    settings = _settings(broker, site, registry_copy, tmp_path / "store", trainer)
    gateway = mqtt_probe(GATEWAY)
    with _running(settings) as (service, _):
        assert service.trainer is not None
        service.trainer.promote(Mode(PCA), copy, parent=parent)
        assert registry.serving(Mode(PCA)).version == copy.version
        _publish(gateway, site, source, 100, shift=0)
        wait_for(lambda: service.trainer.watches, 60, "the copy's watch to settle")
        settled = service.trainer.watches[0]
        assert settled["promoted"] == copy.version and not settled["rolled_back"]
        evidence = settled["replaced_minus_promoted"]
        assert evidence["items"] >= 60 and evidence["wins"] == evidence["losses"] == 0
        assert registry.serving(Mode(PCA)).version == copy.version

        service.trainer.promote(Mode(PCA), bad, parent=copy)
        _publish(gateway, site, source, 100, shift=0)
        wait_for(lambda: service.trainer.rollbacks, 60, "a rollback")
        rollback = service.trainer.rollbacks[0]
        assert rollback["from"] == bad.version and rollback["to"] == copy.version
        assert rollback["live"] < rollback["replaced_live"] - 0.2
        assert rollback["evidence"]["p_value"] < 0.05
        assert registry.serving(Mode(PCA)).version == copy.version
        assert _sample(service, "edgelearn_cloud_trainer_rollbacks_total", mode="pca") == 1
        assert _sample(service, "edgelearn_cloud_shadow_objects_total", mode="pca") >= 120


def names_one_class_on_fit(
    serving: Any, train: Any, held_out: Any, settings: TrainerSettings
) -> Any:
    """A candidate with nothing learned: the serving cloud half naming every class one on,
    right in the relabeled world and wrong in the old one (module-level: picklable)."""
    from cloud.models import cnn

    model = cnn.clone_with_weights(serving)
    last = model.layers[-1]
    kernel, bias = last.get_weights()
    last.set_weights([np.roll(kernel, 1, axis=1), np.roll(bias, 1)])
    return model


def _record(store: FeatureStore, site: str, source: FeatureSource, count: int, shift: int) -> None:
    from cloud.feature_store import Arrival
    from edgelearn import codec

    arrivals = []
    for _, payload, _ in source.envelopes(count, shift):
        feature = wire.decode(payload)
        assert isinstance(feature, wire.Feature)
        arrivals.append(Arrival(site, feature, len(payload), codec.unpack_feature(feature)))
    store.record(arrivals)


@pytest.mark.parametrize(("shift_after", "promoted"), [(1, True), (0, False)])
def test_a_near_miss_is_judged_once_more_on_the_items_that_arrive_after_its_run(
    registry_copy: Path, tmp_path: Path, shift_after: int, promoted: bool
) -> None:
    """Four held-out items cannot prove anything at half the 5% level (four wins of four:
    p = 1/16), so a candidate ahead on them waits for fresh items and is judged once more
    on both. If the world stays relabeled it is promoted; if it changed back meanwhile,
    the fresh items refuse it. The trainer runs here, on a real store and registry."""
    from prometheus_client import CollectorRegistry

    from cloud.metrics import CloudMetrics
    from cloud.serving import RegistryModels, Scoreboard
    from cloud.trainer import ContinuousTrainer

    registry = Registry(registry_copy)
    mode = Mode(PCA)
    before = registry.serving(mode).version
    source = FeatureSource(registry)
    store = FeatureStore(tmp_path / "store")
    settings = TrainerSettings(
        every=10**6, min_new=50, window=120, replay=0, held_out_fraction=0.04, min_items=4,
        fresh_items=20, specialise=False,
    )  # fmt: skip
    metrics = CloudMetrics(CollectorRegistry())
    trainer = ContinuousTrainer(
        registry, RegistryModels(registry), store, Scoreboard(), metrics, [mode], settings,
        fit=names_one_class_on_fit,
    )  # fmt: skip
    _record(store, "s", source, 120, shift=1)  # the world renamed its classes
    first = trainer.run(mode)
    assert first.reason == "near_miss" and first.promoted is None, first.line()
    assert first.judgement["items"] == 4 and first.judgement["gain"] > 0
    assert trainer.check_near_miss(mode) is None  # nothing fresh yet
    assert trainer._trigger(mode, registry.serving(mode)) is None  # no run meanwhile

    _record(store, "s", source, 30, shift=shift_after)
    second = trainer.check_near_miss(mode)
    assert second is not None and second.trigger == "manual, fresh items"
    evidence = second.judgement
    assert evidence["items"] == 4 + 30
    if promoted:
        assert second.promoted is not None and evidence["p_value"] < settings.look_level
        assert registry.serving(mode).version == second.promoted
        saved = registry.by_version(second.promoted).metadata["extra"]
        assert saved["parent"] == before and saved["arrivals_held_out"]["items"] == 34
    else:
        assert second.promoted is None and second.reason == "not_significant"
        assert evidence["gain"] < 0 and registry.serving(mode).version == before
        rejected = metrics.registry.get_sample_value(
            "edgelearn_cloud_trainer_rejections_total",
            {"mode": "pca", "reason": "not_significant"},
        )
        assert rejected == 1
    assert trainer.check_near_miss(mode) is None  # judged once, never again
    store.close()


def test_labeled_rows_read_the_newest_and_replay_older_ones(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    from edgelearn.artifacts import TensorQuantization

    output = TensorQuantization("int8", (4,), 0.1, 0)
    from cloud.feature_store import Arrival

    arrivals = []
    for seq in range(1, 41):
        feature = output.encode(np.full(4, seq % 100, np.int8)).feature(
            camera_id=CAMERAS[seq % 2], seq=seq, capture_ns=seq, gateway_id=GATEWAY,
            label=seq % 10, mode="pca", model_version="v1", raw_bytes=1,
            held_back=0, held_mismatched=0,
        )  # fmt: skip
        arrivals.append(Arrival("s", feature, 10, np.full(4, seq % 100, np.int8)))
    store.record(arrivals)
    assert store.count("pca", ["v1"]) == (40, 40)
    assert store.count("pca", ["v1"], after_id=30)[0] == 10
    assert store.count("pca", ["v2"]) == (0, 0)
    rows = store.labeled_rows("pca", ["v1"], newest=10, replay=5, seed=1)
    assert len(rows) == 15
    assert rows.ids.tolist() == sorted(rows.ids.tolist())
    assert rows.ids[-10:].tolist() == list(range(31, 41))
    assert set(rows.ids[:5].tolist()) <= set(range(1, 31))
    assert rows.values[-1].tolist() == [40] * 4 and rows.labels[-1] == 0
    store.close()


@pytest.mark.training
def test_a_camera_whose_world_differs_gets_a_cloud_half_of_its_own(
    broker: BrokerUnderTest, site: str, registry_copy: Path, tmp_path: Path, mqtt_probe: Any
) -> None:
    registry = Registry(registry_copy)
    source = FeatureSource(registry)
    trainer = TrainerSettings(
        every=1400, window=1400, replay=0, epochs=8, learning_rate=3e-3, poll_seconds=0.5,
        specialise_min_rows=300,
    )  # fmt: skip
    settings = _settings(broker, site, registry_copy, tmp_path / "store", trainer)
    gateway = mqtt_probe(GATEWAY)
    with _running(settings) as (service, _):
        assert service.trainer is not None
        # cam-1 names the classes as the models learned them; cam-2 one off: no single
        # cloud half can be right on both
        _publish(gateway, site, source, 1400, shift=0, camera_shift={"cam-2": 1})
        wait_for(lambda: service.trainer.reports, 240, "a continuous-training run")
        report = service.trainer.reports[0]
        assert set(report.cameras) == set(CAMERAS), report
        chosen = report.cameras["cam-2"]
        assert chosen["serving"] == "specialised", report.cameras
        assert chosen["specialised"] > chosen["global"] + 0.2
        head = registry.serving_for(Mode(PCA), "cam-2")
        assert head.camera == "cam-2" and head.sha256 == registry.serving(Mode(PCA)).sha256
        assert registry.serving(Mode(PCA)).camera is None  # the global one is not it
        assert _sample(service, "edgelearn_cloud_trainer_specialised_cameras", mode="pca") >= 1
        _publish(gateway, site, source, 200, shift=0, camera_shift={"cam-2": 1})
        wait_for(
            lambda: service.scoreboard.served_accuracy("pca", head.version, 100)[1] >= 80,
            60,
            "cam-2 answered by its own cloud half",
        )
        live, _ = service.scoreboard.served_accuracy("pca", head.version, 100)
        assert live is not None and live > 0.5


@pytest.mark.training
def test_full_mode_learns_from_sampled_crops_and_pushes_the_new_edge_model(
    broker: BrokerUnderTest, site: str, registry_copy: Path, tmp_path: Path, mqtt_probe: Any
) -> None:
    """Gateways in full mode send the crops of a sample of keyframes; the trainer tunes the
    whole CNN on them, exports it to int8 and pushes it signed to the gateways."""
    import dataclasses

    from cloud.training_jobs import _held_out_inputs
    from edgelearn import codec, signing
    from edgelearn.artifacts import load_deployment
    from edgelearn.modes import FULL

    registry = Registry(registry_copy)
    before = registry.serving(Mode(FULL))
    crops, labels = _held_out_inputs(500, *before.input_shape[:1], before.input_shape[2])
    watcher = mqtt_probe("cloud")
    watcher.subscribe(wire.Topics(site).model(wire.ALL_GATEWAYS, Mode(FULL)))
    trainer = TrainerSettings(
        every=450, window=500, replay=0, epochs=4, learning_rate=2e-3, poll_seconds=0.5
    )
    settings = dataclasses.replace(
        _settings(broker, site, registry_copy, tmp_path / "store", trainer), push=True
    )
    gateway = mqtt_probe(GATEWAY)
    topics = wire.Topics(site)
    with _running(settings) as (service, _):
        assert service.trainer is not None
        pushed_at_start = len(watcher.payloads())
        for seq, (crop, label) in enumerate(zip(crops, labels, strict=True), start=1):
            camera = CAMERAS[seq % 2]
            sample = codec.encode_array(crop[None]).feature(
                camera_id=camera, seq=seq, capture_ns=seq, gateway_id=GATEWAY, label=None,
                mode=str(Mode(FULL)), model_version=before.version, raw_bytes=80_000,
                held_back=0, held_mismatched=0,
            )  # fmt: skip
            sample = dataclasses.replace(
                sample, tracks=(seq,), boxes=((0, 0, 96, 96),), labels=(int((label + 1) % 10),)
            )
            gateway.publish(topics.feature(GATEWAY, camera), wire.encode(sample), qos=1)
        # the cloud answers the samples itself (the edge sent crops, not an answer)
        wait_for(
            lambda: service.scoreboard.served_accuracy("full", before.version, 500)[1] >= 450,
            120,
            "the samples answered",
        )
        wait_for(lambda: service.trainer.reports, 300, "a continuous-training run")
        report = service.trainer.reports[0]
        assert report.promoted is not None, report
        promoted = registry.by_version(report.promoted)
        assert promoted.kind == "full" and promoted.sha256 != before.sha256  # a new edge half
        assert registry.serving(Mode(FULL)).version == promoted.version
        wait_for(lambda: len(watcher.payloads()) > pushed_at_start, 30, "the push")
        model = wire.decode_as(watcher.payloads()[-1], wire.Model)
        assert model.version == promoted.version
        trusted = signing.load_public_key(broker.secrets.signing_public_key)
        loaded = load_deployment(model, trusted)  # signed: a gateway would load it
        assert loaded.version == promoted.version
        pushed = _sample(service, "edgelearn_cloud_model_pushed_bytes_total", mode="full")
        assert pushed >= len(model.artifact)
