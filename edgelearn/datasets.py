"""Labeled image data sets: what labeled cameras show and what the cloud trains on.

Two loaders return the same :class:`LabeledImages`:

* :func:`load_fashion_mnist` reads the gzipped IDX files of Fashion-MNIST (Debian's
  ``dataset-fashion-mnist`` puts them in ``/usr/share/datasets/fashion-mnist``): 28x28
  grayscale images, labels 0..9, ``train`` (60,000) and ``test`` (10,000) splits.
* :func:`load_image_folder` reads a user's own data: one sub-folder per class, class names
  sorted give the label ids, every readable image in a class folder becomes one item (scaled
  to fit one common square, its aspect kept, so the set fits one array).

**What is the object in an image.** A camera shows an item over a scene, so every item needs
an opacity per pixel. It follows the data: a PNG's own alpha channel where the images have
one; Fashion-MNIST's convention of a bright item on black (a *sprite*: its brightness is its
opacity) where the data set is made of such images; otherwise the whole image is the
object. A folder is a sprite set when nine images in ten have a dark frame (the ring of
pixels along their edge averages under :data:`SPRITE_EDGE` grey levels) around brighter
content: a photo's edge is the scene it was taken in, a sprite's is the black it was drawn
on. :attr:`LabeledImages.alpha` holds the opacity (None: sprites).

Cameras show their items (:class:`cameras.scene.LabeledScene`); the cloud's trainer renders
training data from the same :class:`LabeledImages`, so what it trains on looks like what the
cameras send. A folder or file that cannot be used raises :class:`DatasetError`. Arrays are
returned read-only: loaders cache them and several scenes share one copy.

:func:`parse_dataset` reads the ``--dataset`` of ``edgelearn up`` and ``edgelearn cloud``
(``fashion-mnist``, the default, or ``folder:PATH``). A folder is split once, by a seeded
permutation (:func:`folder_split`): the cloud trains on one part and holds out the other,
and the stack's cameras show only the held-out part (``folder-test:PATH``), as they show
Fashion-MNIST's test split. Training needs at least two classes of
:data:`MIN_IMAGES_PER_CLASS` readable images each (:func:`check_trainable`).
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

SPRITE_EDGE: Final = 20.0  # grey levels: a sprite's edge ring is darker than this
MIN_IMAGES_PER_CLASS: Final = 10  # a class with fewer cannot be split into train and held-out
HELD_OUT_FRACTION: Final = 0.2  # of a folder's items, never trained on
FASHION_MNIST: Final = "fashion-mnist"

# IDX type code 0x08 is unsigned byte, the only element type Fashion-MNIST uses.
_IDX_UBYTE: Final = 0x08


class DatasetError(Exception):
    """A data set that cannot be loaded; ``source`` names the file or folder, ``reason`` is
    bounded (``missing``, ``unreadable``, ``empty``, ``no_classes``, ``one_class``,
    ``too_few``)."""

    def __init__(self, message: str, *, source: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class LabeledImages:
    """Images and their class labels.

    ``images`` is ``uint8`` of shape (N, H, W) for grayscale or (N, H, W, 3) for BGR colour;
    ``labels`` is ``int64`` of shape (N,) with values in ``range(len(class_names))``;
    ``alpha`` (N, H, W) ``uint8`` is each pixel's opacity (255: the item), or None for
    sprites: bright items drawn on black, their brightness their opacity (Fashion-MNIST).
    """

    images: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    class_names: tuple[str, ...]
    alpha: npt.NDArray[np.uint8] | None = None

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
        if self.alpha is not None and self.alpha.shape != self.images.shape[:3]:
            raise ValueError(f"alpha {self.alpha.shape} for images {self.images.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def opacity(self, index: int) -> npt.NDArray[np.uint8] | None:
        """Item ``index``'s opacity (None: a sprite, its brightness is its opacity)."""
        return None if self.alpha is None else self.alpha[index]


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
    path: Path | str, *, size: tuple[int, int] = (128, 128), grayscale: bool | None = None
) -> LabeledImages:
    """A folder of class sub-folders of images; sorted class names give label ids 0..K-1.

    Every image is scaled to fit ``size`` (width, height), its aspect kept, and centred on a
    transparent ground, so the set is one array; ``grayscale`` loads single-channel images
    (N, H, W) like Fashion-MNIST's, else BGR (N, H, W, 3); None decides by the images:
    grayscale when no image has colour. Each item's opacity follows the data (the module
    docstring says how). Files OpenCV cannot decode are skipped with a WARNING. Raises
    :class:`DatasetError` if the folder does not exist or holds no readable image in any
    class sub-folder.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"data set folder not found: {root}", source=str(root), reason="missing")
    class_dirs = sorted(
        (entry for entry in _entries(root) if entry.is_dir() and not entry.name.startswith(".")),
        key=lambda entry: entry.name,
    )
    if not class_dirs:
        raise DatasetError(
            f"data set folder {root} has no class folders: put each class's images in a "
            "sub-folder named after the class",
            source=str(root),
            reason="no_classes",
        )
    images: list[npt.NDArray[np.uint8]] = []
    opacities: list[npt.NDArray[np.uint8]] = []
    own_alpha = False  # some image has an alpha channel of its own
    labels: list[int] = []
    class_names: list[str] = []
    empty: list[str] = []
    unreadable: list[Path] = []
    for class_dir in class_dirs:
        files = sorted(
            f for f in _entries(class_dir) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        loaded = 0
        for file in files:
            read = _read_image(file)
            if read is None:
                unreadable.append(file)
                continue
            image, opaque = _letterbox(*read, size)
            own_alpha = own_alpha or read[1] is not None
            images.append(image)
            opacities.append(opaque)
            labels.append(len(class_names))
            loaded += 1
        if loaded:
            class_names.append(class_dir.name)
        else:
            empty.append(class_dir.name)
    if unreadable:
        shown = ", ".join(str(file.relative_to(root)) for file in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        log.warning(
            "skipped %d files of %s that are not images OpenCV can read: %s%s",
            len(unreadable), root, shown, more,
        )  # fmt: skip
    if not images:
        reason = "unreadable" if unreadable else "empty"
        raise DatasetError(
            f"data set folder {root} has no readable images in its class folders"
            + (f" ({len(unreadable)} files could not be read as images)" if unreadable else ""),
            source=str(root),
            reason=reason,
        )
    if empty:
        log.warning("class folders without readable images get no label: %s", ", ".join(empty))
    stacked = np.stack(images).astype(np.uint8, copy=False)
    if grayscale or (grayscale is None and _no_colour(stacked)):
        # (N, H, W), drawn as Fashion-MNIST's
        flat = cv2.cvtColor(stacked.reshape(-1, size[0], 3), cv2.COLOR_BGR2GRAY)
        stacked = np.ascontiguousarray(flat.reshape(stacked.shape[:3]))
    stacked.flags.writeable = False
    label_array = np.asarray(labels, dtype=np.int64)
    label_array.flags.writeable = False
    opacity = np.stack(opacities)
    alpha: npt.NDArray[np.uint8] | None = (
        opacity if own_alpha else _sprite_opacity(stacked, opacity)
    )
    if alpha is not None:
        alpha.flags.writeable = False
    return LabeledImages(stacked, label_array, tuple(class_names), alpha)


def _read_image(file: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8] | None] | None:
    """A file's BGR pixels and its own alpha channel (None: it has none, or all of it is
    opaque); None if OpenCV cannot read it. 16-bit images are brought to 8 bits."""
    read = cv2.imread(str(file), cv2.IMREAD_UNCHANGED)
    if read is None or read.size == 0:
        return None
    raw = np.asarray(read)
    if raw.dtype == np.uint16:
        raw = np.right_shift(raw, 8)
    elif raw.dtype != np.uint8:
        low, high = float(raw.min()), float(raw.max())
        raw = (raw.astype(np.float64) - low) * (255.0 / max(high - low, 1e-12))
    image = np.ascontiguousarray(raw, np.uint8)
    if image.ndim == 2:
        return np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8), None
    if image.shape[2] == 4:
        alpha = np.ascontiguousarray(image[:, :, 3])
        return np.ascontiguousarray(image[:, :, :3]), None if alpha.min() == 255 else alpha
    if image.shape[2] == 3:
        return image, None
    return np.asarray(cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR), np.uint8), None


def _letterbox(
    image: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8] | None, size: tuple[int, int]
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """``image`` scaled to fit ``size`` (width, height) with its aspect kept, centred on
    black; and its opacity there: its own alpha, or 255 over the image, 0 around it."""
    height, width = image.shape[:2]
    scale = min(size[0] / width, size[1] / height)
    fitted = (max(1, round(width * scale)), max(1, round(height * scale)))
    shrink = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    left, top = (size[0] - fitted[0]) // 2, (size[1] - fitted[1]) // 2
    canvas = np.zeros((size[1], size[0], 3), np.uint8)
    canvas[top : top + fitted[1], left : left + fitted[0]] = cv2.resize(
        image, fitted, interpolation=shrink
    )
    opacity = np.zeros((size[1], size[0]), np.uint8)
    opacity[top : top + fitted[1], left : left + fitted[0]] = (
        255 if alpha is None else cv2.resize(alpha, fitted, interpolation=shrink)
    )
    return canvas, opacity


def _sprite_opacity(
    images: npt.NDArray[np.uint8], letterboxed: npt.NDArray[np.uint8]
) -> npt.NDArray[np.uint8] | None:
    """A data set without alpha channels: its opacity where it is a sprite set (None for
    grayscale sprites, whose opacity the renderer keys to brightness; colour sprites keyed
    here alike), else ``letterboxed`` (the whole image is the object)."""
    grey = images if images.ndim == 3 else images.max(axis=3)
    sprites = sum(_is_sprite(image, alpha) for image, alpha in zip(grey, letterboxed, strict=True))
    if sprites < 0.9 * len(images):
        return letterboxed
    if images.ndim == 3:
        return None
    keyed = np.minimum(grey.astype(np.float32) * (255.0 / 24.0), 255.0) * (letterboxed / 255.0)
    return np.asarray(keyed, np.uint8)


def _is_sprite(grey: npt.NDArray[np.uint8], alpha: npt.NDArray[np.uint8]) -> bool:
    """Bright content inside a dark edge ring (the ring of the image itself, not of the
    ground it was centred on)."""
    rows = np.flatnonzero(alpha.max(axis=1) > 0)
    cols = np.flatnonzero(alpha.max(axis=0) > 0)
    if rows.size < 3 or cols.size < 3:
        return False
    content = grey[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    ring = np.concatenate([content[0], content[-1], content[1:-1, 0], content[1:-1, -1]])
    edge = float(ring.mean())
    return edge < SPRITE_EDGE and float(np.percentile(content, 95)) > edge + 40.0


def _no_colour(images: npt.NDArray[np.uint8]) -> bool:
    """Whether BGR ``images`` are grey (every pixel's channels equal, within JPEG's noise)."""
    spread = images.max(axis=3).astype(np.int16) - images.min(axis=3).astype(np.int16)
    return bool(np.percentile(spread, 99) <= 8)


def check_trainable(
    data: LabeledImages, source: str, min_per_class: int = MIN_IMAGES_PER_CLASS
) -> None:
    """Raise :class:`DatasetError` unless ``data`` can train a classifier and hold some of
    every class out: two classes at least, ``min_per_class`` images in each."""
    if len(data.class_names) < 2:
        raise DatasetError(
            f"data set {source} has one class ({data.class_names[0]}): a classifier needs "
            "at least two class folders",
            source=source,
            reason="one_class",
        )
    counts = np.bincount(data.labels, minlength=len(data.class_names))
    few = [
        (name, int(n))
        for name, n in zip(data.class_names, counts, strict=True)
        if n < min_per_class
    ]
    if few:
        listed = ", ".join(f"{name} ({n})" for name, n in few[:5])
        raise DatasetError(
            f"data set {source}: {len(few)} classes have fewer than {min_per_class} readable "
            f"images: {listed}",
            source=source,
            reason="too_few",
        )


def folder_split(
    count: int, seed: int = 0, fraction: float = HELD_OUT_FRACTION
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, held-out) item indices of a one-folder data set: a seeded permutation, the
    same wherever it is computed (the cloud's trainer and the cameras agree)."""
    order = np.random.default_rng([seed, 0]).permutation(count)
    held = max(1, round(count * fraction))
    return np.sort(order[held:]).astype(np.int64), np.sort(order[:held]).astype(np.int64)


def subset(data: LabeledImages, index: npt.NDArray[np.int64]) -> LabeledImages:
    images = data.images[index]
    labels = data.labels[index]
    alpha = None if data.alpha is None else data.alpha[index]
    for array in (images, labels, alpha):
        if array is not None:
            array.flags.writeable = False
    return LabeledImages(images, labels, data.class_names, alpha)


@dataclass(frozen=True)
class DatasetSpec:
    """What the cloud trains its first models on: Fashion-MNIST or a user's folder."""

    kind: str  # FASHION_MNIST or "folder"
    path: Path | None = None

    @property
    def task(self) -> str:
        """The registry's ``task`` of models trained on it: a registry of another task is
        trained again."""
        return FASHION_MNIST if self.path is None else f"folder:{self.path.resolve()}"

    @property
    def camera_source(self) -> str:
        """The ``edgelearn camera --source`` that shows this set's held-out items."""
        return "fashion-mnist:test" if self.path is None else f"folder-test:{self.path}"

    def __str__(self) -> str:
        return FASHION_MNIST if self.path is None else f"folder:{self.path}"

    def load(self) -> LabeledImages:
        """The whole set (a folder: checked for training, see :func:`check_trainable`)."""
        if self.path is None:
            return load_fashion_mnist("train")
        data = load_image_folder(self.path)
        check_trainable(data, str(self.path))
        return data


def parse_dataset(text: str) -> DatasetSpec:
    """``fashion-mnist`` or ``folder:PATH``; ``ValueError`` with the choices otherwise."""
    if text == FASHION_MNIST:
        return DatasetSpec(FASHION_MNIST)
    kind, _, rest = text.partition(":")
    if kind == "folder" and rest:
        return DatasetSpec("folder", Path(rest).expanduser())
    raise ValueError(f"unknown data set {text!r}: use fashion-mnist or folder:PATH")
