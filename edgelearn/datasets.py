"""Labeled image data sets: what labeled cameras show and what the cloud trains on.

Two loaders return the same :class:`LabeledImages`:

* :func:`load_fashion_mnist` reads the gzipped IDX files of Fashion-MNIST (Debian's
  ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``): 28x28
  grayscale images, labels 0..9, ``train`` (60,000) and ``test`` (10,000) splits.
* :func:`load_image_folder` reads a user's own data: one sub-folder per class, class names
  sorted give the label ids, every readable image in a class folder becomes one item (resized
  to one common size so the set fits one array).

Cameras show their items (:class:`cameras.scene.LabeledScene`); the cloud's trainer renders
training data from the same :class:`LabeledImages`, so what it trains on looks like what the
cameras send. A folder or file that cannot be used raises :class:`DatasetError`. Arrays are
returned read-only: loaders cache them and several scenes share one copy.
"""

from __future__ import annotations

import functools
import gzip
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

DEFAULT_ROOT: Final = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES: Final = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FASHION_MNIST_FILES: Final = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

IMAGE_SUFFIXES: Final = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)

# IDX type code 0x08 is unsigned byte, the only element type Fashion-MNIST uses.
_IDX_UBYTE: Final = 0x08


class DatasetError(Exception):
    """A data set that cannot be loaded; ``source`` names the file or folder, ``reason`` is
    bounded (``missing``, ``unreadable``, ``empty``)."""

    def __init__(self, message: str, *, source: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class LabeledImages:
    """Images and their class labels.

    ``images`` is ``uint8`` of shape (N, H, W) for grayscale or (N, H, W, 3) for BGR colour;
    ``labels`` is ``int64`` of shape (N,) with values in ``range(len(class_names))``.
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim not in (3, 4):
            raise ValueError(
                f"images must be uint8 (N,H,W[,3]), got {self.images.dtype} {self.images.shape}"
            )
        if self.images.ndim == 4 and self.images.shape[3] != 3:
            raise ValueError(f"colour images must have 3 channels, got {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels {self.labels.shape}")
        if len(self) == 0:
            raise ValueError("a labeled data set needs at least one image")
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names):
            raise ValueError(f"labels outside 0..{len(self.class_names) - 1}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _read_idx(path: Path, expected_ndim: int) -> npt.NDArray[np.uint8]:
    """Parse one gzipped IDX file (big-endian header: 0, 0, type, ndim, then dims)."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise DatasetError(
            f"data set file not found: {path}", source=str(path), reason="missing"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read data set file {path}: {exc}", source=str(path)) from exc
    if len(data) < 4:
        raise DatasetError(f"{path} is not an IDX file (too short)", source=str(path))
    zero, zero2, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero or zero2 or type_code != _IDX_UBYTE or ndim != expected_ndim:
        raise DatasetError(
            f"{path} is not an IDX ubyte file with {expected_ndim} dimensions", source=str(path)
        )
    header_size = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    expected = int(np.prod(dims))
    if len(data) - header_size != expected:
        raise DatasetError(
            f"{path}: header promises {expected} bytes, file has {len(data) - header_size}",
            source=str(path),
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(dims)
    return array


@functools.lru_cache(maxsize=4)
def _load_fashion_mnist_cached(split: str, root: Path) -> LabeledImages:
    image_file, label_file = _FASHION_MNIST_FILES[split]
    images = _read_idx(root / image_file, 3)
    labels = _read_idx(root / label_file, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{root}: {images.shape[0]} images but {labels.shape[0]} labels", source=str(root)
        )
    labels.flags.writeable = False
    log.debug("loaded Fashion-MNIST %s: %d images from %s", split, images.shape[0], root)
    return LabeledImages(images=images, labels=labels, class_names=FASHION_MNIST_CLASSES)


def load_fashion_mnist(split: str = "train", root: Path = DEFAULT_ROOT) -> LabeledImages:
    """Fashion-MNIST ``train`` (60,000) or ``test`` (10,000): images (N, 28, 28) uint8.

    Raises :class:`DatasetError` if the files are missing or malformed, ``ValueError`` for an
    unknown split. Results are cached and read-only.
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    return _load_fashion_mnist_cached(split, Path(root))


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DatasetError(
            f"cannot read data set folder {folder}: {exc.strerror or exc}", source=str(folder)
        ) from exc


def load_image_folder(
    path: Path | str, *, size: tuple[int, int] = (128, 128), grayscale: bool = False
) -> LabeledImages:
    """A folder of class sub-folders of images; sorted class names give label ids 0..K-1.

    Every image is resized to ``size`` (width, height) so the set is one array; ``grayscale``
    loads single-channel images (N, H, W) like Fashion-MNIST's, else BGR (N, H, W, 3).
    Files OpenCV cannot decode are skipped with a WARNING. Raises :class:`DatasetError` if the
    folder does not exist or holds no readable image in any class sub-folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root}", source=str(root), reason="missing")
    class_dirs = sorted(
        (entry for entry in _entries(root) if entry.is_dir()), key=lambda entry: entry.name
    )
    flag = cv2.IMREAD_GRAYSCALE if grayscale else cv2.IMREAD_COLOR
    images: list[npt.NDArray[np.uint8]] = []
    labels: list[int] = []
    class_names: list[str] = []
    empty: list[str] = []
    for class_dir in class_dirs:
        files = sorted(
            f for f in _entries(class_dir) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        loaded = 0
        for file in files:
            image = cv2.imread(str(file), flag)
            if image is None:
                log.warning("skipping %s: not an image OpenCV can read", file)
                continue
            images.append(
                np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), np.uint8)
            )
            labels.append(len(class_names))
            loaded += 1
        if loaded:
            class_names.append(class_dir.name)
        else:
            empty.append(class_dir.name)
    if not images:
        raise DatasetError(
            f"data set folder {root} has no readable images in class sub-folders",
            source=str(root),
            reason="empty",
        )
    if empty:
        log.warning("class folders without readable images get no label: %s", ", ".join(empty))
    stacked = np.stack(images).astype(np.uint8, copy=False)
    stacked.flags.writeable = False
    label_array = np.asarray(labels, dtype=np.int64)
    label_array.flags.writeable = False
    return LabeledImages(images=stacked, labels=label_array, class_names=tuple(class_names))
