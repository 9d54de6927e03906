"""Gateway modes: what a gateway sends up for a (key)frame, and the one text form of each.

========== ===========================================================================
mode       what goes up
========== ===========================================================================
raw        the camera's JPEG unchanged (the cloud-only baseline)
pca        int8 projection on components fitted in the cloud
autoencoder int8 bottleneck code of the encoder half
split:K    int8 activations of the CNN's lower K blocks
full       a result: the whole CNN ran at the edge, only its answer goes up
========== ===========================================================================

``str(mode)`` is the canonical text (``raw``, ``split:3``, ...) and :meth:`Mode.parse` reads
it back; it is what travels on the wire (``Feature.mode``, ``Status.mode``,
``Plan.mode``), in metric labels and in reports. Where a colon cannot go, in retained model
topics (``models/<gateway>/split-3``) and in directory names, :attr:`Mode.slot` is the form
and :meth:`Mode.from_slot` reads it back. Nobody else spells either form by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

RAW: Final = "raw"
PCA: Final = "pca"
AUTOENCODER: Final = "autoencoder"
SPLIT: Final = "split"
FULL: Final = "full"
KINDS: Final = (RAW, PCA, AUTOENCODER, SPLIT, FULL)


class ModeError(ValueError):
    """A mode text (or kind and split) that names no mode."""


@dataclass(frozen=True)
class Mode:
    kind: str
    split_k: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ModeError(
                f"mode {self.kind!r}: choose raw, pca, autoencoder, split:K (K >= 1) or full"
            )
        if (self.kind == SPLIT) != (self.split_k >= 1):
            raise ModeError(
                f"mode {self.kind} with k={self.split_k}: only split takes a layer count >= 1"
            )

    @classmethod
    def parse(cls, text: str) -> Mode:
        kind, colon, k = text.partition(":")
        if kind == SPLIT:
            if not k.isdigit() or int(k) < 1:
                raise ModeError(f"mode {text!r}: split needs a layer count, e.g. split:3")
            return cls(SPLIT, int(k))
        if colon:
            raise ModeError(f"mode {text!r}: only split takes a layer count")
        return cls(kind)

    @classmethod
    def split(cls, k: int) -> Mode:
        return cls(SPLIT, k)

    @classmethod
    def of(cls, kind: str, split_k: int = 0) -> Mode:
        """The mode a model of ``kind`` serves (a registry entry's or deployment's fields,
        where ``split_k`` is 0 for every kind but split)."""
        return cls(kind, split_k if kind == SPLIT else 0)

    @classmethod
    def from_slot(cls, slot: str) -> Mode:
        prefix = f"{SPLIT}-"
        return cls.parse(f"{SPLIT}:{slot[len(prefix) :]}" if slot.startswith(prefix) else slot)

    @property
    def slot(self) -> str:
        """``split-3``, ``pca``, ...: the text form without a colon."""
        return f"{SPLIT}-{self.split_k}" if self.kind == SPLIT else self.kind

    @property
    def needs_model(self) -> bool:
        """Every mode but raw runs a deployed model at the gateway."""
        return self.kind != RAW

    @property
    def order(self) -> tuple[int, int]:
        """Sort key: cloud-only first, then by the work done at the edge."""
        return (KINDS.index(self.kind), self.split_k)

    def __str__(self) -> str:
        return f"{SPLIT}:{self.split_k}" if self.kind == SPLIT else self.kind
