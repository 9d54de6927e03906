"""``edgelearn gateway`` with a pool of workers, started as a caller from Python starts it:
the workers run on the broker, gateway id and site the caller gave, whatever ``sys.argv``
of the calling process holds."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable

from edgelearn import wire
from tests.conftest import BrokerUnderTest, MqttProbe, wait_for

Probe = Callable[..., MqttProbe]


def _statuses(observer: MqttProbe) -> dict[str, int]:
    """The newest ``online`` flag per status topic."""
    newest: dict[str, int] = {}
    with observer.lock:
        for message in observer.messages:
            newest[message.topic] = wire.decode_as(message.payload, wire.Status).online
    return newest


def test_a_pool_started_from_python_runs_on_the_callers_broker_and_id(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str
) -> None:
    topics = wire.Topics(site)
    observer = mqtt_probe("cloud")
    observer.subscribe(topics.all_status())
    arguments = [
        "gateway",
        "--workers",
        "2",
        "--id",
        "gw-3",
        "--broker",
        f"{broker.host}:{broker.port}",
        "--secrets",
        str(broker.secrets_dir),
        "--site",
        site,
        "--mode",
        "raw",
        "--metrics-port",
        "0",
        "--status-interval",
        "0.5",
    ]
    # sys.argv of this child is ["-c"]: nothing of the command line is in it.
    caller = f"import sys; from stack.cli import main; sys.exit(main({arguments!r}))"
    pool = subprocess.Popen(
        [sys.executable, "-c", caller],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = {topics.status("gw-3", 0), topics.status("gw-3", 1)}
    try:
        wait_for(
            lambda: (
                {t for t, online in _statuses(observer).items() if online} == workers
                or pool.poll() is not None
            ),
            90,
            "both workers online as gw-3 on the test broker",
        )
        assert pool.poll() is None, pool.communicate()[0]
    finally:
        pool.send_signal(signal.SIGTERM)
        output, _ = pool.communicate(timeout=60)
    assert pool.returncode == 0, output
    # Each worker stopped cleanly and said so (a clean disconnect sends no last will).
    wait_for(
        lambda: {t for t, online in _statuses(observer).items() if not online} == workers,
        20,
        "both workers offline",
    )
