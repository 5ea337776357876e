"""ONNX export of the flow and the onnxruntime backend: files, parity with torch, the trust layer.

Fast tests export the ``tiny`` config (dynamo once per module, TorchScript once) to tmp_path.
The shipped-model tests compare the two backends on 1,000 Fashion-MNIST test images; they skip
when ``model_store/fashion_mnist/model.onnx`` or the data set is missing.  Exports of the
``cifar10`` and ``imagenet`` layouts (randomly initialised) are marked slow.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from trustgc.artifact import ArtifactError, ModelManifest, save_model
from trustgc.config import load_model_config
from trustgc.ibinn import IBINN
from trustgc.inference import model_outputs
from trustgc.onnx_backend import (
    DEFAULT_OPSET,
    ONNX_FILE,
    OnnxFlow,
    checked_onnx_path,
    export_artifact,
    export_flow,
    load_onnx_info,
    select_providers,
)
from trustgc.preprocess import pixels_to_unit

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = REPO_ROOT / "model_store" / "fashion_mnist"
PARITY_IMAGES = 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def _save_tiny(directory: Path, model: IBINN) -> None:
    manifest = ModelManifest(name="tiny", config=model.config, class_names=("a", "b", "c", "d"))
    save_model(directory, model, manifest)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_flow):
    """A tiny artifact exported with the default exporter (dynamo): (directory, model, info)."""
    directory = tmp_path_factory.mktemp("tiny")
    model = make_flow(0)
    _save_tiny(directory, model)
    info = export_artifact(directory)
    return directory, model, info


def _copy_artifact(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(((a - b).abs() / b.abs().clamp_min(1.0)).max())


# ------------------------------------------------------------------------ tiny: the export


def test_tiny_export_is_one_checked_file(tiny) -> None:
    directory, _, info = tiny
    path = directory / ONNX_FILE
    onnx.checker.check_model(str(path), full_check=True)
    assert not list(directory.glob("*.data")), "weights must live inside model.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["images"]
    assert [o.name for o in graph.output] == ["latents", "logdet"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    assert load_onnx_info(directory) == info
    assert info["exporter"] in ("dynamo", "torchscript")
    assert info["exporter"] == "dynamo", info["fallback_reason"]  # torch 2.13 exports f as is
    assert info["opset"] == DEFAULT_OPSET
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["onnx"] == onnx.__version__
    assert info["input"]["shape"] == ["batch", 1, 8, 8]
    assert info["outputs"]["latents"]["shape"] == ["batch", 64]
    assert checked_onnx_path(directory) == path


@pytest.mark.parametrize("batch", [1, 2, 5, 33])
def test_tiny_parity_at_any_batch_size(tiny, batch) -> None:
    directory, model, _ = tiny
    flow = OnnxFlow.from_artifact(directory, model.head)
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        z, logdet = model.flow(x)
    z_ort, logdet_ort = flow(x)
    assert z_ort.shape == z.shape and logdet_ort.shape == logdet.shape
    assert z_ort.dtype == torch.float32
    assert _max_abs(z_ort, z) < 1e-5
    assert _max_rel(logdet_ort, logdet) < 1e-5


def test_tiny_model_outputs_match_across_backends(tiny) -> None:
    """model_outputs, the one batched loop, runs the ORT adapter unchanged (via .score)."""
    directory, model, _ = tiny
    flow = OnnxFlow.from_artifact(directory)  # head loaded from the artifact's weights
    pixels = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    reference = model_outputs(model, pixels, batch_size=16, keep_latents=True)
    onnx_out = model_outputs(flow, pixels, batch_size=16, keep_latents=True)
    for name in ("log_posterior", "log_likelihood", "class_log_likelihood", "latents"):
        np.testing.assert_allclose(
            getattr(onnx_out, name), getattr(reference, name), rtol=1e-6, atol=1e-4, err_msg=name
        )
    assert onnx_out.dim == reference.dim == 64
    assert (onnx_out.log_posterior.argmax(1) == reference.log_posterior.argmax(1)).all()


def test_tiny_scores_use_the_shared_scoring_code(tiny) -> None:
    directory, model, _ = tiny
    flow = OnnxFlow.from_artifact(directory, model.head)
    x = pixels_to_unit(torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8))
    with torch.inference_mode():
        expected = model.score(x)
        scores = flow.score(x)
    assert type(scores) is type(expected)
    torch.testing.assert_close(scores.log_posterior, expected.log_posterior, atol=1e-4, rtol=0)
    torch.testing.assert_close(scores.logdet, expected.logdet, atol=1e-3, rtol=1e-6)
    assert scores.dim == expected.dim


def test_tiny_torchscript_exporter(tmp_path, make_flow) -> None:
    model = make_flow(1)
    info = export_flow(model, tmp_path / "ts.onnx", exporter="torchscript")
    assert info["exporter"] == "torchscript" and "onnxscript" not in info["versions"]
    assert info["check"]["max_abs_latent_diff"] < 1e-5
    flow = OnnxFlow(tmp_path / "ts.onnx", model.head)
    x = torch.rand(7, 1, 8, 8)
    with torch.inference_mode():
        z, _ = model.flow(x)
    assert _max_abs(flow(x)[0], z) < 1e-5


# ------------------------------------------------------------------- tiny: the guard rails


def test_missing_or_stale_export_is_refused(tiny, tmp_path, make_flow) -> None:
    directory = _copy_artifact(tiny[0], tmp_path / "artifact")
    _save_tiny(directory, make_flow(5))  # retrained: new weights, old model.onnx
    with pytest.raises(ArtifactError, match="other weights"):
        checked_onnx_path(directory)
    with pytest.raises(ArtifactError, match="other weights"):
        OnnxFlow.from_artifact(directory)
    (directory / ONNX_FILE).unlink()
    with pytest.raises(ArtifactError, match="trustgc export-onnx"):
        checked_onnx_path(directory)


def test_wrong_image_shape_is_rejected(tiny) -> None:
    directory, model, _ = tiny
    flow = OnnxFlow.from_artifact(directory, model.head)
    with pytest.raises(ValueError, match="expected images of shape"):
        flow(torch.rand(2, 1, 9, 9))


def test_threads_are_set_deliberately(tiny) -> None:
    directory, model, _ = tiny
    assert OnnxFlow.from_artifact(directory, model.head).threads == 1
    flow = OnnxFlow.from_artifact(directory, model.head, threads=2)
    options = flow.session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = OnnxFlow.from_artifact(directory, model.head, threads=2, spin=True)
    options = spinning.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    with pytest.raises(ValueError, match="threads"):
        OnnxFlow.from_artifact(directory, model.head, threads=0)


def test_provider_choice(monkeypatch) -> None:
    import onnxruntime

    import trustgc.onnx_backend as backend

    monkeypatch.setattr(backend, "_gpu_present", lambda: False)
    assert select_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="onnxruntime-gpu"):
        select_providers("cuda")
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPU..."]
    )
    assert select_providers() == ["CPUExecutionProvider"]  # the GPU build, but no GPU
    monkeypatch.setattr(backend, "_gpu_present", lambda: True)
    assert select_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device"):
        select_providers("tpu")


def test_predictor_rejects_an_unknown_backend(tiny) -> None:
    from trustgc.trust.predictor import Predictor

    _, model, _ = tiny
    manifest = ModelManifest(name="tiny", config=model.config, class_names=("a", "b", "c", "d"))
    with pytest.raises(ValueError, match="backend"):
        Predictor(model, manifest, calibration=None, backend="tensorrt")
    with pytest.raises(ValueError, match="onnx_path"):
        Predictor(model, manifest, calibration=None, backend="onnxruntime")


# ------------------------------------------------------------------ the shipped model


shipped = pytest.mark.skipif(
    not (SHIPPED / ONNX_FILE).is_file(),
    reason=f"{SHIPPED / ONNX_FILE} is missing (`trustgc export-onnx --model {SHIPPED}`)",
)


@pytest.fixture(scope="module")
def test_pixels(fashion_mnist_test_images) -> np.ndarray:
    """The first 1,000 Fashion-MNIST test images, uint8 NCHW (from the suite's data fixture:
    the core's tests do not import the training subproject's readers)."""
    return fashion_mnist_test_images(PARITY_IMAGES)


@shipped
def test_shipped_export_is_current_and_valid() -> None:
    path = checked_onnx_path(SHIPPED)  # exported from the shipped weights
    onnx.checker.check_model(str(path), full_check=True)
    info = load_onnx_info(SHIPPED)
    assert info["exporter"] in ("dynamo", "torchscript") and info["opset"] >= 17
    assert info["external_data"] is False and not list(SHIPPED.glob("*.onnx.data"))
    assert path.stat().st_size < 8_000_000


@shipped
def test_shipped_latent_parity(test_pixels) -> None:
    """z within 1e-4 (max abs) and log-det within 1e-5 (relative) on 1,000 test images."""
    from trustgc.artifact import load_model

    model, _ = load_model(SHIPPED)
    flow = OnnxFlow.from_artifact(SHIPPED, model.head)
    x = pixels_to_unit(torch.from_numpy(test_pixels))
    with torch.inference_mode():
        z, logdet = model.flow(x)
    z_ort, logdet_ort = flow(x)
    assert _max_abs(z_ort, z) < 1e-4
    assert _max_rel(logdet_ort, logdet) < 1e-5


@pytest.fixture(scope="module")
def shipped_results(test_pixels):
    from trustgc.trust.predictor import Predictor

    torch_results = Predictor.from_artifact(SHIPPED).predict(test_pixels)
    onnx_predictor = Predictor.from_artifact(SHIPPED, backend="onnxruntime")
    assert isinstance(onnx_predictor.model, OnnxFlow) and onnx_predictor.backend == "onnxruntime"
    return torch_results, onnx_predictor.predict(test_pixels)


@shipped
def test_shipped_classes_and_decisions_are_identical(shipped_results) -> None:
    torch_results, onnx_results = shipped_results
    assert len(torch_results) == len(onnx_results) == PARITY_IMAGES
    for a, b in zip(torch_results, onnx_results, strict=True):
        assert a.predicted_index == b.predicted_index
        assert a.decision == b.decision
        assert a.out_of_distribution == b.out_of_distribution
        assert a.attack_suspected == b.attack_suspected
    probabilities = max(
        np.abs(a.probabilities - b.probabilities).max()
        for a, b in zip(torch_results, onnx_results, strict=True)
    )
    bits = max(
        abs(a.bits_per_dim - b.bits_per_dim)
        for a, b in zip(torch_results, onnx_results, strict=True)
    )
    assert probabilities < 1e-4
    assert bits < 1e-5


#: Statistics of one image from the two backends agree to float32 kernel noise (measured on
#: 1,000 test images: at most 6e-6, logit_margin; 1e-6 or less for the others).
STATISTIC_ATOL = 1e-4


@pytest.fixture(scope="module")
def shipped_statistics(test_pixels, shipped_results):
    """Per backend: the served statistics of the 1,000 images and the torch predictor's
    p-values of them (the p-values are a function of the statistics and the calibration)."""
    from trustgc.trust.predictor import Predictor
    from trustgc.trust.statistics import compute_statistics

    torch_predictor = Predictor.from_artifact(SHIPPED)
    names = sorted(torch_predictor.calibration.components)
    out = {}
    for backend in ("torch", "onnxruntime"):
        predictor = Predictor.from_artifact(SHIPPED, backend=backend)
        pixels = torch.from_numpy(test_pixels)
        outputs = model_outputs(
            predictor.model, pixels, 256, "cpu", background=predictor.background
        )
        statistics = compute_statistics(outputs, test_pixels, names)
        out[backend] = (statistics, torch_predictor.p_values(statistics))
    return torch_predictor.calibration, out


@shipped
def test_shipped_statistics_agree(shipped_statistics) -> None:
    """Every served statistic within float32 noise: what the p-values below are read from."""
    _, out = shipped_statistics
    (torch_statistics, _), (onnx_statistics, _) = out["torch"], out["onnxruntime"]
    assert torch_statistics.keys() == onnx_statistics.keys()
    for name, values in torch_statistics.items():
        worst = float(np.abs(values - onnx_statistics[name]).max())
        assert worst <= STATISTIC_ATOL, f"{name}: {worst}"


@shipped
def test_shipped_p_values(shipped_results, shipped_statistics) -> None:
    """p-values are the exact conservative ones, steps of 1/(n+1) of the calibration
    references, read off the statistics: so each backend's served p-values must be exactly the
    calibration's p-values of its own statistics, and a component p-value may differ between
    the backends only by the reference values that lie between the two statistics, 1/(n+1)
    each (2/(n+1) two-sided).  No fixed tolerance fits the combined statistics: one inner
    step moves T across many of its own reference values (measured: 0.00275 = 11 steps of
    1/4001 on 1 of 1,000 images), so they are checked through their statistics.  Float noise
    crosses a reference value rarely: identical p-values on at least 98% of the images
    (measured 995 of 1,000)."""
    calibration, out = shipped_statistics
    torch_results, onnx_results = shipped_results
    for backend, results in (("torch", torch_results), ("onnxruntime", onnx_results)):
        _, p = out[backend]
        served = {
            calibration.ood_statistic: [r.ood_p_value for r in results],
            calibration.attack_statistic: [r.attack_p_value for r in results],
            **{
                name: [r.component_p_values[name] for r in results]
                for name in calibration.components
            },
        }
        for name, values in served.items():
            np.testing.assert_array_equal(np.asarray(values), p[name], err_msg=f"{backend} {name}")
    (torch_statistics, torch_p), (onnx_statistics, onnx_p) = out["torch"], out["onnxruntime"]
    for name, reference in calibration.components.items():
        scores = np.asarray(reference.sorted_scores)
        low = np.minimum(torch_statistics[name], onnx_statistics[name])
        high = np.maximum(torch_statistics[name], onnx_statistics[name])
        between = np.searchsorted(scores, high, "right") - np.searchsorted(scores, low, "left")
        steps = (2 if reference.side == "two_sided" else 1) * between / (scores.size + 1)
        np.testing.assert_array_less(np.abs(torch_p[name] - onnx_p[name]), steps + 1e-12)
    differing = np.zeros(PARITY_IMAGES, dtype=bool)
    for name in torch_p:
        differing |= torch_p[name] != onnx_p[name]
    assert differing.mean() <= 0.02, np.flatnonzero(differing)


# --------------------------------------------------------------- the larger layouts (slow)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10", "imagenet"])
def test_large_configs_export(name, tmp_path) -> None:
    """Randomly initialised; export_flow itself checks ORT against torch at batch 1 and 3.
    The zero-initialised parameters (last subnet layers, ActNorm) get small noise so that no
    coupling is the identity."""
    torch.manual_seed(0)
    model = IBINN(load_model_config(name)).eval()
    with torch.no_grad():
        for parameter in model.flow.parameters():
            if not parameter.any():
                parameter.add_(0.01 * torch.randn_like(parameter))
    info = export_flow(model, tmp_path / "model.onnx")
    assert info["exporter"] == "dynamo", info["fallback_reason"]
    flow = OnnxFlow(tmp_path / "model.onnx", model.head)
    spec = model.config.input
    x = torch.rand(1, spec.channels, spec.height, spec.width)
    with torch.inference_mode():
        z, logdet = model.flow(x)
        scores = flow.score(x)
    assert scores.latents.shape == (1, spec.dims)
    assert _max_abs(scores.latents, z) <= 1e-4 * max(1.0, float(z.abs().max()))
    assert _max_rel(scores.logdet, logdet) < 1e-5
