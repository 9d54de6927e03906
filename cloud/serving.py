"""Serving: which model answers a feature, what is deployed to the gateways, and how the
answers score.

Where it sits::

    Registry (serving.json per mode, per camera) --> RegistryModels --> CloudConsumer
        (each batch: the cloud half for its extractor, model version and camera)
    Registry --> deployable() --> the signed models pushed to the gateways (CloudService,
        the planner's candidates)
    CloudConsumer --> Scoreboard (per-frame accuracy) --> ContinuousTrainer (roll back a
        promotion whose live accuracy falls)

The consumers (:mod:`cloud.consumer`) ask a :class:`ClassifierSource` for the cloud half
that answers a feature; the trainers (:mod:`cloud.trainer`, :mod:`cloud.grower`) change what
the registry serves and tell the :class:`RegistryModels` to resolve again. Nothing here
speaks MQTT.

Which model answers a feature is the :class:`ClassifierSource`'s business: in production
:class:`RegistryModels`, the cloud halves of every mode served from the model registry. A
feature names the deployment that made it (``model_version``); registry versions are unique,
so that version alone finds the cloud half that belongs to it. ``raw`` features carry the
camera's JPEG and no model version: they are answered by the newest cloud-only CNN (kind
``cloud-classifier``). Models load once, and every half this project trains answers in numpy
(:class:`cloud.models.numpy_half.NumpyHalf`, read from the registry's ``.keras`` archive
without TensorFlow): a restarted cloud serves without importing TensorFlow at all. A half
with a layer numpy does not run (a user's own) is loaded into Keras and called through a
TensorFlow graph, never ``Model.predict``, whose per-call overhead (tens of ms) would dominate
small batches.

**Scoring** (:class:`Scoreboard`) counts per-frame accuracy the way a camera user sees it.
Every frame a camera captured gets an answer: a keyframe gets its own result; the frames the
keyframe filter held back take the result of their camera's previous keyframe. A
``wire.Feature`` (or an edge ``wire.Result``) carries ``held_back`` (how many frames since
the previous keyframe were held back) and ``held_mismatched`` (how many of those had a
different ground-truth label from the previous keyframe: a change the filter missed). So when
keyframe *n* arrives, the frames held back after keyframe *n-1* are scored with *n-1*'s
prediction: ``held_back - held_mismatched`` of them share its label and are right exactly
when it was; the mismatched ones are counted wrong (their own labels did not travel, and the
previous answer was about another item: a conservative count).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from cloud.models.errors import ModelNotFound, RegistryError
from cloud.models.numpy_half import NumpyHalf
from cloud.registry import ModelEntry, Registry
from edgelearn import roi
from edgelearn.artifacts import KIND_CLOUD_CLASSIFIER
from edgelearn.modes import AUTOENCODER, FULL, PCA, RAW, Mode

log = logging.getLogger(__name__)


class Classifier(Protocol):
    """The cloud's half of a mode: float features (or uint8 frames for ``raw``) ->
    class probabilities ``(N, classes)``."""

    takes_frames: bool
    input_size: int
    channels: int
    objects: bool  # trained on object crops; else on the whole frame's centre square
    version: str  # of the model: live accuracy is kept per version ("" : not tracked)

    def predict(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.float32]: ...


class ClassifierSource(Protocol):
    def classifier_for(
        self, extractor: str, model_version: str, camera: str = ""
    ) -> Classifier | None:
        """The cloud half answering ``camera``'s features of this extractor and version."""
        ...

    def class_names(self, model_version: str) -> tuple[str, ...]:
        """The names of a model's classes (results count predictions by name); () unknown."""
        ...


# --- the cloud halves, from the registry ----------------------------------------------


GRAPH_FROM_BATCH = 8
"""Batches of this many objects or more go to a convolutional half's TensorFlow graph, once
it is built; smaller ones to numpy. Measured on the split:2 upper part here (``edgelearn
bench cloud --quick``, ``inference_ms``): numpy 0.8 ms against 2.6 ms for one object, even at
16, 9.3 against 6.7 ms at 32; and a consumer under a flood, which batches about 30, answered
540 features a second in numpy against 939 through the graph."""
_CONVOLUTIONS = frozenset({"Conv2D", "DepthwiseConv2D"})


@dataclass
class CloudHalf:
    """A registry entry's cloud half. Answered by ``numpy`` (:class:`NumpyHalf`) when all
    its layers are of the kinds that runs, which every half trained here is: it needs no
    TensorFlow, so a restarted cloud serves within a second or two. A half with
    convolutions also gets a TensorFlow graph, built in the background once serving has
    started (:meth:`RegistryModels.build_graphs`), for big batches (:data:`GRAPH_FROM_BATCH`),
    where TensorFlow's threaded kernels are faster. A half numpy does not run is answered by
    its graph alone."""

    takes_frames: bool
    input_size: int
    channels: int
    version: str
    objects: bool = False
    numpy: NumpyHalf | None = None
    keras: Any = None
    archive: bytes = b""  # the .keras archive: the graph is built from it
    _call: Any = None  # the TensorFlow graph, once built

    @property
    def wants_graph(self) -> bool:
        """Whether a TensorFlow graph would serve some batches (it has convolutions, or
        numpy does not run it) and is not built yet."""
        if self._call is not None:
            return False
        return self.numpy is None or bool(self.numpy.layer_kinds & _CONVOLUTIONS)

    def build_graph(self) -> None:
        """Load the Keras model and trace its graph (imports TensorFlow), then run it once:
        from then on it answers the big batches."""
        import tensorflow as tf

        from cloud.registry import keras_from_bytes

        model = self.keras if self.keras is not None else keras_from_bytes(self.archive)
        # A graph traced once for any batch size: 10-25 ms per batch where eager Keras
        # took 26-44 ms (measured on the split:2 upper part).
        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        call = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        call(np.zeros((GRAPH_FROM_BATCH, *model.input_shape[1:]), np.float32))
        self.keras, self._call = model, call  # the graph is used once it is whole

    def predict(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        call = self._call
        if self.numpy is not None and (call is None or len(batch) < GRAPH_FROM_BATCH):
            return self.numpy.predict(batch)
        if call is None:
            self.build_graph()
            call = self._call
        return np.asarray(call(np.asarray(batch, np.float32)), np.float32)


class RegistryModels:
    """A :class:`ClassifierSource` backed by a :class:`Registry`.

    A feature's ``model_version`` names the edge half that made it; the cloud half that
    answers is the registry's serving entry of that edge artifact (a promotion by the
    continuous trainer changes it without the gateways changing anything), else the
    version's own. :meth:`refresh` makes the next batch resolve again: a swap between two
    batches, no feature waits or is dropped.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._loaded: dict[str, CloudHalf] = {}  # by the cloud half's version
        self._resolved: dict[tuple[str, str, str], CloudHalf] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._graphs = False  # build_graphs was called: halves get their graphs
        self._pending_graphs: list[CloudHalf] = []  # their turn, in a background thread
        self._building = False
        self._built: Callable[[], None] = lambda: None

    def _entry(self, extractor: str, version: str, camera: str) -> ModelEntry | None:
        try:
            if extractor == RAW:
                return self.registry.serving(Mode(RAW))
            entry = self.registry.by_version(version)
            serving = self.registry.serving_for(entry.mode, camera)  # "": the global one
            return serving if serving.sha256 == entry.sha256 else entry
        except RegistryError:
            return None

    def load(self, entry: ModelEntry) -> CloudHalf:
        """The cloud half of ``entry``, loaded once (the trainer loads a candidate here
        before it is promoted, so the swap costs nothing)."""
        with self._lock:
            if entry.version in self._loaded:
                return self._loaded[entry.version]
        size, _, channels = entry.input_shape[:3]
        archive = self.registry.cloud_archive(entry)
        try:
            numpy = NumpyHalf.from_archive(archive)
        except ValueError as exc:
            raise RegistryError(f"{entry.name} {entry.version}: {exc}") from exc
        classifier = CloudHalf(
            takes_frames=entry.kind == KIND_CLOUD_CLASSIFIER,
            input_size=int(size),
            channels=int(channels),
            version=entry.version,
            objects=entry.model_input == roi.CROP_RULE,
            numpy=numpy,
            keras=self.registry.load_cloud_model(entry) if numpy is None else None,
            archive=archive,
        )
        with self._lock:
            loaded = self._loaded.setdefault(entry.version, classifier)
            if loaded is classifier and self._graphs and loaded.wants_graph:
                self._want_graph(loaded)  # a half loaded after serving began: its graph too
            return loaded

    def classifier_for(
        self, extractor: str, model_version: str, camera: str = ""
    ) -> CloudHalf | None:
        key = (extractor, "" if extractor == RAW else model_version, camera)
        with self._lock:
            if key in self._resolved:
                return self._resolved[key]
        entry = self._entry(extractor, model_version, camera)
        if entry is None:
            return None  # not cached: the model may be trained or pushed later
        classifier = self.load(entry)
        with self._lock:
            if self._resolved.get(key) is not classifier:
                log.info("serving %s %s with %s %s", extractor, model_version, entry.name,
                         entry.version)  # fmt: skip
            self._resolved[key] = classifier
        return classifier

    def class_names(self, model_version: str) -> tuple[str, ...]:
        with self._lock:
            if model_version in self._names:
                return self._names[model_version]
        try:
            names = tuple(self.registry.by_version(model_version).metadata.get("class_names") or ())
        except RegistryError:
            names = ()
        with self._lock:
            self._names[model_version] = names
        return names

    def refresh(self) -> None:
        """Resolve every feature version again on its next batch (after a promotion or a
        rollback changed what the registry serves)."""
        with self._lock:
            self._resolved.clear()

    def warm_up(self, split_ks: Sequence[int]) -> list[str]:
        """Load and run once the cloud half of every mode the registry can serve, so the
        first features do not wait for a model to load."""
        entries = deployable(self.registry, split_ks)
        with contextlib.suppress(RegistryError):
            entries.append(self.registry.serving(Mode(RAW)))
        warmed = []
        for entry in entries:
            if self.classifier_for(str(entry.mode), entry.version) is not None:
                self.prepare(entry)
                warmed.append(f"{entry.mode} ({entry.version})")
        return warmed

    def build_graphs(self, built: Callable[[], None] = lambda: None) -> None:
        """From now on, build the TensorFlow graph of every half that wants one (loaded or
        loaded later), one at a time in a background thread that ends when none is left
        (then it calls ``built``): the cloud serves in numpy first and imports TensorFlow
        after (issue 24, item 5). A graph that fails to build is logged, and numpy goes on
        answering that half."""
        with self._lock:
            if self._graphs:
                return
            self._graphs = True
            self._built = built
            for half in self._loaded.values():
                if half.wants_graph:
                    self._want_graph(half)

    def graphs_pending(self) -> bool:
        """Whether a graph is still being built or waits its turn."""
        with self._lock:
            return self._building

    def _want_graph(self, half: CloudHalf) -> None:
        """Under the lock: ``half``'s graph is built in turn."""
        self._pending_graphs.append(half)
        if not self._building:
            self._building = True
            threading.Thread(target=self._build_graphs, name="graphs", daemon=True).start()

    def _build_graphs(self) -> None:
        while True:
            with self._lock:
                if not self._pending_graphs:
                    self._building = False
                    break
                half = self._pending_graphs.pop(0)
            if not half.wants_graph:
                continue
            try:
                half.build_graph()
            except Exception:  # a model TensorFlow cannot load: numpy still answers it
                log.warning("no TensorFlow graph for %s", half.version, exc_info=True)
            else:
                log.info("a TensorFlow graph answers big batches of %s", half.version)
        self._built()

    def prepare(self, entry: ModelEntry) -> CloudHalf:
        """Load ``entry``'s cloud half and run it once (a half TensorFlow answers traces its
        graph on the first call, hundreds of ms): a promoted model then costs its first batch
        nothing."""
        classifier = self.load(entry)
        # full: the edge answers; the cloud answers the crops of its learning samples
        if classifier.takes_frames or entry.mode.kind == FULL:
            shape = tuple(entry.input_shape)
        else:
            output = (entry.metadata.get("quantization") or {}).get("output", {})
            shape = tuple(output.get("shape", ()))
        classifier.predict(np.zeros((1, *shape), np.float32))
        return classifier


class ServingWatch:
    """Whether what serves changed since the last look, made by someone else: another cloud
    machine's trainer promoted or rolled back a half (the shared serving pointer), or grew a
    new generation (a new entry in the shared registry folder). The process's own trainers
    refresh its :class:`RegistryModels` when they change it; this is how the other
    processes learn of it (:class:`cloud.service.CloudService` looks every
    :data:`SERVING_POLL_SECONDS`)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._seen = self._state()

    def _state(self) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
        pointer = tuple(sorted(self.registry.serving_pointer().items()))
        return pointer, tuple(entry.version for entry in self.registry.list())

    def changed(self) -> bool:
        state = self._state()
        changed, self._seen = state != self._seen, state
        return changed


SERVING_POLL_SECONDS = 2.0


# --- what the gateways run ----------------------------------------------------------------


def edge_modes(split_ks: Sequence[int]) -> list[Mode]:
    """Every mode that runs a model at the gateway, with these splits."""
    return [Mode(FULL), Mode(PCA), Mode(AUTOENCODER), *(Mode.split(k) for k in split_ks)]


def deployable(registry: Registry, split_ks: Sequence[int]) -> list[ModelEntry]:
    """The serving entry of every edge mode, to push to the gateways."""
    found = []
    for mode in edge_modes(split_ks):
        try:
            found.append(registry.serving(mode))
        except ModelNotFound:
            continue
    return found


# --- scoring ---------------------------------------------------------------------------


@dataclass
class _Last:
    correct: bool


@dataclass(frozen=True)
class Score:
    frames: int
    correct: int


@dataclass
class Scoreboard:
    """Rolling per-frame accuracy per (camera, mode) over the last ``window`` frames, and per
    (mode, serving cloud half) over the last ``window`` scored objects or frames: what the
    continuous trainer watches to roll back a promotion."""

    window: int = 2000
    _last: dict[tuple[str, str], _Last] = field(default_factory=dict)
    _recent: dict[tuple[str, str], collections.deque[bool]] = field(default_factory=dict)
    _served: dict[tuple[str, str], collections.deque[bool]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # consumers share one

    def record(
        self,
        camera_id: str,
        mode: str,
        label: int | None,
        predicted: int,
        held_back: int,
        held_mismatched: int,
        served: str = "",
    ) -> Score:
        """Score one answered keyframe and the held-back frames it settles; ``served`` is
        the version of the model that answered. Unlabeled frames are not scored (a real
        video has no ground truth)."""
        if label is None:
            return Score(0, 0)
        with self._lock:
            score, outcomes = self._record(
                (camera_id, mode), label, predicted, held_back, held_mismatched
            )
            if served:
                self._served.setdefault(
                    (mode, served), collections.deque(maxlen=self.window)
                ).extend(outcomes)
            return score

    def _record(
        self,
        key: tuple[str, str],
        label: int,
        predicted: int,
        held_back: int,
        held_mismatched: int,
    ) -> tuple[Score, list[bool]]:
        recent = self._recent.setdefault(key, collections.deque(maxlen=self.window))
        outcomes: list[bool] = []
        previous = self._last.get(key)
        if previous is not None and held_back:
            same = held_back - held_mismatched
            outcomes = [previous.correct] * same + [False] * held_mismatched
        this_correct = predicted == label
        outcomes.append(this_correct)
        recent.extend(outcomes)
        self._last[key] = _Last(this_correct)
        return Score(len(outcomes), sum(outcomes)), outcomes

    def accuracy(self, camera_id: str, mode: str, last: int | None = None) -> float | None:
        """Over the camera's last ``last`` scored frames (default: the whole window)."""
        with self._lock:
            recent = self._recent.get((camera_id, mode))
            if not recent:
                return None
            outcomes = list(recent)[-last:] if last else recent
            return sum(outcomes) / len(outcomes)

    def cameras(self, mode: str) -> list[str]:
        with self._lock:
            return sorted(camera for camera, of_mode in self._recent if of_mode == mode)

    def served_accuracy(self, mode: str, version: str, last: int) -> tuple[float | None, int]:
        """Accuracy of what ``version`` answered for ``mode``, over its last ``last`` scored
        objects (or frames), and how many that was."""
        with self._lock:
            outcomes = list(self._served.get((mode, version), ()))[-last:]
        return (sum(outcomes) / len(outcomes) if outcomes else None), len(outcomes)
