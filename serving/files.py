"""Which files a command reads: named files as given, directories expanded to their images.

Shared by ``trustgc classify`` (a client, installed without torch) and ``trustgc score``, so both
treat ``FILES|DIR`` arguments alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "collect_files"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def collect_files(inputs: Iterable[Path]) -> list[Path]:
    """Files as given, and the images under each directory (recursively, sorted).

    A named file is kept whatever it holds, even when missing (it gets an error row or line);
    inside a directory only files with an image suffix are taken.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.is_file() and _is_image(p))
        else:
            files.append(item)
    return files
