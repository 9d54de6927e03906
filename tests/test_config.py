"""The one config loader (:mod:`edgelearn.config`): a service with parts reads each part
from a sub-table of its own, by the same rules as the whole: defaults < file < environment
< overrides, unknown keys refused by name, and ``dump`` writes what ``load`` reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edgelearn import config as config_module
from edgelearn.config import ConfigError
from edgelearn.modes import Mode
from gateway.config import GatewayConfig

SPLIT_2 = Mode.split(2)


@dataclass(frozen=True)
class Planning:
    enabled: bool = False
    hold: float = 30.0
    sites: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hold < 0:
            raise ValueError(f"hold {self.hold}: must be >= 0")


@dataclass(frozen=True)
class Service:
    name: str = "one"
    mode: Mode = SPLIT_2  # has parse(): one setting, not a part
    store: Path | None = None
    plan: Planning = field(default_factory=Planning)


def _load(tmp_path: Path, text: str) -> Service:
    path = tmp_path / "service.toml"
    path.write_text(text)
    return config_module.load(Service, path=path, section="service", environ={})


def test_a_part_is_read_from_its_own_sub_table_and_keeps_its_defaults(tmp_path: Path) -> None:
    loaded = _load(tmp_path, '[service]\nname = "two"\n\n[service.plan]\nenabled = true\n')
    assert loaded == Service(name="two", plan=Planning(enabled=True))
    inline = _load(tmp_path, '[service]\nplan = { hold = 5, sites = ["a", "b"] }\n')
    assert inline.plan == Planning(hold=5.0, sites=("a", "b"))
    assert _load(tmp_path, "[service]\n") == Service()


def test_a_parts_settings_come_from_the_environment_and_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "service.toml"
    path.write_text("[service.plan]\nhold = 5\nenabled = true\n")
    environ = {"EDGELEARN_PLAN_HOLD": "7", "EDGELEARN_NAME": "env"}
    from_env = config_module.load(Service, path=path, section="service", environ=environ)
    assert from_env.plan == Planning(enabled=True, hold=7.0) and from_env.name == "env"
    flags = {"plan.hold": 9, "plan.enabled": None, "name": None}  # None: a flag not given
    overridden = config_module.load(
        Service, path=path, section="service", environ=environ, overrides=flags
    )
    assert overridden.plan == Planning(enabled=True, hold=9.0) and overridden.name == "env"
    assert config_module.setting_names(Service) == {
        "name",
        "mode",
        "store",
        "plan.enabled",
        "plan.hold",
        "plan.sites",
    }
    with pytest.raises(ConfigError, match=r"unknown setting 'plan\.hodl'"):
        config_module.load(Service, environ={}, overrides={"plan.hodl": 3})
    with pytest.raises(ConfigError, match="unknown setting 'plan'"):
        config_module.load(Service, environ={}, overrides={"plan": True})


def test_an_unknown_key_in_a_sub_table_is_refused_by_its_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[service\.plan\]: unknown keys \['hodl'\]"):
        _load(tmp_path, "[service.plan]\nhodl = 5\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['planner'\]"):
        _load(tmp_path, "[service.planner]\nhold = 5\n")
    with pytest.raises(ConfigError, match=r"plan must be a table, \[service\.plan\]"):
        _load(tmp_path, "[service]\nplan = true\n")
    with pytest.raises(ConfigError, match=r"service\.toml:plan\.hold: cannot use 'soon'"):
        _load(tmp_path, '[service.plan]\nhold = "soon"\n')


def test_a_part_that_refuses_its_settings_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^plan: hold -1\.0: must be >= 0$"):
        _load(tmp_path, "[service.plan]\nhold = -1\n")


def test_dump_writes_the_parts_as_sub_tables_that_load_reads_back(tmp_path: Path) -> None:
    settings = Service(
        name="x", mode=Mode.parse("pca"), store=tmp_path, plan=Planning(True, 2.5, ("a",))
    )
    text = config_module.dump(settings, "service")
    assert text.index("[service.plan]") > text.index("store =")  # a table's keys come first
    assert _load(tmp_path, text) == settings
    gateway = GatewayConfig(mode=Mode.parse("raw"), queue_depth=8)
    path = tmp_path / "gateway.toml"
    path.write_text(config_module.dump(gateway, "gateway"))
    assert config_module.load(GatewayConfig, path=path, section="gateway", environ={}) == gateway


@dataclass(frozen=True)
class Clashing:
    plan_hold: float = 1.0
    plan: Planning = field(default_factory=Planning)


def test_a_setting_that_would_share_a_parts_variable_is_a_bug() -> None:
    with pytest.raises(TypeError, match="plan_hold"):
        config_module.load(Clashing, environ={})


def test_the_teachers_budget_is_the_gateways_and_its_workers_share_it() -> None:
    from gateway.pool import worker_config

    config = GatewayConfig(mode=Mode.parse("split:8"), teacher_budget=0.3)
    shares = [worker_config(config, worker, 3).teacher_budget for worker in range(3)]
    assert shares == pytest.approx([0.1, 0.1, 0.1]) and sum(shares) == pytest.approx(0.3)
    assert worker_config(config, 0).teacher_budget == 0.3  # one worker: all of it
    with pytest.raises(ValueError, match="teacher_budget"):
        GatewayConfig(mode=Mode.parse("raw"), teacher_budget=1.5)
