"""An edge box's install: the ``gateway`` extra alone, in a fresh virtualenv, without
TensorFlow, running a gateway against a real broker on a deployed int8 model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cameras.replay import scene_frames
from cloud.registry import Registry
from edgelearn import signing, wire
from tests.support.broker import BrokerUnderTest
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

Probe = Callable[..., MqttProbe]
REPOSITORY = Path(__file__).resolve().parent.parent
GATEWAY_INSTALL_LIMIT = 300 * 1000**2  # bytes: what an edge box can spare
CLOUD_ONLY = ("tensorflow", "keras", "sklearn", "scipy", "matplotlib")
_NOT_SOURCE = (".git", ".venv", "run", "out", "build", "*.egg-info", "__pycache__", ".*_cache")


@dataclass(frozen=True)
class EdgeBox:
    venv: Path
    install_bytes: int  # what the install added to the fresh virtualenv


@pytest.fixture(scope="module")
def edge_box(tmp_path_factory: pytest.TempPathFactory) -> EdgeBox:
    """``pip install '<this checkout>[gateway]'`` into a new virtualenv (from a copy of the
    source, so the build leaves nothing in the checkout)."""
    root = tmp_path_factory.mktemp("edge-box")
    source = root / "source"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    empty = _size(venv)  # the interpreter's links, pip and setuptools
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[gateway]"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    return EdgeBox(venv, _size(venv) - empty)


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


@pytest.mark.e2e
def test_a_gateway_only_install_has_no_cloud_packages_and_fits_an_edge_box(
    edge_box: EdgeBox,
) -> None:
    gateway_venv = edge_box.venv
    python = str(gateway_venv / "bin" / "python")
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    for module in CLOUD_ONLY:
        found = subprocess.run([python, "-c", probe, module], timeout=60).returncode == 0
        assert not found, f"{module} is installed with the gateway extra"
    size = edge_box.install_bytes
    assert size <= GATEWAY_INSTALL_LIMIT, f"the gateway-only install takes {size / 1e6:.0f} MB"
    # Every command stays listed; one that needs another extra says which.
    edgelearn = str(gateway_venv / "bin" / "edgelearn")
    listing = subprocess.run([edgelearn, "--help"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "cloud" in listing.stdout, listing.stderr
    refused = subprocess.run([edgelearn, "cloud"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "pip install 'edgelearn[cloud]'" in refused.stderr, refused.stderr


@pytest.fixture
def edge_gateway(
    edge_box: EdgeBox,
    broker: BrokerUnderTest,
    trained_registry: Path,
    site: str,
    tmp_path: Path,
) -> Iterator[tuple[subprocess.Popen[str], wire.Model]]:
    """``edgelearn gateway`` of the gateway-only install, in split:2 on the int8 lower part
    the cloud deployed (read from a signed deployment file)."""
    registry = Registry(trained_registry)
    model = registry.deployment(
        "cnn-split", None, signing.load_private_key(broker.secrets.signing_key)
    )
    model_file = tmp_path / "split-2.model"
    model_file.write_bytes(wire.encode(model))
    gateway = subprocess.Popen(
        [
            str(edge_box.venv / "bin" / "edgelearn"),
            "gateway",
            "--id",
            "gw-2",
            "--broker",
            f"{broker.host}:{broker.port}",
            "--secrets",
            str(broker.secrets_dir),
            "--site",
            site,
            "--mode",
            str(model.mode),
            "--model",
            str(model_file),
            "--no-keyframes",
            "--queue-depth",  # the test's twelve frames arrive at once: none is dropped
            "16",
            "--metrics-port",
            "0",
            "--status-interval",
            "0.5",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield gateway, model
    finally:
        gateway.terminate()
        output, _ = gateway.communicate(timeout=60)
        assert gateway.returncode == 0, output


@pytest.mark.e2e
def test_a_gateway_only_install_runs_a_gateway_on_a_deployed_int8_model(
    edge_gateway: tuple[subprocess.Popen[str], wire.Model], mqtt_probe: Probe, site: str
) -> None:
    gateway, model = edge_gateway
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(topics.status("gw-2"))
    cloud.subscribe(topics.all_features())

    def running() -> bool:
        statuses = [wire.decode_as(p, wire.Status) for p in cloud.payloads(topics.status("gw-2"))]
        return any(status.mode == str(model.mode) for status in statuses) or (
            gateway.poll() is not None
        )

    wait_for(running, 120, f"the edge gateway to run {model.mode}")
    assert gateway.poll() is None, gateway.communicate()[0]
    camera = mqtt_probe("cam-1")
    # One item slides in from the right edge, then stands in the middle. The model takes
    # object crops: the first frame is the background model's first look, and an object
    # cut by the frame's edge is not sent; from the sixth frame on, each frame sends it.
    frames = scene_frames("cam-1", 12, seed=3)
    for frame in frames:
        assert not camera.publish_and_wait(topics.frame("cam-1"), wire.encode(frame)).is_failure
    feature_topic = topics.feature("gw-2", "cam-1")

    def features() -> dict[int, wire.Feature]:
        """Per seq, the first copy: no cloud acknowledges them here, so the gateway's outbox
        sends each again after a while, as it should."""
        found: dict[int, wire.Feature] = {}
        for payload in cloud.payloads(feature_topic):
            feature = wire.decode_as(payload, wire.Feature)
            found.setdefault(feature.seq, feature)
        return found

    wait_for(lambda: set(features()) >= {f.seq for f in frames[5:]}, 60, "every whole view")
    promised = json.loads(model.metadata_json)["output"]  # the int8 lower part's output
    by_seq = {frame.seq: frame for frame in frames}
    for feature in features().values():
        frame = by_seq[feature.seq]
        assert list(feature.shape) == [1, *promised["shape"]]  # one object
        assert feature.labels == (frame.label,) and len(feature.tracks) == 1
        assert (feature.scale, feature.zero_point) == (
            pytest.approx(promised["scale"]),
            promised["zero_point"],
        )
        assert feature.seq == frame.seq
        assert feature.mode == str(model.mode)
        assert feature.model_version == model.version
        assert feature.dtype is wire.DType.INT8
        assert feature.raw_bytes == len(frame.payload) > 2 * len(feature.payload)
