"""The judge: does a candidate model beat the serving one, on evidence with error bars?

Where it sits: every decision that changes what serves goes through :func:`paired`: the
model grower's promotions of a new generation (:mod:`cloud.grower`), and the continuous
trainer's. Both models answer the *same* held-out objects, none of whose items the
candidate trained on; the comparison is paired and counted per distinct item (an item seen
in eight frames is one piece of evidence, not eight):

* per item, each model's share of its objects answered right, and the difference; the
  items where the two differ are the evidence (where both are right or both wrong, they
  agree);
* a one-sided paired randomisation test on those differences, each item weighing one: were
  the two models equally good, each item's difference would be as likely to have the other
  sign, so the test flips the signs at random (``resamples`` times) and counts how often
  the sum comes out at least as large as it did. The items won and lost are reported
  beside it (:func:`sign_test` is their exact sign test, McNemar's when every item has one
  object: the rule before, kept to compare). The sign test counts an item where one crop
  of eight changed as one where all eight did; tuned candidates mostly change some crops
  of an item: on bench drift's arrivals a candidate +4.6 points better on 102 held-out
  items had p = 0.29 by signs and 0.03 by this test (+7.5 on 59 items: 0.19 and 0.03);
* the gain in per-object accuracy, with a 95% interval from resampling items (paired: an
  item's objects are drawn together, for both models).

The candidate is promoted when the test says so at ``level`` (5% by default) and the gain is
positive. Simulated with 120 items seen in 1-8 frames each (``tests/test_judge.py``, which
checks the rates again on 400 trials): a copy of the serving model is never promoted (no
item differs); an equally good model trained apart in 4.6% of 3,000 trials (the sign test:
4.1%). Of 400 trials, a model 11 points better trained apart: 77% (sign test 51%); one
tuned from the serving model that fixes 40% of its wrong items and breaks 5% of its right
ones, whole items at a time (about +7 points): 90% (sign test 98%).

:func:`judge_by_camera` is the continuous trainer's: the same test overall, and the other
way on each camera (a camera where the serving model is significantly better refuses).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgelearn.evidence import LEVEL, RESAMPLES, per_item

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Verdict:
    """One paired comparison of a candidate against the serving model."""

    better: bool
    reason: str  # better | not_significant | no_evidence
    candidate: float  # per-object accuracy on the held-out objects
    serving: float
    gain: float  # candidate - serving
    low: float  # LEVEL interval of the gain, resampled by item
    high: float
    p_value: float  # one-sided paired randomisation test over the items' differences
    wins: int  # items the candidate answers better than the serving model
    losses: int  # ... worse
    items: int
    objects: int

    def line(self) -> str:
        return (
            f"{self.candidate:.1%} vs {self.serving:.1%} on {self.items} items: "
            f"{self.gain * 100:+.1f} points ({self.low * 100:+.1f} to {self.high * 100:+.1f}), "
            f"{self.wins} items better, {self.losses} worse, p={self.p_value:.3g}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "better": self.better,
            "reason": self.reason,
            "candidate": round(self.candidate, 4),
            "serving": round(self.serving, 4),
            "gain": round(self.gain, 4),
            "low": round(self.low, 4),
            "high": round(self.high, 4),
            "p_value": round(self.p_value, 6),
            "wins": self.wins,
            "losses": self.losses,
            "items": self.items,
            "objects": self.objects,
        }


def sign_test(wins: int, losses: int) -> float:
    """P(at least ``wins`` of ``wins + losses`` fair coin flips): the one-sided p-value of
    ``wins`` under the hypothesis that the candidate is no better."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    # Sum of binomial(trials, k) / 2^trials for k >= wins, in logs (trials may be thousands).
    logs = [
        math.lgamma(trials + 1) - math.lgamma(k + 1) - math.lgamma(trials - k + 1)
        for k in range(wins, trials + 1)
    ]
    top = max(logs)
    return min(1.0, math.exp(top - trials * math.log(2)) * sum(math.exp(v - top) for v in logs))


def randomisation_test(
    differences: npt.NDArray[np.float64], rng: np.random.Generator, resamples: int = RESAMPLES
) -> float:
    """One-sided p-value of ``sum(differences) > 0`` under sign symmetry (the two models
    exchangeable on every item): the share of random sign flips whose sum is at least the
    observed one, the observed one counted among them."""
    nonzero = differences[differences != 0]
    if nonzero.size == 0:
        return 1.0
    observed = float(nonzero.sum())
    signs = rng.choice(np.asarray([-1.0, 1.0]), size=(resamples, nonzero.size))
    flipped = signs @ nonzero
    return float((1 + np.count_nonzero(flipped >= observed - 1e-9)) / (resamples + 1))


def paired(
    candidate_correct: Sequence[bool] | npt.NDArray[np.bool_],
    serving_correct: Sequence[bool] | npt.NDArray[np.bool_],
    items: Sequence[Hashable],
    *,
    level: float = SIGNIFICANCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Verdict:
    """Compare the two models' outcomes on the same objects, object ``i`` showing item
    ``items[i]``; see the module docstring."""
    candidate_hits, totals = per_item(candidate_correct, items)
    serving_hits, _ = per_item(serving_correct, items)
    count, objects = len(totals), int(totals.sum())
    if count == 0:
        return Verdict(False, "no_evidence", 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0, 0, 0, 0)
    difference = candidate_hits / totals - serving_hits / totals
    wins, losses = int((difference > 0).sum()), int((difference < 0).sum())
    candidate = float(candidate_hits.sum()) / objects
    serving = float(serving_hits.sum()) / objects
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, count, size=(resamples, count))
    gains = (candidate_hits[drawn].sum(axis=1) - serving_hits[drawn].sum(axis=1)) / totals[
        drawn
    ].sum(axis=1)
    tail = (1 - LEVEL) / 2
    low, high = (float(v) for v in np.quantile(gains, [tail, 1 - tail]))
    p_value = randomisation_test(difference, rng, resamples)
    better = p_value < level and candidate > serving
    return Verdict(
        better,
        "better" if better else "not_significant",
        candidate,
        serving,
        candidate - serving,
        low,
        high,
        p_value,
        wins,
        losses,
        count,
        objects,
    )


@dataclass(frozen=True)
class Judgement:
    """The continuous trainer's decision on a candidate: significantly better overall
    (:func:`paired`), and significantly worse on no camera (the same test, the other way,
    on each camera's own items)."""

    overall: Verdict
    worse_on: tuple[str, ...]  # cameras where the serving model is significantly better
    cameras: dict[str, Verdict]  # per camera judged: serving (as candidate) vs candidate

    @property
    def promote(self) -> bool:
        return self.overall.better and not self.worse_on

    @property
    def reason(self) -> str:
        if not self.overall.better:
            return self.overall.reason
        return "camera_worse" if self.worse_on else "better"

    def line(self) -> str:
        worse = f"; significantly worse on {', '.join(self.worse_on)}" if self.worse_on else ""
        return self.overall.line() + worse

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.overall.as_dict(),
            "worse_on": list(self.worse_on),
            "cameras": {camera: v.as_dict() for camera, v in sorted(self.cameras.items())},
        }


def judge_by_camera(
    candidate_correct: npt.NDArray[np.bool_],
    serving_correct: npt.NDArray[np.bool_],
    items: Sequence[Hashable],
    cameras: Sequence[str],
    *,
    level: float = SIGNIFICANCE,
    min_items: int = 10,
) -> Judgement:
    """:func:`paired` overall, and on each camera with at least ``min_items`` items: a
    camera where the *serving* model wins significantly refuses the candidate."""
    overall = paired(candidate_correct, serving_correct, items, level=level)
    verdicts: dict[str, Verdict] = {}
    worse: list[str] = []
    names = np.asarray(cameras)
    keys = list(items)
    for camera in sorted(set(cameras)):
        mine = np.flatnonzero(names == camera)
        mine_items = [keys[i] for i in mine]
        if len(set(mine_items)) < min_items:
            continue
        reverse = paired(serving_correct[mine], candidate_correct[mine], mine_items, level=level)
        verdicts[camera] = reverse
        if reverse.better:
            worse.append(camera)
    return Judgement(overall, tuple(worse), verdicts)
