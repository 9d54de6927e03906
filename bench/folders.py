"""Two class-folder data sets built from images installed on this machine, to try
``--dataset folder:PATH`` as a user with their own labeled images would.

    python -m bench.folders digits OUT       # grayscale: OpenCV's digits.png, 10 classes
    python -m bench.folders photos OUT       # colour: patches of 6 of OpenCV's sample photos
    python -m bench.folders grey-photos OUT  # grayscale photos, small, a quarter dark

* ``digits``: the 5,000 handwritten digits (20x20, white on black, 500 per digit) of
  OpenCV's ``samples/data/digits.png`` (Debian's opencv-doc), one PNG per digit in
  ``0/`` .. ``9/``.
* ``photos``: 120 square patches (64-160 pixels, resized to 96) cut at random places of each
  of six colour photos among OpenCV's samples; a patch's class is the photo it comes from (a
  texture and scene classification: fruit, a baboon's fur, a building, ...).
* ``grey-photos``: the same kind of patches in grey, 24 to 64 pixels and not resized, one
  in four darkened to a fifth of its light: a grayscale photo set (as scikit-image's
  ``lfw_subset`` of faces is), every image full-bleed, some dark. No image is a bright item
  on black, so the whole picture is each item.

Nothing is downloaded. The same seed gives the same folders.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

SAMPLES: Final = Path("/usr/share/doc/opencv-doc/examples/data")
PHOTOS: Final = {
    "baboon": "baboon.jpg",
    "building": "building.jpg",
    "fruits": "fruits.jpg",
    "starry_night": "starry_night.jpg",
    "board": "board.jpg",
    "home": "home.jpg",
}


def digits(out: Path) -> Path:
    sheet = cv2.imread(str(SAMPLES / "digits.png"), cv2.IMREAD_GRAYSCALE)
    if sheet is None:
        raise SystemExit(f"cannot read {SAMPLES / 'digits.png'} (apt install opencv-doc)")
    rows, cols = sheet.shape[0] // 20, sheet.shape[1] // 20  # 50 x 100 cells
    for row in range(rows):
        digit = row // (rows // 10)  # five rows of each digit, 0 first
        folder = out / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        for col in range(cols):
            cell = sheet[row * 20 : (row + 1) * 20, col * 20 : (col + 1) * 20]
            cv2.imwrite(str(folder / f"{row:02d}-{col:03d}.png"), cell)
    return out


def _square(
    rng: np.random.Generator, image: npt.NDArray[Any], smallest: int, largest: int
) -> npt.NDArray[Any]:
    """A random square patch of ``image``, ``smallest`` to ``largest`` pixels a side."""
    height, width = image.shape[:2]
    side = int(rng.integers(smallest, min(largest, height, width) + 1))
    y = int(rng.integers(0, height - side + 1))
    x = int(rng.integers(0, width - side + 1))
    return image[y : y + side, x : x + side]


def photos(out: Path, per_class: int = 120, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, file in PHOTOS.items():
        image = cv2.imread(str(SAMPLES / file), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read {SAMPLES / file} (apt install opencv-doc)")
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            patch = cv2.resize(_square(rng, image, 64, 160), (96, 96))
            cv2.imwrite(str(folder / f"{index:03d}.png"), patch)
    return out


def grey_photos(
    out: Path,
    per_class: int = 60,
    seed: int = 0,
    names: tuple[str, ...] = ("baboon", "building", "fruits"),
) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        image = cv2.imread(str(SAMPLES / PHOTOS[name]), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"cannot read {SAMPLES / PHOTOS[name]} (apt install opencv-doc)")
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            square = _square(rng, image, 40, 200)
            small = int(rng.integers(24, 65))
            patch = cv2.resize(square, (small, small))
            if index % 4 == 0:  # a dark one
                patch = (patch.astype(np.float32) * rng.uniform(0.12, 0.25)).astype(np.uint8)
            cv2.imwrite(str(folder / f"{index:03d}.png"), patch)
    return out


def main(argv: list[str]) -> int:
    makers = {"digits": digits, "photos": photos, "grey-photos": grey_photos}
    if len(argv) != 2 or argv[0] not in makers:
        print(__doc__, file=sys.stderr)
        return 2
    made = makers[argv[0]](Path(argv[1]))
    print(made)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
