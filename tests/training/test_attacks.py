"""Carlini-Wagner attack (training/attacks.py) on a linear model and on the tiny IB-INN.

The linear two-class model has a closed-form minimal perturbation, so the attack's L2 is checked
against a number worked out by hand; the tiny IB-INN (8x8 synthetic images, 4 classes) is
trained for a few steps in a fixture.  Everything runs on the CPU in one thread.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from training.attack_eval import _z_squared, write_markdown
from training.attack_options import DETECT_STATISTICS
from training.attacks import (
    SURROGATES,
    AttackConfig,
    DetectionPenalty,
    bin_centres,
    carlini_wagner_l2,
    gc_attack_fn,
    quantize_unit,
    random_targets,
    target_margin,
)
from training.data import make_synthetic
from training.loss import ib_loss
from trustgc.config import load_model_config
from trustgc.ibinn import IBINN
from trustgc.inference import model_outputs
from trustgc.preprocess import dequantize, pixels_to_tensor, pixels_to_unit
from trustgc.trust.statistics import STATISTICS, compute_statistics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple[IBINN, torch.Tensor, np.ndarray, DetectionPenalty]:
    return _train_tiny()


def _train_tiny() -> tuple[IBINN, torch.Tensor, np.ndarray, DetectionPenalty]:
    """The tiny IB-INN after 30 Adam steps on synthetic data, clean test pixels, labels and
    the detection penalty with mean / std measured on the training images."""
    torch.manual_seed(0)
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        model = IBINN(load_model_config("tiny"))
        train = make_synthetic(num_per_class=32, seed=0)
        pixels = pixels_to_tensor(train.images)
        labels = torch.from_numpy(train.labels)
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(0)
        for _ in range(30):
            x = dequantize(pixels, 0.01, generator)
            loss = ib_loss(model.score(x), labels, beta=4.0).total
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval().requires_grad_(False)
        outputs = model_outputs(model, pixels)
        statistics = compute_statistics(outputs, pixels.numpy(), list(DETECT_STATISTICS))
    penalty = DetectionPenalty(
        {k: (float(v.mean()), float(v.std())) for k, v in statistics.items()}
    )
    test = make_synthetic(num_per_class=4, seed=1)
    return model, pixels_to_tensor(test.images), test.labels, penalty


STEPS, ROUNDS, COUNT = 40, 2, 4


def _attack_set(tiny):
    model, pixels, labels, penalty = tiny
    x = pixels_to_unit(pixels[:COUNT])
    with torch.no_grad():
        predicted = model.score(x).logits.argmax(dim=1).numpy()
    assert np.array_equal(predicted, labels[:COUNT]), "the tiny model should fit its data"
    targets = torch.from_numpy(random_targets(labels[:COUNT], 4, seed=0))
    return model, x, targets, penalty


@pytest.fixture(scope="module")
def attacks(tiny) -> dict:
    """Attack results on the same images and targets, keyed by (kappa, d, quantize)."""
    model, x, targets, penalty = _attack_set(tiny)
    results = {}
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        for kappa, d, quantize in [
            (0.01, 0.0, False),
            (1.0, 0.0, False),
            (5.0, 0.0, False),
            (math.inf, 0.0, False),
            (1.0, 1.0, False),
            (1.0, 0.0, True),
        ]:
            config = AttackConfig(kappa=kappa, d=d, steps=STEPS, rounds=ROUNDS, quantize=quantize)
            fn = gc_attack_fn(model, penalty if d > 0 else None)
            results[kappa, d, quantize] = carlini_wagner_l2(fn, x, targets, config)
    return results


# --------------------------------------------------------------------------- helpers


def test_quantize_unit_inverts_pixels_to_unit_exactly() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(quantize_unit(pixels_to_unit(pixels)), pixels)
    assert torch.equal(bin_centres(pixels_to_unit(pixels)), pixels_to_unit(pixels))
    # every point of a bin maps to that bin; the box ends clip
    x = torch.tensor([0.0, 0.3 / 256, 0.99 / 256, 1.01 / 256, 255.5 / 256, 1.0])
    assert quantize_unit(x).tolist() == [0, 0, 0, 1, 255, 255]


def test_random_targets_differ_from_labels_and_are_reproducible() -> None:
    labels = np.arange(1000) % 10
    targets = random_targets(labels, 10, seed=3)
    assert np.all(targets != labels) and targets.min() >= 0 and targets.max() <= 9
    assert np.array_equal(targets, random_targets(labels, 10, seed=3))
    assert len(np.unique(targets - labels)) > 5  # not a fixed shift


def test_target_margin() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, -1.0]])
    assert target_margin(logits, torch.tensor([1, 2])).tolist() == [1.0, -6.0]


# --------------------------------------------------------------------------- linear model


def test_linear_model_matches_the_closed_form_minimum() -> None:
    """Two classes, logits W x: the smallest L2 for margin kappa is (kappa - m(x)) / ||w1 - w0||.

    The image is mid-grey, so the box does not bind for this small perturbation.
    """
    generator = torch.Generator().manual_seed(0)
    weights = torch.randn(2, 64, generator=generator)
    x = torch.full((3, 1, 8, 8), 0.5) + 0.05 * torch.randn(3, 1, 8, 8, generator=generator)

    def logits_fn(images):
        return images.flatten(1) @ weights.T

    targets = torch.tensor([1, 1, 1])
    start = target_margin(logits_fn(x), targets)
    kappa = 1.0
    expected = (kappa - start).clamp(min=0) / (weights[1] - weights[0]).norm()
    config = AttackConfig(kappa=kappa, steps=200, rounds=3, c0=1.0, abort_early=False)
    result = carlini_wagner_l2(logits_fn, x, targets, config)
    assert result.success.all()
    assert torch.all(result.margin >= kappa)
    assert torch.allclose(result.l2, expected, rtol=0.05), (result.l2, expected)
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1


# --------------------------------------------------------------------------- tiny IB-INN


def test_attack_on_tiny_gc_reaches_the_target_inside_the_box(tiny, attacks) -> None:
    model, x, targets, _ = _attack_set(tiny)
    result = attacks[1.0, 0.0, False]
    assert result.success.all()
    assert result.adversarial.min() >= 0 and result.adversarial.max() <= 1
    with torch.no_grad():
        logits = model.score(result.adversarial).logits
    assert torch.equal(logits.argmax(dim=1), targets)
    assert torch.all(target_margin(logits, targets) >= 1.0 - 1e-4)
    l2 = (result.adversarial - x).flatten(1).norm(dim=1)
    assert torch.allclose(result.l2, l2, atol=1e-5)
    assert result.detect is None
    assert 0 < result.gradient_evaluations <= COUNT * STEPS * ROUNDS


def test_quantised_attack_returns_real_images_that_succeed(tiny, attacks) -> None:
    model, _, targets, _ = _attack_set(tiny)
    result = attacks[1.0, 0.0, True]
    assert result.success.all()
    pixels = quantize_unit(result.adversarial)
    assert torch.equal(pixels_to_unit(pixels), result.adversarial)  # already 8-bit images
    with torch.no_grad():
        logits = model.score(pixels_to_unit(pixels)).logits
    assert torch.equal(logits.argmax(dim=1), targets)


def test_smaller_kappa_needs_a_smaller_perturbation(attacks) -> None:
    l2 = {kappa: attacks[kappa, 0.0, False].l2 for kappa in (0.01, 1.0, 5.0)}
    assert all(attacks[kappa, 0.0, False].success.all() for kappa in l2)
    assert l2[0.01].mean() < l2[1.0].mean() < l2[5.0].mean()
    assert torch.all(l2[0.01] <= l2[5.0] + 1e-3)


def test_infinite_kappa_runs_to_the_budget(attacks) -> None:
    capped, free = attacks[1.0, 0.0, False], attacks[math.inf, 0.0, False]
    assert free.success.all()
    assert free.margin.mean() > capped.margin.mean()
    # one round: every image is on target after it, so no rerun with 10 c; no early abort
    assert free.gradient_evaluations == COUNT * STEPS
    assert torch.all(free.c == 1.0)


def test_detection_term_reduces_the_typicality_deviation(tiny, attacks) -> None:
    model, _, _, penalty = _attack_set(tiny)
    mean, std = penalty.statistics["typicality"]
    deviation = {}
    for d in (0.0, 1.0):
        result = attacks[1.0, d, False]
        assert result.success.all()
        with torch.no_grad():
            typicality = penalty.values(model.score(result.adversarial))["typicality"]
        deviation[d] = ((typicality - mean) / std).pow(2).mean()
    assert attacks[1.0, 1.0, False].detect is not None
    assert deviation[1.0] < 0.5 * deviation[0.0]


def test_detection_penalty_is_the_served_statistics_z_score(tiny) -> None:
    model, pixels, _, penalty = tiny
    outputs = model_outputs(model, pixels)
    served = compute_statistics(outputs, pixels.numpy(), list(DETECT_STATISTICS))
    with torch.no_grad():
        scores = model.score(pixels_to_unit(pixels))
    values = penalty.values(scores)
    assert set(values) == set(DETECT_STATISTICS)
    expected = 0.0
    for name, value in values.items():
        assert np.allclose(value.numpy(), served[name], rtol=1e-5, atol=1e-4), name
        mean, std = penalty.statistics[name]
        z = (served[name] - mean) / std
        if name == "logit_margin":  # one-sided, like its served test: only the excess counts
            assert np.any(z < 0) and np.any(z > 0)
            z = np.maximum(z, 0.0)
        expected = expected + z**2
    assert np.allclose(penalty(scores).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_penalty_terms_follow_each_statistics_served_side(tiny, monkeypatch) -> None:
    """upper: only the excess above the mean counts; lower: only the shortfall; two-sided:
    both.  The sides come from the registry, so a statistic declared lower is clamped below."""
    model, pixels, _, penalty = tiny
    with torch.no_grad():
        scores = model.score(pixels_to_unit(pixels))
    values, terms = penalty.values(scores), penalty.terms(scores)
    sides = set()
    for name, value in values.items():
        mean, std = penalty.statistics[name]
        z = (value - mean) / std
        assert (z < 0).any() and (z > 0).any(), name  # both tails present: the clamp matters
        side = STATISTICS[name].side
        expected = {"upper": z.clamp(min=0.0), "two_sided": z}[side] ** 2
        torch.testing.assert_close(terms[name], expected, rtol=0, atol=0)
        sides.add(side)
    assert sides == {"upper", "two_sided"}
    monkeypatch.setitem(
        STATISTICS, "typicality", dataclasses.replace(STATISTICS["typicality"], side="lower")
    )
    mean, std = penalty.statistics["typicality"]
    lower = DetectionPenalty({"typicality": (mean, std)}).terms(scores)["typicality"]
    z = (values["typicality"] - mean) / std
    torch.testing.assert_close(lower, z.clamp(max=0.0) ** 2, rtol=0, atol=0)


def test_reported_z_squared_are_the_penalty_terms_of_the_served_statistics(tiny) -> None:
    """attack_eval's z2 columns: the served (numpy) statistics' squared z-scores, clamped to
    each statistic's served side exactly as L_detect clamps them."""
    model, pixels, _, penalty = tiny
    z2 = _z_squared(SimpleNamespace(model=model, device="cpu"), penalty, pixels, batch=5)
    served = compute_statistics(model_outputs(model, pixels), pixels.numpy(), list(z2))
    for name, values in z2.items():
        mean, std = penalty.statistics[name]
        z = (served[name] - mean) / std
        z = np.maximum(z, 0.0) if STATISTICS[name].side == "upper" else z
        np.testing.assert_allclose(values, z**2, rtol=1e-5, atol=1e-7)  # other batch sizes
    assert np.any(z2["logit_margin"] == 0.0)  # the one-sided clamp is active on clean images


def test_statistics_without_gradient_use_their_named_surrogate(tiny, monkeypatch) -> None:
    """complexity_* have no torch form: the penalty looks up the registry's surrogate name in
    SURROGATES, refuses clearly while none is built, and negates it for complexity_excess."""
    model, pixels, _, _ = tiny
    with pytest.raises(ValueError, match="surrogate 'png_length' is not available"):
        DetectionPenalty({"complexity_excess": (0.0, 1.0)})
    monkeypatch.setitem(SURROGATES, "png_length", lambda scores, images: images.mean(dim=(1, 2, 3)))
    penalty = DetectionPenalty(
        {"complexity_excess": (0.0, 1.0), "complexity_corrected": (0.0, 1.0)}
    )
    x = pixels_to_unit(pixels)
    with torch.no_grad():
        values = penalty.values(model.score(x), x)
    torch.testing.assert_close(values["complexity_corrected"], x.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(values["complexity_excess"], -x.mean(dim=(1, 2, 3)))


def _attack_result() -> dict:
    gc_row = {
        "success_rate": 1.0,
        "mean_l2": 0.5,
        "auc_attack": 90.0,
        "auc_production_ood": 80.0,
        "auc_typicality": 70.0,
        "flagged_rate": 0.5,
        "rejected_rate": 0.1,
        "caught_rate": 0.55,
        "low_confidence_rate": None,
        "mean_top1": 0.8,
        "typicality_z2": 1.0,
        "class_distance_z2": 2.0,
        "seconds": 1.0,
    }
    result = {
        "config": {
            "gc_dir": "gc",
            "baseline_dir": "dc",
            "dataset": "fashion_mnist",
            "n_images": 4,
            "steps": 5,
            "rounds": 2,
            "c0": 1.0,
            "lr": 0.01,
            "seed": 0,
            "detect_statistics": ["typicality"],
            "low_confidence_threshold": 0.9,
            "torch_threads": 1,
            "cpu_count": 2,
            "load_average_end": [1.0, 1.0, 1.0],
        },
        "clean": {
            "n_test": 10,
            "gc_accuracy": 0.9,
            "dc_accuracy": 0.9,
            "attack_alpha": 0.01,
            "ood_alpha": 0.01,
            "attack_statistic": "class_distance",
            "ood_statistic": "fisher_combined",
            "attack_flag_rate": 0.01,
            "attack_flag_interval_99": [0.0, 0.1],
            "attack_flag_calibrated": True,
            "ood_reject_rate": 0.0,
            "caught_rate": 0.01,
            "low_confidence_rate": 0.1,
        },
        "gc": [{"kappa": k, "d": d, **gc_row} for k in ("0.01", "inf") for d in (0.0, 66.0)],
        "baseline": [
            {
                "kappa": "0.01",
                "success_rate": 1.0,
                "mean_l2": 0.25,
                "seconds": 1.0,
                "paired": 4,
                "gc_mean_l2_paired": 0.5,
                "dc_mean_l2_paired": 0.25,
                "l2_ratio_gc_over_dc": 2.0,
            },
        ],
        "runtime_seconds": 2.0,
    }
    return result


def test_write_markdown_has_one_row_per_setting(tmp_path) -> None:
    result = _attack_result()
    text = write_markdown(result, tmp_path / "docs" / "attacks.md", "trustgc attack ...")
    assert (tmp_path / "docs" / "attacks.md").read_text() == text
    assert "`trustgc attack ...`" in text
    assert sum(line.startswith("| inf |") for line in text.splitlines()) == 2
    assert "| 0.01 | 100% | 0.250 | 100% | 0.500 | 4 | 0.500 | 0.250 | 2.00 | 1 |" in text
    assert "Threat model: the paper's" in text  # L_detect on typicality only


def test_write_markdown_names_the_threat_model_and_skips_a_missing_baseline(tmp_path) -> None:
    result = _attack_result()
    result["config"]["detect_statistics"] = ["typicality", "class_distance", "logit_margin"]
    result["baseline"] = []
    text = write_markdown(result, tmp_path / "attacks.md", "trustgc attack --no-baseline")
    assert "Threat model: adaptive" in text and "has none" in text  # PNG length: no gradient
    assert "`typicality` and `class_distance` and `logit_margin`" in text
    assert "## Discriminative baseline" not in text
    result["config"]["detect_statistics"] = ["typicality", "class_distance"]
    assert "Threat model: partly adaptive" in write_markdown(result, tmp_path / "b.md", "x")


def test_attack_cli_options_reach_the_evaluation(monkeypatch, tmp_path) -> None:
    import training.attack_eval as attack_eval

    seen = {}

    def fake_evaluate(gc_dir, baseline_dir, **kwargs):
        seen.update(kwargs)
        result = _attack_result()
        result["baseline"] = [] if not kwargs["with_baseline"] else result["baseline"]
        return result

    monkeypatch.setattr(attack_eval, "evaluate_attacks", fake_evaluate)
    out = tmp_path / "a.md"
    argv = ["--model", "gc", "--baseline", "dc", "--out", str(out), "--kappas", "10", "inf"]
    argv += ["--d", "66", "--detect-statistics", "typicality", "--no-baseline"]
    assert attack_eval.main(argv) == 0
    assert seen["settings"] == [(10.0, 66.0), (float("inf"), 66.0)]
    assert seen["detect_statistics"] == ["typicality"] and seen["with_baseline"] is False
    assert out.is_file()
