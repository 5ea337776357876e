"""``trustgc train``: train an IB-INN (or the CNN baseline) and write a model artifact.

The run is a short chain: prepare data -> build model -> train epochs (checkpoint after each)
-> evaluate on the test split -> write the artifact.  Data order and augmentation noise of each
epoch derive from (seed, epoch, rank), so a run resumed from a checkpoint replays exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.adversarial import adversarial_ib_loss, pgd_l2
from training.augment import random_crop, random_hflip
from training.checkpoint import load_checkpoint, save_checkpoint
from training.config import TrainingConfig, load_training_config
from training.data import ImageDataset, load_recorded, split_calibration
from training.distributed import (
    DistributedContext,
    all_reduce_mean,
    setup_distributed,
    teardown_distributed,
)
from training.evaluate import evaluate_model
from training.loss import ib_loss
from training.model_card import write_model_card
from training.train_options import TrainOptions
from trustgc.artifact import (
    ModelManifest,
    build_model,
    load_manifest,
    load_model,
    remove_derived,
    save_model,
    write_json,
)
from trustgc.config import ModelConfig, load_model_config
from trustgc.preprocess import dequantize, pixels_to_tensor

__all__ = ["TrainOptions", "TrainingDiverged", "train"]

CHECKPOINT_DIR = "checkpoints"
METRICS_LOG = "train_log.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint was kept."""


def _learning_rate(
    config: TrainingConfig, progress: float, steps_per_epoch: int, step: int
) -> float:
    """Linear warm-up over ``warmup_epochs``, then cosine decay to 1% of the peak."""
    warmup_steps = config.warmup_epochs * steps_per_epoch
    if step < warmup_steps:
        return config.lr * min(1.0, (step + 1) / warmup_steps)
    return config.lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def _make_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _recorded(config: TrainingConfig, data_dir: Path | None) -> dict[str, Any]:
    """What the manifest records about the data: read back by calibrate, evaluate and ood."""
    return {
        "dataset": config.dataset,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
        "config": config.model_dump(mode="json"),
    }


def _prepare_data(config: TrainingConfig, data_dir: Path | None) -> tuple[ImageDataset, dict]:
    """Training part of the train split (the calibration split carved out and recorded)."""
    full = load_recorded(_recorded(config, data_dir), "train")
    train_part, calibration = split_calibration(full, config.calibration_size, config.seed)
    if config.limit_train_samples is not None:
        train_part = train_part.subset(np.arange(min(config.limit_train_samples, len(train_part))))
    split = {
        "calibration_size": len(calibration),
        "calibration_seed": config.seed,
        "train_size": len(train_part),
    }
    return train_part, split


def _batch_inputs(pixels: Tensor, config: TrainingConfig, generator: torch.Generator) -> Tensor:
    if config.augment_hflip:
        pixels = random_hflip(pixels, generator)
    pixels = random_crop(pixels, config.augment_crop_padding, generator)
    return dequantize(pixels, config.dequantization_noise, generator)


def _with_adversarials(
    scorer: nn.Module, x: Tensor, labels: Tensor, config: TrainingConfig, generator
) -> Tensor:
    """[x; PGD-L2 adversarials of x] when the config trains adversarially, else x."""
    if config.adversarial is None:
        return x
    wrapped = scorer.module if isinstance(scorer, DistributedDataParallel) else scorer
    return torch.cat([x, pgd_l2(wrapped.model, x, labels, config.adversarial, generator)])


class _Scorer(nn.Module):
    """Wraps the model so that one forward call uses every parameter (what DDP expects)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor):
        return self.model.score(x) if hasattr(self.model, "score") else self.model(x)


def _training_loss(
    scorer: nn.Module, x: Tensor, labels: Tensor, config: TrainingConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and detached batch statistics (no host sync)."""
    output = scorer(x)
    if isinstance(output, Tensor):  # discriminative baseline: cross-entropy on logits
        loss = torch.nn.functional.cross_entropy(
            output.float(), labels, label_smoothing=config.label_smoothing
        )
        correct = (output.argmax(1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "l_y": loss.detach(), "accuracy": correct}
    n = labels.shape[0]
    if config.adversarial is None:
        terms = ib_loss(output, labels, config.beta, config.label_smoothing)
    else:
        terms = adversarial_ib_loss(
            output,
            labels,
            config.beta,
            config.adversarial.adversarial_weight,
            config.label_smoothing,
        )
    predicted = output.logits.argmax(1)
    stats = {
        "loss": terms.total.detach(),
        "l_x": terms.l_x.detach(),
        "l_y": terms.l_y.detach(),
        "accuracy": (predicted[:n] == labels).float().mean(),
        "bits_per_dim": output.bits_per_dim()[:n].mean().detach(),
    }
    if config.adversarial is not None:
        stats["adversarial_accuracy"] = (predicted[n:] == labels).float().mean()
    return terms.total, stats


@dataclass
class _RunState:
    """What a checkpoint restores."""

    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class _Stopwatch:
    def __init__(self, already: float) -> None:
        self._start = time.monotonic() - already

    def __call__(self) -> float:
        return time.monotonic() - self._start


def _epoch_order(size: int, seed: int, epoch: int, context: DistributedContext) -> np.ndarray:
    """This rank's shard of the epoch's shuffled indices (equal-size shards, remainder dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(size)
    per_rank = size // context.world_size
    return order[context.rank * per_rank : (context.rank + 1) * per_rank]


def _check_finite(totals: dict[str, Tensor], state: _RunState, out: Path) -> None:
    """Stop on a non-finite loss or gradient norm (either would poison the next checkpoint)."""
    bad = [
        key for key in ("loss", "grad_norm") if key in totals and not torch.isfinite(totals[key])
    ]
    if bad:
        kept = (
            f"the last good checkpoint (epoch {state.epoch}) is kept in {out / CHECKPOINT_DIR}"
            if state.epoch
            else "no checkpoint was written yet"
        )
        raise TrainingDiverged(
            f"{' and '.join(bad)} became non-finite at step {state.step} (epoch "
            f"{state.epoch + 1}); {kept}. Lower the learning rate or the coupling clamp."
        )


def _train_epoch(
    scorer,
    optimizer,
    pixels,
    labels,
    config,
    options,
    context,
    state,
    stopwatch,
    steps_per_epoch,
    total_steps,
) -> dict[str, float] | None:
    """One epoch; returns its mean statistics, or None when a step/time limit stopped it early."""
    order = _epoch_order(len(labels), config.seed, state.epoch, context)
    generator = torch.Generator(device=context.device).manual_seed(
        config.seed * 100_003 + state.epoch * 101 + context.rank
    )
    totals: dict[str, Tensor] = {}
    count = 0
    bar = tqdm(
        total=steps_per_epoch,
        desc=f"epoch {state.epoch + 1}/{config.epochs}",
        disable=not (options.progress and context.is_main),
        leave=False,
        file=sys.stderr,
    )
    scorer.train()
    for start in range(0, steps_per_epoch * config.batch_size, config.batch_size):
        progress = state.step / total_steps
        if options.time_budget_minutes:
            progress = max(progress, stopwatch() / (60 * options.time_budget_minutes))
        if progress >= 1.0 or (options.max_steps is not None and state.step >= options.max_steps):
            bar.close()
            return None
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, progress, steps_per_epoch, state.step)
        index = torch.from_numpy(order[start : start + config.batch_size]).to(context.device)
        x = _batch_inputs(pixels[index], config, generator)
        x = _with_adversarials(scorer, x, labels[index], config, generator)
        with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=config.amp):
            loss, stats = _training_loss(scorer, x, labels[index], config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(scorer.parameters(), config.grad_clip)
        optimizer.step()
        state.step += 1
        count += 1
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
        if count % 25 == 0 or count == steps_per_epoch:  # host sync only every few steps
            _check_finite(totals, state, options.out)
            bar.set_postfix({k: f"{v.item() / count:.3f}" for k, v in totals.items()})
        bar.update(1)
    bar.close()
    _check_finite(totals, state, options.out)
    return {key: all_reduce_mean(value / count, context).item() for key, value in totals.items()}


def _save_progress(options: TrainOptions, model, optimizer, state: _RunState) -> None:
    save_checkpoint(
        options.out / CHECKPOINT_DIR,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "elapsed_seconds": state.elapsed_seconds,
            "history": state.history,
        },
    )


def _restore(options: TrainOptions, model, optimizer, device) -> _RunState:
    checkpoint = load_checkpoint(options.out / CHECKPOINT_DIR, device) if options.resume else None
    if checkpoint is None:
        return _RunState()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return _RunState(
        epoch=checkpoint["epoch"],
        step=checkpoint["step"],
        elapsed_seconds=checkpoint["elapsed_seconds"],
        history=checkpoint["history"],
    )


def _load_initial_weights(model: nn.Module, config: ModelConfig, source: Path, device) -> None:
    """Fine-tuning: start from another artifact's weights (same architecture, checked)."""
    manifest = load_manifest(source)
    if manifest.config.model_dump(exclude={"name"}) != config.model_dump(exclude={"name"}):
        raise ValueError(
            f"--init-weights {source} has another architecture than the config: "
            "fine-tuning needs the same layers"
        )
    loaded, _ = load_model(source, device)
    model.load_state_dict(loaded.state_dict())


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _stop_reason(options: TrainOptions, config: TrainingConfig, state: _RunState) -> str | None:
    """Why training ended before the config's epochs (None: it ran them all)."""
    if state.epoch >= config.epochs:
        return None
    if options.max_steps is not None and state.step >= options.max_steps:
        return f"--max-steps {options.max_steps}"
    if options.time_budget_minutes:
        return f"--time-budget-minutes {options.time_budget_minutes:g}"
    return "interrupted"


def _finish(options, model, model_config, config, split, class_names, state, context):
    """Evaluate on the test split and write the artifact (main rank only)."""
    metrics: dict[str, Any] = {}
    if options.evaluate:
        test = load_recorded(_recorded(config, options.data_dir), "test")
        metrics = evaluate_model(model, test, context.device)
    training_meta = {
        "dataset": config.dataset,
        "data_dir": _recorded(config, options.data_dir)["data_dir"],
        "beta": config.beta if math.isfinite(config.beta) else "inf",
        "config": config.model_dump(mode="json"),
        "epochs_completed": state.epoch,
        "stopped_early": _stop_reason(options, config, state),
        "steps": state.step,
        "training_seconds": round(state.elapsed_seconds, 1),
        "hardware": _hardware(context.device),
        "world_size": context.world_size,
        "torch_version": torch.__version__,
        "command": options.command,
        **split,
    }
    training_meta["config"]["beta"] = training_meta["beta"]
    manifest = ModelManifest(
        name=model_config.name, config=model_config, class_names=class_names, training=training_meta
    )
    removed = remove_derived(options.out)  # made from the previous weights: never serve them
    if removed:
        print(
            f"removed {', '.join(removed)} of the previous weights in {options.out}: "
            f"run `trustgc calibrate --model {options.out}` before serving",
            file=sys.stderr,
        )
    save_model(options.out, model, manifest)
    write_json(options.out / "metrics.json", {"test": metrics})
    write_model_card(options.out, manifest, metrics)
    return metrics


def resolve_config(options: TrainOptions) -> TrainOptions:
    """Options with ``config`` set: a folder's inferred config (written to OUT/config.json),
    else fashion_mnist.  Refuses an ``--out`` that is a file and folder flags without a folder.
    """
    if options.out.exists() and not options.out.is_dir():
        raise ValueError(f"--out {options.out} is a file: give a directory for the model")
    if options.config is not None:
        if options.preset or options.image_size:
            raise ValueError("--preset and --image-size apply to an image folder without --config")
        return options
    from training.folder_config import is_image_folder, write_folder_config

    if not is_image_folder(options.data_dir):
        if options.preset or options.image_size:
            raise ValueError(
                f"--preset and --image-size need --data-dir to be a folder of class sub-folders "
                f"(or train/ and test/ holding them), got {options.data_dir}"
            )
        return options.model_copy(update={"config": "fashion_mnist"})
    path = write_folder_config(
        options.data_dir, options.out, options.preset, options.image_size, options.seed
    )
    return options.model_copy(update={"config": str(path)})


def train(options: TrainOptions) -> dict[str, Any]:
    """Run training as described by ``options``; returns the test metrics (main rank)."""
    options = resolve_config(options)
    context = setup_distributed(options.device)
    if options.time_budget_minutes and context.enabled:
        raise ValueError("--time-budget-minutes is for single-process runs only")
    try:
        config = load_training_config(
            options.config,
            beta=options.beta,
            epochs=options.epochs,
            lr=options.lr,
            batch_size=options.batch_size,
            seed=options.seed,
            amp=options.amp,
            limit_train_samples=options.limit_train_samples,
        )
        model_config: ModelConfig = load_model_config(options.config)
        torch.manual_seed(config.seed)
        train_part, split = _prepare_data(config, options.data_dir)
        pixels = pixels_to_tensor(train_part.images).to(context.device)
        labels = torch.from_numpy(train_part.labels).to(context.device)
        model = build_model(model_config).to(context.device)
        if options.init_weights is not None:
            _load_initial_weights(model, model_config, options.init_weights, context.device)
        if config.adversarial is not None and not hasattr(model, "score"):
            raise ValueError("adversarial training is implemented for IB-INN models only")
        optimizer = _make_optimizer(model, config)
        state = _restore(options, model, optimizer, context.device)
        scorer: nn.Module = _Scorer(model)
        if context.enabled:
            scorer = DistributedDataParallel(scorer)
        steps_per_epoch = len(labels) // context.world_size // config.batch_size
        if steps_per_epoch == 0:
            raise ValueError(f"{len(labels)} training images are fewer than one batch")
        total_steps = steps_per_epoch * config.epochs
        stopwatch = _Stopwatch(state.elapsed_seconds)
        log_path = options.out / METRICS_LOG
        options.out.mkdir(parents=True, exist_ok=True)
        epochs = tqdm(
            total=config.epochs,
            initial=state.epoch,
            desc="training",
            unit="epoch",
            disable=not (options.progress and context.is_main),
            file=sys.stderr,
        )
        while state.epoch < config.epochs:
            stats = _train_epoch(
                scorer,
                optimizer,
                pixels,
                labels,
                config,
                options,
                context,
                state,
                stopwatch,
                steps_per_epoch,
                total_steps,
            )
            if stats is None:
                break
            state.epoch += 1
            state.elapsed_seconds = stopwatch()
            record = {
                "epoch": state.epoch,
                "step": state.step,
                "seconds": round(state.elapsed_seconds, 2),
                "lr": optimizer.param_groups[0]["lr"],
                **stats,
            }
            state.history.append(record)
            if context.is_main:
                with log_path.open("a") as log:
                    log.write(json.dumps(record) + "\n")
                _save_progress(options, model, optimizer, state)
            epochs.set_postfix({k: f"{v:.3f}" for k, v in stats.items()})
            epochs.update(1)
        epochs.close()
        state.elapsed_seconds = stopwatch()
        if not context.is_main:
            return {}
        reason = _stop_reason(options, config, state)
        if reason:
            print(
                f"training stopped by {reason} after {state.epoch} of {config.epochs} epochs "
                f"({state.step} steps); the model card records it",
                file=sys.stderr,
            )
        return _finish(
            options, model, model_config, config, split, train_part.class_names, state, context
        )
    finally:
        teardown_distributed(context)
