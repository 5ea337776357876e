"""The served model answers the same with ``backend: onnxruntime`` (the default) as with torch.

Two handlers are initialised from the same artifact with a fake TorchServe context (as in
test_handler_unit.py), one with the model-config yaml ``trustgc: {backend: onnxruntime}``, and
answer one batch of images.  Discrete fields (decision, prediction, flags, labels, statistics)
must be identical; floats agree to float32 kernel noise (ORT's convolutions sum in another order
than torch's, exactly as torch does with itself when the batch size changes).  p-values are steps
of 1/(n+1) of the calibration references, so they are checked through the statistics they are
read from.  The images are Fashion-MNIST test images from the data root: without them the test
fails with the command that installs them (random images would all be rejected as OoD, and the
accepted path would go untested).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
REQUIRED = ("model.json", "weights.safetensors", "calibration.json", "model.onnx", "onnx.json")
BATCH = 16

pytestmark = pytest.mark.skipif(
    not all((MODEL_DIR / name).is_file() for name in REQUIRED),
    reason=f"the shipped artifact {MODEL_DIR} lacks one of {REQUIRED}",
)


class FakeContext:
    """The parts of ``ts.context.Context`` the handler uses."""

    def __init__(self, model_dir: Path, yaml: dict[str, Any] | None = None) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"modelName": "fashion_mnist"}}
        self.metrics = None
        self.model_yaml_config = yaml or {}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def get_all_request_header(self, idx: int) -> dict[str, str]:  # noqa: ARG002
        return {}


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    for name in REQUIRED:
        shutil.copy2(MODEL_DIR / name, directory / name)
    if (MODEL_DIR / "background").is_dir():  # the ratio statistic's flow (trustgc/background.py)
        shutil.copytree(MODEL_DIR / "background", directory / "background")
    return directory


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Fashion-MNIST test images plus noise and a blank image, so that accepted and rejected
    answers both occur; (B, 28, 28) uint8.  A missing data set raises DataMissingError, whose
    message names how to install it."""
    from training.data import load_dataset

    test = load_dataset("fashion_mnist", "test").images[: BATCH - 2, ..., 0]
    noise = np.random.default_rng(1).integers(0, 256, (1, 28, 28), dtype=np.uint8)
    return np.concatenate([test, noise, np.zeros((1, 28, 28), dtype=np.uint8)])


@pytest.fixture(scope="module")
def requests(images) -> list[dict[str, Any]]:
    """One request per image (PNG, lossless); two ask for explanations."""
    entries: list[dict[str, Any]] = [{"body": _png(image)} for image in images]
    for index in (0, BATCH - 1):
        entries[index]["explain"] = "true"
    return entries


def _answers(model_dir: Path, yaml: dict[str, Any], requests) -> tuple[list[dict], Any]:
    from serving.handler import TrustGCHandler

    threads = torch.get_num_threads()
    try:
        handler = TrustGCHandler()
        handler.initialize(FakeContext(model_dir, yaml))
        context = FakeContext(Path("."))
        answers = handler.handle(requests, context)
    finally:
        torch.set_num_threads(threads)
    assert not context.statuses, context.statuses  # every request answered with 200
    return [json.loads(answer) for answer in answers], handler


def _by_index(items: list[dict]) -> dict[int, dict]:
    return {item["index"]: item for item in items}


def _assert_close(a: Any, b: Any, path: str, atol: float) -> None:
    """Same structure and exactly equal non-floats; floats within ``atol``."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_close(a[key], b[key], f"{path}.{key}", atol)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for position, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{position}]", atol)
    elif isinstance(a, float) or isinstance(b, float):
        assert abs(a - b) <= atol, f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


@pytest.fixture(scope="module")
def both(model_dir, requests):
    torch_answers, torch_handler = _answers(model_dir, {"trustgc": {"backend": "torch"}}, requests)
    onnx_answers, onnx_handler = _answers(
        model_dir, {"trustgc": {"backend": "onnxruntime", "onnx_threads": 1}}, requests
    )
    assert torch_handler.predictor.backend == "torch"
    assert onnx_handler.predictor.backend == "onnxruntime"
    return torch_answers, onnx_answers, torch_handler.predictor, onnx_handler.predictor


def test_discrete_fields_are_identical(both) -> None:
    torch_answers, onnx_answers, _, _ = both
    decisions = {answer["decision"] for answer in torch_answers}
    assert "accepted" in decisions and "rejected_ood" in decisions  # both paths exercised
    for a, b in zip(torch_answers, onnx_answers, strict=True):
        assert "error" not in a and "error" not in b
        assert a["decision"] == b["decision"]
        assert a["prediction"]["index"] == b["prediction"]["index"]
        assert a["prediction"]["label"] == b["prediction"]["label"]
        assert a["typicality"]["out_of_distribution"] == b["typicality"]["out_of_distribution"]
        assert a["attack"]["suspected"] == b["attack"]["suspected"]
        assert a["model"] == b["model"]
        assert ("explanation" in a) == ("explanation" in b)


def _without_p_values(field: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in field.items() if key not in ("p_value", "components")}


def test_floats_agree_to_float32_noise(both) -> None:
    """Probabilities and bits/dim to 1e-4; explanations to 1e-3 (they are sums over the
    latents); the rest of the trust fields exactly (p-values: next test)."""
    torch_answers, onnx_answers, _, _ = both
    for a, b in zip(torch_answers, onnx_answers, strict=True):
        _assert_close(_by_index(a["probabilities"]), _by_index(b["probabilities"]), "p", 1e-4)
        _assert_close(a["log_likelihood"], b["log_likelihood"], "log_likelihood", 1e-4)
        _assert_close(
            _without_p_values(a["typicality"]), _without_p_values(b["typicality"]), "t", 0
        )
        _assert_close(_without_p_values(a["attack"]), _without_p_values(b["attack"]), "attack", 0)
        if "explanation" in a:
            maps_a = _by_index(a["explanation"]["posterior_heatmaps"])
            maps_b = _by_index(b["explanation"]["posterior_heatmaps"])
            _assert_close(maps_a, maps_b, "heatmaps", 1e-3)
            space_a, space_b = (
                a["explanation"]["decision_space"],
                b["explanation"]["decision_space"],
            )
            _assert_close(space_a, space_b, "decision_space", 1e-3)


def test_p_values_are_read_off_statistics_that_agree(both, images) -> None:
    """Each backend's served p-values are the calibration's p-values of its own statistics,
    and the statistics agree to float32 noise (1e-4; measured at most 6e-6), so a p-value can
    differ only where that noise crosses a reference value (see tests/core/test_onnx.py)."""
    from trustgc.inference import model_outputs
    from trustgc.trust.statistics import compute_statistics

    torch_answers, onnx_answers, torch_predictor, onnx_predictor = both
    calibration = torch_predictor.calibration
    names = sorted(calibration.components)
    pixels = images[:, None]
    statistics = {}
    for answers, predictor in ((torch_answers, torch_predictor), (onnx_answers, onnx_predictor)):
        outputs = model_outputs(
            predictor.model, torch.from_numpy(pixels), BATCH, "cpu", background=predictor.background
        )
        own = compute_statistics(outputs, pixels, names)
        p = torch_predictor.p_values(own)
        for i, answer in enumerate(answers):
            assert answer["typicality"]["p_value"] == p[calibration.ood_statistic][i]
            assert answer["attack"]["p_value"] == p[calibration.attack_statistic][i]
            assert answer["typicality"]["components"] == {n: p[n][i] for n in names}
        statistics[predictor.backend] = own
    for name in names:
        worst = np.abs(statistics["torch"][name] - statistics["onnxruntime"][name]).max()
        assert worst <= 1e-4, f"{name}: {worst}"


def test_auto_is_the_default_and_falls_back_to_torch(model_dir, tmp_path) -> None:
    """No backend setting: onnxruntime with a current model.onnx, torch without one."""
    from serving.handler import TrustGCHandler

    without = tmp_path / "without_onnx"
    shutil.copytree(model_dir, without)
    (without / "model.onnx").unlink()
    threads = torch.get_num_threads()
    try:
        handler = TrustGCHandler()
        handler.initialize(FakeContext(model_dir, {"trustgc": {"torch_threads": 1}}))
        fallback = TrustGCHandler()
        fallback.initialize(FakeContext(without, {"trustgc": {"torch_threads": 1}}))
    finally:
        torch.set_num_threads(threads)
    assert handler.predictor.backend == "onnxruntime"
    assert hasattr(handler.predictor.model, "session")
    assert fallback.predictor.backend == "torch"
    assert not hasattr(fallback.predictor.model, "session")


def test_unknown_backend_fails_at_initialisation(model_dir) -> None:
    from serving.handler import TrustGCHandler

    threads = torch.get_num_threads()
    try:
        with pytest.raises(ValueError, match="backend"):
            TrustGCHandler().initialize(FakeContext(model_dir, {"trustgc": {"backend": "trt"}}))
    finally:
        torch.set_num_threads(threads)


def test_archive_packs_the_onnx_files_when_present(model_dir, tmp_path, monkeypatch) -> None:
    """build_archive adds model.onnx and onnx.json to --extra-files when the artifact has them
    (torch-model-archiver itself is not run here)."""
    import serving.archive as archive

    commands = []
    monkeypatch.setattr(
        archive.subprocess, "run", lambda command, **kwargs: commands.append(command)
    )
    archive.build_archive(model_dir, tmp_path / "store")
    without = tmp_path / "without"
    shutil.copytree(model_dir, without)
    for name in archive.OPTIONAL_ARTIFACT_FILES:
        (without / name).unlink()
    archive.build_archive(without, tmp_path / "store")

    def extra_files(command) -> list[str]:
        value = command[command.index("--extra-files") + 1]
        return sorted(Path(path).name for path in value.split(","))

    # the background flow travels as one wrapped folder (serving/archive.py)
    wrapped = ("with_background",) if (model_dir / "background").is_dir() else ()
    assert extra_files(commands[0]) == sorted(
        archive.ARTIFACT_FILES + ("model.onnx", "onnx.json") + wrapped
    )
    assert extra_files(commands[1]) == sorted(archive.ARTIFACT_FILES + wrapped)
