"""The model grower: better models in the background, promoted through the judge.

Where it sits: beside the consumers and the continuous trainer in ``edgelearn cloud``. Once
the first generation serves (:func:`cloud.bootstrap.ensure_first_generation`), the grower
trains the plan's next generations, one after the other, in the cloud's training process
(niced: serving keeps its cores), each on more distinct items and on from the one before::

    generation n+1 (training process) --> its entries, in a candidate registry (a hidden
        folder beside the registry: nothing there serves)
    --> the judge (cloud.judge), per family (cnn, pca, autoencoder), candidate against the
        serving model on the same held-out items: promoted when significantly better, or
        when nothing of that family serves yet
    --> a promoted family's entries saved into the registry (the newest entry of a mode
        serves), their signed edge halves pushed to the gateways, the consumers resolve
        again between two batches

The gateways swap in a new edge half between two frames; a feature made by the old one
still names it (``model_version``) and is answered by the old cloud half, which stays in
the registry: no feature is dropped or answered twice. A generation the judge does not take
still goes on to the next (it starts from the candidate: more training, not less). A
restarted cloud goes on from the generation that serves; when the plan is done, the grower
stops.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud.background import BackgroundLoop, TrainingProcess
from cloud.bootstrap import (
    FAMILIES,
    JUDGED,
    GenerationJob,
    GenerationReport,
    TrainingPlan,
    family_of,
    judge_family,
    run_generation_job,
    save_family,
    serving_entries,
    serving_generation,
)
from cloud.judge import Verdict
from cloud.metrics import CloudMetrics
from cloud.registry import ModelEntry, Registry
from cloud.serving import RegistryModels
from edgelearn.datasets import DatasetSpec
from edgelearn.modes import RAW, Mode

log = logging.getLogger(__name__)

Announce = Callable[[str], None]
Push = Callable[[list[ModelEntry]], int]  # sign and publish entries to the gateways


@dataclass(frozen=True)
class Outcome:
    """What became of one family of one generation."""

    generation: int
    family: str
    promoted: bool
    verdict: Verdict | None  # None: nothing of the family served, nothing to compare
    versions: dict[str, str]  # mode -> the registry version now serving (promoted only)


class ModelGrower(BackgroundLoop):
    """Trains ``plan``'s generations after the first and promotes each family that the
    judge finds better."""

    name = "grower"

    def __init__(
        self,
        registry: Registry,
        models: RegistryModels,
        plan: TrainingPlan,
        dataset: DatasetSpec,
        process: TrainingProcess | None,
        metrics: CloudMetrics,
        *,
        announce: Announce = lambda line: None,
        push: Push | None = None,
    ) -> None:
        self.registry = registry
        self.models = models
        self.plan = plan
        self.dataset = dataset
        self.metrics = metrics
        self._announce = announce
        self._push = push
        self.outcomes: list[Outcome] = []
        super().__init__(process)
        self._start_from: bytes | None = None  # the last candidate CNN, kept or not
        self.show_serving()

    # --- lifecycle (BackgroundLoop: stopping the process abandons a generation) --------

    @property
    def done(self) -> bool:
        """Whether the plan's last generation has been tried (or the grower stopped)."""
        return self._finished.is_set()

    def _loop(self) -> None:
        number = max(serving_generation(self.registry, self.plan.split_ks, self.dataset).values())
        while not self._stop.is_set() and number < len(self.plan):
            if not self._wait_for_lease():
                return
            number = max(
                number,
                max(serving_generation(self.registry, self.plan.split_ks, self.dataset).values()),
            )  # another process may have grown some while this one waited
            if number >= len(self.plan):
                break
            number += 1
            try:
                self.grow(number)
            except Exception:  # a failed generation must not stop the cloud
                if self._stop.is_set():
                    return  # stopping: its process was stopped
                log.exception("generation %d failed", number)
            finally:
                self.metrics.generation_training.set(0)
        if not self._stop.is_set():
            served = serving_generation(self.registry, self.plan.split_ks, self.dataset)
            self._announce(
                f"models: the plan's {len(self.plan)} generations are done; serving "
                + ", ".join(f"{family} generation {n}" for family, n in served.items())
            )

    # --- one generation --------------------------------------------------------------

    def grow(self, number: int) -> list[Outcome]:
        """Train generation ``number``, judge it family by family, promote the winners."""
        generation = self.plan.generation(number)
        serving = serving_entries(self.registry, self.plan.split_ks, self.dataset)
        judged_against = {
            family_of(mode): entry.version for mode, entry in serving.items() if mode.kind in JUDGED
        }
        start_from = self._start_from or self._serving_cnn(serving)
        self._announce(
            f"models: training generation {number} in the background "
            f"({generation.items} items, {generation.epochs} epochs)"
        )
        self.metrics.generation_training.set(number)
        started = time.perf_counter()
        job = GenerationJob(
            self.registry.root, self.plan, number, self.dataset, start_from, judged_against
        )
        report = self._run_job(run_generation_job, job)
        steps = ", ".join(f"{name} {seconds:.0f}" for name, seconds in report.timings.items())
        self._announce(
            f"models: generation {number} trained in {report.seconds:.0f} s ({steps}; "
            f"{report.items} items, {report.renders} renders)"
        )
        try:
            self._start_from = report.cnn
            outcomes = [self._judge(report, family) for family in FAMILIES]
        finally:
            shutil.rmtree(report.registry, ignore_errors=True)
        self.metrics.training_runs.labels("generation").inc()
        self.metrics.training_seconds.labels("generation").observe(time.perf_counter() - started)
        self.outcomes += outcomes
        return outcomes

    def _serving_cnn(self, serving: dict[Mode, ModelEntry]) -> bytes | None:
        """The float CNN serving now (a ``full`` entry's cloud half), to go on from."""
        from cloud.registry import CLOUD

        full = next((e for m, e in serving.items() if m.kind == "full"), None)
        return None if full is None else full.read(CLOUD)

    def _judge(self, report: GenerationReport, family: str) -> Outcome:
        judged = report.judged.get(family)
        if judged is None:  # not trained this generation
            return Outcome(report.number, family, False, None, {})
        verdict = judge_family(report, family)
        promote = verdict is None or verdict.better
        outcome = "promoted" if promote else "kept"
        self.metrics.generations.labels(family, outcome).inc()
        evidence = (
            f"held-out {judged.candidate.mean():.1%} on {len(report.held_out)} items, "
            "nothing of it served before"
            if verdict is None
            else verdict.line()
        )
        versions: dict[str, str] = {}
        if promote:
            versions = self._promote(report, family)
        self._announce(
            f"models: generation {report.number} {family} ({report.items} items): {evidence}: "
            + ("promoted" if promote else "kept the serving one (no significant gain)")
        )
        return Outcome(report.number, family, promote, verdict, versions)

    def _promote(self, report: GenerationReport, family: str) -> dict[str, str]:
        """Save the family's candidate entries into the registry (newest: they serve),
        push their edge halves, make the consumers resolve again."""
        saved = save_family(self.registry, report, family)
        for entry in saved:
            self.models.prepare(entry)  # loaded and run before it serves: the swap is free
        self.models.refresh()
        edge = [entry for entry in saved if entry.mode.kind != RAW]
        if self._push is not None and edge:
            self._push(edge)
        self.show_serving()
        return {str(entry.mode): entry.version for entry in saved}

    def show_serving(self) -> None:
        """The serving generation and held-out accuracy of every mode, as metrics."""
        generations = serving_generation(self.registry, self.plan.split_ks, self.dataset)
        for family, number in generations.items():
            self.metrics.model_generation.labels(family).set(number)
        for mode, entry in serving_entries(self.registry, self.plan.split_ks, self.dataset).items():
            if entry.accuracy is not None:
                self.metrics.model_heldout_accuracy.labels(str(mode)).set(entry.accuracy)
            items = (entry.metadata.get("extra") or {}).get("held_out_items")
            if items:
                self.metrics.model_heldout_items.labels(str(mode)).set(items)
