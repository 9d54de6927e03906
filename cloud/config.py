"""A cloud process's settings (one frozen dataclass; see :func:`edgelearn.config.load`).

Where it sits: ``edgelearn cloud`` (:mod:`cloud.cli`) builds one :class:`CloudConfig` from,
in increasing precedence, these defaults, the ``[cloud]`` table of ``--config FILE``,
``EDGELEARN_<FIELD>`` variables and its flags, then the :class:`~cloud.service.CloudSettings`
the service runs on (:meth:`CloudConfig.service_settings`); ``edgelearn up`` writes that
file for its cloud process instead of spelling its flags. The fields are the flags' names.

The cloud's two optional parts have tables of their own, because their flags already read
as one: the planner (``--plan``, ``--plan-hold``, ``--plan-latency-bound``) is
``[cloud.plan]`` with ``enabled``, ``hold``, ``latency_bound``; the continuous trainer
(``--no-learn``, ``--learn-every``) is ``[cloud.learn]`` with ``enabled``, ``every``. A
flag is then its table and key (``--plan-hold`` is ``plan.hold``), and so is its variable
(``EDGELEARN_PLAN_HOLD``). Everything else stays in ``[cloud]``: the broker, the
consumers and the model generations (budget, split points, data set, train, grow, push)
are settings of the whole process, read by more than one of its parts.

::

    [cloud]
    broker = "127.0.0.1:1884"
    site = "+"
    push_sites = ["site-1", "site-2"]
    consumers = 2
    budget = "quick"

    [cloud.plan]
    enabled = true
    hold = 10.0

    [cloud.learn]
    every = 600
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from cloud.bootstrap import BUDGETS, TrainingPlan
from cloud.database import is_url
from cloud.models.teacher import TeacherSpec
from cloud.planner import PlannerSettings
from cloud.service import CloudSettings
from cloud.trainer import TrainerSettings
from edgelearn import wire
from edgelearn.config import BrokerConfig, parse_address
from edgelearn.datasets import FASHION_MNIST, parse_dataset
from edgelearn.secrets import Secrets, default_secrets_dir, default_state_dir, registry_dir

NO_FEATURES = "none"  # feature_store: record arrivals only, keep no features


@dataclass(frozen=True)
class PlanConfig:
    """The planner (:mod:`cloud.planner`): every gateway's mode from its status."""

    enabled: bool = False
    hold: float = PlannerSettings.hold_seconds  # least seconds between two plan changes
    latency_bound: float = PlannerSettings.latency_bound  # Q, seconds (paper 003's)

    def __post_init__(self) -> None:
        if not self.hold >= 0:
            raise ValueError(f"hold {self.hold}: seconds, >= 0")
        if not self.latency_bound > 0:
            raise ValueError(f"latency_bound {self.latency_bound}: seconds, > 0")

    def settings(self) -> PlannerSettings | None:
        """The planner's settings; None when it does not run."""
        if not self.enabled:
            return None
        return PlannerSettings(hold_seconds=self.hold, latency_bound=self.latency_bound)


@dataclass(frozen=True)
class LearnConfig:
    """The continuous trainer (:mod:`cloud.trainer`): it fine-tunes the cloud halves on
    what arrives and promotes what beats the serving one."""

    enabled: bool = True
    # Labeled objects of a mode that start a run; None: the budget's (TrainerSettings:
    # 1500, 300 with the quick budget).
    every: int | None = None

    def __post_init__(self) -> None:
        if self.every is not None and self.every < 1:
            raise ValueError(f"every {self.every}: a positive count of labeled objects")

    def settings(self, budget: str) -> TrainerSettings | None:
        """The trainer's settings under ``budget``; None when it does not run."""
        if not self.enabled:
            return None
        settings = TrainerSettings.quick() if budget != "default" else TrainerSettings()
        if self.every is not None:
            settings = dataclasses.replace(settings, every=self.every)
        return settings


@dataclass(frozen=True)
class CloudConfig:
    # Where it connects
    broker: str = "127.0.0.1:1883"  # the cloud broker when bridged
    site: str = CloudSettings.site  # "+": every site bridged into the broker
    tls: bool = False
    secrets: Path | None = None  # None: $EDGELEARN_SECRETS or the state directory's
    registry: Path | None = None  # None: $EDGELEARN_REGISTRY or STATE/registry
    # Its consumers
    consumers: int = CloudSettings.consumers  # in one shared-subscription group
    group: str = CloudSettings.group
    # This process's name in its group: its MQTT client ids derive from it, so a restarted
    # process resumes its sessions (two processes of one group: two ids).
    cloud_id: str = CloudSettings.cloud_id
    metrics_port: int = CloudSettings.metrics_port  # 0: a free port
    # Where arrivals are recorded (the de-duplication ledger and the labeled features to
    # train on): "" STATE/features; "none" keeps no features (the ledger stays there).
    feature_store: str = ""
    # Its models
    push_sites: tuple[str, ...] = ()  # the sites whose gateways get them; (): ``site``
    budget: str = "default"  # the generations to train (cloud.bootstrap.TrainingPlan)
    split_ks: tuple[int, ...] = CloudSettings.split_ks  # the split points trained and pushed
    dataset: str = FASHION_MNIST  # or folder:PATH, one sub-folder of images per class
    train: bool = True  # False: never train, serve what the registry has
    grow: bool = CloudSettings.grow  # the later generations, in the background
    push: bool = CloudSettings.push  # publish deployments to the gateways
    teacher: bool = CloudSettings.teacher  # ... and a detector, as the gateways' teacher
    events: bool = CloudSettings.events  # JSON object events beside the results
    # A user's own teacher (cloud.models.teacher.TeacherSpec): a .tflite with the outputs of
    # LiteRT's detection postprocess, or an Object Detection API SSD graph (.pb); its class
    # names, one a line; the ones it labels (empty: every named class). "": the packaged
    # person detector.
    teacher_model: str = ""
    teacher_labels: str = ""
    teacher_classes: tuple[str, ...] = ()
    duration: float | None = None  # seconds; None: until interrupted
    # Its parts
    plan: PlanConfig = field(default_factory=PlanConfig)
    learn: LearnConfig = field(default_factory=LearnConfig)

    def __post_init__(self) -> None:
        parse_address(self.broker)
        wire.Topics(self.site)  # a site that cannot be a topic level is refused here
        for site in self.push_sites:
            wire.Topics(site)
            if site == wire.ANY_SITE:
                raise ValueError("push_sites are named sites, not +")
        if self.push and self.site == wire.ANY_SITE and not self.push_sites:
            raise ValueError(
                "a cloud serving every site (+) pushes its models to named sites: "
                "give them (push_sites, --push-site) or do not push"
            )
        if self.consumers < 1:
            raise ValueError(f"consumers {self.consumers}: at least 1")
        wire.shared(self.group, "")  # the group names a shared subscription
        if not self.cloud_id:
            raise ValueError("cloud_id must not be empty")
        if not 0 <= self.metrics_port < 65536:
            raise ValueError(f"metrics_port {self.metrics_port} is out of range")
        if self.budget not in BUDGETS:
            raise ValueError(f"budget {self.budget!r}: {' or '.join(BUDGETS)}")
        if not self.split_ks or min(self.split_ks) < 1:
            raise ValueError(f"split_ks {list(self.split_ks)}: split points, integers >= 1")
        try:
            parse_dataset(self.dataset)  # a folder is read when the service is built
        except ValueError as exc:
            raise ValueError(f"dataset: {exc}") from exc
        self.teacher_spec()  # a model without labels, or of a kind the gateways cannot run
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration {self.duration}: seconds, > 0")

    def teacher_spec(self) -> TeacherSpec:
        """The teacher to push (its files are read when the service is built)."""
        return TeacherSpec(
            model=Path(self.teacher_model).expanduser() if self.teacher_model else None,
            labels=Path(self.teacher_labels).expanduser() if self.teacher_labels else None,
            classes=tuple(self.teacher_classes),
        )

    @property
    def keeps_features(self) -> bool:
        return self.feature_store != NO_FEATURES

    def feature_store_path(self) -> Path | str:
        """Where arrivals are recorded: a postgresql:// URL, the configured folder, or
        STATE/features."""
        if is_url(self.feature_store):
            return self.feature_store
        if self.keeps_features and self.feature_store:
            return Path(self.feature_store).expanduser()
        return default_state_dir() / "features"

    def broker_config(self) -> BrokerConfig:
        """The broker, as the ``cloud`` user (its password from the secrets directory)."""
        host, port = parse_address(self.broker)
        return BrokerConfig.for_user(
            "cloud", host=host, port=port, secrets_dir=self.secrets, tls=self.tls
        )

    def service_settings(self) -> CloudSettings:
        """The service's settings. Reads what the files hold (the cloud user's password, a
        data set folder), so a missing one fails here, before any broker is touched."""
        dataset = parse_dataset(self.dataset)
        if dataset.path is not None:
            dataset.load()  # an unusable folder: DatasetError, with what is wrong
        teacher = self.teacher_spec()
        teacher.task()  # unreadable labels, a class they do not name: ExportError
        return CloudSettings(
            broker=self.broker_config(),
            registry=registry_dir(self.registry),
            secrets=Secrets(self.secrets or default_secrets_dir()),
            site=self.site,
            push_sites=self.push_sites or (() if self.site == wire.ANY_SITE else (self.site,)),
            group=self.group,
            cloud_id=self.cloud_id,
            consumers=self.consumers,
            split_ks=self.split_ks,
            training=TrainingPlan.named(self.budget) if self.train else None,
            grow=self.grow,
            push=self.push,
            teacher=self.teacher,
            teacher_spec=teacher,
            events=self.events,
            feature_store=self.feature_store_path(),
            keep_features=self.keeps_features,
            metrics_port=self.metrics_port,
            plan=self.plan.settings(),
            trainer=self.learn.settings(self.budget),
            dataset=dataset,
        )
