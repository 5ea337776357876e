"""Adaptive attack suite (training/adaptive_attacks.py, training/robustness.py).

Ground truth: the served statistics of the shipped model (the torch forms must reproduce them),
the served decision (every success the attack reports must be accepted with a wrong label when
the returned 8-bit image is sent to the predictor again), and curves worked out by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.adaptive_attacks import (
    AttackMode,
    ServedPenalty,
    _delta,
    _project_l2,
    run_mode,
    served_outcome,
    torch_statistics,
)
from training.data import FASHION_MNIST_DIR, load_fashion_mnist
from training.robustness import EPSILONS, robustness_curve
from trustgc.inference import latent_scores
from trustgc.trust import Predictor
from trustgc.trust.statistics import png_code_length_bits
from trustgc.trust.table import Decision

MODEL = Path("model_store/fashion_mnist")
needs_model = pytest.mark.skipif(
    not (MODEL / "calibration.json").exists()
    or not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="needs the shipped model and Debian's dataset-fashion-mnist",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_artifact(MODEL, backend="torch")  # the attack needs f's gradient


@pytest.fixture(scope="module")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    test = load_fashion_mnist("test")
    return test.images[:16].transpose(0, 3, 1, 2), test.labels[:16]


def test_robustness_curve_by_hand():
    min_l2 = np.array([0.1, 0.5, 0.5, 1.49, 2.0, math.inf, 3.0, 0.26])
    curve = robustness_curve(min_l2)
    expected = {0.25: 1 / 8, 0.5: 4 / 8, 1.5: 5 / 8, 2.0: 6 / 8, 3.0: 7 / 8}
    for eps, share in expected.items():
        assert curve[EPSILONS.index(eps)] == pytest.approx(share)
    assert len(EPSILONS) == 12 and EPSILONS[0] == 0.25 and EPSILONS[-1] == 3.0


def test_the_strong_suite_is_the_full_one_with_three_times_the_steps_and_one_more_mode():
    from training.robustness import SURROGATE_SUITES, suite

    full, strong = suite("full"), suite("strong")
    assert "strong" in SURROGATE_SUITES and "no_surrogate" not in SURROGATE_SUITES
    assert [m.name for m in strong] == [*(m.name for m in full), "pgd_random"]
    for short, long in zip(full, strong, strict=False):
        assert long.steps == 3 * short.steps
        assert long.model_copy(update={"steps": short.steps}) == short
    assert strong[-1].kind == "pgd" and strong[-1].target == "random" and strong[-1].surrogate


@pytest.mark.parametrize("grid", [None, 7])
def test_projection_bounds_the_upsampled_perturbation(grid):
    shape = torch.Size((5, 1, 28, 28))
    size = (5, 1, grid, grid) if grid else tuple(shape)
    parameter = torch.randn(size) * torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0]).view(-1, 1, 1, 1)
    projected = _project_l2(parameter, grid, shape, radius=1.0)
    norms = _delta(projected, grid, shape).flatten(1).norm(dim=1)
    before = _delta(parameter, grid, shape).flatten(1).norm(dim=1)
    assert torch.all(norms <= 1.0 + 1e-5)
    inside = before <= 1.0
    assert torch.allclose(norms[inside], before[inside])  # points inside the ball stay put
    assert torch.allclose(norms[~inside], torch.ones(int((~inside).sum())), atol=1e-5)


@needs_model
def test_torch_statistics_equal_the_served_ones(predictor, test_images):
    """With the exact PNG length, the differentiable forms give the served statistics."""
    pixels, _ = test_images
    table = predictor.score(pixels)
    x = (torch.from_numpy(pixels).float() + 0.5) / 256.0
    with torch.no_grad():
        scores = latent_scores(predictor.model, x, predictor.background)
    png = torch.from_numpy(png_code_length_bits(pixels)).float()
    names = tuple(table.statistics)
    forms = torch_statistics(scores, png, names)
    assert set(forms) == set(names)
    for name in names:
        np.testing.assert_allclose(
            forms[name].double().numpy(), table.statistics[name], rtol=1e-6, atol=1e-6, err_msg=name
        )
    without_png = torch_statistics(scores, None, names)
    assert "complexity_excess" not in without_png and "typicality" in without_png


@needs_model
def test_penalty_is_one_sided_where_the_test_is(predictor, test_images):
    pixels, _ = test_images
    penalty = ServedPenalty(predictor.calibration, surrogate=True)
    upper = {name for name, side in penalty.side.items() if side == "upper"}
    assert {"complexity_excess", "logit_margin", "max_posterior"} <= upper
    assert penalty.side["typicality"] == "two_sided"
    no_png = ServedPenalty(predictor.calibration, surrogate=False)
    assert "complexity_excess" not in no_png.names and "typicality" in no_png.names
    x = (torch.from_numpy(pixels).float() + 0.5) / 256.0
    with torch.no_grad():
        scores = latent_scores(predictor.model, x, predictor.background)
    png = torch.from_numpy(png_code_length_bits(pixels)).float()
    values = penalty(scores, png)
    assert values.shape == (len(pixels),) and torch.all(values >= 0)
    # hand check on one image: the sum of the (clamped) squared z-scores
    forms = torch_statistics(scores, png, penalty.names)
    total = 0.0
    for name, value in forms.items():
        z = (value[0].item() - penalty.centre[name]) / penalty.scale[name]
        clamped = {"upper": max(z, 0.0), "lower": min(z, 0.0)}.get(penalty.side[name], z)
        total += clamped**2
    assert values[0].item() == pytest.approx(total, rel=1e-4)


@needs_model
@pytest.mark.slow
def test_reported_successes_are_served_successes(predictor, test_images):
    """Every L2 the attack reports belongs to an 8-bit image that the service accepts with a
    wrong label, and equals that image's distance to the clean one."""
    pixels, labels = test_images
    table = predictor.score(pixels)
    keep = (table.predicted_index == labels) & (table.decisions == Decision.ACCEPTED)
    pixels, labels = pixels[keep][:4], labels[keep][:4]
    mode = AttackMode(name="cw", steps=60, lr=0.03, check_every=5)
    result = run_mode(predictor, pixels, labels, mode, surrogate=None)
    fooled = np.isfinite(result.l2)
    assert fooled.any(), "60 steps should fool at least one of four images"
    wrong, decisions = served_outcome(predictor, result.adversarial[fooled], labels[fooled])
    assert np.all(wrong) and np.all(decisions == Decision.ACCEPTED)
    distance = np.sqrt(
        ((result.adversarial.astype(float) - pixels) ** 2).reshape(len(pixels), -1).sum(1)
    )
    np.testing.assert_allclose(result.l2[fooled], distance[fooled] / 256.0)
    assert np.array_equal(result.adversarial[~fooled], pixels[~fooled])


@needs_model
@pytest.mark.slow
def test_robustness_run_writes_a_consistent_result(tmp_path):
    """End to end on two images and one mode: the JSON's curve and median come from its own
    per-image L2s, and it names the calibration the numbers refer to."""
    import json

    from training.robustness import main

    out = tmp_path / "r.json"
    assert main(["--n", "2", "--modes", "pgd_runner_up", "--chunk", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["finished"] and data["n"] == 2 and list(data["l2"]) == ["pgd_runner_up"]
    l2 = np.array([float(v) for v in data["l2"]["pgd_runner_up"]])
    assert data["summary"]["curve"] == robustness_curve(l2)
    assert len(data["calibration_sha256"]) == 64
    assert "complexity_excess" in data["served_statistics"]


def test_merge_takes_the_minimum_over_the_modes_of_both_runs(tmp_path):
    import json

    from training.robustness import merge

    base = {"model": "m", "model_kind": "gc", "test_indices": [3, 7, 9], "seed": 0}
    first = base | {
        "command": "a",
        "modes": [{"name": "a"}],
        "finished": True,
        "seconds": {"a": 1},
        "l2": {"a": [0.2, "inf", 2.0]},
        "final_decisions": {"a": {}},
    }
    second = base | {
        "command": "b",
        "modes": [{"name": "b"}],
        "finished": False,
        "seconds": {"b": 1},
        "l2": {"b": ["inf", 1.0, 0.5]},
        "final_decisions": {"b": {}},
    }
    files = []
    for index, run in enumerate((first, second)):
        files.append(tmp_path / f"{index}.json")
        files[-1].write_text(json.dumps(run))
    merged = merge(files)
    assert list(merged["l2"]) == ["a", "b"] and not merged["finished"]
    assert merged["summary"]["curve"] == robustness_curve(np.array([0.2, 1.0, 0.5]))
    files[1].write_text(json.dumps(second | {"test_indices": [1, 2, 3]}))
    with pytest.raises(ValueError, match="differ"):
        merge(files)
