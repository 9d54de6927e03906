"""Exceptions raised by the layer-placement scheduler.

The tree is small on purpose; callers catch the base class unless they can act on the reason::

    SchedulingError
    ├── InvalidProblemError      (also a ValueError) inputs that cannot describe a problem
    ├── InfeasibleAssignmentError a placement breaks a capacity/bandwidth/latency constraint
    └── ProfileError             a CNN profile could not be built, read or trusted

Solvers do not raise when they run out of time: they return what they have with its bound
(``exact.OptimalResult``), because a partial answer is still useful to the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class SchedulingError(Exception):
    """Base class of every error raised by ``cloud.scheduling``."""


class InvalidProblemError(SchedulingError, ValueError):
    """The arrays given cannot describe a scheduling problem (shape, sign, NaN, order).

    ``field`` names the offending input so a caller building problems from config can point at it.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ConstraintViolation:
    """One broken constraint of a placement; ``server``/``task`` are indices or None."""

    kind: str  # "server_index", "split_layer", "capacity", "bandwidth"
    server: int | None
    task: int | None
    detail: str


class InfeasibleAssignmentError(SchedulingError):
    """A placement violates at least one constraint; ``violations`` lists all of them."""

    def __init__(self, violations: Sequence[ConstraintViolation]) -> None:
        shown = "; ".join(v.detail for v in violations[:5])
        more = f" (+{len(violations) - 5} more)" if len(violations) > 5 else ""
        super().__init__(f"{len(violations)} constraint violation(s): {shown}{more}")
        self.violations = tuple(violations)


class ProfileError(SchedulingError):
    """A CNN profile could not be computed or the cached profile table is malformed."""

    def __init__(self, architecture: str, reason: str) -> None:
        super().__init__(f"{architecture}: {reason}")
        self.architecture = architecture
        self.reason = reason
