"""What every frame source yields, and the small interface sources implement.

A source is the first stage in the flow of a frame (source -> JPEG -> transport): it hands
the camera a 1280x720 BGR ``uint8`` image and, when the scene is labeled, the ground-truth
class of what is in view. Sources are plain, synchronous and deterministic given a seed; the
camera service calls them from a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
"""A BGR image, shape (height, width, 3), dtype uint8 (OpenCV's layout)."""


@dataclass(frozen=True)
class SourceFrame:
    """One image from a source and the label of the item in view (None when unlabeled)."""

    image: Image
    label: int | None = None


class FrameSource(Protocol):
    """A camera's picture: an endless sequence of frames that can also be skipped over.

    ``skip`` advances past frames the camera did not send (it fell behind), so the picture
    stays in step with wall time and labels stay aligned with what a real camera would show.
    """

    def read(self) -> SourceFrame:
        """The next frame."""
        ...

    def skip(self, count: int) -> None:
        """Advance past ``count`` frames without rendering them."""
        ...

    def close(self) -> None:
        """Release files or decoders the source holds."""
        ...
