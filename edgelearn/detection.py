"""How well found boxes match the true ones: hits, misses and false boxes at IoU 0.5, for
the benchmarks and tests of object finding (:mod:`edgelearn.roi`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edgelearn import roi

IN_VIEW = 0.01  # of the frame: a smaller true item is stepping in or out


@dataclass(frozen=True)
class BoxScore:
    hits: int = 0
    misses: int = 0
    false: int = 0
    ignored: int = 0  # boxes over an item only partly in view: neither hit nor false

    def __add__(self, other: BoxScore) -> BoxScore:
        return BoxScore(*(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    @property
    def counts(self) -> tuple[int, int, int, int]:
        return (self.hits, self.misses, self.false, self.ignored)

    def recall(self) -> float | None:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else None

    def precision(self) -> float | None:
        return self.hits / (self.hits + self.false) if self.hits + self.false else None


def score_boxes(
    truth: Sequence[roi.Box],
    found: Sequence[roi.Box],
    frame_size: tuple[int, int],
    *,
    ignore_cut: bool = False,
) -> BoxScore:
    """Found boxes against the true ones at IoU 0.5 (:func:`edgelearn.roi.match`). A true
    item under :data:`IN_VIEW` of the frame (or, with ``ignore_cut``, cut by its edge) is
    neither required nor a source of false boxes."""
    width, height = frame_size

    def partial(box: roi.Box) -> bool:
        x0, y0, x1, y1 = box
        cut = x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height
        return (x1 - x0) * (y1 - y0) < IN_VIEW * width * height or (ignore_cut and cut)

    whole = [box for box in truth if not partial(box)]
    parts = [box for box in truth if partial(box)]
    matched = roi.match(whole, found, 0.5)
    used = set(matched.values())
    ignored = sum(
        1
        for k, box in enumerate(found)
        if k not in used and any(roi.iou(box, part) > 0.1 for part in parts)
    )
    return BoxScore(
        len(matched), len(whole) - len(matched), len(found) - len(used) - ignored, ignored
    )
