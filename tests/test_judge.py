"""The continuous trainer's judge and its weights: paired per item, with error bars.

Models are drawn as the cameras show them: an item seen in one to eight frames, each model
right or wrong on an item with that item's own difficulty (most objects of an item share
one outcome). Over many trials, a copy and an equal model are promoted at most at the
stated level, a better one nearly always; a rollback of an equal promotion is as rare."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cloud.feature_store import LabeledRows
from cloud.judge import SIGNIFICANCE, judge_by_camera, paired
from cloud.trainer import item_weights, never_trained

TRIALS = 400
ITEMS = 120


def _world(
    rng: np.random.Generator,
) -> tuple[list[tuple[str, int]], list[str], npt.NDArray[np.float64]]:
    """Objects (item keys), their cameras, and each object's item difficulty."""
    keys: list[tuple[str, int]] = []
    cameras: list[str] = []
    difficulty: list[float] = []
    for item in range(ITEMS):
        p = float(rng.beta(4, 1.5))  # items 73% right on average, some hard
        for _ in range(int(rng.integers(1, 9))):
            keys.append(("item", item))
            cameras.append(f"cam-{item % 3}")
            difficulty.append(p)
    return keys, cameras, np.asarray(difficulty)


def _answers(
    rng: np.random.Generator, keys: list[tuple[str, int]], p: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """A model's outcomes: per item right or wrong, and one object in ten flips."""
    per_item = {key: rng.random() < p[i] for i, key in enumerate(keys)}
    outcome = np.asarray([per_item[key] for key in keys])
    flips = rng.random(len(keys)) < 0.1
    return outcome ^ flips


def _improved(
    rng: np.random.Generator, keys: list[tuple[str, int]], serving: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """A candidate tuned from the serving model: the same answers, except that it now gets
    40% of the items the serving model got wrong and loses 5% of those it got right (about
    +7 points)."""
    fix = {key: rng.random() < 0.4 for key in set(keys)}
    lose = {key: rng.random() < 0.05 for key in set(keys)}
    return np.asarray(
        [
            (not right and fix[key]) or (right and not lose[key])
            for key, right in zip(keys, serving, strict=True)
        ]
    )


def test_the_judge_refuses_copies_and_equal_models_and_promotes_a_better_one() -> None:
    rng = np.random.default_rng(11)
    copies = equal = better = 0
    for _ in range(TRIALS):
        keys, cameras, p = _world(rng)
        serving = _answers(rng, keys, p)
        copies += judge_by_camera(serving.copy(), serving, keys, cameras).promote
        equal += judge_by_camera(_answers(rng, keys, p), serving, keys, cameras).promote
        better += judge_by_camera(_improved(rng, keys, serving), serving, keys, cameras).promote
    assert copies == 0  # no item differs: no evidence
    # equal models: at most the level (2 standard errors of 400 trials of slack)
    assert equal / TRIALS <= SIGNIFICANCE + 2 * np.sqrt(SIGNIFICANCE * 0.95 / TRIALS)
    assert better / TRIALS >= 0.8


def test_a_candidate_significantly_worse_on_one_camera_is_refused() -> None:
    rng = np.random.default_rng(3)
    keys, cameras, p = _world(rng)
    serving = _answers(rng, keys, p)
    # right on every object of cam-0 and cam-2; on cam-1, wrong on every fourth item
    candidate = np.asarray(
        [
            camera != "cam-1" or (right and item % 4 != 0)
            for (_, item), camera, right in zip(keys, cameras, serving, strict=True)
        ]
    )
    judgement = judge_by_camera(candidate, serving, keys, cameras)
    assert judgement.overall.better
    assert judgement.worse_on == ("cam-1",)
    assert not judgement.promote and judgement.reason == "camera_worse"


def test_rolling_back_equal_models_is_as_rare_as_the_level() -> None:
    """The shadow's decision: the replaced model significantly better on the same objects.
    For a promotion no better and no worse, that happens at most at the level."""
    rng = np.random.default_rng(5)
    rollbacks = 0
    for _ in range(TRIALS):
        keys, _, p = _world(rng)
        promoted, replaced = _answers(rng, keys, p), _answers(rng, keys, p)
        rollbacks += paired(replaced, promoted, keys).better
    assert rollbacks / TRIALS <= SIGNIFICANCE + 2 * np.sqrt(SIGNIFICANCE * 0.95 / TRIALS)


def _rows(items: list[int], ids: list[int]) -> LabeledRows:
    n = len(items)
    return LabeledRows(
        np.asarray(ids, np.int64),
        ("cam",) * n,
        np.arange(n, dtype=np.int64),
        np.zeros(n, np.int64),
        np.zeros((n, 2), np.int8),
        np.asarray(items, np.int64),
        np.full(n, -1, np.int64),  # box heights: not known
    )


def test_an_item_weighs_one_however_many_crops_of_it_arrived() -> None:
    rows = _rows([1] * 8 + [2, 3], list(range(10, 20)))
    weights = item_weights(rows, recent_from=0, replay_weight=0.3)
    assert np.isclose(weights.mean(), 1.0)
    assert np.isclose(weights[:8].sum(), weights[8]) and np.isclose(weights[8], weights[9])


def test_replayed_rows_weigh_at_most_their_share() -> None:
    # 6 new items in 24 crops, 10 older ones replayed one crop each
    items = list(range(100, 110)) + [i for i in range(6) for _ in range(4)]
    rows = _rows(items, list(range(1, 11)) + list(range(50, 74)))
    weights = item_weights(rows, recent_from=50, replay_weight=0.3)
    assert np.isclose(weights[:10].sum() / weights.sum(), 0.3)


def test_items_a_model_trained_on_are_no_evidence() -> None:
    rows = _rows([4, 5, 6, 5], [1, 2, 3, 4])
    assert never_trained(rows, np.arange(4), {5}).tolist() == [0, 2]
