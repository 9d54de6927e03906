"""A student: the teacher task's answer, a softmax layer on one edge half's output.

The cloud trains, judges and serves students (:mod:`cloud.students`). A gateway in ``full``
sends no features, so the cloud cannot answer its cameras: it gets the serving student
pushed (:func:`sign_student`, :func:`load_student`), signed like any model, with the edge
half whose output it reads, and answers its video cameras' objects itself
(:class:`EdgeStudent`). Numpy and LiteRT only, like every edge part.

A deployment of kind ``student`` carries an ``.npz`` (no pickles): the student's arrays and
facts, and the signed deployment of its edge half (``wire.Model`` bytes, verified with the
same key before it is loaded).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgelearn import signing, wire
from edgelearn.artifacts import ArtifactError, LoadedDeployment, load_deployment

STUDENT_KIND: Final = wire.STUDENT_KIND  # a wire.Model's kind, and its topic's slot
THRESHOLD: Final = 0.75  # a student's answer less sure than this is UNKNOWN (open set)


class StudentError(ValueError):
    """A student deployment that cannot run: it says why."""


@dataclass(frozen=True, eq=False)
class Student:
    """A softmax layer on one edge half's output (``versions``: the registry versions of that
    edge artifact, whose features it reads), for the teacher's classes."""

    version: str
    mode: str
    versions: tuple[str, ...]
    coef: npt.NDArray[np.float32]  # (classes, D)
    intercept: npt.NDArray[np.float32]  # (classes,)
    mean: npt.NDArray[np.float32]  # (D,): the training rows' mean, to standardise by
    std: npt.NDArray[np.float32]
    trained_on: frozenset[tuple[str, int]]  # (camera, track) of every row it trained on
    classes: tuple[str, ...] = wire.TEACHER_CLASSES
    threshold: float = THRESHOLD
    report: dict[str, Any] = field(default_factory=dict)  # its run's judgement, as kept

    def probabilities(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """(N, classes) for N feature rows (any shape after the first axis)."""
        rows = np.asarray(values, np.float32).reshape(len(values), -1)
        logits = ((rows - self.mean) / self.std) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        result: npt.NDArray[np.float32] = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return result

    def answer(self, values: npt.NDArray[Any]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Each row's class (``wire.UNKNOWN`` under ``threshold``) and its probability."""
        if not len(values):
            return (), ()
        probabilities = self.probabilities(values)
        best = np.argmax(probabilities, axis=1)
        top = probabilities[np.arange(len(best)), best]
        classes = tuple(
            int(c) if p >= self.threshold else wire.UNKNOWN for c, p in zip(best, top, strict=True)
        )
        return classes, tuple(float(np.clip(p, 0.0, 1.0)) for p in top)

    def to_bytes(self) -> bytes:
        facts = {
            "version": self.version,
            "mode": self.mode,
            "versions": list(self.versions),
            "classes": list(self.classes),
            "threshold": self.threshold,
            "trained_on": sorted([camera, track] for camera, track in self.trained_on),
            "report": self.report,
        }
        out = io.BytesIO()
        np.savez(
            out,
            facts=np.frombuffer(json.dumps(facts).encode(), np.uint8),
            coef=self.coef,
            intercept=self.intercept,
            mean=self.mean,
            std=self.std,
        )
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Student:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            facts = json.loads(arrays["facts"].tobytes())
            return cls(
                version=str(facts["version"]),
                mode=str(facts["mode"]),
                versions=tuple(facts["versions"]),
                coef=arrays["coef"].astype(np.float32),
                intercept=arrays["intercept"].astype(np.float32),
                mean=arrays["mean"].astype(np.float32),
                std=arrays["std"].astype(np.float32),
                trained_on=frozenset((str(c), int(t)) for c, t in facts["trained_on"]),
                classes=tuple(facts["classes"]),
                threshold=float(facts["threshold"]),
                report=dict(facts.get("report") or {}),
            )


def sign_student(student: Student, edge: wire.Model, private_key: Ed25519PrivateKey) -> wire.Model:
    """The signed deployment of ``student`` with ``edge``, the signed deployment of the edge
    half it reads (one of ``student.versions``)."""
    if edge.version not in student.versions:
        raise StudentError(f"{student.version} reads {student.versions}, not {edge.version}")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        student=np.frombuffer(student.to_bytes(), np.uint8),
        edge=np.frombuffer(wire.encode(edge), np.uint8),
    )
    metadata = {"mode": student.mode, "edge": edge.version, "classes": list(student.classes)}
    return signing.sign_model(
        private_key,
        name=f"student-{student.mode.replace(':', '-')}",
        version=student.version,
        kind=STUDENT_KIND,
        split_k=0,
        input_shape=tuple(edge.input_shape),
        metadata_json=json.dumps(metadata, separators=(",", ":")),
        artifact=buffer.getvalue(),
    )


@dataclass(frozen=True)
class EdgeStudent:
    """A student with the edge half it reads, ready to answer crops at a gateway."""

    student: Student
    edge: LoadedDeployment

    @property
    def version(self) -> str:
        return self.student.version

    def answer(self, crops: npt.NDArray[Any]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """Each crop's class of the teacher task (``wire.UNKNOWN`` when unsure), and its
        probability; crops in the edge half's input shape."""
        extractor = self.edge.extractor
        outputs = np.stack([extractor.run(crop) for crop in crops])
        rows = extractor.output.dequantize(outputs).reshape(len(crops), -1)
        return self.student.answer(rows)


def load_student(
    model: wire.Model, trusted: Ed25519PublicKey, *, num_threads: int = 1
) -> EdgeStudent:
    """Verify ``model`` and the edge half inside it, then load both
    (:class:`edgelearn.signing.ModelRejected`, :class:`StudentError`)."""
    signing.verify_model(model, trusted)
    if model.kind != STUDENT_KIND:
        raise StudentError(f"{model.name} {model.version} is a {model.kind!r}, not a student")
    try:
        with np.load(io.BytesIO(model.artifact), allow_pickle=False) as archive:
            student = Student.from_bytes(archive["student"].tobytes())
            edge_model = wire.decode_as(archive["edge"].tobytes(), wire.Model)
        edge = load_deployment(edge_model, trusted, num_threads=num_threads)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise StudentError(f"not a student deployment: {exc}") from exc
    except (wire.WireError, ArtifactError) as exc:
        raise StudentError(f"its edge half does not load: {exc}") from exc
    if edge.version not in student.versions:
        raise StudentError(f"{student.version} does not read {edge.version}'s features")
    width = int(np.prod(edge.extractor.output.shape))
    if width != student.coef.shape[1]:
        raise StudentError(f"{student.version} reads {student.coef.shape[1]} values, not {width}")
    return EdgeStudent(student, edge)
