"""A general-domain background flow for the likelihood-ratio OoD statistic.

Schirrmeister et al. (NeurIPS 2020): the likelihood of a coupling flow is dominated by local
pixel statistics shared by all natural images, so a photo can be as likely under a Fashion-MNIST
model as a garment.  The *ratio* against a model of generic images removes that shared part:
``LLR(x) = (log q_in(x) - log q_bg(x)) / D`` is high where the in-distribution model explains x
better than a generic image model does, and low (suspicious) for photos.

Data discipline: the background model trains ONLY on CIFAR-10 *train* photos decoded exactly as
the server decodes uploads (``serving.decode``: grayscale, 28 x 28) and on synthetic smooth
noise.  A fixed, seeded part of CIFAR-10 train (``selection_size`` images) is held out from
training: it is the only photo set used to choose between candidate statistics.  No evaluation
set (CIFAR-10 test, MNIST, notMNIST, flipped Fashion-MNIST) is used to train, select or
calibrate.

The model is the project's own IB-INN with two mixture components and beta = 0 (a plain flow:
labels never enter the loss), smaller than the classifier so the extra forward pass is cheap.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from training.data_root import data_root
from training.loss import ib_loss
from training.served_sets import served_cifar10
from trustgc.artifact import ModelManifest, build_model, load_model, save_model
from trustgc.config import load_config_file, load_model_config
from trustgc.preprocess import dequantize

__all__ = [
    "BACKGROUND_CLASSES",
    "BackgroundConfig",
    "selection_split",
    "smooth_noise",
    "train_background",
]

BACKGROUND_CLASSES = ("photo", "noise")  # mixture components; beta = 0 never reads the labels


class BackgroundConfig(BaseModel):
    """The ``background`` section of a background config (trustgc/configs/*_background.json)."""

    model_config = ConfigDict(extra="forbid")

    minutes: float = Field(gt=0, description="wall-clock training budget")
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    selection_size: int = Field(ge=0, description="CIFAR-10 train images held out for selection")
    noise_share: float = Field(ge=0, lt=1, description="share of each batch that is noise")
    dequantization_noise: float = Field(ge=0)
    seed: int = 0
    threads: int = Field(default=2, gt=0)


def selection_split(count: int, selection_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out selection indices) of the CIFAR-10 train split, seeded."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[selection_size:]), np.sort(order[:selection_size])


def smooth_noise(count: int, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Synthetic noise images (N, C, H, W) uint8: Gaussian fields at random spatial scales.

    A k x k grid of N(0, 1) values (k from 2 to the full size) is upsampled bilinearly, then
    given a random brightness and contrast.  At k = full size this is i.i.d. pixel noise; at
    small k, smooth blobs.  None of the OoD evaluation's noise generators (i.i.d. uniform,
    i.i.d. Gaussian around 128 with sigma 50, constant) is used.
    """
    channels, height, width = shape
    out = np.empty((count, channels, height, width), np.uint8)
    for index in range(count):
        k = int(rng.integers(2, max(height, width) + 1))
        mean, contrast = rng.uniform(20, 235), rng.uniform(5, 90)
        for channel in range(channels):
            field = rng.standard_normal((k, k)).astype(np.float32)
            image = Image.fromarray(field, mode="F").resize((width, height), Image.BILINEAR)
            values = mean + contrast * np.asarray(image) / max(float(np.std(image)), 1e-3)
            out[index, channel] = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


def _learning_rate(peak: float, fraction: float) -> float:
    """Short linear warm-up (first 3% of the budget), then cosine decay to 1% of the peak."""
    if fraction < 0.03:
        return peak * max(fraction / 0.03, 0.05)
    progress = min((fraction - 0.03) / 0.97, 1.0)
    return peak * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_background(
    config_name: str,
    out: Path,
    data_root: Path,
    init: Path | None = None,
    minutes: float | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> dict:
    """Train the background flow within the config's time budget; write an artifact to ``out``.

    ``init`` continues from an earlier background artifact's weights (a second budget on a busy
    machine); ``minutes`` and ``threads`` override the config's; ``device`` runs the steps there (a
    GPU: the batches are drawn and dequantized on the CPU as before, so the data stream is the
    CPU run's).  All three are recorded in the recipe.
    """
    raw = load_config_file(config_name)
    options = BackgroundConfig.model_validate(raw["background"])
    if minutes is not None:
        options = options.model_copy(update={"minutes": minutes})
    if threads is not None:
        options = options.model_copy(update={"threads": threads})
    model_config = load_model_config(config_name)
    torch.set_num_threads(options.threads)
    torch.manual_seed(options.seed)
    spec = model_config.input
    shape = (spec.channels, spec.height, spec.width)
    photos = served_cifar10(data_root, "train", shape)
    train_index, _ = selection_split(len(photos), options.selection_size, options.seed)
    photos = torch.from_numpy(photos[train_index])
    rng = np.random.default_rng(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    model = build_model(model_config).to(device)
    previous = None
    if init is not None:
        loaded, manifest = load_model(init)
        model.load_state_dict(loaded.state_dict())
        previous = manifest.training
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=1e-5)
    noise_count = int(round(options.batch_size * options.noise_share))
    photo_count = options.batch_size - noise_count
    budget, start, step, log = options.minutes * 60.0, time.monotonic(), 0, []
    while (elapsed := time.monotonic() - start) < budget:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(options.lr, elapsed / budget)
        chosen = torch.randint(len(photos), (photo_count,), generator=generator)
        batch = photos[chosen]
        flip = torch.rand(photo_count, generator=generator) < 0.5  # CIFAR photos only
        batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        noise = torch.from_numpy(smooth_noise(noise_count, shape, rng))
        pixels = torch.cat([batch, noise])
        labels = torch.cat([torch.zeros(photo_count), torch.ones(noise_count)]).long().to(device)
        x = dequantize(pixels, options.dequantization_noise, generator).to(device)
        loss = ib_loss(model.score(x), labels, beta=0.0).total
        if not torch.isfinite(loss):
            raise RuntimeError(f"background training diverged at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 8.0)
        optimizer.step()
        step += 1
        if step % 50 == 0:
            log.append({"step": step, "seconds": round(elapsed, 1), "nll_per_dim": loss.item()})
            print(json.dumps(log[-1]), flush=True)
    model = model.cpu().eval()
    recipe = {
        "dataset": "cifar10 train (served decoding) minus the selection hold-out, + smooth noise",
        "config": config_name,
        "background": options.model_dump(),
        "steps": step,
        "train_images": int(len(photos)),
        "training_seconds": round(time.monotonic() - start, 1),
        "torch_version": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else device,
        "log": log[-5:],
        "continued_from": previous,
    }
    manifest = ModelManifest(
        name=model_config.name, config=model_config, class_names=BACKGROUND_CLASSES, training=recipe
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    save_model(Path(out), model, manifest)
    return recipe


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="fashion_mnist_background")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--data-root", type=Path, default=data_root(), help="default: $TRUSTGC_DATA"
    )
    parser.add_argument("--init", type=Path, help="continue from this background artifact")
    parser.add_argument("--minutes", type=float, help="override the config's time budget")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, help="override the config's torch threads")
    args = parser.parse_args(argv)
    recipe = train_background(
        args.config, args.out, args.data_root, args.init, args.minutes, args.device, args.threads
    )
    print(json.dumps(recipe, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
