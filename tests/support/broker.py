"""The real mosquitto a test runs against: one started from the project's templates and
``broker init`` code, or an edge broker bridged into a cloud one (either can be killed and
started again)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgelearn.config import BrokerConfig
from edgelearn.secrets import Secrets
from stack import broker as broker_module


@dataclass
class BrokerUnderTest:
    running: broker_module.RunningBroker

    @property
    def host(self) -> str:
        return self.running.host

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def tls_port(self) -> int:
        return self.running.tls_port

    @property
    def secrets_dir(self) -> Path:
        return self.running.secrets.directory

    @property
    def secrets(self) -> Secrets:
        return self.running.secrets

    def config_for(self, user: str, *, tls: bool = False) -> BrokerConfig:
        return BrokerConfig.for_user(
            user,
            host="localhost" if tls else self.host,
            port=self.tls_port if tls else self.port,
            secrets_dir=self.secrets_dir,
            tls=tls,
        )


@dataclass
class BridgedSite:
    """An edge broker bridged into a cloud broker: two real mosquittos on the session's
    secrets, from the project's templates. Either can be killed (SIGKILL, as a crash) and
    started again on the same ports with the same persistence directory."""

    root: Path
    cloud: BrokerUnderTest
    edge: BrokerUnderTest

    def _settings(self, role: str) -> broker_module.BrokerSettings:
        running = (self.cloud if role == "cloud" else self.edge).running
        bridge = broker_module.Bridge(self.cloud.host, self.cloud.port) if role == "edge" else None
        return broker_module.BrokerSettings(
            role=role,
            port=running.port,
            tls_port=running.tls_port,
            run_dir=running.run_dir,
            bridge=bridge,
        )

    def kill(self, role: str) -> None:
        process = (self.cloud if role == "cloud" else self.edge).running.process
        process.kill()
        process.wait(10)

    def start(self, role: str) -> None:
        target = self.cloud if role == "cloud" else self.edge
        target.running = broker_module.start_broker(target.running.secrets, self._settings(role))

    def stop(self) -> None:
        self.edge.running.stop()
        self.cloud.running.stop()
