"""Tests for training.data: IDX/JPEG/folder loaders, synthetic data and the calibration split."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    FASHION_MNIST_CLASSES,
    DataError,
    ImageDataset,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist,
    load_notmnist,
    make_synthetic,
    read_idx,
    split_calibration,
)

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write an IDX file by hand (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, IDX_CODES[array.dtype], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


# ---------------------------------------------------------------- IDX


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32])
def test_read_idx_round_trip(tmp_path: Path, suffix: str, dtype: type) -> None:
    rng = np.random.default_rng(1)
    array = (rng.integers(0, 255, size=(5, 3, 4)) - (0 if dtype == np.uint8 else 100)).astype(dtype)
    out = read_idx(write_idx(tmp_path / f"x-idx3-ubyte{suffix}", array))
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    assert out.shape == (5, 3, 4)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 7  # a writable copy, not a view on the file buffer


def test_read_idx_1d_labels(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "l.idx", labels)), labels)


def test_read_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(bytes([0x1F, 0x8B, 0x08, 0x01]) + struct.pack(">I", 2) + b"\x01\x02")
    with pytest.raises(DataError, match="magic"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x42, 1]) + struct.pack(">I", 2) + b"\x01\x02")  # unknown type
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


def test_read_idx_truncated_and_oversized(tmp_path: Path) -> None:
    raw = write_idx(tmp_path / "good", np.zeros((4, 2, 2), np.uint8)).read_bytes()
    assert len(raw) == 32
    assert read_idx(tmp_path / "good").shape == (4, 2, 2)
    short = tmp_path / "short"
    short.write_bytes(raw[:-1])
    with pytest.raises(DataError, match=r"short: IDX dims .* need 32 bytes, file has 31"):
        read_idx(short)
    header_only = tmp_path / "header"
    header_only.write_bytes(raw[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(header_only)
    long = tmp_path / "long"
    long.write_bytes(raw + b"\x00")
    with pytest.raises(DataError, match="need 32 bytes, file has 33"):
        read_idx(long)


def test_read_idx_missing_and_corrupt_gzip(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"not found.*nope.gz"):
        read_idx(tmp_path / "nope.gz")
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"bad\.gz"):
        read_idx(bad)


def write_idx_pair(
    data_dir: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool
) -> None:
    ext = ".gz" if gz else ""
    write_idx(data_dir / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(data_dir / f"{prefix}-labels-idx1-ubyte{ext}", labels)


def test_load_idx_dataset(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    train_y = np.array([0, 1, 2, 2, 1, 0], dtype=np.uint8)
    test_x = rng.integers(0, 256, size=(3, 5, 4), dtype=np.uint8)
    write_idx_pair(tmp_path, "train", train_x, train_y, gz=True)
    write_idx_pair(tmp_path, "t10k", test_x, np.array([2, 0, 1], np.uint8), gz=False)

    train = load_idx_dataset(tmp_path, "train", ["a", "b", "c"])
    assert train.images.shape == (6, 5, 4, 1)
    assert train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64
    assert train.labels.tolist() == [0, 1, 2, 2, 1, 0]
    assert train.class_names == ("a", "b", "c")
    assert train.image_shape == (5, 4, 1)
    np.testing.assert_array_equal(train.images[..., 0], train_x)
    test = load_idx_dataset(tmp_path, "test", ("a", "b", "c"))
    assert len(test) == 3
    assert test.labels.tolist() == [2, 0, 1]

    with pytest.raises(DataError, match="split"):
        load_idx_dataset(tmp_path, "validation", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\]"):
        load_idx_dataset(tmp_path, "train", ["a", "b"])


def test_load_idx_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_idx_dataset(tmp_path, "train", ["a"])
    images = np.zeros((4, 2, 2), np.uint8)
    write_idx_pair(tmp_path, "train", images, np.zeros(3, np.uint8), gz=True)
    with pytest.raises(DataError, match="shape mismatch"):
        load_idx_dataset(tmp_path, "train", ["a"])


# ---------------------------------------------------------------- ImageDataset


def test_image_dataset_validation_and_subset() -> None:
    images = np.arange(5 * 2 * 3 * 1, dtype=np.uint8).reshape(5, 2, 3, 1)
    ds = ImageDataset(images, np.array([0, 1, 1, 0, 1], dtype=np.int32), ["x", "y"])
    assert ds.labels.dtype == np.int64
    assert ds.class_names == ("x", "y")
    assert len(ds) == 5
    assert ds.image_shape == (2, 3, 1)
    sub = ds.subset(np.array([4, 0]))
    assert sub.labels.tolist() == [1, 0]
    assert sub.class_names == ("x", "y")
    np.testing.assert_array_equal(sub.images, images[[4, 0]])
    masked = ds.subset(ds.labels == 1)
    assert len(masked) == 3
    assert masked.labels.tolist() == [1, 1, 1]
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(images.astype(np.float32), ds.labels, ("x", "y"))
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(images[..., 0], ds.labels, ("x", "y"))
    with pytest.raises(DataError, match="does not match"):
        ImageDataset(images, ds.labels[:4], ("x", "y"))
    with pytest.raises(DataError, match="integers"):
        ImageDataset(images, ds.labels.astype(np.float64), ("x", "y"))
    with pytest.raises(DataError, match="lie in"):
        ImageDataset(images, np.array([0, 1, 2, 0, 1]), ("x", "y"))
    with pytest.raises(DataError, match="lie in"):
        ImageDataset(images, np.array([0, -1, 1, 0, 1]), ("x", "y"))


# ---------------------------------------------------------------- real data


def test_fashion_mnist_real(data_set_dir) -> None:
    data_set_dir("fashion_mnist", ("train", "test"))
    start = time.perf_counter()
    train = load_fashion_mnist("train")
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"loading Fashion-MNIST train took {elapsed:.2f} s"
    test = load_fashion_mnist("test")
    assert train.images.shape == (60000, 28, 28, 1)
    assert train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28, 1)
    assert train.class_names == FASHION_MNIST_CLASSES
    assert len(train.class_names) == 10
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert test.labels[:5].tolist() == [9, 2, 1, 1, 6]
    assert 72.5 < train.images.mean() < 73.5  # the well-known 0.286 * 255
    assert load_dataset("fashion_mnist", "test").labels[:5].tolist() == [9, 2, 1, 1, 6]


def test_mnist_real(data_set_dir) -> None:
    mnist = data_set_dir("mnist")
    ds = load_mnist("test", mnist)
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.class_names[0] == "0"
    assert ds.class_names == tuple("0123456789")
    assert np.bincount(ds.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist("train", mnist)  # only the test split is shipped


def test_notmnist_real(data_set_dir) -> None:
    notmnist = data_set_dir("notmnist")
    ds = load_dataset("notmnist", "test", notmnist)
    assert ds.images.shape == (10000, 28, 28, 1)
    assert ds.class_names == tuple("ABCDEFGHIJ")
    assert np.bincount(ds.labels).tolist() == [1000] * 10
    np.testing.assert_array_equal(ds.labels, load_notmnist("test", notmnist).labels)


@pytest.mark.slow
@pytest.mark.parametrize(("split", "per_class"), [("test", 1000), ("train", 5000)])
def test_cifar10_real(split: str, per_class: int, data_set_dir) -> None:
    ds = load_dataset("cifar10", split, data_set_dir("cifar10", (split,)))
    assert ds.images.shape == (10 * per_class, 32, 32, 3)
    assert ds.images.dtype == np.uint8
    assert ds.class_names == (
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
    assert np.bincount(ds.labels).tolist() == [per_class] * 10
    assert 100 < ds.images.mean() < 140


# ---------------------------------------------------------------- CIFAR-10 layout, faked

FAKE_COLOURS = {"dog": (200, 30, 30), "airplane": (30, 200, 30), "cat": (30, 30, 200)}


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_fake_cifar(path: Path, top: str, per_class: int = 3) -> Path:
    """A cifar10-jpg.tgz look-alike; classes written in non-sorted order, files reversed."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls, colour in FAKE_COLOURS.items():
                for i in reversed(range(per_class if split == "train" else 1)):
                    data = jpeg_bytes(colour)
                    info = tarfile.TarInfo(f"{top}{split}/{cls}/{i:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        readme = tarfile.TarInfo(f"{top}README.txt")
        readme.size = 2
        tar.addfile(readme, io.BytesIO(b"hi"))
    return path


def check_fake_cifar(ds: ImageDataset, n_per_class: int) -> None:
    assert ds.class_names == ("airplane", "cat", "dog")
    assert ds.images.shape == (3 * n_per_class, 32, 32, 3)
    assert ds.images.dtype == np.uint8
    assert ds.labels.tolist() == sorted(ds.labels.tolist())  # deterministic (class, name) order
    for image, label in zip(ds.images, ds.labels, strict=True):
        expected = np.array(FAKE_COLOURS[ds.class_names[label]])
        assert np.abs(image.reshape(-1, 3).mean(0) - expected).max() < 6


@pytest.mark.parametrize("top", ["", "cifar10/"])
def test_cifar10_fake_archive(tmp_path: Path, top: str) -> None:
    archive = make_fake_cifar(tmp_path / "cifar10-jpg.tgz", top)
    check_fake_cifar(load_cifar10("train", archive), 3)
    check_fake_cifar(load_cifar10("test", archive), 1)
    assert len(load_dataset("cifar10", "test", tmp_path)) == 3  # folder holding the archive


def test_cifar10_fake_directory_and_cache(tmp_path: Path) -> None:
    root = tmp_path / "extracted"
    with tarfile.open(make_fake_cifar(tmp_path / "c.tgz", "")) as tar:
        tar.extractall(root, filter="data")
    check_fake_cifar(load_cifar10("train", root), 3)
    cached = load_cifar10("test", root, cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "cifar10-test.npz").is_file()
    again = load_cifar10("test", tmp_path / "gone", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again.images, cached.images)
    np.testing.assert_array_equal(again.labels, cached.labels)
    assert again.class_names == cached.class_names == ("airplane", "cat", "dog")
    with pytest.raises(DataError, match="not found"):
        load_cifar10("test", tmp_path / "gone")


def test_cifar10_rejects_wrong_size(tmp_path: Path) -> None:
    data = jpeg_bytes((1, 2, 3), size=(16, 16))
    with tarfile.open(tmp_path / "x.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("test/cat/0000.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(DataError, match="32x32"):
        load_cifar10("test", tmp_path / "x.tgz")
    with pytest.raises(DataError, match="no train images"):
        load_cifar10("train", tmp_path / "x.tgz")


# ---------------------------------------------------------------- image folders


def make_folder(root: Path) -> Path:
    (root / "red").mkdir(parents=True)
    (root / "blue").mkdir()
    Image.new("RGB", (10, 6), (255, 0, 0)).save(root / "red" / "a.png")
    Image.new("RGB", (10, 6), (255, 0, 0)).save(root / "red" / "b.PNG")
    Image.new("RGB", (20, 12), (0, 0, 255)).save(root / "blue" / "c.png")
    (root / "blue" / "notes.txt").write_text("not an image")
    return root


def test_load_image_folder_resize_and_grayscale(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    ds = load_image_folder(root, size=(5, 3), channels=1)  # (width, height)
    assert ds.class_names == ("blue", "red")
    assert ds.images.shape == (3, 3, 5, 1)
    assert ds.image_shape == (3, 5, 1)
    assert ds.labels.tolist() == [0, 1, 1]
    assert np.all(ds.images[0] == 29)  # L = 0.114 * 255 for pure blue
    assert np.all(ds.images[1:] == 76)  # L = 0.299 * 255 for pure red
    rgb = load_image_folder(root, size=(4, 4))
    assert rgb.images.shape == (3, 4, 4, 3)
    np.testing.assert_array_equal(rgb.images[0, 0, 0], [0, 0, 255])
    np.testing.assert_array_equal(rgb.images[2, 3, 3], [255, 0, 0])


def test_load_image_folder_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="size="):
        load_image_folder(root)  # 20x12 and 10x6 images without resizing
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="channels"):
        load_image_folder(root, channels=2)
    (root / "red" / "broken.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"broken\.png"):
        load_image_folder(root, size=(4, 4))


def test_load_dataset_folder_uses_split_subfolder(tmp_path: Path) -> None:
    make_folder(tmp_path / "train")
    with pytest.raises(DataError, match="size="):
        load_dataset("folder", "train", tmp_path)
    (tmp_path / "test" / "only").mkdir(parents=True)
    Image.new("L", (3, 3), 9).save(tmp_path / "test" / "only" / "x.bmp")
    ds = load_dataset("folder", "test", tmp_path)
    assert ds.class_names == ("only",)
    assert ds.images.shape == (1, 3, 3, 1)  # a grayscale folder stays 1-channel
    assert np.all(ds.images == 9)


# ---------------------------------------------------------------- synthetic data


def test_make_synthetic_deterministic_and_balanced() -> None:
    a = make_synthetic(num_per_class=10, num_classes=3, size=8, seed=5)
    b = make_synthetic(num_per_class=10, num_classes=3, size=8, seed=5)
    c = make_synthetic(num_per_class=10, num_classes=3, size=8, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (30, 8, 8, 1)
    assert a.images.dtype == np.uint8
    assert a.labels.dtype == np.int64
    assert np.bincount(a.labels).tolist() == [10, 10, 10]
    assert len(a.class_names) == 3
    assert len(set(a.class_names)) == 3
    assert a.labels[:10].tolist() != sorted(a.labels[:10].tolist())  # shuffled, not grouped
    rgb = make_synthetic(num_per_class=2, num_classes=5, size=6, channels=3)
    assert rgb.images.shape == (10, 6, 6, 3)
    assert rgb.image_shape == (6, 6, 3)
    with pytest.raises(DataError):
        make_synthetic(channels=2)


@pytest.mark.parametrize(("num_classes", "channels"), [(4, 1), (10, 3)])
def test_make_synthetic_is_learnable(num_classes: int, channels: int) -> None:
    """Nearest class mean from one seed must classify a fresh seed almost perfectly."""
    train = make_synthetic(num_per_class=32, num_classes=num_classes, channels=channels, seed=0)
    test = make_synthetic(num_per_class=32, num_classes=num_classes, channels=channels, seed=1)
    x_train = train.images.reshape(len(train), -1).astype(np.float64)
    x_test = test.images.reshape(len(test), -1).astype(np.float64)
    means = np.stack([x_train[train.labels == k].mean(0) for k in range(num_classes)])
    dist = ((x_test[:, None, :] - means[None]) ** 2).sum(-1)
    assert (dist.argmin(1) == test.labels).mean() > 0.97
    assert len(load_dataset("synthetic", "train")) == 256
    assert not np.array_equal(
        load_dataset("synthetic", "train", Path("/ignored")).images,
        load_dataset("synthetic", "test").images,
    )


# ---------------------------------------------------------------- calibration split


def indexed_dataset(counts: list[int]) -> ImageDataset:
    """Images whose first two pixels encode their own index, labels grouped by class."""
    labels = np.repeat(np.arange(len(counts)), counts)
    n = labels.size
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    images[:, 0, 1, 0] = np.arange(n) // 256
    return ImageDataset(
        images,
        np.random.default_rng(3).permutation(labels),
        tuple(f"c{i}" for i in range(len(counts))),
    )


def ids(ds: ImageDataset) -> np.ndarray:
    return ds.images[:, 0, 0, 0].astype(np.int64) + 256 * ds.images[:, 0, 1, 0].astype(np.int64)


@pytest.mark.parametrize("calibration_size", [1, 17, 100, 299])
def test_split_calibration_disjoint_stratified(calibration_size: int) -> None:
    counts = [150, 90, 45, 15]
    ds = indexed_dataset(counts)
    train, calib = split_calibration(ds, calibration_size, seed=4)
    train_ids, calib_ids = ids(train), ids(calib)
    assert len(calib) == calibration_size
    assert len(train) + len(calib) == len(ds)
    assert np.intersect1d(train_ids, calib_ids).size == 0
    np.testing.assert_array_equal(np.union1d(train_ids, calib_ids), np.arange(len(ds)))
    np.testing.assert_array_equal(ds.labels[calib_ids], calib.labels)  # labels travel along
    proportional = calibration_size * np.array(counts) / len(ds)
    per_class = np.bincount(calib.labels, minlength=len(counts))
    assert np.all(np.abs(per_class - proportional) < 1), (per_class, proportional)
    assert train.class_names == calib.class_names == ds.class_names


def test_split_calibration_deterministic() -> None:
    ds = indexed_dataset([40, 40, 20])
    first = [ids(part) for part in split_calibration(ds, 25, seed=7)]
    second = [ids(part) for part in split_calibration(ds, 25, seed=7)]
    other = [ids(part) for part in split_calibration(ds, 25, seed=8)]
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[1], other[1])
    assert np.bincount(ds.labels[first[1]]).tolist() == [10, 10, 5]


def test_split_calibration_bad_sizes() -> None:
    ds = make_synthetic(num_per_class=5, num_classes=2)
    for size in (0, -3, 10, 11):
        with pytest.raises(DataError, match="calibration_size"):
            split_calibration(ds, size)


# ---------------------------------------------------------------- registry


def test_load_dataset_defaults_to_the_data_root(tmp_path: Path, monkeypatch) -> None:
    """Without data_dir a set comes from $TRUSTGC_DATA; missing, the error names `make data`."""
    from training.data_root import DataMissingError

    monkeypatch.setenv("TRUSTGC_DATA", str(tmp_path))
    for name in ("mnist", "notmnist", "cifar10"):
        with pytest.raises(DataMissingError, match=rf"'{name}' is missing in .*make data"):
            load_dataset(name, "test")
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.array([3, 7], np.uint8))
    ds = load_dataset("mnist", "test")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.tolist() == [3, 7]


def test_load_dataset_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown data set 'imagenet'.*fashion_mnist.*folder"):
        load_dataset("imagenet", "train")
    with pytest.raises(DataError, match="needs data_dir"):
        load_dataset("folder", "test")
    with pytest.raises(DataError, match="split"):
        load_dataset("synthetic", "val")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("mnist", "test", tmp_path)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_dataset("fashion_mnist", "test", tmp_path)
