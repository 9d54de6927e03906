"""An append-only, sharded store of labeled features: what the cloud trains on.

Where it sits: cloud consumer -> **FeatureStore.append** ... ``edgelearn train
--from-features`` -> :meth:`FeatureStore.load`.

Layout: ``<root>/<extractor>/<model_version>/shard-000001.npz``, one directory per kind of
feature (features from different extractors or model versions are different data sets).
Each shard holds ``values`` exactly as the gateways sent them (int8 for the feature modes,
JPEG bytes for ``raw``, as an object-free ragged pair ``jpeg_bytes``/``jpeg_offsets``),
``labels``, the quantisation ``scale``/``zero_point`` and the bytes that crossed the uplink.
A shard is written whole to a temporary name and renamed, so a crash never leaves a torn
shard, and existing shards are never rewritten.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgelearn import codec, wire
from edgelearn.modes import Mode


@dataclass(frozen=True, eq=False)
class LoadedFeatures:
    extractor: str
    model_version: str
    values: npt.NDArray[np.generic]  # (N, *shape) for features; (N,) object-free for raw
    jpegs: list[bytes]  # raw mode only
    labels: npt.NDArray[np.int64]
    scale: float
    zero_point: int
    uplink_bytes: int


class FeatureStore:
    def __init__(self, root: Path, shard_size: int = 2048) -> None:
        self.root = root
        self.shard_size = shard_size
        self._buffers: dict[tuple[str, str], list[tuple[wire.Feature, int]]] = defaultdict(list)
        self._lock = threading.Lock()

    def _directory(self, extractor: str, model_version: str) -> Path:
        return self.root / Mode.parse(extractor).slot / model_version

    def append(
        self, feature: wire.Feature, values: npt.NDArray[np.generic] | None, wire_bytes: int
    ) -> None:
        """Keep one labeled feature (unlabeled ones teach nothing and are skipped).
        ``values``: the decoded, still-quantised array (``None`` for raw JPEGs);
        ``wire_bytes``: the size of the envelope that crossed the uplink."""
        if feature.label is None:
            return
        key = (feature.extractor, feature.model_version)
        with self._lock:
            buffer = self._buffers[key]
            stored = feature if values is None else _with_values(feature, values)
            buffer.append((stored, wire_bytes))
            if len(buffer) >= self.shard_size:
                self._write(key, buffer)
                self._buffers[key] = []

    def flush(self) -> None:
        with self._lock:
            for key, buffer in self._buffers.items():
                if buffer:
                    self._write(key, buffer)
            self._buffers.clear()

    def _write(self, key: tuple[str, str], entries: list[tuple[wire.Feature, int]]) -> None:
        features = [feature for feature, _ in entries]
        directory = self._directory(*key)
        directory.mkdir(parents=True, exist_ok=True)
        number = len(list(directory.glob("shard-*.npz"))) + 1
        path = directory / f"shard-{number:06d}.npz"
        temporary = directory / f".{path.name}.tmp"
        labels = np.asarray([f.label for f in features], np.int64)
        uplink = np.int64(sum(size for _, size in entries))
        first = features[0]
        arrays: dict[str, Any] = {
            "labels": labels,
            "scale": np.float64(first.scale),
            "zero_point": np.int64(first.zero_point),
            "uplink_bytes": uplink,
        }
        if first.codec is wire.Codec.JPEG:
            arrays["jpeg_bytes"] = np.frombuffer(b"".join(f.payload for f in features), np.uint8)
            arrays["jpeg_offsets"] = np.cumsum([0] + [len(f.payload) for f in features])
        else:
            arrays["values"] = np.stack([codec.unpack_feature(f) for f in features])
        with temporary.open("wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.rename(path)

    def kinds(self) -> list[tuple[str, str]]:
        return sorted(
            (str(Mode.from_slot(extractor.name)), version.name)
            for extractor in self.root.glob("*")
            if extractor.is_dir()
            for version in extractor.glob("*")
            if any(version.glob("shard-*.npz"))
        )

    def load(self, extractor: str, model_version: str, limit: int | None = None) -> LoadedFeatures:
        directory = self._directory(extractor, model_version)
        shards = sorted(directory.glob("shard-*.npz"))
        if not shards:
            raise FileNotFoundError(
                f"no stored features for {extractor} {model_version} in {directory}"
            )
        values, jpegs, labels = [], [], []
        scale, zero_point, uplink = 1.0, 0, 0
        for shard in shards:
            with np.load(shard, allow_pickle=False) as data:
                labels.append(data["labels"])
                scale, zero_point = float(data["scale"]), int(data["zero_point"])
                uplink += int(data["uplink_bytes"])
                if "values" in data:
                    values.append(data["values"])
                else:
                    blob, offsets = data["jpeg_bytes"].tobytes(), data["jpeg_offsets"]
                    jpegs += [blob[a:b] for a, b in itertools.pairwise(offsets)]
            if limit is not None and sum(len(x) for x in labels) >= limit:
                break
        all_labels = np.concatenate(labels)[:limit]
        stacked = np.concatenate(values)[:limit] if values else np.empty(0, np.uint8)
        return LoadedFeatures(
            extractor, model_version, stacked, jpegs[:limit], all_labels, scale, zero_point, uplink
        )


def _with_values(feature: wire.Feature, values: npt.NDArray[np.generic]) -> wire.Feature:
    """Store the entropy-decoded array, so training never pays for decompression again."""
    import dataclasses

    return dataclasses.replace(
        feature, codec=wire.Codec.NONE, payload=np.ascontiguousarray(values).tobytes()
    )
