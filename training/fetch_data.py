"""``make data``: put MNIST, notMNIST and CIFAR-10 under the data root, verified by sha256.

    python -m training.fetch_data [--root DIR] [--sets mnist notmnist cifar10] [--from DIR]
    python -m training.fetch_data --check [--root DIR]

Each file is downloaded from its official source (mirrors in order), hashed while it streams to
a temporary file, and renamed into place only when its sha256 matches :data:`FILES`; a file
already present with the right hash is not fetched again.  ``--from DIR`` takes the files from a
local folder instead (same names, same checks): the way in for the sets without a stable public
URL.

- MNIST test set: Yann LeCun's page, then PyTorch's mirror of the same files.
- notMNIST test set in IDX format: no official source exists (Y. Bulatov published PNG folders
  on a personal page, not this conversion), so it is taken only with ``--from``.
- CIFAR-10: the official python archive from the University of Toronto (sha256 checked before
  it is opened), converted to lossless PNG folders ``cifar10/train/CLASS/NNNNN.png`` and
  ``test/...``, which the loaders read like the JPEG archive ``cifar10-jpg.tgz`` that ``--from``
  also accepts.

:func:`fetch` and :func:`check` return a :class:`Report`; ``main`` prints it and exits 1 when a
set is still missing, with one line per set and no traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from training.data_root import DATA_ENV, data_root

__all__ = ["FILES", "SETS", "FileSource", "Report", "SetReport", "check", "fetch", "main"]


class FileSource(BaseModel):
    """One file of a set: where it goes (relative to the data root), its sha256, its URLs."""

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    urls: tuple[str, ...] = ()


_MNIST_URLS = (
    "https://yann.lecun.com/exdb/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)
CIFAR10_ARCHIVE = FileSource(
    path="cifar10/cifar-10-python.tar.gz",
    sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
)

#: The verified files of each set (sha256 as published with the data in ../shared/data/README.md).
FILES: dict[str, tuple[FileSource, ...]] = {
    "mnist": tuple(
        FileSource(path=f"mnist/{name}", sha256=digest, urls=tuple(u + name for u in _MNIST_URLS))
        for name, digest in (
            (
                "t10k-images-idx3-ubyte.gz",
                "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
            ),
        )
    ),
    "notmnist": (
        FileSource(
            path="notmnist/t10k-images-idx3-ubyte.gz",
            sha256="70ae9e06201f2827e5b0a3781a3169d735dd2efc69996b9eeaee7f10ed4044d7",
        ),
        FileSource(
            path="notmnist/t10k-labels-idx1-ubyte.gz",
            sha256="1fa03836e01c862542f8eb83463bb951bebec6fcb3efa28dad748c6b38a9021b",
        ),
    ),
    "cifar10": (
        FileSource(
            path="cifar10/cifar10-jpg.tgz",
            sha256="d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965",
        ),
    ),
}
SETS = tuple(FILES)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_SPLIT_SIZES = {"train": 50_000, "test": 10_000}
NO_SOURCE = {
    "notmnist": "notMNIST in IDX format has no official download (Bulatov published PNG folders, "
    "not this conversion): copy its two t10k-*.gz files into a folder and pass --from DIR",
}
Status = Literal["present", "fetched", "missing", "bad_checksum", "unreachable"]


class SetReport(BaseModel):
    """What happened to one set; ``detail`` says why in words a user can act on."""

    name: str
    status: Status
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("present", "fetched")


class Report(BaseModel):
    root: str
    sets: list[SetReport]

    @property
    def ok(self) -> bool:
        return all(item.ok for item in self.sets)

    def lines(self) -> list[str]:
        out = [f"data root: {self.root}"]
        out += [f"  {s.name:9s} {s.status:13s} {s.detail}".rstrip() for s in self.sets]
        return out


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, expected: str) -> bool:
    return path.is_file() and sha256_of(path) == expected


# ----------------------------------------------------------------------------- CIFAR-10
def _cifar_folder_complete(directory: Path) -> bool:
    """Both splits extracted, every class folder with its share of the images."""
    for split, size in CIFAR10_SPLIT_SIZES.items():
        per_class = size // len(CIFAR10_CLASSES)
        for name in CIFAR10_CLASSES:
            folder = directory / split / name
            if not folder.is_dir() or sum(1 for _ in folder.glob("*.png")) != per_class:
                return False
    return True


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches' dicts of numpy arrays and lists, and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # the official (Python 2) pickles
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2's name for it
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in CIFAR-10 batch")
        return super().find_class(module, name)


def _convert_cifar10(archive: Path, directory: Path) -> None:
    """cifar-10-python.tar.gz (already verified) -> directory/{train,test}/CLASS/NNNNN.png."""
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".cifar10-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for split, names in batches.items():
                index = 0
                for batch in names:
                    raw = _ArrayUnpickler(
                        io.BytesIO(tar.extractfile(members[batch]).read()), encoding="bytes"
                    ).load()
                    images = np.asarray(raw[b"data"], np.uint8).reshape(-1, 3, 32, 32)
                    for image, label in zip(
                        images.transpose(0, 2, 3, 1), raw[b"labels"], strict=True
                    ):
                        folder = staging / split / CIFAR10_CLASSES[label]
                        folder.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(image).save(folder / f"{index:05d}.png")
                        index += 1
        for split in batches:
            shutil.rmtree(directory / split, ignore_errors=True)
            (staging / split).rename(directory / split)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ----------------------------------------------------------------------------- fetching
class _Problem(Exception):
    """Why one file could not be put in place; becomes the set's status and detail."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _download(urls: Sequence[str], target: Path, expected: str, timeout: float) -> None:
    """Stream the first reachable URL to target, kept only if its sha256 matches."""
    problems, status = [], "unreachable"
    partial = target.with_name(target.name + ".part")
    for url in urls:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, partial.open("wb") as f:
                for block in iter(lambda r=response: r.read(1 << 20), b""):
                    digest.update(block)
                    f.write(block)
        except (urllib.error.URLError, OSError, ValueError) as error:
            partial.unlink(missing_ok=True)
            problems.append(f"{url}: {getattr(error, 'reason', error)}")
            continue
        if digest.hexdigest() != expected:
            partial.unlink(missing_ok=True)
            problems.append(f"{url}: sha256 {digest.hexdigest()}, expected {expected}")
            status = "bad_checksum"
            continue
        partial.rename(target)
        return
    raise _Problem(status, "; ".join(problems))


def _copy_verified(source: Path, target: Path, expected: str) -> None:
    if not source.is_file():
        raise _Problem("missing", f"{source} not found")
    actual = sha256_of(source)
    if actual != expected:
        raise _Problem("bad_checksum", f"{source}: sha256 {actual}, expected {expected}")
    partial = target.with_name(target.name + ".part")
    shutil.copyfile(source, partial)
    partial.rename(target)


def _fetch_cifar10_official(root: Path, timeout: float) -> None:
    archive = root / CIFAR10_ARCHIVE.path
    if not _verified(archive, CIFAR10_ARCHIVE.sha256):
        _download(CIFAR10_ARCHIVE.urls, archive, CIFAR10_ARCHIVE.sha256, timeout)
    _convert_cifar10(archive, root / "cifar10")
    archive.unlink()


def _fetch_set(
    root: Path, name: str, files: Sequence[FileSource], source_dir: Path | None, timeout: float
) -> SetReport:
    """Put one set in place from source_dir, its URLs or (CIFAR-10) the official archive."""
    (root / name).mkdir(parents=True, exist_ok=True)
    try:
        if source_dir is None and name == "cifar10":
            _fetch_cifar10_official(root, timeout)
            return SetReport(name=name, status="fetched", detail="official archive, as PNG folders")
        for item in files:
            target = root / item.path
            if _verified(target, item.sha256):
                continue
            if source_dir is not None:
                # DIR laid out like the data root (mnist/...), or one set's files side by side.
                candidates = (source_dir / item.path, source_dir / Path(item.path).name)
                source = next((c for c in candidates if c.is_file()), candidates[0])
                _copy_verified(source, target, item.sha256)
            elif item.urls:
                _download(item.urls, target, item.sha256, timeout)
            else:
                raise _Problem("missing", NO_SOURCE.get(name, "no download source known"))
    except _Problem as problem:
        return SetReport(name=name, status=problem.status, detail=problem.detail)
    return SetReport(name=name, status="fetched", detail="sha256 verified")


def _check_set(root: Path, name: str, files: Sequence[FileSource]) -> SetReport:
    if name == "cifar10" and _cifar_folder_complete(root / name):
        return SetReport(name=name, status="present", detail="PNG folders (official archive)")
    missing = [f.path for f in files if not (root / f.path).is_file()]
    if missing:
        return SetReport(name=name, status="missing", detail=f"no {', '.join(missing)}")
    bad = [f.path for f in files if not _verified(root / f.path, f.sha256)]
    if bad:
        return SetReport(name=name, status="bad_checksum", detail=f"wrong sha256: {bad}")
    return SetReport(name=name, status="present", detail="sha256 verified")


def check(root: Path | None = None, sets: Iterable[str] = SETS) -> Report:
    """What is present under the data root, each file's sha256 verified."""
    root = Path(root) if root is not None else data_root()
    return Report(root=str(root), sets=[_check_set(root, n, FILES[n]) for n in sets])


def fetch(
    root: Path | None = None,
    sets: Iterable[str] = SETS,
    source_dir: Path | None = None,
    timeout: float = 30.0,
    files: Mapping[str, Sequence[FileSource]] = FILES,
) -> Report:
    """Fetch every set not yet present (verified) into the data root; never raises for a
    network or checksum problem: the report says what happened to each set."""
    root = Path(root) if root is not None else data_root()
    reports = []
    for name in sets:
        if name not in files:
            raise ValueError(f"unknown data set {name!r}; known: {', '.join(files)}")
        present = _check_set(root, name, files[name])
        if present.ok:
            reports.append(present)
            continue
        reports.append(_fetch_set(root, name, files[name], source_dir, timeout))
    return Report(root=str(root), sets=reports)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.fetch_data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--root", type=Path, help=f"data root (default: ${DATA_ENV} or ../shared/data)"
    )
    parser.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--from", dest="source_dir", type=Path, help="take the files from DIR")
    parser.add_argument("--check", action="store_true", help="only verify what is present")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per connection")
    args = parser.parse_args(argv)
    if args.check:
        report = check(args.root, args.sets)
    else:
        try:
            report = fetch(args.root, args.sets, args.source_dir, args.timeout)
        except OSError as error:  # e.g. the data root is not writable
            print(f"fetch_data: {error}", file=sys.stderr)
            return 1
    print("\n".join(report.lines()))
    if not report.ok:
        fix = (
            "Fetch them with `make data` (python -m training.fetch_data)"
            if args.check
            else "Fix the network, or pass --from DIR with the files,"
        )
        print(f"{fix} or point ${DATA_ENV} at a folder that has them.", file=sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
