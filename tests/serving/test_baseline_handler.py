"""The discriminative baseline served through the GC's path: Predictor, handler and archive.

A ``classifier`` artifact needs no calibration and answers with its probabilities and neutral
trust fields (p-values 1.0, statistic ``none``, always accepted); the generative path is unchanged
and still refuses to run without a calibration.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from serving.schema import ClassificationResponse
from trustgc.artifact import ModelManifest, build_model, save_model
from trustgc.config import ModelConfig
from trustgc.trust.predictor import Decision, Predictor

CLASSES = tuple(f"class {i}" for i in range(10))
INPUT = {"height": 28, "width": 28, "channels": 1, "mean": [0.286], "std": [0.353]}


def _artifact(directory: Path, kind: str) -> Path:
    stages = [{"blocks": 1, "width": 8, "downsample": "haar"}]
    extra: dict[str, Any] = {"flat_blocks": 0} if kind == "ibinn" else {}
    config = ModelConfig(
        name=f"tiny_{kind}", kind=kind, input=INPUT, num_classes=10, stages=stages, **extra
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    save_model(
        directory, model, ModelManifest(name=config.name, config=config, class_names=CLASSES)
    )
    return directory


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    return _artifact(tmp_path_factory.mktemp("classifier"), "classifier")


def _pixels(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 1, 28, 28), dtype=np.uint8)


def test_classifier_predictor_gives_probabilities_and_neutral_trust(classifier_dir) -> None:
    predictor = Predictor.from_artifact(classifier_dir)
    assert not predictor.is_generative
    assert predictor.input_shape == (1, 28, 28)
    assert predictor.class_names == CLASSES
    pixels = _pixels(5)
    results = predictor.predict(pixels, explain=[True, False, False, False, True])
    with torch.inference_mode():
        x = (torch.from_numpy(pixels).float() + 0.5) / 256.0
        expected = torch.softmax(predictor.model(x), dim=1).double().numpy()
    assert len(results) == 5
    for result, probabilities in zip(results, expected, strict=True):
        np.testing.assert_allclose(result.probabilities, probabilities, rtol=1e-5, atol=1e-7)
        assert result.decision is Decision.ACCEPTED
        assert result.ood_p_value == result.attack_p_value == 1.0
        assert result.ood_statistic == result.attack_statistic == "none"
        assert not result.out_of_distribution and not result.attack_suspected
        assert result.component_p_values == {}
        assert result.class_bits_per_dim.size == 0
        assert result.explanation is None  # explanations need a generative model


def test_classifier_predictor_validates_input_like_the_gc(classifier_dir) -> None:
    predictor = Predictor.from_artifact(classifier_dir)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(_pixels(2).astype(np.float32))
    with pytest.raises(ValueError, match="explain"):
        predictor.predict(_pixels(2), explain=[True])


def test_classifier_runs_on_torch_only(classifier_dir) -> None:
    with pytest.raises(ValueError, match="torch backend"):
        Predictor.from_artifact(classifier_dir, backend="onnxruntime")


def test_generative_model_still_needs_its_calibration(tmp_path) -> None:
    directory = _artifact(tmp_path / "gc", "ibinn")
    with pytest.raises(ValueError, match="not calibrated"):
        Predictor.from_artifact(directory)


class FakeContext:
    """The parts of TorchServe's context the handler touches."""

    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"modelName": "baseline"}}
        self.metrics = None
        self.model_yaml_config: dict[str, Any] = {}
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


def test_handler_serves_the_classifier_with_schema_valid_answers(classifier_dir) -> None:
    from serving.handler import TrustGCHandler

    threads = torch.get_num_threads()
    try:
        handler = TrustGCHandler()
        handler.initialize(FakeContext(classifier_dir))
        images = [_png(image[0]) for image in _pixels(3)]
        context = FakeContext(classifier_dir)
        answers = handler.handle(
            [{"body": images[0]}, {"body": b"not an image"}, {"data": images[1]}], context
        )
    finally:
        torch.set_num_threads(threads)
    good = [ClassificationResponse.model_validate_json(answers[i]) for i in (0, 2)]
    for response in good:
        assert response.decision == "accepted"
        assert response.model.name == "baseline"
        assert response.typicality.statistic == response.attack.statistic == "none"
        assert response.typicality.p_value == response.attack.p_value == 1.0
        assert response.log_likelihood.per_class_bits_per_dim == []
        assert sum(p.probability for p in response.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert context.statuses[1][0] >= 400  # a bad input still gets its own error


def test_archive_without_calibration_only_for_a_classifier(classifier_dir, tmp_path, monkeypatch):
    import serving.archive as archive

    commands = []
    monkeypatch.setattr(archive.subprocess, "run", lambda command, **kw: commands.append(command))
    archive.build_archive(classifier_dir, tmp_path / "store", allow_uncalibrated=True)
    packed = commands[0][commands[0].index("--extra-files") + 1].split(",")
    assert sorted(Path(p).name for p in packed) == ["model.json", "weights.safetensors"]
    with pytest.raises(FileNotFoundError, match="calibrat"):
        archive.build_archive(classifier_dir, tmp_path / "store")  # the default still requires it
    gc_dir = _artifact(tmp_path / "gc", "ibinn")
    with pytest.raises(ValueError, match="only a classifier"):
        archive.build_archive(gc_dir, tmp_path / "store", allow_uncalibrated=True)
