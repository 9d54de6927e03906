"""The class mix each camera shows, estimated from what arrives, and answers re-weighted to it.

Where it sits: the consumers answer every feature with a cloud half trained on a balanced
mix of classes; a camera at a shoe shop sees mostly shoes. :class:`ClassMix` keeps, per
(mode, camera), the model's own class probabilities for the camera's recent objects (one
vote per object: a track seen in eight frames is one, its latest answer), and every few
seconds re-estimates the camera's prior by expectation-maximisation (Saerens, Latinne and
Decaestecker, "Adjusting the outputs of a classifier to new a priori probabilities", Neural
Computation 2002). Answers are then re-weighted by Bayes' rule::

    p'(y | x)  proportional to  p(y | x) * prior_camera(y) / prior_training(y)

It needs no labels (a real camera has none) and no training: a fit is a few numpy passes
over at most ``window`` rows of ``classes`` numbers. The estimate always starts again from
the model's raw answers, so a class that comes back is seen again; a pseudo-count of the
training prior keeps a camera with few objects near it, and a floor keeps every class
answerable. The training prior is taken as uniform: the base data sets (Fashion-MNIST, a
folder split per class) are balanced or near it.

Every consumer of a cloud shares one instance (a lock guards it); the continuous trainer
turns it on (``TrainerSettings.class_prior``). ``full`` is answered at the edge and gets
none. numpy only.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Probabilities = npt.NDArray[np.float32]


@dataclass(frozen=True)
class PriorSettings:
    window: int = 300  # a camera's most recent objects the estimate rests on
    refit_seconds: float = 5.0  # a camera's prior is estimated again this often at most
    min_objects: int = 30  # fewer: the camera keeps the training prior
    pseudo_count: float = 20.0  # objects' worth of the training prior mixed into a fit
    floor: float = 0.1  # no class's weight under this share of its training prior
    iterations: int = 50


def estimate_prior(
    probabilities: Probabilities, pseudo_count: float = 0.0, iterations: int = 50
) -> npt.NDArray[np.float64]:
    """The class prior under which ``probabilities`` (answers of a model trained on a
    uniform prior, one row per object) are most likely: EM on the mixture weights."""
    count, classes = probabilities.shape
    base = np.full(classes, 1.0 / classes)
    prior = base.copy()
    rows = np.asarray(probabilities, np.float64)
    for _ in range(iterations):
        weighted = rows * (prior / base)
        weighted /= np.maximum(weighted.sum(axis=1, keepdims=True), 1e-12)
        updated: npt.NDArray[np.float64] = (weighted.sum(axis=0) + pseudo_count * base) / (
            count + pseudo_count
        )
        if np.abs(updated - prior).max() < 1e-5:
            return updated
        prior = updated
    return prior


def reweight(probabilities: Probabilities, weights: npt.NDArray[np.float64]) -> Probabilities:
    """Bayes' rule with new class weights (prior / training prior), rows renormalised."""
    adjusted = np.asarray(probabilities, np.float64) * weights
    adjusted /= np.maximum(adjusted.sum(axis=1, keepdims=True), 1e-12)
    return adjusted.astype(np.float32)


@dataclass
class _Camera:
    answers: collections.OrderedDict[Hashable, npt.NDArray[np.float32]] = field(
        default_factory=collections.OrderedDict
    )
    weights: npt.NDArray[np.float64] | None = None  # None: the training prior (no change)
    fitted_at: float = float("-inf")


class ClassMix:
    """Per (mode, camera): the class prior estimated from its recent objects, and the
    re-weighting of answers to it."""

    def __init__(
        self,
        settings: PriorSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_fit: Callable[[str, str, npt.NDArray[np.float64]], None] | None = None,
    ) -> None:
        self.settings = settings or PriorSettings()
        self._clock = clock
        self._on_fit = on_fit  # (mode, camera, prior): e.g. a metric
        self._cameras: dict[tuple[str, str], _Camera] = {}
        self._lock = threading.Lock()

    def answer(
        self,
        mode: str,
        cameras: Sequence[str],
        objects: Sequence[Hashable],
        probabilities: Probabilities,
    ) -> Probabilities:
        """Note each row's raw answer (row ``i`` is object ``objects[i]`` of camera
        ``cameras[i]``) and return the rows re-weighted to their camera's prior."""
        settings = self.settings
        now = self._clock()
        with self._lock:
            for camera, key, row in zip(cameras, objects, probabilities, strict=True):
                state = self._cameras.setdefault((mode, camera), _Camera())
                state.answers[key] = row
                state.answers.move_to_end(key)
            for camera in set(cameras):
                state = self._cameras[(mode, camera)]
                while len(state.answers) > settings.window:
                    state.answers.popitem(last=False)
                if now - state.fitted_at >= settings.refit_seconds:
                    self._fit(mode, camera, state, now)
        return self.reweighted(mode, cameras, probabilities)

    def _fit(self, mode: str, camera: str, state: _Camera, now: float) -> None:
        settings = self.settings
        state.fitted_at = now
        if len(state.answers) < settings.min_objects:
            return
        rows = np.stack(list(state.answers.values()))
        prior = estimate_prior(rows, settings.pseudo_count, settings.iterations)
        base = 1.0 / rows.shape[1]
        state.weights = np.maximum(prior / base, settings.floor)
        if self._on_fit is not None:
            self._on_fit(mode, camera, prior)

    def reweighted(
        self, mode: str, cameras: Sequence[str], probabilities: Probabilities
    ) -> Probabilities:
        """Rows re-weighted to their camera's prior, noting nothing (a shadow's answers)."""
        adjusted = np.array(probabilities, np.float32, copy=True)
        with self._lock:
            for camera in set(cameras):
                state = self._cameras.get((mode, camera))
                if state is not None and state.weights is not None:
                    mine = [i for i, c in enumerate(cameras) if c == camera]
                    adjusted[mine] = reweight(probabilities[mine], state.weights)
        return adjusted

    def prior(self, mode: str, camera: str) -> npt.NDArray[np.float64] | None:
        """The camera's estimated prior (None: still the training prior)."""
        with self._lock:
            state = self._cameras.get((mode, camera))
            if state is None or state.weights is None:
                return None
            weights = state.weights.copy()
        prior: npt.NDArray[np.float64] = weights / weights.sum()
        return prior
