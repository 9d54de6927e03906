"""``edgelearn cloud``'s settings: one :class:`~cloud.config.CloudConfig` from a TOML file
(as ``edgelearn up`` hands it), the environment and the flags; what the file says is what
runs, a flag given beside it wins, and a key no setting has is refused by its name."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud import cli
from cloud.config import CloudConfig, LearnConfig, PlanConfig
from cloud.models.errors import ExportError
from edgelearn import config as config_module
from edgelearn import wire
from edgelearn.metrics import fetch
from edgelearn.ports import free_port
from tests.support.broker import BrokerUnderTest
from tests.support.cli import assert_one_line_error as assert_role_error
from tests.support.cli import run_role
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for


def _environment() -> dict[str, str]:
    """This process's environment without EDGELEARN_* variables, which would override the
    file (they come after it)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("EDGELEARN_")}


def cloud_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_role("cloud", *args, timeout=timeout, env=_environment())


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert_role_error(result, "cloud", *words)


def _parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(argv)


def test_a_cloud_config_written_by_dump_loads_back_the_same(tmp_path: Path) -> None:
    config = CloudConfig(
        broker="127.0.0.1:1884",
        site=wire.ANY_SITE,
        secrets=tmp_path / "secrets",
        consumers=3,
        push_sites=("site-1", "site-2"),
        budget="quick",
        split_ks=(2, 4),
        feature_store="none",
        metrics_port=9400,
        train=False,
        duration=12.5,
        plan=PlanConfig(enabled=True, hold=4.0, latency_bound=0.5),
        learn=LearnConfig(enabled=False, every=600),
    )
    path = tmp_path / "cloud.toml"
    path.write_text(config_module.dump(config, "cloud"))
    assert config_module.load(CloudConfig, path=path, section="cloud", environ={}) == config
    default = tmp_path / "default.toml"
    default.write_text(config_module.dump(CloudConfig(), "cloud"))
    assert config_module.load(CloudConfig, path=default, section="cloud", environ={}) == (
        CloudConfig()
    )


def test_flags_override_the_file_only_when_given_and_the_parts_have_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in [key for key in os.environ if key.startswith("EDGELEARN_")]:
        monkeypatch.delenv(variable)
    path = tmp_path / "cloud.toml"
    path.write_text(
        "[cloud]\n"
        'site = "lab"\nconsumers = 3\nsplit_ks = [2, 4]\npush = false\n'
        "[cloud.plan]\nenabled = true\nhold = 5\n"
        "[cloud.learn]\nevery = 600\n"
    )
    from_file = cli.settings(_parsed("--config", str(path)))
    assert from_file == CloudConfig(
        site="lab",
        consumers=3,
        split_ks=(2, 4),
        push=False,
        plan=PlanConfig(enabled=True, hold=5.0),
        learn=LearnConfig(every=600),
    )
    flags = _parsed(
        "--config", str(path), "--consumers", "2", "--split-ks", "1,3", "--plan-hold", "7",
        "--no-learn", "--push-site", "yard", "--id", "c-2",
    )  # fmt: skip
    overridden = cli.settings(flags)
    assert (overridden.consumers, overridden.split_ks, overridden.cloud_id) == (2, (1, 3), "c-2")
    assert overridden.plan == PlanConfig(enabled=True, hold=7.0)
    assert overridden.learn == LearnConfig(enabled=False, every=600)
    assert overridden.push_sites == ("yard",) and overridden.site == "lab"
    monkeypatch.setenv("EDGELEARN_PLAN_HOLD", "9")
    monkeypatch.setenv("EDGELEARN_CONSUMERS", "4")
    from_environment = cli.settings(_parsed("--config", str(path), "--consumers", "5"))
    assert from_environment.plan.hold == 9.0 and from_environment.consumers == 5
    # No file, no flags: the flags' old defaults.
    monkeypatch.delenv("EDGELEARN_PLAN_HOLD")
    monkeypatch.delenv("EDGELEARN_CONSUMERS")
    assert cli.settings(_parsed()) == CloudConfig()


def test_the_service_is_built_from_the_config(broker: BrokerUnderTest, tmp_path: Path) -> None:
    """What ``edgelearn cloud`` runs on: the cloud user's credentials, the parts' settings,
    the push sites and the feature store as the flags always meant them."""
    config = CloudConfig(
        broker=f"{broker.host}:{broker.port}",
        secrets=broker.secrets_dir,
        registry=tmp_path / "registry",
        site="lab",
        budget="quick",
        feature_store="none",
        plan=PlanConfig(enabled=True, hold=3.0),
    )
    settings = config.service_settings()
    assert settings.broker == broker.config_for("cloud")
    assert settings.registry == tmp_path / "registry" and settings.push_sites == ("lab",)
    assert settings.training is not None and len(settings.training) == 2  # quick: two
    assert settings.plan is not None and settings.plan.hold_seconds == 3.0
    assert settings.trainer is not None and settings.trainer.every == 300  # quick's
    assert not settings.keep_features and settings.feature_store is not None
    assert settings.teacher_spec.task() == wire.TEACHER_CLASSES  # the packaged detector's
    labels = tmp_path / "labelmap.txt"
    labels.write_text("0 person\n1 bicycle\n2 car\n")
    own = cli.settings(
        _parsed(
            "--secrets", str(broker.secrets_dir), "--teacher-model", str(tmp_path / "d.tflite"),
            "--teacher-labels", str(labels), "--teacher-classes", "car,person",
        )
    )  # fmt: skip
    assert own.service_settings().teacher_spec.task() == ("car", "person", "other moving object")
    unnamed = dataclasses.replace(own, teacher_classes=("truck",))
    with pytest.raises(ExportError, match=r"\['truck'\] are not in"):
        unnamed.service_settings()  # read when the service is built, before it starts
    learning_off = CloudConfig(secrets=broker.secrets_dir, learn=LearnConfig(enabled=False))
    assert learning_off.service_settings().trainer is None
    assert learning_off.service_settings().plan is None


def test_a_key_no_setting_has_is_refused_by_its_name_in_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text("[cloud]\nconsumer = 2\n")
    assert_one_line_error(cloud_command("--config", str(path)), "unknown keys ['consumer']")
    path.write_text("[cloud.plan]\nenabled = true\nhodl = 5\n")
    assert_one_line_error(cloud_command("--config", str(path)), "[cloud.plan]", "hodl")


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ("[cloud]\nsplit_ks = [0]\n", "split_ks [0]"),
        ('[cloud]\nsite = "+"\n', "push_sites"),  # pushing to every site names none
        ('[cloud]\nbudget = "huge"\n', "budget 'huge'"),
        ("[cloud.learn]\nevery = 0\n", "learn: every 0"),
        ("[cloud.plan]\nlatency_bound = 0\n", "plan: latency_bound 0.0"),
        ('[cloud]\ndataset = "imagenet"\n', "dataset: unknown data set 'imagenet'"),
        ('[cloud]\nteacher_model = "yolo.onnx"\n', "ONNX is not taken"),
        ('[cloud]\nteacher_model = "d.tflite"\n', "needs its class names"),
        ('[cloud]\nteacher_classes = ["car"]\n', "belong to a teacher model file"),
    ],
    ids=[
        "split_ks",
        "site",
        "budget",
        "learn.every",
        "plan.latency_bound",
        "dataset",
        "teacher_model",
        "teacher_labels",
        "teacher_classes",
    ],
)
def test_a_setting_that_cannot_be_is_refused_before_anything_starts(
    tmp_path: Path, table: str, words: str
) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(table)
    with pytest.raises(config_module.ConfigError, match=re.escape(words)):
        cli.settings(_parsed("--config", str(path)))


def test_settings_from_a_config_file_reach_the_running_cloud(
    broker: BrokerUnderTest, site: str, tmp_path: Path
) -> None:
    """A cloud started with only ``--config`` runs on the file's broker, secrets and
    registry, with the file's id, consumers and metrics port (it serves what its registry
    has, here nothing: no training, no push, no trainer)."""
    metrics_port = free_port(count=2)
    path = tmp_path / "cloud.toml"
    path.write_text(
        "[cloud]\n"
        f'broker = "{broker.host}:{broker.port}"\n'
        f'secrets = "{broker.secrets_dir}"\n'
        f'registry = "{tmp_path / "registry"}"\n'
        f'feature_store = "{tmp_path / "features"}"\n'
        f'site = "{site}"\ngroup = "{site}"\ncloud_id = "cfg"\n'
        f"consumers = 2\nmetrics_port = {metrics_port}\n"
        "train = false\npush = false\n"
        "[cloud.learn]\nenabled = false\n"
    )
    cloud = subprocess.Popen(
        [sys.executable, "-m", "stack", "cloud", "--config", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_environment(),
    )
    lines: list[str] = []
    try:
        assert cloud.stdout is not None
        for line in cloud.stdout:  # until it serves, or its output ends (it exited)
            lines.append(line)
            if line.startswith("serving"):
                break
        output = "".join(lines)
        assert cloud.poll() is None, output
        assert "cfg-c0" in output and "cfg-c1" in output, output  # its id, two consumers
        assert f"127.0.0.1:{metrics_port}/metrics" in output, output
        assert fetch(f"http://127.0.0.1:{metrics_port}/metrics") is not None
    finally:
        cloud.send_signal(signal.SIGTERM)
        rest, _ = cloud.communicate(timeout=60)
    assert cloud.returncode == 0, "".join(lines) + rest
    assert (tmp_path / "features").is_dir()  # its arrivals ledger, where the file said


@pytest.mark.training  # converts the packaged detector with TensorFlow
def test_model_push_teacher_publishes_a_signed_teacher_the_gateways_can_verify(
    broker: BrokerUnderTest, mqtt_probe: Callable[..., MqttProbe], site: str, tmp_path: Path
) -> None:
    from edgelearn import signing
    from edgelearn.secrets import Secrets
    from edgelearn.teacher import TEACHER_KIND, load_teacher

    gateway = mqtt_probe("gw-1")
    topic = f"{wire.Topics(site).base}/models/all/teacher"
    address = f"{broker.host}:{broker.port}"
    secrets = str(broker.secrets_dir)
    result = run_role(
        "model", "push-teacher", "--broker", address, "--site", site, "--secrets", secrets,
        timeout=180, env=_environment(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pushed teacher teacher-person t" in result.stdout
    gateway.subscribe(topic, qos=1)  # retained: it is there for a gateway that comes later
    wait_for(lambda: len(gateway.payloads()) == 1, 30, "the retained teacher")
    model = wire.decode_as(gateway.payloads()[0], wire.Model)
    assert model.kind == TEACHER_KIND
    trusted = signing.load_public_key(Secrets(broker.secrets_dir).signing_public_key)
    assert load_teacher(model, trusted).artifact.source.startswith("pedestrian-detection")
    not_a_graph = tmp_path / "graph.pb"
    not_a_graph.write_bytes(b"not a graph")
    refused = run_role(
        "model", "push-teacher", "--broker", address, "--site", site, "--secrets", secrets,
        "--graph", str(not_a_graph), timeout=180, env=_environment(),
    )  # fmt: skip
    assert_role_error(refused, "model", "not a TensorFlow graph")
    # A user's own detector, with its label map: the gateways get it signed, as it is.
    from tests.support.detectors import tflite_person_detector

    detector, labels = tflite_person_detector(tmp_path)
    result = run_role(
        "model", "push-teacher", "--broker", address, "--site", site, "--secrets", secrets,
        "--model", str(detector), "--labels", str(labels), "--classes", "person",
        timeout=180, env=_environment(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "pushed teacher teacher-detector t" in result.stdout
    assert result.stdout.rstrip().endswith("labeling person")
    wait_for(lambda: len(gateway.payloads()) == 2, 30, "the user's teacher")
    model = wire.decode_as(gateway.payloads()[1], wire.Model)
    loaded = load_teacher(model, trusted)
    assert loaded.classes == ("person",) and loaded.name == "teacher-detector"
    assert loaded.artifact.source.startswith("detector.tflite sha256")
    assert json.loads(model.metadata_json)["classes"] == ["person", "other moving object"]
