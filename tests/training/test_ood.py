"""The OoD evaluation's served-decoding sets and its per-set bookkeeping (units, no model)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from serving.decode import decode_image
from training.metrics import roc_auc
from training.ood import (
    OOD_SETS,
    OodOptions,
    as_png,
    auc_deficit_by_component,
    make_ood_set,
    parse_ood_dir,
    served_ood_statistic,
)
from training.served_sets import decode_files, folder_bytes, served_cifar10
from trustgc.trust.calibration import fit_calibration
from trustgc.trust.statistics import COMBINATIONS

SHAPE = (1, 28, 28)


def _test_images(count: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *SHAPE), dtype=np.uint8)


def _jpeg(seed: int) -> bytes:
    colour = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(colour).save(buffer, format="JPEG", quality=75)
    return buffer.getvalue()


def test_png_files_decode_to_the_same_pixels() -> None:
    images = _test_images()
    np.testing.assert_array_equal(decode_files(as_png(images), SHAPE), images)


@pytest.mark.parametrize(
    ("name", "transform"),
    [
        ("inverted", lambda x: 255 - x),
        ("vflip", lambda x: x[:, :, ::-1]),
        ("hflip", lambda x: x[:, :, :, ::-1]),
    ],
)
def test_transformed_sets_are_the_transform_of_sampled_test_images(name, transform) -> None:
    test = _test_images()
    out = make_ood_set(name, test, 10, data_root=None, seed=3)
    assert out.shape == (10, *SHAPE) and out.dtype == np.uint8
    originals = transform(test)
    # every output image is the transform of a distinct test image
    matches = [int(np.flatnonzero((originals == image).all(axis=(1, 2, 3)))[0]) for image in out]
    assert len(set(matches)) == 10
    again = make_ood_set(name, test, 10, data_root=None, seed=3)
    np.testing.assert_array_equal(out, again)  # seeded
    assert not np.array_equal(out, make_ood_set(name, test, 10, data_root=None, seed=4))


def test_synthetic_sets() -> None:
    test = _test_images()
    constant = make_ood_set("constant", test, 25, data_root=None)
    assert (constant == constant[:, :, :1, :1]).all()
    assert len(np.unique(constant[:, 0, 0, 0])) > 5
    uniform = make_ood_set("uniform_noise", test, 25, data_root=None)
    assert uniform.shape == (25, *SHAPE) and 100 < uniform.mean() < 155 and uniform.std() > 60
    gaussian = make_ood_set("gaussian_noise", test, 25, data_root=None)
    assert abs(gaussian.mean() - 128) < 5 and 40 < gaussian.std() < 55


def test_unknown_set_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown OoD set 'svhn'"):
        make_ood_set("svhn", _test_images(), 5, data_root=None)
    with pytest.raises(ValueError, match="unknown OoD sets"):
        from training.ood import evaluate_ood

        evaluate_ood(OodOptions(model="nowhere", sets=("mnist", "svhn")))


def test_suite_names() -> None:
    assert {"mnist", "notmnist", "cifar10_test", "vflip", "hflip"} <= set(OOD_SETS)
    assert len(set(OOD_SETS)) == len(OOD_SETS)


def _cifar_archive(root, members: dict[str, bytes]) -> None:
    (root / "cifar10").mkdir(parents=True)
    with tarfile.open(root / "cifar10" / "cifar10-jpg.tgz", "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar10_is_decoded_from_the_archive_bytes_as_served(tmp_path) -> None:
    members = {
        "test/truck/0002.jpg": _jpeg(2),
        "test/cat/0001.jpg": _jpeg(1),
        "train/cat/0003.jpg": _jpeg(3),
        "test/cat/notes.txt": b"not an image",
    }
    _cifar_archive(tmp_path, members)
    cache = tmp_path / "cache"
    pixels = served_cifar10(tmp_path, "test", SHAPE, cache)
    names = ("test/cat/0001.jpg", "test/truck/0002.jpg")  # test split only, by member name
    expected = [decode_image(members[name], 28, 28, 1) for name in names]
    np.testing.assert_array_equal(pixels, np.stack(expected))
    # grayscale by luma and resized 32 -> 28, not a crop or a channel pick
    assert pixels.shape == (2, *SHAPE)
    (tmp_path / "cifar10" / "cifar10-jpg.tgz").unlink()
    np.testing.assert_array_equal(served_cifar10(tmp_path, "test", SHAPE, cache), pixels)
    with pytest.raises(ValueError, match="archive not found"):
        served_cifar10(tmp_path, "train", SHAPE, cache)


def test_folder_sets_and_ood_dir_flag(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(_jpeg(5))
    (tmp_path / "a.jpg").write_bytes(_jpeg(4))
    (tmp_path / "readme.md").write_text("skip me")
    assert folder_bytes(tmp_path) == [_jpeg(4), _jpeg(5)]
    with pytest.raises(ValueError, match="folder not found"):
        folder_bytes(tmp_path / "sub" / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        folder_bytes(tmp_path / "empty")
    assert parse_ood_dir("photos=/data/x=y") == ("photos", tmp_path.__class__("/data/x=y"))
    for bad in ("photos", "=dir", "photos="):
        with pytest.raises(ValueError, match="NAME=DIR"):
            parse_ood_dir(bad)


def test_served_statistic_orders_images_as_the_served_p_value() -> None:
    rng = np.random.default_rng(0)
    names = (
        "typicality",
        "complexity_corrected",
        "max_posterior",
        "class_distance",
        "logit_margin",
        "complexity_excess",
        "neighbour_correlation",
    )

    def draw(n):
        return {name: rng.normal(size=n) for name in names}

    calibration = fit_calibration(draw(300), draw(500), 0.05, 0.05)
    new = draw(200)
    t = served_ood_statistic(calibration, new)
    # by hand: part-A p-values (with tails) combined by the production rule
    inner = {
        name: calibration.combination_components[name]
        .reference(tail_extrapolation=True)
        .p_value(new[name])
        for name in ("complexity_corrected", "max_posterior", "typicality")
    }
    np.testing.assert_allclose(t, COMBINATIONS[calibration.ood_statistic].combine(inner))
    p = calibration.combined[calibration.ood_statistic].reference().p_value(t)
    order = np.argsort(t)
    assert np.all(np.diff(p[order]) <= 0)  # the p-value is a decreasing function of T


def test_auc_deficit_is_split_by_the_in_distribution_images_smallest_p() -> None:
    t_in = np.array([0.0, 1.0, 5.0, 7.0])
    t_out = np.array([4.0, 6.0, 8.0, 9.0])
    p_in = {  # image 2's smallest p is a's, image 3's b's; images 0 and 1 outrank nothing
        "a": np.array([0.5, 0.5, 0.001, 0.2]),
        "b": np.array([0.4, 0.3, 0.1, 0.0001]),
    }
    report = auc_deficit_by_component(t_in, t_out, p_in)
    # image 2 outranks 1 of 4 OoD images, image 3 outranks 2: 1 - AUC = (0.25 + 0.5) / 4
    auc = roc_auc(t_in, t_out)
    deficit = report["deficit_percent_by_component"]
    assert deficit == pytest.approx({"a": 100 * 0.25 / 4, "b": 100 * 0.5 / 4})
    assert sum(deficit.values()) == pytest.approx(100 * (1 - auc))
    assert report["in_distribution_ranked_above"] == 2
    assert report["t_out_median"] == 7.0 and report["t_in_max"] == 7.0
    ties = auc_deficit_by_component(np.array([4.0]), np.array([4.0, 5.0]), {"a": np.array([0.1])})
    assert ties["deficit_percent_by_component"]["a"] == pytest.approx(25.0)  # a tie counts half
