"""Image data sets held in memory as numpy arrays (uint8, channels last).

Every loader returns an :class:`ImageDataset`, so training, calibration and out-of-distribution
evaluation all see one validated format whatever the file format on disk was.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data_root import dataset_dir, require

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "DataError",
    "ImageDataset",
    "folder_channels",
    "folder_classes",
    "folder_images",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist",
    "load_notmnist",
    "load_recorded",
    "make_synthetic",
    "read_idx",
    "split_calibration",
]

# Debian's dataset-fashion-mnist unless $TRUSTGC_FASHION_MNIST says otherwise (training.data_root).
FASHION_MNIST_DIR = dataset_dir("fashion_mnist")
FASHION_MNIST_CLASSES = (
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
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})
_SPLITS = ("train", "test")
# IDX type code -> big-endian numpy dtype (LeCun's IDX specification).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class DataError(ValueError):
    """Bad or missing data; a ValueError so callers validating input can catch one type."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images with integer labels; validated on creation so consumers never re-check shapes."""

    images: np.ndarray  # uint8, (N, H, W, C), channels last, C = 1 for grayscale
    labels: np.ndarray  # int64, (N,)
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(
                f"images must be a uint8 array of shape (N, H, W, C), got "
                f"{getattr(images, 'dtype', type(images))} {np.shape(images)}"
            )
        if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be integers, got {getattr(labels, 'dtype', labels)}")
        if labels.shape != (images.shape[0],):
            raise DataError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
        names = tuple(str(n) for n in self.class_names)
        if not names:
            raise DataError("class_names must not be empty")
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(
                f"labels must lie in [0, {len(names) - 1}], found [{labels.min()}, {labels.max()}]"
            )
        # Normalise in place (the dataclass is frozen) so every consumer sees int64 and a tuple.
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", names)

    def __len__(self) -> int:
        """Number of examples, so datasets work with len() and samplers."""
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray) -> ImageDataset:
        """Examples picked by an index array or boolean mask (copied), keeping the class names."""
        idx = np.asarray(indices)
        if idx.ndim != 1:
            raise DataError(f"subset indices must be one-dimensional, got shape {idx.shape}")
        if idx.dtype != np.bool_:
            idx = idx.astype(np.int64, copy=False)
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image, for sizing models."""
        _, h, w, c = self.images.shape
        return int(h), int(w), int(c)


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {_SPLITS}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format; gzipped when the name ends in .gz) into a native array."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise DataError(f"IDX file not found: {path}") from exc
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: bad IDX magic number {raw[:4].hex() or '(empty file)'}")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX dims {dims} need {expected} bytes, file has {len(raw)}")
    data = np.frombuffer(raw, dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def _find_file(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise DataError(f"missing {stem}(.gz) in {data_dir}")


def load_idx_dataset(data_dir: Path, split: str, class_names: Sequence[str]) -> ImageDataset:
    """Load an MNIST-layout IDX image/label pair (train-* or t10k-*, gzipped or not)."""
    _check_split(split)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory not found: {data_dir}")
    prefix = "train" if split == "train" else "t10k"
    img_path = _find_file(data_dir, f"{prefix}-images-idx3-ubyte")
    lbl_path = _find_file(data_dir, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lbl_path)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(
            f"{img_path}: expected uint8 images (N, H, W[, C]), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"shape mismatch: {img_path} has {images.shape[0]} images, "
            f"{lbl_path} has labels of shape {labels.shape}"
        )
    if images.ndim == 3:
        images = images[..., None]
    try:
        return ImageDataset(images, labels.astype(np.int64), tuple(class_names))
    except DataError as exc:
        raise DataError(f"{lbl_path}: {exc}") from exc


def load_fashion_mnist(split: str = "train", data_dir: Path | None = None) -> ImageDataset:
    """Fashion-MNIST (in-distribution set); defaults to the Debian package's directory."""
    if data_dir is None:
        data_dir = require("fashion_mnist", (split,))
    return load_idx_dataset(data_dir, split, FASHION_MNIST_CLASSES)


def load_mnist(split: str, data_dir: Path) -> ImageDataset:
    """MNIST digits (an out-of-distribution set for Fashion-MNIST); classes "0".."9"."""
    return load_idx_dataset(data_dir, split, tuple(str(d) for d in range(10)))


def load_notmnist(split: str, data_dir: Path) -> ImageDataset:
    """notMNIST letters (an out-of-distribution set for Fashion-MNIST); classes "A".."J"."""
    return load_idx_dataset(data_dir, split, tuple("ABCDEFGHIJ"))


def _decode(source: Path | bytes, mode: str, size: tuple[int, int] | None, name: str) -> np.ndarray:
    """Decode one image to a uint8 (H, W, C) array in Pillow mode 'L' or 'RGB'."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            out = im if im.mode == mode else im.convert(mode)  # skipping a no-op convert: ~25%
            if size is not None and out.size != tuple(size):
                out = out.resize(tuple(size), Image.Resampling.BILINEAR)
            arr = np.asarray(out, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        raise DataError(f"cannot decode image {name}: {exc}") from exc
    return arr[..., None] if arr.ndim == 2 else arr


def _stack(
    items: list[tuple[int, Path | bytes, str]],
    mode: str,
    size: tuple[int, int] | None,
    class_names: Sequence[str],
) -> ImageDataset:
    """Decode (label, source, name) items into one dataset; all images must share one shape."""
    if not items:
        raise DataError("no images found")
    first = _decode(items[0][1], mode, size, items[0][2])
    images = np.empty((len(items), *first.shape), np.uint8)
    images[0] = first
    for i, (_, src, name) in enumerate(items[1:], start=1):
        arr = _decode(src, mode, size, name)
        if arr.shape != first.shape:
            raise DataError(
                f"image {name} has shape {arr.shape}, expected {first.shape} like "
                f"{items[0][2]}; pass size= to resize"
            )
        images[i] = arr
    labels = np.fromiter((label for label, _, _ in items), np.int64, len(items))
    return ImageDataset(images, labels, tuple(class_names))


def _is_image(name: str) -> bool:
    return not Path(name).name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


#: Pillow modes whose pixels carry no colour: a folder of only these stays 1-channel.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})


def folder_classes(root: Path) -> list[str]:
    """Class names of a class-per-folder set: its visible sub-folders, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {root}")
    return classes


def folder_images(root: Path) -> list[tuple[int, Path]]:
    """(label, path) of every image under root/CLASS/ (classes and files sorted)."""
    classes = folder_classes(root)
    items = [
        (label, p)
        for label, cls in enumerate(classes)
        for p in sorted((Path(root) / cls).iterdir())
        if p.is_file() and _is_image(p.name)
    ]
    if not items:
        raise DataError(f"no images with extensions {sorted(IMAGE_EXTENSIONS)} under {root}")
    return items


def _is_gray(path: Path) -> bool:
    """Whether an image has no colour: a gray mode, or a palette/RGB image with R = G = B."""
    try:
        with Image.open(path) as im:
            if im.mode in _GRAY_MODES:
                return True
            if im.mode not in ("P", "RGB", "RGBA"):
                return False
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from exc
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def folder_channels(paths: Sequence[Path]) -> int:
    """1 if every image is grayscale (by its Pillow mode, or equal colour planes), else 3.

    Grayscale folders stay 1-channel: reading them as RGB would triple the input of the model
    and its likelihood's dimension for no information.
    """
    return 1 if all(_is_gray(Path(p)) for p in paths) else 3


def load_image_folder(
    root: Path, size: tuple[int, int] | None = None, channels: int | None = None
) -> ImageDataset:
    """Read root/CLASS/*.png|jpg|... (classes sorted) so any labelled folder can be evaluated.

    ``size`` is (width, height), Pillow's order; images are resized with BILINEAR when given,
    otherwise all images must already share one size.  ``channels`` None: 1 when every image
    is grayscale (:func:`folder_channels`), else 3.
    """
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    found = folder_images(root)
    if channels is None:
        channels = folder_channels([p for _, p in found])
    items = [(label, p, str(p)) for label, p in found]
    return _stack(items, "L" if channels == 1 else "RGB", size, folder_classes(root))


def _cifar_items(source: Path, split: str) -> tuple[list[tuple[str, str, Path | bytes]], set[str]]:
    """(class, name, bytes-or-path) of the split's images, and class folders of both splits."""
    found: list[tuple[str, str, Path | bytes]] = []
    classes: set[str] = set()
    if source.is_dir():
        if not (source / split).is_dir():
            raise DataError(f"no {split}/ folder in {source}")
        for s in _SPLITS:
            for cdir in (d for d in (source / s).glob("*") if d.is_dir()):
                classes.add(cdir.name)
                if s == split:
                    found += [(cdir.name, p.name, p) for p in cdir.iterdir() if _is_image(p.name)]
        return found, classes
    try:
        with tarfile.open(source, "r:gz") as tar:  # one streaming pass, nothing written to disk
            for member in tar:
                parts = member.name.strip("/").split("/")
                # Accept split/CLASS/FILE, optionally under one top folder; skip anything else.
                if not (
                    member.isfile()
                    and 3 <= len(parts) <= 4
                    and parts[-3] in _SPLITS
                    and _is_image(parts[-1])
                ):
                    continue
                classes.add(parts[-2])
                if parts[-3] == split:
                    found.append((parts[-2], parts[-1], tar.extractfile(member).read()))
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise DataError(f"cannot read CIFAR-10 archive {source}: {exc}") from exc
    return found, classes


def load_cifar10(split: str, source: Path, cache_dir: Path | None = None) -> ImageDataset:
    """CIFAR-10 from cifar10-jpg.tgz (streamed) or its extracted folder; classes sorted.

    With ``cache_dir`` the decoded arrays are saved to / loaded from cifar10-{split}.npz there,
    keyed by split only (delete the file if the source changes).
    """
    _check_split(split)
    cache = Path(cache_dir) / f"cifar10-{split}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            return ImageDataset(z["images"], z["labels"], tuple(z["class_names"].tolist()))
    source = Path(source)
    if not source.exists():
        raise DataError(f"CIFAR-10 source not found: {source}")
    found, classes = _cifar_items(source, split)
    if not found:
        raise DataError(f"no {split} images in CIFAR-10 source {source}")
    names = sorted(classes)
    index = {c: i for i, c in enumerate(names)}
    found.sort(key=lambda t: (t[0], t[1]))  # archive order is arbitrary; make it deterministic
    items = [(index[c], src, f"{source}:{split}/{c}/{n}") for c, n, src in found]
    ds = _stack(items, "RGB", None, names)
    if ds.image_shape != (32, 32, 3):
        raise DataError(f"CIFAR-10 images must be 32x32 RGB, got {ds.image_shape}")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, images=ds.images, labels=ds.labels, class_names=np.array(names))
    return ds


def _template(k: int, num_classes: int, size: int, channels: int) -> np.ndarray:
    """Smooth class pattern in [0, 1]: stripes at a class angle plus a blob at a class spot."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    angle = np.pi * k / num_classes
    planes = []
    for c in range(channels):
        stripes = np.cos(2 * np.pi * 1.5 * (xx * np.cos(angle) + yy * np.sin(angle)) + c)
        theta = 2 * np.pi * (k + 0.25 * c) / num_classes
        cy, cx = 0.5 + 0.3 * np.sin(theta), 0.5 + 0.3 * np.cos(theta)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05)
        planes.append(0.3 + 0.2 * stripes + 0.5 * blob)
    return np.stack(planes, axis=-1)


def make_synthetic(
    num_per_class: int = 64, num_classes: int = 4, size: int = 8, channels: int = 1, seed: int = 0
) -> ImageDataset:
    """Tiny deterministic learnable data set for tests; templates are fixed, seed drives noise.

    Different seeds give different samples of the same distribution (e.g. train vs test).
    """
    if num_per_class < 1 or num_classes < 1 or size < 2 or channels not in (1, 3):
        raise DataError(
            f"make_synthetic: bad num_per_class={num_per_class}, num_classes="
            f"{num_classes}, size={size} (>= 2) or channels={channels} (1 or 3)"
        )
    rng = np.random.default_rng(seed)
    templates = np.stack([_template(k, num_classes, size, channels) for k in range(num_classes)])
    labels = rng.permutation(np.repeat(np.arange(num_classes, dtype=np.int64), num_per_class))
    noise = rng.normal(0.0, 0.05, size=(labels.size, size, size, channels))
    images = np.clip(np.rint((templates[labels] + noise) * 255), 0, 255).astype(np.uint8)
    return ImageDataset(images, labels, tuple(f"class_{k}" for k in range(num_classes)))


def split_calibration(
    dataset: ImageDataset, calibration_size: int, seed: int = 0
) -> tuple[ImageDataset, ImageDataset]:
    """Stratified (train_part, calibration_part) split; disjoint so p-values stay valid.

    Per-class calibration counts follow largest-remainder proportional allocation in integer
    arithmetic and numpy's default_rng(seed) picks the items, so the split is the same anywhere.
    """
    n = len(dataset)
    if not 0 < calibration_size < n:
        raise DataError(f"calibration_size must be in [1, {n - 1}], got {calibration_size}")
    counts = np.bincount(dataset.labels, minlength=len(dataset.class_names)).astype(np.int64)
    quota, remainder = np.divmod(calibration_size * counts, n)
    extra = calibration_size - int(quota.sum())
    quota[np.argsort(-remainder, kind="stable")[:extra]] += 1
    rng = np.random.default_rng(seed)
    calib = np.zeros(n, dtype=bool)
    for k, q in enumerate(quota):
        members = np.flatnonzero(dataset.labels == k)
        calib[rng.permutation(members)[:q]] = True
    return dataset.subset(np.flatnonzero(~calib)), dataset.subset(np.flatnonzero(calib))


def _load_folder_split(
    root: Path,
    split: str,
    size: tuple[int, int] | None,
    channels: int | None,
    test_fraction: float,
    seed: int,
) -> ImageDataset:
    """root/split/CLASS/* when root has that split; else root/CLASS/* with a seeded split.

    The single-folder split is stratified (:func:`split_calibration`) with ``test_fraction`` of
    the images held out as "test"; ``test_fraction`` 0 keeps the old behaviour (every split
    reads the whole folder).
    """
    if (root / split).is_dir():
        return load_image_folder(root / split, size, channels)
    whole = load_image_folder(root, size, channels)
    if test_fraction <= 0:
        return whole
    held_out = max(1, int(round(test_fraction * len(whole))))
    train_part, test_part = split_calibration(whole, held_out, seed)
    return train_part if split == "train" else test_part


def load_dataset(
    name: str,
    split: str,
    data_dir: Path | None = None,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
) -> ImageDataset:
    """Load a data set by registry name, so configs and CLIs can name data sets as strings.

    Without data_dir the set comes from the data root (training.data_root).  "synthetic"
    ignores data_dir (seed 0 for train, 1 for test); "folder" reads data_dir/split if that
    folder exists, else data_dir split by ``test_fraction`` and ``seed`` (size (width, height)
    and channels apply to it only); "cifar10" takes the archive, its extracted folder, or a
    folder holding cifar10-jpg.tgz.
    """
    known = ("fashion_mnist", "mnist", "notmnist", "cifar10", "synthetic", "folder")
    if name not in known:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(known)}")
    _check_split(split)
    if name == "synthetic":
        return make_synthetic(seed=_SPLITS.index(split))
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir)
    if data_dir is None:
        if name == "folder":
            raise DataError("data set 'folder' needs data_dir")
        data_dir = require(name, (split,))  # the data root; DataMissingError names `make data`
    data_dir = Path(data_dir)
    if name == "mnist":
        return load_mnist(split, data_dir)
    if name == "notmnist":
        return load_notmnist(split, data_dir)
    if name == "cifar10":
        archive = data_dir / "cifar10-jpg.tgz"
        use_archive = data_dir.is_dir() and archive.is_file() and not (data_dir / split).is_dir()
        return load_cifar10(split, archive if use_archive else data_dir)
    return _load_folder_split(data_dir, split, size, channels, test_fraction, seed)


def load_recorded(training: dict, split: str, data_dir: Path | None = None) -> ImageDataset:
    """The ``split`` of the data set a training run recorded in its manifest's ``training``.

    ``data_dir`` overrides the recorded location; a folder set is read with the recorded image
    size, channels and test split, so calibration and evaluation see the pixels training saw.
    """
    config = training.get("config", {})
    recorded = training.get("data_dir")
    size = config.get("image_size")
    return load_dataset(
        training.get("dataset", "fashion_mnist"),
        split,
        Path(data_dir) if data_dir is not None else (Path(recorded) if recorded else None),
        size=(int(size[1]), int(size[0])) if size else None,  # recorded (height, width)
        channels=config.get("channels"),
        test_fraction=float(config.get("test_fraction", 0.0)),
        seed=int(config.get("seed", 0)),
    )
