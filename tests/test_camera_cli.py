"""``edgelearn camera`` as a user runs it: in a subprocess, errors as one line, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgelearn.ports import free_port
from tests.support.broker import BrokerUnderTest
from tests.support.cli import assert_one_line_error as assert_role_error
from tests.support.cli import run_role

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def camera_command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return run_role("camera", *args, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert_role_error(result, "camera", *words)


def test_missing_video_file(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.mp4"
    assert_one_line_error(camera_command("--source", f"video:{missing}"), "not found", str(missing))


def test_unreadable_video_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.avi"
    bad.write_bytes(b"RIFF this is not a video at all" * 100)
    assert_one_line_error(camera_command("--source", f"video:{bad}"), "cannot read video")


def test_empty_data_set_folder(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "readme.txt").write_text("no images")
    assert_one_line_error(camera_command("--source", f"folder:{tmp_path}"), "no readable images")


def test_unreachable_broker(broker: BrokerUnderTest) -> None:
    port = free_port()
    result = camera_command(
        "--broker", f"127.0.0.1:{port}", "--secrets", str(broker.secrets_dir), "--duration", "2"
    )
    assert_one_line_error(result, "cannot reach MQTT broker", str(port))


def test_unknown_camera_user(broker: BrokerUnderTest) -> None:
    result = camera_command(
        "--broker",
        f"{broker.host}:{broker.port}",
        "--secrets",
        str(broker.secrets_dir),
        "--camera-prefix",
        "webcam-",
    )
    assert_one_line_error(result, "webcam-1")


@pytest.mark.skipif(not VTEST.exists(), reason="opencv-doc sample videos not installed")
def test_video_cameras_publish_and_report(broker: BrokerUnderTest, site: str) -> None:
    result = camera_command(
        "--source",
        f"video:{VTEST}",
        "--cameras",
        "2",
        "--fast",
        "--frames",
        "10",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--secrets",
        str(broker.secrets_dir),
        "--site",
        site,
        "--metrics-port",
        "0",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["cam-1", "cam-2"]
    assert all(" 10 frames" in line for line in lines), lines


def test_python_dash_m_cameras_has_help_on_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cameras", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for option in (
        "--source",
        "--cameras",
        "--fps",
        "--transport",
        "--broker",
        "--site",
        "--camera-prefix",
        "--quality",
        "--bitrate",
        "--speed",
        "--fast",
        "--duration",
        "--seed",
        "--metrics-port",
        "--secrets",
        "--tls",
        "--coap-uri",
        "--qos",
    ):
        assert option in result.stdout


def test_a_bug_ends_with_its_traceback_not_as_a_user_error(broker: BrokerUnderTest) -> None:
    """A ValueError from our own code (here a renderer that breaks on construction) is a
    bug: exit status 1 and the traceback, not the one-line exit 2 of a user's mistake."""
    arguments = [
        "camera",
        "--source",
        "synthetic",
        "--frames",
        "1",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--secrets",
        str(broker.secrets_dir),
    ]
    caller = (
        "import sys\n"
        "import cameras.sources\n"
        "def broken(self, *args, **kwargs):\n"
        "    raise ValueError('a bug in the synthetic scene')\n"
        "cameras.sources.SyntheticScene.__init__ = broken\n"
        "from stack.cli import main\n"
        f"sys.exit(main({arguments!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", caller], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result
    assert "Traceback" in result.stderr
    assert "ValueError: a bug in the synthetic scene" in result.stderr


def test_an_option_out_of_range_is_a_user_error() -> None:
    assert_one_line_error(camera_command("--cameras", "0"), "cameras must be >= 1")
    assert_one_line_error(
        camera_command("--transport", "coap", "--coap-uri", "http://gw/frames"), "CoAP endpoint"
    )


def test_settings_from_a_config_file_reach_the_cameras_and_a_flag_overrides_them(
    broker: BrokerUnderTest, site: str, tmp_path: Path
) -> None:
    """``edgelearn up`` hands each camera process a file, not an argv: what the file says
    is what runs (two cameras, five frames each, on the test's broker and site), a flag
    given beside it wins, and a misspelt key is refused by its name."""
    config = tmp_path / "cameras.toml"
    config.write_text(
        "[camera]\n"
        'source = "synthetic"\n'
        "cameras = 2\n"
        "fast = true\n"
        "frames = 5\n"
        f'broker = "{broker.host}:{broker.port}"\n'
        f'site = "{site}"\n'
        f'secrets = "{broker.secrets_dir}"\n'
    )
    result = camera_command("--config", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["cam-1", "cam-2"]
    assert all(" 5 frames" in line for line in lines), lines
    overridden = camera_command("--config", str(config), "--frames", "3", "--cameras", "1")
    assert overridden.returncode == 0, overridden.stderr
    assert [line.split(":")[0] for line in overridden.stdout.strip().splitlines()] == ["cam-1"]
    assert " 3 frames" in overridden.stdout
    config.write_text(config.read_text() + "frame_rate = 30\n")
    assert_one_line_error(camera_command("--config", str(config)), "frame_rate")
    config.write_text("[camera]\nquality = 101\n")
    assert_one_line_error(camera_command("--config", str(config)), "quality")
