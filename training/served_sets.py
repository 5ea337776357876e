"""Image sets as the server sees them: every file's bytes go through ``serving.decode``.

The OoD evaluation and the background model's training data must meet the same pixels a user's
upload becomes (colour to grayscale by ITU-R 601 luma, EXIF orientation, padding and the
antialiased resize to the model's size).  Decoding a CIFAR-10 JPEG with another path (e.g. a
plain ``convert('L')`` and no resize) gives different pixels and a different answer, so every
folder of files is read here from its original bytes and decoded by the handler's function.

Decoded arrays of a whole split are cached as ``.npy`` (uint8, (N, C, H, W)) in a cache folder
that git ignores; the cache key names the split and the target shape.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from serving.decode import decode_image

__all__ = [
    "CACHE_DIR",
    "cifar10_archive_bytes",
    "decode_files",
    "folder_bytes",
    "served_cifar10",
]

CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "served"
_IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def decode_files(blobs: Iterable[bytes], shape: tuple[int, int, int]) -> np.ndarray:
    """Each image's bytes -> the model's uint8 input (N, C, H, W), exactly as the handler does."""
    channels, height, width = shape
    decoded = [decode_image(blob, height, width, channels) for blob in blobs]
    if not decoded:
        raise ValueError("no images to decode")
    return np.stack(decoded)


def cifar10_archive_bytes(archive: Path, split: str) -> Iterator[tuple[str, bytes]]:
    """(member name, JPEG bytes) of one split of cifar10-jpg.tgz, in sorted member-name order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    found: list[tuple[str, bytes]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = member.name.strip("/").split("/")
            if member.isfile() and split in parts[:-2] and Path(parts[-1]).suffix == ".jpg":
                found.append((member.name, tar.extractfile(member).read()))
    if not found:
        raise ValueError(f"no {split} JPEGs in {archive}")
    yield from sorted(found)


def folder_bytes(folder: Path) -> list[bytes]:
    """Every image file's bytes under ``folder`` (recursively, sorted by path)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder not found: {folder}")
    paths = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    )
    if not paths:
        raise ValueError(f"no image files under {folder}")
    return [p.read_bytes() for p in paths]


def served_cifar10(
    data_root: Path, split: str, shape: tuple[int, int, int], cache_dir: Path | None = CACHE_DIR
) -> np.ndarray:
    """CIFAR-10 ``split`` decoded as served (cached); image i is the i-th member by name."""
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"cifar10-{split}-{'x'.join(map(str, shape))}.npy"
        if cache.is_file():
            return np.load(cache)
    archive = Path(data_root) / "cifar10" / "cifar10-jpg.tgz"
    if not archive.is_file():
        raise ValueError(f"CIFAR-10 archive not found: {archive} (set the data root)")
    pixels = decode_files((blob for _, blob in cifar10_archive_bytes(archive, split)), shape)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_suffix(".partial.npy")
        np.save(temporary, pixels)
        temporary.replace(cache)
    return pixels
