"""End-to-end training on the ``tiny`` config (8x8 synthetic images, 4 classes).

Everything runs on the CPU in one thread (a second thread only adds contention for a model this
small) and writes only under ``tmp_path``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training.trainer as trainer
from training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from training.config import load_training_config
from training.data import load_dataset, split_calibration
from training.loss import IBLoss
from training.trainer import TrainingDiverged, TrainOptions, train
from trustgc.artifact import load_model, read_json
from trustgc.preprocess import pixels_to_tensor, pixels_to_unit
from trustgc_cli.main import main

# tiny: synthetic train split of 256 images minus 128 for calibration = 128; batch 32 -> 4 steps
STEPS_PER_EPOCH = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def _options(out: Path, **overrides) -> TrainOptions:
    settings = {"device": "cpu", "progress": False, "evaluate": False, "command": "pytest"}
    settings.update(overrides)
    return TrainOptions(config="tiny", out=out, **settings)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in records]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())


# --------------------------------------------------------------------------- overfitting


def test_trainer_overfits_a_tiny_training_set(tmp_path: Path) -> None:
    out = tmp_path / "overfit"
    # 32 images, one batch per epoch: 25 steps of Adam.
    train(_options(out, epochs=25, limit_train_samples=32))
    log = _log(out)
    assert [r["epoch"] for r in log] == list(range(1, 26))
    assert [r["step"] for r in log] == list(range(1, 26))
    first, last = log[0], log[-1]
    assert first["accuracy"] <= 0.5
    assert last["accuracy"] == 1.0
    assert last["loss"] < 0.1 * first["loss"]
    assert last["l_y"] < 0.1
    assert all(math.isfinite(r["loss"]) for r in log)
    # The written artifact classifies all 32 training images correctly (clean pixels, no noise).
    config = load_training_config("tiny")
    train_part, _ = split_calibration(
        load_dataset("synthetic", "train"), config.calibration_size, config.seed
    )
    images = pixels_to_unit(pixels_to_tensor(train_part.images[:32]))
    model, manifest = load_model(out)
    assert manifest.training["train_size"] == 32
    assert manifest.training["epochs_completed"] == 25
    with torch.no_grad():
        predicted = model.score(images).logits.argmax(1).numpy()
    np.testing.assert_array_equal(predicted, train_part.labels[:32])


# --------------------------------------------------------------------------- resume


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    """Run A: 4 epochs.  Run B: stopped after 2 epochs (max_steps), then resumed to 4.

    (The schedule length is ``epochs``: B keeps epochs=4 throughout, as an interrupted run
    would; max_steps stops it at the end of epoch 2 like a crash right after the checkpoint.)
    """
    a, b = tmp_path / "a", tmp_path / "b"
    train(_options(a, epochs=4))
    train(_options(b, epochs=4, max_steps=2 * STEPS_PER_EPOCH))
    checkpoint = load_checkpoint(b / "checkpoints", torch.device("cpu"))
    assert checkpoint is not None
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 2 * STEPS_PER_EPOCH
    assert [r["epoch"] for r in _log(b)] == [1, 2]
    train(_options(b, epochs=4, resume=True))
    _assert_same_weights(
        load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    )
    log_a, log_b = _log(a), _log(b)
    assert [r["epoch"] for r in log_a] == [1, 2, 3, 4]
    assert _without_timing(log_a) == _without_timing(log_b)
    assert log_a[-1]["loss"] < log_a[0]["loss"]
    assert read_json(b / "model.json")["training"]["steps"] == 4 * STEPS_PER_EPOCH


def test_resume_after_crash_in_the_middle_of_an_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash 3 steps into epoch 3 loses those steps; resuming replays epoch 3 exactly."""
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    train(_options(reference, epochs=3))
    calls = {"n": 0}
    real_ib_loss = trainer.ib_loss

    def crashing_ib_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * STEPS_PER_EPOCH + 4:
            raise KeyboardInterrupt("simulated kill")
        return real_ib_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "ib_loss", crashing_ib_loss)
    with pytest.raises(KeyboardInterrupt):
        train(_options(crashed, epochs=3))
    monkeypatch.setattr(trainer, "ib_loss", real_ib_loss)
    assert not (crashed / "weights.safetensors").exists()
    train(_options(crashed, epochs=3, resume=True))
    _assert_same_weights(
        load_file(str(reference / "weights.safetensors")),
        load_file(str(crashed / "weights.safetensors")),
    )
    assert _without_timing(_log(reference)) == _without_timing(_log(crashed))


# --------------------------------------------------------------------------- divergence


def _nan_after(steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """From call ``steps + 1`` on, ib_loss returns a NaN total (as a diverged model would)."""
    calls = {"n": 0}
    real_ib_loss = trainer.ib_loss

    def nan_ib_loss(*args, **kwargs):
        terms = real_ib_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] <= steps:
            return terms
        return IBLoss(total=terms.total * math.nan, l_x=terms.l_x, l_y=terms.l_y)

    monkeypatch.setattr(trainer, "ib_loss", nan_ib_loss)


def test_divergence_stops_with_clear_error_and_keeps_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, diverged = tmp_path / "good", tmp_path / "diverged"
    # Reference: the same run stopped cleanly after epoch 1.
    train(_options(good, epochs=3, max_steps=STEPS_PER_EPOCH))
    _nan_after(STEPS_PER_EPOCH + 2, monkeypatch)  # NaN from the 3rd step of epoch 2
    with pytest.raises(TrainingDiverged) as raised:
        train(_options(diverged, epochs=3))
    message = str(raised.value)
    assert str(diverged / "checkpoints") in message
    assert "non-finite" in message and "epoch 2" in message
    assert isinstance(raised.value, RuntimeError)
    checkpoint = load_checkpoint(diverged / "checkpoints", torch.device("cpu"))
    assert checkpoint is not None
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == STEPS_PER_EPOCH
    for value in checkpoint["model"].values():
        assert torch.isfinite(value.double()).all()
    reference = load_checkpoint(good / "checkpoints", torch.device("cpu"))
    _assert_same_weights(checkpoint["model"], reference["model"])
    assert not (diverged / "checkpoints" / "last.tmp").exists()
    assert [r["epoch"] for r in _log(diverged)] == [1]
    assert not (diverged / "weights.safetensors").exists()


def test_huge_learning_rate_diverges(tmp_path: Path) -> None:
    out = tmp_path / "huge_lr"
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train(_options(out, epochs=2, lr=1e6))
    assert not (out / "weights.safetensors").exists()
    assert not (out / "checkpoints" / CHECKPOINT_NAME).exists()


def test_checkpoint_is_never_written_with_non_finite_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real_ib_loss = trainer.ib_loss

    def infinite_gradient_ib_loss(scores, *args, **kwargs):
        terms = real_ib_loss(scores, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] != STEPS_PER_EPOCH:
            return terms
        # Finite value (sqrt(0) = 0), infinite gradient: what an overflow in backward gives.
        logits = scores.logits.sum()
        total = terms.total + torch.sqrt(logits - logits.detach())
        return IBLoss(total=total, l_x=terms.l_x, l_y=terms.l_y)

    monkeypatch.setattr(trainer, "ib_loss", infinite_gradient_ib_loss)
    out = tmp_path / "poisoned"
    with pytest.raises(TrainingDiverged):
        train(_options(out, epochs=3))
    checkpoint = load_checkpoint(out / "checkpoints", torch.device("cpu"))
    if checkpoint is not None:
        for key, value in checkpoint["model"].items():
            assert torch.isfinite(value.double()).all(), key


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("steps_per_epoch", [1, 7])
def test_learning_rate_never_exceeds_the_peak(steps_per_epoch: int) -> None:
    config = load_training_config("tiny")  # warmup_epochs = 0.5, lr = 0.003
    total = steps_per_epoch * config.epochs
    rates = [
        trainer._learning_rate(config, step / total, steps_per_epoch, step) for step in range(total)
    ]
    assert max(rates) <= config.lr * (1 + 1e-12), rates


def test_learning_rate_schedule_values() -> None:
    config = load_training_config("tiny", warmup_epochs=2.0, epochs=10, lr=0.01)
    # Warm-up over 2 epochs x 5 steps: (step + 1) / 10 of the peak.
    assert trainer._learning_rate(config, 0.0, 5, 0) == pytest.approx(0.001)
    assert trainer._learning_rate(config, 0.18, 5, 9) == pytest.approx(0.01)
    # Then cosine from the peak to 1% of it.
    assert trainer._learning_rate(config, 0.5, 5, 25) == pytest.approx(0.01 * (0.01 + 0.99 * 0.5))
    assert trainer._learning_rate(config, 1.0, 5, 49) == pytest.approx(0.0001)


# --------------------------------------------------------------------------- CLI


def test_cli_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-model"
    code = main(
        ["train", "--config", "tiny", "--out", str(out), "--epochs", "2", "--device", "cpu"]
        + ["--no-progress"]
    )
    assert code == 0
    for name in ("model.json", "weights.safetensors", "metrics.json", "MODEL_CARD.md"):
        assert (out / name).is_file(), name
    printed_by_train = json.loads(capsys.readouterr().out)
    metrics = read_json(out / "metrics.json")["test"]
    assert printed_by_train == metrics
    assert metrics["num_samples"] == 256.0
    assert 0.0 <= metrics["accuracy"] <= 1.0
    manifest = read_json(out / "model.json")
    assert manifest["name"] == "tiny"
    assert manifest["training"]["dataset"] == "synthetic"
    assert manifest["training"]["epochs_completed"] == 2
    assert manifest["training"]["steps"] == 2 * STEPS_PER_EPOCH
    assert manifest["training"]["train_size"] == 128
    card = (out / "MODEL_CARD.md").read_text()
    assert "# Model card: tiny" in card

    assert main(["evaluate", "--model", str(out), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == metrics["accuracy"]
    assert evaluated["num_samples"] == metrics["num_samples"]
    assert evaluated["l_x"] == pytest.approx(metrics["l_x"], rel=1e-6)
    assert evaluated["bits_per_dim"] == pytest.approx(metrics["bits_per_dim"], rel=1e-6)


def test_cli_reports_unknown_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", "no_such_config", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "unknown config 'no_such_config'" in capsys.readouterr().err


def test_cli_rejects_negative_beta(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["train", "--config", "tiny", "--out", str(tmp_path), "--beta", "-1"])
    assert raised.value.code == 2
