"""Adversarial training inside the IB objective (training/adversarial.py) and its trainer path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.adversarial import adversarial_ib_loss, pgd_l2, project_l2_ball
from training.config import AdversarialConfig
from training.loss import ib_loss
from training.trainer import TrainOptions, train
from trustgc.artifact import build_model, load_model
from trustgc.config import load_config_file, load_model_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(load_model_config("tiny"))
    # a random but non-trivial head: the attack then has a gradient to follow
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _batch(n: int = 16, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, 8, 8), generator=generator)
    labels = torch.randint(0, 4, (n,), generator=generator)
    return x, labels


def test_projection_scales_only_rows_outside_the_ball() -> None:
    delta = torch.zeros(3, 1, 2, 2)
    delta[0, 0, 0, 0] = 3.0  # norm 3: scaled to 1
    delta[1, 0, 1, 1] = 0.5  # inside: unchanged
    projected = project_l2_ball(delta, 1.0)
    norms = projected.flatten(1).norm(dim=1)
    assert norms.tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert torch.equal(projected[1], delta[1])


def test_pgd_stays_in_the_ball_and_the_image_range_and_raises_the_loss() -> None:
    model = _tiny_model()
    x, labels = _batch()
    config = AdversarialConfig(epsilon=0.5, steps=10)
    x_adv = pgd_l2(model, x, labels, config, torch.Generator().manual_seed(0))
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert (x_adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert not x_adv.requires_grad
    with torch.no_grad():
        clean_loss = F.cross_entropy(model.score(x).logits, labels)
        adversarial_loss = F.cross_entropy(model.score(x_adv).logits, labels)
        # a random point of the same ball: the attack must beat it, not just move
        noise = project_l2_ball(torch.randn_like(x), 0.5)
        random_loss = F.cross_entropy(model.score((x + noise).clamp(0, 1)).logits, labels)
    assert adversarial_loss > clean_loss
    assert adversarial_loss > random_loss


def test_default_step_size_is_madrys() -> None:
    assert AdversarialConfig(epsilon=1.0, steps=5).resolved_step_size() == pytest.approx(0.5)
    assert AdversarialConfig(epsilon=1.0, steps=5, step_size=0.1).resolved_step_size() == 0.1


def test_adversarial_loss_matches_the_hand_computed_formula() -> None:
    model = _tiny_model()
    x, labels = _batch(8)
    x_adv = (x + 0.1).clamp(0, 1)
    scores = model.score(torch.cat([x, x_adv]))
    beta, a = 4.0, 0.25
    loss = adversarial_ib_loss(scores, labels, beta, a)
    l_x = (-scores.log_likelihood[:8] / scores.dim).mean()
    ce_clean = F.cross_entropy(scores.logits[:8], labels)
    ce_adv = F.cross_entropy(scores.logits[8:], labels)
    expected = l_x / (1 + beta) + beta / (1 + beta) * ((1 - a) * ce_clean + a * ce_adv)
    assert loss.total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.l_x.item() == pytest.approx(l_x.item(), rel=1e-6)
    # with no weight on the adversarial half it is the plain IB loss of the clean half
    clean_only = model.score(x)
    plain = ib_loss(clean_only, labels, beta)
    zero = adversarial_ib_loss(scores, labels, beta, 0.0)
    assert zero.total.item() == pytest.approx(plain.total.item(), rel=1e-5)


def test_adversarial_loss_refuses_a_batch_without_its_adversarial_half() -> None:
    model = _tiny_model()
    x, labels = _batch(8)
    with pytest.raises(ValueError, match="2 x 8 rows"):
        adversarial_ib_loss(model.score(x), labels, 4.0, 0.5)


def _adversarial_tiny_config(tmp_path: Path, **adversarial) -> Path:
    data = load_config_file("tiny")
    data["training"]["adversarial"] = {"epsilon": 0.3, "steps": 2, **adversarial}
    path = tmp_path / "tiny_adversarial.json"
    path.write_text(json.dumps(data))
    return path


def _options(config: Path | str, out: Path, **overrides) -> TrainOptions:
    settings = {"device": "cpu", "progress": False, "evaluate": False, "command": "pytest"}
    settings.update(overrides)
    return TrainOptions(config=str(config), out=out, **settings)


def test_adversarial_training_logs_adversarial_accuracy_and_writes_an_artifact(
    tmp_path: Path,
) -> None:
    config = _adversarial_tiny_config(tmp_path)
    out = tmp_path / "robust"
    train(_options(config, out, epochs=2))
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert 0.0 <= record["adversarial_accuracy"] <= 1.0
        assert math.isfinite(record["loss"])
    model, manifest = load_model(out)
    assert manifest.training["config"]["adversarial"]["epsilon"] == 0.3


def test_fine_tuning_starts_from_the_given_weights(tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(_options("tiny", base, epochs=1))
    config = _adversarial_tiny_config(tmp_path)
    tuned = tmp_path / "tuned"
    # lr ~ 0: the fine-tuned weights must be the base weights, not a fresh initialisation
    train(_options(config, tuned, epochs=1, lr=1e-12, init_weights=base))
    base_model, _ = load_model(base)
    tuned_model, _ = load_model(tuned)
    for (name, a), (_, b) in zip(
        base_model.state_dict().items(), tuned_model.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6), name


def test_fine_tuning_refuses_another_architecture(tmp_path: Path) -> None:
    base = tmp_path / "base"
    train(_options("tiny", base, epochs=1))
    data = load_config_file("tiny")
    data["model"]["flat_width"] = 48
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="another architecture"):
        train(_options(other, tmp_path / "x", epochs=1, init_weights=base))
