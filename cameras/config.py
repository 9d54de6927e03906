"""A camera process's settings (one frozen dataclass; see :func:`edgelearn.config.load`).

Where it sits: ``edgelearn camera`` (:mod:`cameras.cli`) builds one :class:`CameraConfig`
from, in increasing precedence, these defaults, the ``[camera]`` table of ``--config FILE``,
``EDGELEARN_<FIELD>`` variables and its flags; ``edgelearn up`` writes that file for each of
its camera processes instead of spelling their flags. The fields are the flags' names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgelearn.config import BrokerConfig, parse_address
from edgelearn.wire import DEFAULT_SITE, Topics

SCENES = ("objects", "single")
TRANSPORTS = ("mqtt", "coap")


@dataclass(frozen=True)
class CameraConfig:
    # What the cameras see
    source: str = "synthetic"  # video:PATH, fashion-mnist[:split], folder:PATH, synthetic
    cameras: int = 1
    camera_prefix: str = "cam-"  # ids are PREFIX1..PREFIXN, each its own broker user
    first_camera: int = 1
    seed: int = 0  # camera i's scene uses seed + i
    dwell: int = 30  # labeled sources: frames an item stays in view
    scene: str = "objects"  # labeled sources: "objects" (0-3 at once) or "single"
    start: float = 0.0  # video: start offset in seconds
    # Timing and encoding
    fps: float = 15.0
    speed: float = 1.0
    fast: bool = False  # no pacing: wait for the transport instead of skipping frames
    duration: float | None = None  # seconds; None: until interrupted
    frames: int | None = None  # per camera; None: no limit
    quality: int = 80  # fixed JPEG quality, unless ``bitrate`` is set
    bitrate: float | None = None  # kb/s per camera; the JPEG quality adapts to it
    max_in_flight: int = 2
    # Where frames go
    transport: str = "mqtt"
    broker: str = "127.0.0.1:1883"
    site: str = DEFAULT_SITE
    qos: int = 0
    secrets: Path | None = None
    tls: bool = False
    coap_uri: str = "coap+tcp://127.0.0.1:5683/frames"
    coap_insecure: bool = False
    metrics_port: int | None = None  # None: no metrics; 0: a free port

    def __post_init__(self) -> None:
        if self.cameras < 1:
            raise ValueError(f"cameras must be >= 1, got {self.cameras}")
        if self.first_camera < 0:
            raise ValueError(f"first_camera must be >= 0, got {self.first_camera}")
        for name in ("fps", "speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("duration", "bitrate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.frames is not None and self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality is 1-100, got {self.quality}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.scene not in SCENES:
            raise ValueError(f"scene {self.scene!r}: {' or '.join(SCENES)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport {self.transport!r}: {' or '.join(TRANSPORTS)}")
        if self.qos not in (0, 1):
            raise ValueError(f"qos {self.qos}: 0 or 1")
        Topics(self.site)  # a site name that cannot be a topic level is refused here
        parse_address(self.broker)

    @property
    def camera_ids(self) -> list[str]:
        first = self.first_camera
        return [f"{self.camera_prefix}{n}" for n in range(first, first + self.cameras)]

    def broker_config(self, camera_id: str) -> BrokerConfig:
        """The broker, as ``camera_id`` (its password from the secrets directory)."""
        host, port = parse_address(self.broker)
        return BrokerConfig.for_user(
            camera_id, host=host, port=port, secrets_dir=self.secrets, tls=self.tls
        )
