"""The per-frame work of a gateway, without any I/O: frame envelope in, envelopes out.

Where it sits: queue -> **FramePipeline.process** -> forwarder (MQTT, QoS 1).

For each frame: reject what is not a JPEG (a truncated one lacks its end-of-image marker),
run the keyframe filter on a 1/8-scale decode, and for keyframes only run the current mode's
(:mod:`edgelearn.modes`) extractor (:mod:`edgelearn.artifacts`) on the model input
(:mod:`edgelearn.preprocess`) and pack its output with :mod:`edgelearn.codec` into a
``wire.Feature``; ``raw`` forwards the camera's JPEG unchanged (no decode needed) and
``full`` a ``wire.Result`` (the whole CNN ran here, only its answer goes up).

Until the deployment a mode needs has arrived, the pipeline runs ``raw`` and says so
(``effective_mode``), so no frame is lost while waiting for a model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelearn import codec, preprocess, wire
from edgelearn.artifacts import LoadedDeployment
from edgelearn.modes import FULL, RAW, Mode
from gateway.keyframes import KeyframeFilter, KeyframeSettings, decode_small

STAGES = ("keyframe", "decode", "extract", "encode")


@dataclass(frozen=True)
class Dropped:
    reason: str


@dataclass(frozen=True)
class HeldBack:
    score: float


@dataclass(frozen=True)
class Forward:
    envelope: wire.Feature | wire.Result
    mode: Mode
    data: bytes  # the encoded envelope, encoded once, published as is


Outcome = Dropped | HeldBack | Forward


@dataclass
class FramePipeline:
    """Not thread-safe for ``process`` (one per worker thread); ``deploy`` and ``set_mode``
    may be called from another thread: they swap references the worker reads per frame."""

    gateway_id: str
    mode: Mode = field(default_factory=lambda: Mode(RAW))
    keyframes: KeyframeSettings = field(default_factory=KeyframeSettings)
    feature_codec: wire.Codec = wire.Codec.ZSTD
    on_stage: Callable[[str, float], None] = lambda stage, seconds: None
    _filter: KeyframeFilter = field(init=False)
    _deployments: dict[Mode, LoadedDeployment] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._filter = KeyframeFilter(self.keyframes)

    # --- live changes (another thread) ------------------------------------------------

    def deploy(self, deployment: LoadedDeployment) -> None:
        with self._lock:
            self._deployments = {**self._deployments, deployment.mode: deployment}

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def set_keyframes(self, settings: KeyframeSettings) -> None:
        self.keyframes = settings
        self._filter.settings = settings

    def deployment_for(self, mode: Mode) -> LoadedDeployment | None:
        return self._deployments.get(mode)

    def effective_mode(self) -> Mode:
        mode = self.mode
        return mode if mode.kind == RAW or self.deployment_for(mode) else Mode(RAW)

    def model_versions(self) -> dict[Mode, str]:
        return {mode: deployment.version for mode, deployment in self._deployments.items()}

    # --- per frame -----------------------------------------------------------------------

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.on_stage(stage, now - started)
        return now

    def process(self, frame: wire.Frame) -> Outcome:
        jpeg = frame.payload
        if jpeg[:2] != b"\xff\xd8" or jpeg[-2:] != b"\xff\xd9":
            return Dropped("undecodable")  # not a JPEG, or truncated in transit
        started = time.perf_counter()
        held_back = held_mismatched = 0
        if self.keyframes.enabled:
            small = decode_small(jpeg)
            if small is None:
                return Dropped("undecodable")
            decision = self._filter.decide(frame.camera_id, small, frame.label)
            started = self._timed("keyframe", started)
            if not decision.keyframe:
                return HeldBack(decision.score)
            held_back, held_mismatched = decision.held_back, decision.held_mismatched

        mode = self.mode
        deployment = self.deployment_for(mode)
        if deployment is None:
            mode = Mode(RAW)
        if mode.kind == RAW:
            return self._forward_raw(frame, held_back, held_mismatched)
        assert deployment is not None
        model_input = self._model_input(jpeg, deployment)
        if model_input is None:
            return Dropped("undecodable")
        started = self._timed("decode", started)
        output = deployment.extractor.run(model_input)
        started = self._timed("extract", started)
        quantization = deployment.extractor.output
        if mode.kind == FULL:
            return self._forward_result(frame, output, deployment, held_back, held_mismatched)
        encoded = codec.encode_array(
            np.asarray(output),
            codec=self.feature_codec,
            scale=quantization.scale,
            zero_point=quantization.zero_point,
        )
        feature = wire.Feature(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ns=frame.capture_ns,
            gateway_id=self.gateway_id,
            label=frame.label,
            extractor=str(mode),
            model_version=deployment.version,
            dtype=encoded.dtype,
            shape=encoded.shape,
            scale=encoded.scale,
            zero_point=encoded.zero_point,
            codec=encoded.codec,
            raw_bytes=len(jpeg),
            held_back=held_back,
            held_mismatched=held_mismatched,
            payload=encoded.payload,
        )
        data = wire.encode(feature)
        self._timed("encode", started)
        return Forward(feature, mode, data)

    def _model_input(self, jpeg: bytes, deployment: LoadedDeployment) -> Any:
        size, _, channels = deployment.extractor.input_shape
        try:
            return preprocess.to_model_input(
                preprocess.decode_reduced(jpeg, channels), size, channels
            )
        except preprocess.PreprocessError:
            return None

    def _forward_raw(self, frame: wire.Frame, held_back: int, held_mismatched: int) -> Forward:
        feature = wire.Feature(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ns=frame.capture_ns,
            gateway_id=self.gateway_id,
            label=frame.label,
            extractor=RAW,
            model_version="none",
            dtype=wire.DType.UINT8,
            shape=(len(frame.payload),),
            scale=1.0,
            zero_point=0,
            codec=wire.Codec.JPEG,
            raw_bytes=len(frame.payload),
            held_back=held_back,
            held_mismatched=held_mismatched,
            payload=frame.payload,
        )
        return Forward(feature, Mode(RAW), wire.encode(feature))

    def _forward_result(
        self,
        frame: wire.Frame,
        output: Any,
        deployment: LoadedDeployment,
        held_back: int,
        held_mismatched: int,
    ) -> Forward:
        probabilities = deployment.extractor.output.dequantize(np.asarray(output)).reshape(-1)
        predicted = int(np.argmax(probabilities))
        result = wire.Result(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ns=frame.capture_ns,
            result_ns=time.time_ns(),
            gateway_id=self.gateway_id,
            extractor=FULL,
            label=frame.label,
            predicted=predicted,
            score=float(np.clip(probabilities[predicted], 0.0, 1.0)),
            model_version=deployment.version,
            computed_at=wire.ComputedAt.EDGE,
            held_back=held_back,
            held_mismatched=held_mismatched,
        )
        return Forward(result, Mode(FULL), wire.encode(result))
