"""Train from a folder of images: infer a full config (model + training) from the files.

``trustgc train --data-dir DIR --out runs/NAME`` with DIR holding ``CLASS/*.png`` (one folder per
class, split here with a seed) or ``train/CLASS/*`` and ``test/CLASS/*`` needs no JSON: this
module reads the folder and writes ``runs/NAME/config.json``, an ordinary config file the trainer
then runs (and that reruns the same training by hand).  Inferred:

- classes: the sub-folder names, sorted;
- channels: 1 when every image is grayscale (by its Pillow mode or equal colour planes), else 3;
- input size: the most common image size (others are resized), or ``--image-size N`` (N x N),
  rounded to a multiple of the architecture's downsampling factor;
- normalisation: the per-channel mean and standard deviation of the training images;
- a calibration split held out of the training images, large enough that the served p-values
  can reach alpha = 0.01 (see :func:`calibration_size`).

Presets (``--preset``), derived from the shipped configs in ``trustgc/configs/``:

- ``tiny``: the ``tiny`` test architecture (two stages of two 16-wide couplings): trains in
  seconds on CPU; a pipeline check, not a model to serve;
- ``small`` (default): the ``fashion_mnist`` layout at half width and fewer blocks (4 x 32,
  4 x 64, one 128-wide flat coupling): minutes per epoch on CPU for 28 x 28 images;
- ``medium``: the ``fashion_mnist`` architecture itself (6 x 64, 8 x 128, two 256-wide flat
  couplings), the shipped model's capacity.

Training settings are ``fashion_mnist``'s except for horizontal flips, which are off: a folder's
classes may not be mirror-symmetric (digits, letters).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from training.data import (
    DataError,
    folder_channels,
    folder_classes,
    folder_images,
    load_dataset,
)
from trustgc.artifact import write_json
from trustgc.config import load_config_file

__all__ = [
    "CONFIG_FILE",
    "PRESETS",
    "calibration_size",
    "folder_config",
    "is_image_folder",
    "write_folder_config",
]

CONFIG_FILE = "config.json"
#: preset -> (shipped config it derives from, model fields replaced, training fields replaced)
PRESETS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "tiny": ("tiny", {}, {"epochs": 10, "batch_size": 64, "lr": 0.003}),
    "small": (
        "fashion_mnist",
        {
            "stages": [
                {"blocks": 4, "width": 32, "subnet": "conv", "downsample": "haar"},
                {"blocks": 4, "width": 64, "subnet": "conv", "downsample": "haar"},
            ],
            "flat_blocks": 1,
            "flat_width": 128,
        },
        {"epochs": 20},
    ),
    "medium": ("fashion_mnist", {}, {}),
}
#: The folder's share held out as test images when it has no test/ sub-folder.
TEST_FRACTION = 0.15
#: Share of the training images held out for calibration (capped at the shipped 5,000).
CALIBRATION_FRACTION = 0.2
MAX_CALIBRATION = 5000
#: The alpha the default calibration must be able to reach (trustgc calibrate's default).
TARGET_ALPHA = 0.01
#: Part A's share of the calibration split (training.calibrate's default component_fraction).
COMPONENT_FRACTION = 0.2
_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def is_image_folder(path: Path | None) -> bool:
    """Whether ``path`` is a class-per-folder image set (directly or under train/)."""
    if path is None or not Path(path).is_dir():
        return False
    root = Path(path) / "train" if (Path(path) / "train").is_dir() else Path(path)
    try:
        folder_images(root)
    except DataError:
        return False
    return True


def calibration_size(pool: int, alpha: float = TARGET_ALPHA) -> int:
    """Calibration images to hold out of ``pool`` training images.

    The served p-values are ranks among part B of the split (``1 - COMPONENT_FRACTION`` of
    it), so their smallest value is 1 / (|B| + 1); the split is at least large enough that this
    reaches ``alpha``, else a share of the pool, at most 5,000.  A pool that cannot spare that
    and keep as many images for training is refused.
    """
    smallest = 1
    while 1.0 / (smallest - round(COMPONENT_FRACTION * smallest) + 1) > alpha:
        smallest += 1
    if pool < 2 * smallest:
        raise DataError(
            f"{pool} training images are too few: calibrating p-values that can reach alpha = "
            f"{alpha:g} needs {smallest} held-out images and at least as many to train on "
            f"({2 * smallest} in all)"
        )
    return min(MAX_CALIBRATION, max(smallest, round(CALIBRATION_FRACTION * pool)))


def _image_size(paths: list[Path], requested: int | None, factor: int) -> tuple[int, int]:
    """(height, width): ``requested`` square, else the most common size; multiples of factor."""
    if requested is not None:
        height = width = requested
    else:
        sizes = Counter()
        for path in paths:
            try:
                with Image.open(path) as image:  # header only: cheap
                    sizes[image.size] += 1
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot decode image {path}: {exc}") from exc
        (width, height), _ = sizes.most_common(1)[0]
    rounded = tuple(max(factor, factor * round(side / factor)) for side in (height, width))
    return rounded  # type: ignore[return-value]


def folder_config(
    data_dir: Path,
    name: str,
    preset: str = "small",
    image_size: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The config (``model`` and ``training`` sections) for training on ``data_dir``."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if image_size is not None and image_size < 1:
        raise ValueError(f"--image-size must be positive, got {image_size}")
    data_dir = Path(data_dir)
    has_split = (data_dir / "train").is_dir()
    train_root = data_dir / "train" if has_split else data_dir
    base_name, model_changes, training_changes = PRESETS[preset]
    base = load_config_file(base_name)
    model = {**base["model"], **model_changes}
    factor = 2 ** sum(stage.get("downsample", "haar") != "none" for stage in model["stages"])
    paths = [path for _, path in folder_images(train_root)]
    classes = folder_classes(train_root)
    if len(classes) < 2:
        raise DataError(f"{train_root} holds one class folder ({classes[0]}): need at least two")
    channels = folder_channels(paths)
    height, width = _image_size(paths, image_size, factor)
    test_fraction = 0.0 if has_split else TEST_FRACTION
    pool = load_dataset(
        "folder",
        "train",
        data_dir,
        size=(width, height),
        channels=channels,
        test_fraction=test_fraction,
        seed=seed,
    )
    scaled = (pool.images.astype(np.float64) + 0.5) / 256.0  # trustgc.preprocess's scaling
    mean = scaled.mean(axis=(0, 1, 2))
    std = np.maximum(scaled.std(axis=(0, 1, 2)), 1e-3)
    model.update(
        name=name,
        num_classes=len(classes),
        input={
            "height": height,
            "width": width,
            "channels": channels,
            "mean": [round(float(m), 4) for m in mean],
            "std": [round(float(s), 4) for s in std],
        },
    )
    model.pop("mean_full_dims", None)  # sized for the base config's dimension
    held_out = calibration_size(len(pool))
    training = {
        **base["training"],
        "augment_hflip": False,
        **training_changes,
        "dataset": "folder",
        "seed": seed,
        "calibration_size": held_out,
        "image_size": [height, width],
        "channels": channels,
        "test_fraction": test_fraction,
    }
    steps = (len(pool) - held_out) // training["batch_size"]
    if steps == 0:  # a small folder: one batch of everything rather than no step at all
        training["batch_size"] = len(pool) - held_out
    return {"model": model, "training": training}


def model_name(out: Path) -> str:
    """A TorchServe-safe model name from the output directory's name."""
    name = _NAME.sub("_", Path(out).resolve().name).strip("_")
    return name or "model"


def write_folder_config(
    data_dir: Path,
    out: Path,
    preset: str | None = None,
    image_size: int | None = None,
    seed: int | None = None,
) -> Path:
    """Infer the config for ``data_dir``, write it to ``out/config.json``; returns its path."""
    config = folder_config(
        data_dir, model_name(out), preset or "small", image_size, 0 if seed is None else seed
    )
    out.mkdir(parents=True, exist_ok=True)
    path = out / CONFIG_FILE
    write_json(path, config)
    training, spec = config["training"], config["model"]["input"]
    test = training["test_fraction"]
    print(
        f"{data_dir}: {config['model']['num_classes']} classes, {spec['channels']} channel(s), "
        f"{spec['height']}x{spec['width']}, preset {preset or 'small'}; held out: "
        f"{training['calibration_size']} training images for calibration"
        f"{f', {test:.0%} of the folder for test' if test else ''}; config: {path}",
        flush=True,
    )
    return path
