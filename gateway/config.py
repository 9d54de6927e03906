"""A gateway worker's settings (one frozen dataclass; see :func:`edgelearn.config.load`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelearn import wire
from edgelearn.config import BrokerConfig
from edgelearn.keyframes import KeyframeSettings
from edgelearn.modes import Mode
from edgelearn.secrets import default_state_dir
from gateway.outbox import POLICIES

OUTBOX_IN_MEMORY = "memory"
DEFAULT_MODE = Mode.split(3)


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str = "gw-1"
    worker: int = 0  # index within the gateway's pool; part of the MQTT client id
    site: str = wire.DEFAULT_SITE
    mode: Mode = DEFAULT_MODE  # a text (split:3) is read as its Mode
    group: str = "gateways"  # MQTT v5 shared-subscription group of the pool
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    tls: bool = False
    secrets: Path | None = None
    keyframes: bool = True
    objects: bool = True  # a background model per camera: objects in view (edgelearn.roi)
    # The keyframe rule (edgelearn.keyframes), for objects and whole frames alike; the
    # defaults are KeyframeSettings'.
    keyframe_motion_interval: int = KeyframeSettings.motion_interval
    keyframe_settle_frames: int = KeyframeSettings.settle_frames
    keyframe_max_interval: int = KeyframeSettings.max_interval
    keyframe_move_fraction: float = KeyframeSettings.move_fraction
    keyframe_threshold: float = KeyframeSettings.threshold
    queue_depth: int = 2  # frames per camera; the newest wins
    max_frame_mb: float = 4.0  # a larger frame envelope is refused (oversize), undecoded
    stale_after: float = 2.0  # seconds a frame may wait for a worker
    max_inflight: int = 64  # QoS 1 publishes awaiting their PUBACK
    max_pending: int = 1024  # features queued for their first send (more wait in the outbox)
    # Features kept until the cloud acknowledges them: a directory (one SQLite file per
    # worker slot), "memory" (lost on a restart), or "" for <state dir>/outbox.
    outbox: str = ""
    outbox_max_items: int = 100_000
    outbox_max_mb: float = 512.0
    outbox_policy: str = "oldest"  # what a full outbox drops: the oldest feature or the new one
    retry_after: float = 3.0  # seconds without an ack before a feature is sent again
    retry_max: float = 30.0  # the backoff between two tries stops doubling here
    feature_codec: str = "zstd"
    coap_port: int = -1  # -1: no CoAP endpoint; 0: a free port
    coap_host: str = "127.0.0.1"
    # Accept CoAP posts without OSCORE: anyone who reaches the port posts as any camera.
    coap_insecure: bool = False
    metrics_port: int = 0  # 0: a free port (printed at start)
    metrics_host: str = "127.0.0.1"
    status_interval: float = 5.0
    # The uplink's capacity in kb/s as the operator knows it (the link's contract: DSL, LTE,
    # satellite...); reported in the status for the cloud's planner. 0: not configured.
    uplink_kbps: float = 0.0
    # ``full``: every Nth keyframe with labeled objects goes up as their crops (answered by
    # the cloud, and training data for the cloud's continuous trainer); 0: results only.
    learning_sample: int = 10
    # The share of one core the gateway's teacher stages may use together once the cloud
    # has pushed a teacher (gateway.teacher_stage): a pool of N workers gives each 1/N of
    # it (gateway.pool.worker_config); 0: no teacher stage.
    teacher_budget: float = 0.2
    # OpenCV's HOG people detector as a second opinion that can veto the teacher's labels
    teacher_hog: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.mode, str):  # raises ModeError with a clear message
            object.__setattr__(self, "mode", Mode.parse(self.mode))
        wire.Topics(self.site)
        if self.site == wire.ANY_SITE:
            raise ValueError("a gateway serves one site: name it")
        self.keyframe_settings()
        if self.feature_codec not in ("zstd", "zlib", "none"):
            raise ValueError(f"feature codec {self.feature_codec!r}: zstd, zlib or none")
        if self.queue_depth < 1 or self.max_inflight < 1 or self.max_pending < 1:
            raise ValueError("queue_depth, max_inflight and max_pending must be >= 1")
        if not 0 <= self.teacher_budget <= 1:
            raise ValueError(f"teacher_budget {self.teacher_budget}: a share of one core, 0-1")
        if self.learning_sample < 0:
            raise ValueError(f"learning_sample {self.learning_sample}: 0 (off) or every N")
        if not self.uplink_kbps >= 0:
            raise ValueError(f"uplink_kbps {self.uplink_kbps}: must be >= 0")
        if self.outbox_policy not in POLICIES:
            raise ValueError(f"outbox_policy {self.outbox_policy!r}: {' or '.join(POLICIES)}")
        if self.outbox_max_items < 1 or not self.outbox_max_mb > 0:
            raise ValueError("outbox_max_items and outbox_max_mb must be positive")
        if not 0 < self.retry_after <= self.retry_max:
            raise ValueError("retry_after must be positive and at most retry_max")

    def keyframe_settings(self) -> KeyframeSettings:
        return KeyframeSettings(
            enabled=self.keyframes,
            motion_interval=self.keyframe_motion_interval,
            settle_frames=self.keyframe_settle_frames,
            max_interval=self.keyframe_max_interval,
            move_fraction=self.keyframe_move_fraction,
            threshold=self.keyframe_threshold,
        )

    def keyframes_under(self, plan: wire.Plan) -> KeyframeSettings:
        """The keyframe rule once the planner's ``plan`` applies: it sets whether keyframes
        are on, the threshold and the max interval, but keyframes the operator turned off
        (``keyframes = false``, ``--no-keyframes``) stay off."""
        return dataclasses.replace(
            self.keyframe_settings(),
            enabled=self.keyframes and bool(plan.keyframes),
            threshold=plan.keyframe_threshold,
            max_interval=max(1, plan.keyframe_max_interval),
        )

    def broker_config(self) -> BrokerConfig:
        """The edge broker, as this gateway's user, credentials from the secrets directory."""
        return BrokerConfig.for_user(
            self.gateway_id,
            host=self.broker_host,
            port=self.broker_port,
            secrets_dir=self.secrets,
            tls=self.tls,
        )

    @property
    def codec(self) -> wire.Codec:
        return wire.Codec[self.feature_codec.upper()]

    @property
    def client_id(self) -> str:
        """Stable per slot: a restarted worker takes over its session and its outbox."""
        return f"{self.gateway_id}-w{self.worker}"

    def state_dir(self) -> Path:
        """Beside the secrets, or the host's state directory."""
        return self.secrets.parent if self.secrets else default_state_dir()

    def coap_credentials(self) -> Any:
        """The cameras' OSCORE contexts for this gateway; None when CoAP is insecure."""
        if self.coap_insecure:
            return None
        from edgelearn.coap_security import gateway_credentials
        from edgelearn.secrets import Secrets, default_secrets_dir

        folder = self.state_dir() / "oscore" / f"gateway-{self.site}-{self.gateway_id}"
        return gateway_credentials(Secrets(self.secrets or default_secrets_dir()), folder)

    @property
    def outbox_path(self) -> Path | None:
        """This worker's outbox file; None keeps it in memory."""
        if self.outbox == OUTBOX_IN_MEMORY:
            return None
        # Default: beside the secrets, in the host's state directory.
        folder = Path(self.outbox) if self.outbox else self.state_dir() / "outbox"
        return folder / f"{self.site}-{self.client_id}.sqlite"
