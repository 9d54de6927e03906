"""cloud.registry: versioned entries on disk and the signed deployments built from them.

These tests use a real (small) PCA artifact and opaque bytes for the other kinds: the
registry does not parse artifacts, and LiteRT deployments of real trained models are tested
in test_models.py.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cloud.models.errors import (
    CorruptEntry,
    ModelNotFound,
    RegistryError,
    VersionExists,
)
from cloud.models.features import fit_pca
from cloud.registry import ModelEntry, Registry, build_deployment, deployment_metadata
from edgelearn import artifacts, signing, wire
from edgelearn.artifacts import ArtifactError
from edgelearn.modes import PCA, Mode

INPUT_SHAPE = (16, 16, 1)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    directory = tmp_path / "keys"
    directory.mkdir()
    signing.generate_key_pair(directory)
    return (
        signing.load_private_key(directory / signing.PRIVATE_KEY_FILE),
        signing.load_public_key(directory / signing.PUBLIC_KEY_FILE),
    )


@pytest.fixture(scope="module")
def projection() -> artifacts.PcaProjection:
    rng = np.random.default_rng(0)
    inputs = rng.integers(0, 256, (200, *INPUT_SHAPE), dtype=np.uint8)
    return fit_pca(inputs, 8, seed=0)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def _save_pca(registry: Registry, projection: artifacts.PcaProjection, **kwargs: Any) -> ModelEntry:
    defaults: dict[str, Any] = {
        "name": "garments-pca",
        "kind": artifacts.KIND_PCA,
        "task": "fashion-mnist",
        "input_shape": INPUT_SHAPE,
        "edge_artifact": projection.to_bytes(),
        "cloud_artifact": b"classifier bytes",
        "accuracy": 0.5,
        "quantization": {"output": projection.output.to_dict()},
        "class_names": [str(i) for i in range(10)],
    }
    defaults.update(kwargs)
    return registry.save(**defaults)


def test_save_writes_a_directory_with_metadata_and_artifacts(
    registry: Registry, projection: artifacts.PcaProjection
) -> None:
    entry = registry.save(
        name="garments-pca",
        kind=artifacts.KIND_PCA,
        task="fashion-mnist",
        input_shape=INPUT_SHAPE,
        edge_artifact=projection.to_bytes(),
        cloud_artifact=b"classifier",
        accuracy=0.75,
        quantization={"output": projection.output.to_dict()},
        profile=[{"k": 0, "output_elements": 256}],
        extra={"dim": 8},
    )
    assert entry.path == registry.root / "garments-pca" / "v1"
    on_disk = json.loads((entry.path / "metadata.json").read_text())
    assert on_disk["kind"] == "pca" and on_disk["task"] == "fashion-mnist"
    assert on_disk["input_shape"] == list(INPUT_SHAPE)
    assert on_disk["accuracy"] == 0.75
    assert on_disk["split_k"] == 0
    assert on_disk["profile"] == [{"k": 0, "output_elements": 256}]
    assert on_disk["extra"] == {"dim": 8}
    assert on_disk["created"].endswith("+00:00")
    assert on_disk["quantization"]["output"] == projection.output.to_dict()
    assert (entry.path / "edge.npz").read_bytes() == projection.to_bytes()
    assert (entry.path / "cloud.keras").read_bytes() == b"classifier"
    assert entry.read("edge") == projection.to_bytes()
    assert entry.sha256 == on_disk["files"]["edge"]["sha256"]
    assert not list((registry.root / ".staging").iterdir())


def test_versions_count_up_across_names_and_find_their_entry(
    registry: Registry, projection: artifacts.PcaProjection
) -> None:
    first = _save_pca(registry, projection)
    second = _save_pca(registry, projection, name="other", accuracy=0.6)
    third = _save_pca(registry, projection, accuracy=0.7)
    assert [e.version for e in (first, second, third)] == ["v1", "v2", "v3"]
    assert registry.by_version("v2").name == "other"
    assert registry.get("garments-pca").version == "v3"
    assert registry.get("garments-pca", "v1").accuracy == 0.5
    assert [e.version for e in registry.list()] == ["v1", "v2", "v3"]
    assert [e.version for e in registry.list("garments-pca")] == ["v1", "v3"]


def test_latest_filters_by_kind_task_and_split(
    registry: Registry, projection: artifacts.PcaProjection
) -> None:
    _save_pca(registry, projection)
    registry.save(
        name="cnn",
        kind=artifacts.KIND_SPLIT,
        task="fashion-mnist",
        input_shape=INPUT_SHAPE,
        edge_artifact=b"lower-3",
        cloud_artifact=b"upper-3",
        split_k=3,
    )
    registry.save(
        name="cnn",
        kind=artifacts.KIND_SPLIT,
        task="fashion-mnist",
        input_shape=INPUT_SHAPE,
        edge_artifact=b"lower-5",
        cloud_artifact=b"upper-5",
        split_k=5,
    )
    registry.save(
        name="cnn-raw",
        kind=artifacts.KIND_CLOUD_CLASSIFIER,
        task="other-task",
        input_shape=INPUT_SHAPE,
        cloud_artifact=b"cnn",
    )
    assert registry.latest(kind="split").read("edge") == b"lower-5"
    assert registry.latest(kind="split", split_k=3).read("cloud") == b"upper-3"
    assert registry.latest(task="other-task").kind == "cloud-classifier"
    assert registry.latest().name == "cnn-raw"
    with pytest.raises(ModelNotFound):
        registry.latest(kind="autoencoder")


def test_each_mode_is_served_by_its_newest_entry(
    registry: Registry, projection: artifacts.PcaProjection
) -> None:
    pca = _save_pca(registry, projection)
    common: dict[str, Any] = {"task": "fashion-mnist", "input_shape": INPUT_SHAPE}
    splits = {
        k: registry.save(
            name="cnn-split",
            kind=artifacts.KIND_SPLIT,
            edge_artifact=f"lower-{k}".encode(),
            cloud_artifact=f"upper-{k}".encode(),
            split_k=k,
            **common,
        )
        for k in (2, 4)
    }
    # A full model records its number of blocks as split_k: it still serves "full".
    full = registry.save(
        name="cnn-full",
        kind=artifacts.KIND_FULL,
        edge_artifact=b"cnn int8",
        cloud_artifact=b"cnn",
        split_k=9,
        **common,
    )
    raw = registry.save(
        name="cnn-raw", kind=artifacts.KIND_CLOUD_CLASSIFIER, cloud_artifact=b"cnn", **common
    )
    served = {
        "pca": pca,
        "split:2": splits[2],
        "split:4": splits[4],
        "full": full,
        "raw": raw,
    }
    for text, entry in served.items():
        assert registry.serving(Mode.parse(text)).version == entry.version, text
        assert str(entry.mode) == text
    with pytest.raises(ModelNotFound):
        registry.serving(Mode.split(3))
    with pytest.raises(ModelNotFound):
        registry.serving(Mode.parse("autoencoder"))


def test_versions_are_immutable(registry: Registry, projection: artifacts.PcaProjection) -> None:
    _save_pca(registry, projection, version="release-1")
    with pytest.raises(VersionExists):
        _save_pca(registry, projection, version="release-1")
    # Unique across names too: the version alone names the entry on the wire.
    with pytest.raises(VersionExists):
        _save_pca(registry, projection, name="another", version="release-1")
    assert len(registry.list()) == 1


@pytest.mark.parametrize("name", ["../escape", ".hidden", "a/b", "", "x" * 65, "sp ace"])
def test_names_that_are_not_plain_identifiers_are_refused(
    registry: Registry, projection: artifacts.PcaProjection, name: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        _save_pca(registry, projection, name=name)
    assert caught.value.reason == "bad_name"
    with pytest.raises(RegistryError):
        _save_pca(registry, projection, version=name)
    assert not any(registry.root.parent.glob("escape"))


def test_kinds_need_their_artifacts(registry: Registry) -> None:
    common: dict[str, Any] = {"task": "t", "input_shape": INPUT_SHAPE}
    with pytest.raises(RegistryError, match="edge artifact"):
        registry.save(name="a", kind="split", cloud_artifact=b"upper", **common)
    with pytest.raises(RegistryError, match="cloud artifact only"):
        registry.save(name="a", kind="cloud-classifier", edge_artifact=b"x", **common)
    with pytest.raises(RegistryError, match="kind"):
        registry.save(name="a", kind="mystery", edge_artifact=b"x", **common)


def test_concurrent_saves_get_distinct_versions(
    registry: Registry, projection: artifacts.PcaProjection
) -> None:
    versions: list[str] = []
    errors: list[BaseException] = []

    def save() -> None:
        try:
            versions.append(_save_pca(registry, projection).version)
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert sorted(versions) == sorted(set(versions)) and len(versions) == 6
    assert len(registry.list()) == 6


def test_a_changed_artifact_on_disk_is_never_served(
    registry: Registry,
    projection: artifacts.PcaProjection,
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
) -> None:
    entry = _save_pca(registry, projection)
    path = entry.file_path("edge")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry) as caught:
        registry.deployment("garments-pca", None, keys[0])
    assert caught.value.reason == "bad_digest"


def test_unreadable_metadata_is_skipped_not_fatal(
    registry: Registry, projection: artifacts.PcaProjection
) -> None:
    _save_pca(registry, projection)
    broken = registry.root / "broken" / "v9"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{not json")
    assert [e.name for e in registry.list()] == ["garments-pca"]
    with pytest.raises(CorruptEntry):
        registry.get("broken", "v9")
    with pytest.raises(ModelNotFound):
        registry.get("garments-pca", "v7")


# ---------------------------------------------------------------------------------------
# Deployments: signed envelopes for gateways.


def test_deployment_verifies_loads_and_runs_like_the_projection(
    registry: Registry,
    projection: artifacts.PcaProjection,
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
) -> None:
    entry = _save_pca(registry, projection)
    model = registry.deployment("garments-pca", entry.version, keys[0])
    # Through the wire and back, as a gateway receives it.
    received = wire.decode_as(wire.encode(model), wire.Model)
    loaded = artifacts.load_deployment(received, keys[1])
    assert (loaded.name, loaded.version, loaded.kind) == ("garments-pca", "v1", "pca")
    metadata = json.loads(received.metadata_json)
    assert metadata["output"] == projection.output.to_dict()
    assert metadata["input_shape"] == list(INPUT_SHAPE)
    frame = np.random.default_rng(1).integers(0, 256, INPUT_SHAPE, dtype=np.uint8)
    features = loaded.extractor.run(frame)
    assert features.dtype == np.int8 and features.shape == (8,)
    np.testing.assert_array_equal(features, projection.output.quantize(projection.project(frame)))


def test_flipped_artifact_byte_is_refused(
    registry: Registry,
    projection: artifacts.PcaProjection,
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
) -> None:
    _save_pca(registry, projection)
    model = registry.deployment("garments-pca", None, keys[0])
    artifact = bytearray(model.artifact)
    artifact[-1] ^= 0x80
    tampered = dataclasses.replace(model, artifact=bytes(artifact))
    with pytest.raises(signing.ModelRejected) as caught:
        artifacts.load_deployment(tampered, keys[1])
    assert caught.value.reason == "bad_digest"


def test_wrong_key_and_altered_metadata_are_refused(
    registry: Registry,
    projection: artifacts.PcaProjection,
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
) -> None:
    _save_pca(registry, projection)
    model = registry.deployment("garments-pca", None, keys[0])
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(signing.ModelRejected) as caught:
        artifacts.load_deployment(model, stranger.public_key())
    assert caught.value.reason == "unknown_key"
    # Same key id, but a different signer: the signature itself fails.
    forged = dataclasses.replace(model, signature=stranger.sign(model.signed_bytes()))
    with pytest.raises(signing.ModelRejected) as caught:
        artifacts.load_deployment(forged, keys[1])
    assert caught.value.reason == "bad_signature"
    altered = dataclasses.replace(model, split_k=3)
    with pytest.raises(signing.ModelRejected) as caught:
        artifacts.load_deployment(altered, keys[1])
    assert caught.value.reason == "bad_signature"


def test_signed_but_malformed_artifact_is_an_artifact_error(
    registry: Registry, keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]
) -> None:
    registry.save(
        name="cnn",
        kind=artifacts.KIND_SPLIT,
        task="t",
        input_shape=INPUT_SHAPE,
        edge_artifact=b"not a flatbuffer",
        cloud_artifact=b"upper",
        split_k=2,
    )
    model = registry.deployment("cnn", None, keys[0])
    signing.verify_model(model, keys[1])  # intact and signed...
    with pytest.raises(ArtifactError) as caught:  # ...but not a LiteRT model
        artifacts.load_deployment(model, keys[1])
    assert caught.value.reason == "bad_litert"


def test_cloud_only_models_are_not_deployable(
    registry: Registry, keys: tuple[Ed25519PrivateKey, Ed25519PublicKey]
) -> None:
    registry.save(
        name="raw", kind="cloud-classifier", task="t", input_shape=INPUT_SHAPE, cloud_artifact=b"m"
    )
    with pytest.raises(RegistryError) as caught:
        registry.deployment("raw", None, keys[0])
    assert caught.value.reason == "not_deployable"


def test_build_deployment_refuses_bytes_the_registry_did_not_store(
    registry: Registry,
    projection: artifacts.PcaProjection,
    keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
) -> None:
    entry = _save_pca(registry, projection)
    with pytest.raises(CorruptEntry):
        build_deployment(entry, b"other bytes", keys[0])
    model = build_deployment(entry, entry.read("edge"), keys[0])
    assert model.sha256.hex() == entry.sha256
    assert model.metadata_json == deployment_metadata(entry)


def test_metadata_mismatch_between_envelope_and_artifact_is_refused(
    projection: artifacts.PcaProjection,
) -> None:
    wrong = dict(projection.output.to_dict(), scale=projection.output.scale * 2)
    with pytest.raises(ArtifactError) as caught:
        artifacts.load_edge_artifact("pca", projection.to_bytes(), {"output": wrong})
    assert caught.value.reason == "metadata_mismatch"
    with pytest.raises(ArtifactError) as caught:
        artifacts.load_edge_artifact("cloud-classifier", b"x")
    assert caught.value.reason == "not_edge_kind"
    with pytest.raises(ArtifactError) as caught:
        artifacts.load_edge_artifact("pca", b"garbage")
    assert caught.value.reason == "bad_pca"


@pytest.mark.parametrize("where", ["file", "database"])
def test_a_promotion_is_seen_by_another_process_of_the_same_registry(
    tmp_path: Path, projection: artifacts.PcaProjection, where: str
) -> None:
    """Two Registry objects on one folder (two cloud machines): a promotion made through
    one is what the other serves, and its ServingWatch says so once. ``database`` is the
    shared store's pointer on SQLite here (PostgreSQL in tests/test_cloud_service.py)."""
    from cloud.registry import DatabasePointer, FilePointer
    from cloud.serving import ServingWatch

    def pointer() -> DatabasePointer | None:
        if where == "file":
            return None
        return DatabasePointer.at(tmp_path / "store.sqlite", seed=FilePointer(root))

    root = tmp_path / "registry"
    alone = Registry(root)  # one machine, before any shared store
    parent = _save_pca(alone, projection)
    copy = alone.save_like(parent)
    alone.set_serving(Mode(PCA), parent.version)
    one, two = Registry(root, pointer=pointer()), Registry(root, pointer=pointer())
    watch = ServingWatch(two)
    assert two.serving(Mode(PCA)).version == parent.version and not watch.changed()
    one.set_serving(Mode(PCA), copy.version)
    assert two.serving(Mode(PCA)).version == copy.version
    assert watch.changed() and not watch.changed()  # once
    one.set_serving(Mode(PCA), None)  # back to the newest: the copy
    one.set_serving(Mode(PCA), copy.version, camera="cam-1")
    assert watch.changed() and two.serving_pointer() == {"pca@cam-1": copy.version}
    _save_pca(one, projection, edge_artifact=b"a new first training")  # a new generation
    assert watch.changed()
    with pytest.raises(ModelNotFound):
        one.set_serving(Mode(PCA), "v999")
    assert not watch.changed()
    on_disk = FilePointer(root).read()
    if where == "database":  # the file's first pointer was taken over, and left as it was
        assert on_disk == {"pca": parent.version}
        assert Registry(root, pointer=pointer()).serving_pointer() == two.serving_pointer()
    else:
        assert on_disk == two.serving_pointer()
