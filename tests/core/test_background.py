"""The background flow and the likelihood-ratio statistic on tiny randomised flows.

Ground truth: the served ``background_ratio`` equals (log q(x) - log q_bg(x)) / D computed from
the two flows directly; a calibration fitted with a background serves the OoD combination that
contains the ratio, one without serves the production combination; the artifact loads its
background, refuses one of another input size, and refuses a calibration fitted with other
background weights; ``rejected_by`` names the smallest served OoD component p-value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trustgc.artifact import ModelManifest, save_model
from trustgc.background import BACKGROUND_DIR, load_background
from trustgc.config import load_model_config
from trustgc.ibinn import IBINN
from trustgc.inference import latent_scores, model_outputs
from trustgc.preprocess import pixels_to_unit
from trustgc.trust.calibration import fit_calibration, save_calibration
from trustgc.trust.predictor import Predictor
from trustgc.trust.statistics import (
    BACKGROUND_OOD_STATISTIC,
    PRODUCTION_OOD_STATISTIC,
    STATISTICS,
    computable,
    compute_statistics,
)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(make_flow) -> IBINN:
    return make_flow(0, 4)


@pytest.fixture(scope="module")
def background(make_flow) -> IBINN:
    return make_flow(1, 2)


def _pixels(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.uniform(40, 200, (count, 1, 1, 1)) + rng.normal(0, 12, (count, 1, 8, 8))
    return np.clip(smooth, 0, 255).astype(np.uint8)


def _manifest(net: IBINN, name: str, classes: tuple[str, ...]) -> ModelManifest:
    return ModelManifest(name=name, config=net.config, class_names=classes)


def _calibrate(model, background, pixels) -> object:
    outputs = model_outputs(model, torch.from_numpy(pixels), background=background)
    statistics = compute_statistics(outputs, pixels, computable(background is not None))
    a = {name: values[:400] for name, values in statistics.items()}
    b = {name: values[400:] for name, values in statistics.items()}
    return fit_calibration(a, b, ood_alpha=0.05, attack_alpha=0.05)


def _save_calibrated_artifact(directory, model, background) -> None:
    """An artifact with its background/ folder and a calibration that records the background's
    weights hash, as `trustgc calibrate` writes it."""
    from trustgc.artifact import weights_sha256

    save_model(directory, model, _manifest(model, "tiny", tuple("abcd")))
    save_model(directory / BACKGROUND_DIR, background, _manifest(background, "bg", ("p", "n")))
    calibration = _calibrate(model, background, _pixels(1600, seed=0))
    digest = weights_sha256(directory / BACKGROUND_DIR)
    split = {**calibration.split, "background_weights_sha256": digest}
    save_calibration(directory, calibration.model_copy(update={"split": split}))


def test_ratio_is_the_log_likelihood_difference_per_dimension(model, background) -> None:
    pixels = _pixels(50, seed=3)
    outputs = model_outputs(model, torch.from_numpy(pixels), background=background)
    served = compute_statistics(outputs, pixels, ["background_ratio"])["background_ratio"]
    x = pixels_to_unit(torch.from_numpy(pixels))
    with torch.no_grad():
        log_q = latent_scores(model, x).log_likelihood.numpy()
        log_q_bg = latent_scores(background, x).log_likelihood.numpy()
    np.testing.assert_allclose(served, (log_q - log_q_bg) / 64, rtol=1e-12)
    assert np.std(served) > 0 and STATISTICS["background_ratio"].side == "lower"


def test_ratio_needs_the_background(model) -> None:
    pixels = _pixels(5, seed=4)
    outputs = model_outputs(model, torch.from_numpy(pixels))
    with pytest.raises(ValueError, match="background flow"):
        compute_statistics(outputs, pixels, ["background_ratio"])
    assert "background_ratio" not in computable(has_background=False)


def test_calibration_serves_the_ratio_combination_only_with_a_background(model, background) -> None:
    pixels = _pixels(1600, seed=0)
    with_bg = _calibrate(model, background, pixels)
    without = _calibrate(model, None, pixels)
    assert with_bg.ood_statistic == BACKGROUND_OOD_STATISTIC
    assert "background_ratio" in with_bg.ood_components
    assert with_bg.components["background_ratio"].side == "lower"
    assert set(with_bg.combined) == {BACKGROUND_OOD_STATISTIC, with_bg.attack_statistic}
    assert without.ood_statistic == PRODUCTION_OOD_STATISTIC
    assert "background_ratio" not in without.components
    with pytest.raises(ValueError, match="need the background flow"):
        Predictor(model, _manifest(model, "tiny", tuple("abcd")), with_bg)


def test_predictor_serves_the_ratio_and_names_the_rejecting_component(model, background) -> None:
    calibration = _calibrate(model, background, _pixels(1600, seed=0))
    manifest = _manifest(model, "tiny", tuple("abcd"))
    predictor = Predictor(model, manifest, calibration, background=background)
    fresh = np.concatenate([_pixels(200, seed=5), _pixels(50, seed=6)[:, :, ::-1] // 4])
    table = predictor.score(fresh)
    assert table.ood_statistic == BACKGROUND_OOD_STATISTIC
    assert 0 < table.out_of_distribution.sum() < len(fresh)
    by = table.rejected_by
    components = calibration.ood_components
    p = np.stack([table.p_values[c] for c in components], axis=1)
    for i in range(len(fresh)):
        if table.out_of_distribution[i]:
            assert by[i] == components[int(np.argmin(p[i]))]
        else:
            assert by[i] is None
    results = predictor.predict(fresh[:20])
    assert [r.rejected_by for r in results] == list(by[:20])


def test_artifact_loads_its_background_and_checks_its_weights(
    tmp_path, model, background, make_flow
):
    _save_calibrated_artifact(tmp_path, model, background)
    predictor = Predictor.from_artifact(tmp_path)
    assert predictor.background is not None
    fresh = _pixels(30, seed=7)
    direct = Predictor(model, predictor.manifest, predictor.calibration, background=background)
    np.testing.assert_array_equal(
        predictor.score(fresh).statistics["background_ratio"],
        direct.score(fresh).statistics["background_ratio"],
    )
    other = make_flow(2, 2)  # retrained background: the references no longer fit it
    save_model(tmp_path / BACKGROUND_DIR, other, _manifest(other, "bg", ("p", "n")))
    with pytest.raises(ValueError, match="other background weights|background weights"):
        Predictor.from_artifact(tmp_path)


def test_a_background_of_another_input_size_is_refused(tmp_path, model) -> None:
    wrong = IBINN(
        load_model_config(
            "tiny",
            num_classes=2,
            input={"height": 16, "width": 16, "channels": 1, "mean": [0.5], "std": [0.25]},
        )
    )
    save_model(tmp_path / BACKGROUND_DIR, wrong, _manifest(wrong, "bg", ("p", "n")))
    with pytest.raises(ValueError, match="differs from the model"):
        load_background(tmp_path, model.config.input)
    assert load_background(tmp_path / "elsewhere", model.config.input) is None


def test_onnxruntime_backend_runs_the_exported_background(tmp_path, model, background) -> None:
    """With backend onnxruntime and background/model.onnx present, the background flow runs in
    ONNX Runtime too; the ratio agrees with torch to float32 noise."""
    from trustgc.onnx_backend import OnnxFlow, export_artifact

    _save_calibrated_artifact(tmp_path, model, background)
    export_artifact(tmp_path, exporter="torchscript")
    torch_predictor = Predictor.from_artifact(tmp_path, backend="onnxruntime")
    assert not isinstance(torch_predictor.background, OnnxFlow)  # no export of it yet
    export_artifact(tmp_path / BACKGROUND_DIR, exporter="torchscript")
    onnx_predictor = Predictor.from_artifact(tmp_path, backend="onnxruntime")
    assert isinstance(onnx_predictor.background, OnnxFlow)
    fresh = _pixels(40, seed=8)
    a = torch_predictor.score(fresh).statistics["background_ratio"]
    b = onnx_predictor.score(fresh).statistics["background_ratio"]
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.std(a) > 0
