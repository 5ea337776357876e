"""Train from a folder of images: no config file, no repeated --data-dir, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data import (
    DataError,
    folder_channels,
    load_dataset,
    load_image_folder,
    load_recorded,
    make_synthetic,
)
from training.folder_config import (
    COMPONENT_FRACTION,
    PRESETS,
    calibration_size,
    folder_config,
    is_image_folder,
    model_name,
)
from trustgc.artifact import load_manifest
from trustgc_cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_folder(root: Path, per_class: int = 100, size: int = 8, mode: str = "L") -> Path:
    """Synthetic class-per-folder PNGs (4 learnable classes), grayscale or RGB copies."""
    data = make_synthetic(num_per_class=per_class, num_classes=4, size=size, seed=11)
    for i, (pixels, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / f"shape_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0]).convert(mode).save(folder / f"{i:04d}.png")
    return root


# ------------------------------------------------------------------------ channels and size


def test_grayscale_folders_stay_one_channel(tmp_path) -> None:
    gray = _write_folder(tmp_path / "gray", per_class=2)
    as_rgb = _write_folder(tmp_path / "rgb_gray", per_class=2, mode="RGB")  # R = G = B
    assert load_image_folder(gray).images.shape[-1] == 1
    assert load_image_folder(as_rgb).images.shape[-1] == 1
    colour = tmp_path / "colour" / "red"
    colour.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(colour / "a.png")
    (tmp_path / "colour" / "blue").mkdir()
    Image.new("L", (8, 8), 40).save(tmp_path / "colour" / "blue" / "b.png")
    assert folder_channels(sorted((tmp_path / "colour").rglob("*.png"))) == 3
    assert load_image_folder(tmp_path / "colour").images.shape == (2, 8, 8, 3)
    assert load_image_folder(gray, channels=3).images.shape[-1] == 3  # explicit still wins


def test_single_folder_gets_a_seeded_stratified_test_split(tmp_path) -> None:
    root = _write_folder(tmp_path / "set", per_class=20)
    train = load_dataset("folder", "train", root, test_fraction=0.25, seed=3)
    test = load_dataset("folder", "test", root, test_fraction=0.25, seed=3)
    assert (len(train), len(test)) == (60, 20)
    assert np.bincount(test.labels).tolist() == [5, 5, 5, 5]
    again = load_dataset("folder", "test", root, test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again.images, test.images)
    joined = {bytes(im) for im in np.concatenate([train.images, test.images])}
    assert len(joined) == 80  # disjoint, nothing lost


def test_calibration_size_reaches_alpha() -> None:
    smallest = calibration_size(300)
    part_b = smallest - round(COMPONENT_FRACTION * smallest)
    assert 1 / (part_b + 1) <= 0.01 < 1 / part_b  # the smallest split that reaches 0.01
    assert calibration_size(10_000) == 2000  # 20 % of the pool
    assert calibration_size(100_000) == 5000  # capped like the shipped model's
    with pytest.raises(DataError, match="too few"):
        calibration_size(2 * smallest - 1)


def test_inferred_config(tmp_path) -> None:
    root = _write_folder(tmp_path / "set", per_class=100, size=8)
    config = folder_config(root, "shapes", preset="tiny")
    model, training = config["model"], config["training"]
    assert model["name"] == "shapes" and model["num_classes"] == 4
    assert model["input"]["channels"] == 1
    assert (model["input"]["height"], model["input"]["width"]) == (8, 8)
    pool = load_dataset("folder", "train", root, test_fraction=0.15, seed=0)
    mean = ((pool.images.astype(np.float64) + 0.5) / 256).mean()
    assert model["input"]["mean"] == [pytest.approx(mean, abs=1e-4)]
    assert (
        model["stages"]
        == json.loads((Path(__file__).parents[2] / "trustgc/configs/tiny.json").read_text())[
            "model"
        ]["stages"]
    )
    assert training["dataset"] == "folder" and training["augment_hflip"] is False
    assert training["calibration_size"] == calibration_size(len(pool))
    resized = folder_config(root, "shapes", preset="small", image_size=27)
    assert resized["model"]["input"]["height"] == 28  # a multiple of the 4x downsampling
    assert set(PRESETS) == {"tiny", "small", "medium"}
    with pytest.raises(ValueError, match="unknown preset"):
        folder_config(root, "shapes", preset="huge")
    assert model_name(tmp_path / "my digits!") == "my_digits"
    assert is_image_folder(root) and not is_image_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------ end to end


def test_train_calibrate_evaluate_from_a_folder_by_cli(tmp_path, capsys) -> None:
    root = _write_folder(tmp_path / "shapes", per_class=100)
    out = tmp_path / "runs" / "shapes"
    argv = ["train", "--data-dir", str(root), "--out", str(out), "--preset", "tiny"]
    assert main([*argv, "--max-steps", "6", "--no-progress", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "4 classes, 1 channel(s), 8x8, preset tiny" in captured.out
    assert "stopped by --max-steps 6" in captured.err
    manifest = load_manifest(out)
    assert manifest.name == "shapes"
    assert manifest.class_names == ("shape_0", "shape_1", "shape_2", "shape_3")
    assert manifest.config.input.channels == 1
    assert manifest.training["data_dir"] == str(root.resolve())
    assert manifest.training["stopped_early"] == "--max-steps 6"
    assert "Stopped early" in (out / "MODEL_CARD.md").read_text()
    assert (out / "config.json").is_file()  # reruns the same training with --config
    # no --data-dir again: calibrate and evaluate read the recorded location
    assert main(["calibrate", "--model", str(out)]) == 0
    assert "'calibration_size': 124" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["num_samples"] == 60.0  # the 15 % test split
    assert evaluated == pytest.approx(json.loads((out / "metrics.json").read_text())["test"])
    test = load_recorded(manifest.training, "test")
    assert test.images.shape == (60, 8, 8, 1)


def test_train_and_test_subfolders(tmp_path) -> None:
    data = tmp_path / "split"
    _write_folder(data / "train", per_class=70)
    _write_folder(data / "test", per_class=5)
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(data), "--out", str(out), "--preset", "tiny"]
    assert main([*argv, "--max-steps", "2", "--no-progress", "--device", "cpu"]) == 0
    manifest = load_manifest(out)
    assert manifest.training["config"]["test_fraction"] == 0.0
    assert len(load_recorded(manifest.training, "test")) == 20
    assert manifest.training["train_size"] == 280 - manifest.training["calibration_size"]


def test_one_line_errors(tmp_path, capsys) -> None:
    no_training = tmp_path / "model_only.json"
    model_section = json.loads(
        (Path(__file__).parents[2] / "trustgc/configs/tiny.json").read_text()
    )["model"]
    no_training.write_text(json.dumps({"model": model_section}))
    assert main(["train", "--config", str(no_training), "--out", str(tmp_path / "o")]) == 2
    assert "has no 'training' section" in capsys.readouterr().err
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert main(["train", "--config", "tiny", "--out", str(a_file)]) == 2
    assert "is a file" in capsys.readouterr().err
    not_images = tmp_path / "idx"
    not_images.mkdir()
    assert main(["train", "--data-dir", str(not_images), "--out", str(tmp_path / "p")]) == 2
    assert "train-images-idx3-ubyte" in capsys.readouterr().err  # read as fashion_mnist
    argv = ["train", "--data-dir", str(not_images), "--out", str(tmp_path / "q")]
    assert main([*argv, "--preset", "tiny"]) == 2
    assert "need --data-dir to be a folder of class sub-folders" in capsys.readouterr().err
    few = _write_folder(tmp_path / "few", per_class=10)
    assert main(["train", "--data-dir", str(few), "--out", str(tmp_path / "r")]) == 2
    assert "too few" in capsys.readouterr().err
