"""Where the data sets live: one data root for every command, test and benchmark.

The data root holds one folder per public set (``mnist/``, ``notmnist/``, ``cifar10/``) laid out
as :data:`LAYOUT` says.  It is, first match wins:

1. ``$TRUSTGC_DATA`` when set (an explicit choice, used even if it does not exist, so that a
   wrong path fails loudly instead of silently falling back);
2. ``../shared/data`` beside the repository, when that folder exists (this project's CI);
3. ``data/`` inside the repository (git-ignored), where ``make data`` fetches into.

Fashion-MNIST is the in-distribution set and comes from Debian's ``dataset-fashion-mnist``
package (``make setup`` installs it) in ``/usr/share/datasets/fashion-mnist``;
``$TRUSTGC_FASHION_MNIST`` overrides that folder the same way.

Nothing here reads the files: :func:`require` only checks that the expected ones exist, so a
missing set is reported with the command that fetches it instead of a deep ``FileNotFoundError``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "DATA_ENV",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_ENV",
    "FETCH_COMMAND",
    "LAYOUT",
    "DataMissingError",
    "data_root",
    "dataset_dir",
    "require",
]

DATA_ENV = "TRUSTGC_DATA"
FASHION_MNIST_ENV = "TRUSTGC_FASHION_MNIST"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
LOCAL_DATA = REPO_ROOT / "data"
FETCH_COMMAND = "make data"  # or python -m training.fetch_data; trustgc data fetch

#: Each set's files per split, relative to its folder; one file of each tuple of alternatives is
#: enough (gzipped or not; CIFAR-10 is the JPEG archive or its extracted train/ and test/).
_IDX = {
    split: tuple(
        (f"{prefix}-{kind}-ubyte.gz", f"{prefix}-{kind}-ubyte")
        for kind in ("images-idx3", "labels-idx1")
    )
    for split, prefix in (("train", "train"), ("test", "t10k"))
}
LAYOUT: dict[str, dict[str, tuple[tuple[str, ...], ...]]] = {
    "fashion_mnist": _IDX,
    "mnist": {"test": _IDX["test"]},
    "notmnist": {"test": _IDX["test"]},
    "cifar10": {split: (("cifar10-jpg.tgz", split),) for split in ("train", "test")},
}


class DataMissingError(FileNotFoundError):
    """A data set is not where the data root says; the message names the command that fetches
    it (a FileNotFoundError, so callers that already handle missing files keep working)."""


def data_root() -> Path:
    """The folder holding mnist/, notmnist/ and cifar10/ (see the module docstring)."""
    explicit = os.environ.get(DATA_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return SHARED_DATA if SHARED_DATA.is_dir() else LOCAL_DATA


def dataset_dir(name: str) -> Path:
    """The folder of one set: Fashion-MNIST's Debian folder, else ``data_root() / name``."""
    if name not in LAYOUT:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(LAYOUT)}")
    if name == "fashion_mnist":
        return Path(os.environ.get(FASHION_MNIST_ENV) or DEBIAN_FASHION_MNIST).expanduser()
    return data_root() / name


def _how_to_get(name: str) -> str:
    if name == "fashion_mnist":
        return (
            "install Debian's dataset-fashion-mnist (make setup does) or point "
            f"${FASHION_MNIST_ENV} at a folder with the four IDX files"
        )
    return (
        f"run `{FETCH_COMMAND}` (python -m training.fetch_data) or point ${DATA_ENV} at a "
        f"folder holding {name}/"
    )


def require(name: str, splits: tuple[str, ...] = ("test",)) -> Path:
    """The set's folder, after checking its files for ``splits`` exist; else DataMissingError
    naming the folder, the missing files and how to get them."""
    directory = dataset_dir(name)
    unknown = set(splits) - set(LAYOUT[name])
    if unknown:
        raise ValueError(
            f"data set {name!r} has no split {sorted(unknown)}; has {sorted(LAYOUT[name])}"
        )
    wanted = [alternatives for split in splits for alternatives in LAYOUT[name][split]]
    missing = [alts[0] for alts in wanted if not any((directory / a).exists() for a in alts)]
    if missing:
        raise DataMissingError(
            f"data set {name!r} is missing in {directory} (no {', '.join(missing)}): "
            f"{_how_to_get(name)}"
        )
    return directory
