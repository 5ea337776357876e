"""The corruption benchmark (training/corruptions.py) and ``trustgc corrupt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.corruptions import (
    CATEGORIES,
    CORRUPTIONS,
    SEVERITIES,
    SEVERITY_PARAMETERS,
    corrupt,
    frost_texture,
    parameter_table,
    plasma_fractal,
)
from training.data import load_dataset, make_synthetic
from trustgc_cli.main import main

#: Types whose output does not depend on the seed (no random draw).
DETERMINISTIC = {
    "defocus_blur",
    "zoom_blur",
    "brightness",
    "contrast",
    "pixelate",
    "jpeg_compression",
}
#: Types whose mean absolute change is not monotone over all five severities, by the reference
#: parameters: glass blur's stronger pre-blur at severity 2-3 smooths the pixel shuffling, and
#: frost lowers the image weight (1.0 -> 0.75) while the frost weight plateaus at 0.4-0.45.
NOT_MONOTONE = {"glass_blur", "frost"}


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    return make_synthetic(num_per_class=3, num_classes=4, size=28, channels=1, seed=3).images


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return make_synthetic(num_per_class=2, num_classes=4, size=32, channels=3, seed=4).images


def _change(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.abs(after.astype(np.float64) - before).mean())


def test_the_fifteen_types_in_four_categories() -> None:
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15
    assert sum(len(names) for names in CATEGORIES.values()) == 15
    assert set(SEVERITY_PARAMETERS) == set(CORRUPTIONS)
    for names, rows in SEVERITY_PARAMETERS.values():
        assert len(rows) == len(SEVERITIES)
        assert all(len(row) == len(names) for row in rows)
    assert parameter_table().count("\n") == 16


@pytest.mark.parametrize("severity", SEVERITIES)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_type_and_severity_keeps_shape_and_dtype(name, severity, gray) -> None:
    out = corrupt(gray, name, severity, seed=0)
    assert out.dtype == np.uint8 and out.shape == gray.shape
    assert not np.shares_memory(out, gray)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_rgb_images_work_and_change(name, rgb) -> None:
    for severity in (1, 5):
        out = corrupt(rgb, name, severity, seed=1)
        assert out.dtype == np.uint8 and out.shape == rgb.shape
        assert _change(rgb, out) > 0


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_by_seed(name, gray) -> None:
    first = corrupt(gray, name, 3, seed=7)
    np.testing.assert_array_equal(first, corrupt(gray, name, 3, seed=7))
    other = corrupt(gray, name, 3, seed=8)
    if name in DETERMINISTIC:
        np.testing.assert_array_equal(first, other)
    else:
        assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_severity_increases_the_change(name, gray, rgb) -> None:
    for images in (gray, rgb):
        changes = [_change(images, corrupt(images, name, s, seed=0)) for s in SEVERITIES]
        assert changes[0] < changes[-1], changes
        if name not in NOT_MONOTONE:
            assert all(a < b for a, b in zip(changes, changes[1:], strict=False)), changes


def test_inputs_are_not_modified(gray) -> None:
    before = gray.copy()
    for name in CORRUPTIONS:
        corrupt(gray, name, 5)
    np.testing.assert_array_equal(gray, before)


def test_batch_members_are_corrupted_independently(gray) -> None:
    """Image i's corruption must not depend on the other images beyond the random stream."""
    for name in ("contrast", "brightness", "defocus_blur", "zoom_blur", "pixelate"):
        whole = corrupt(gray, name, 4)
        single = np.concatenate([corrupt(gray[i : i + 1], name, 4) for i in range(len(gray))])
        np.testing.assert_array_equal(whole, single)


def test_noise_types_have_their_documented_strength() -> None:
    flat = np.full((64, 28, 28, 1), 128, dtype=np.uint8)
    noisy = corrupt(flat, "gaussian_noise", 5).astype(np.float64)
    assert abs(noisy.std() / 255.0 - 0.10) < 0.005
    impulse = corrupt(flat, "impulse_noise", 5)
    hit = impulse != 128
    assert abs(hit.mean() - 0.07) < 0.01
    assert set(np.unique(impulse[hit])) <= {0, 255}
    shot = corrupt(flat, "shot_noise", 1).astype(np.float64) / 255.0
    # Poisson(500 x) / 500 has variance x / 500
    assert abs(shot.var() - (128 / 255) / 500) < 0.2 * (128 / 255) / 500


def test_photometric_types_move_the_pixels_the_documented_way(gray) -> None:
    brighter = corrupt(gray, "brightness", 5).astype(np.float64)
    assert brighter.mean() > gray.mean()
    expected = np.clip(np.rint(np.clip(gray / 255.0 + 0.3, 0, 1) * 255), 0, 255)
    np.testing.assert_allclose(brighter, expected, atol=1.0)  # grey: V + 0.3 (float rounding)
    flatter = corrupt(gray, "contrast", 5).astype(np.float64)
    assert (
        flatter.std(axis=(1, 2, 3)).mean()
        < 0.2 * gray.astype(np.float64).std(axis=(1, 2, 3)).mean()
    )
    np.testing.assert_allclose(flatter.mean(axis=(1, 2, 3)), gray.mean(axis=(1, 2, 3)), atol=1.0)


def test_blurs_smooth_and_keep_flat_images_flat() -> None:
    flat = np.full((2, 28, 28, 1), 90, dtype=np.uint8)
    for name in ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "elastic_transform"):
        np.testing.assert_array_equal(corrupt(flat, name, 5), flat)


def test_frost_texture_and_plasma_fractal() -> None:
    rng = np.random.default_rng(0)
    texture = frost_texture(3, 28, 30, rng)
    assert texture.shape == (3, 28, 30)
    assert texture.min() >= 0.0 and texture.max() <= 1.0
    assert 0.2 < texture.mean() < 0.8 and texture.std() > 0.05
    maps = plasma_fractal(2, 32, 2.0, rng)
    assert maps.shape == (2, 32, 32)
    np.testing.assert_allclose(maps.min(axis=(1, 2)), 0.0)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0)
    with pytest.raises(ValueError, match="power of two"):
        plasma_fractal(1, 28, 2.0, rng)


@pytest.mark.parametrize(
    ("images", "name", "severity", "match"),
    [
        (np.zeros((2, 28, 28, 1), np.float32), "fog", 1, "uint8"),
        (np.zeros((2, 28, 28), np.uint8), "fog", 1, "uint8"),
        (np.zeros((2, 28, 28, 2), np.uint8), "fog", 1, "C in"),
        (np.zeros((2, 28, 28, 1), np.uint8), "rain", 1, "unknown corruption"),
        (np.zeros((2, 28, 28, 1), np.uint8), "fog", 6, "severity"),
        (np.zeros((2, 28, 28, 1), np.uint8), "fog", True, "severity"),
    ],
)
def test_bad_arguments_are_rejected(images, name, severity, match) -> None:
    with pytest.raises(ValueError, match=match):
        corrupt(images, name, severity)


def test_cli_writes_the_corrupted_set(tmp_path: Path, capsys) -> None:
    out = tmp_path / "fog3.npz"
    code = main(
        [
            "corrupt",
            "--input-set",
            "synthetic",
            "--type",
            "fog",
            "--severity",
            "3",
            "--out",
            str(out),
        ]
    )
    assert code == 0 and "wrote" in capsys.readouterr().out
    test = load_dataset("synthetic", "test")
    with np.load(out) as stored:
        np.testing.assert_array_equal(stored["images"], corrupt(test.images, "fog", 3, 0))
        np.testing.assert_array_equal(stored["labels"], test.labels)
        assert str(stored["corruption"]) == "fog" and int(stored["severity"]) == 3


def test_cli_rejects_an_unknown_type(tmp_path: Path, capsys) -> None:
    code = main(
        [
            "corrupt",
            "--input-set",
            "synthetic",
            "--type",
            "rain",
            "--severity",
            "1",
            "--out",
            str(tmp_path / "x.npz"),
        ]
    )
    assert code == 2 and "unknown corruption" in capsys.readouterr().err
