"""The TorchServe handler with a fake context (no TorchServe): batch isolation and options."""

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

from serving.proto_codec import from_protobuf
from serving.schema import ClassificationResponse, ErrorResponse

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
ARTIFACT_FILES = ("model.json", "weights.safetensors", "calibration.json")

pytestmark = pytest.mark.skipif(
    not all((MODEL_DIR / name).is_file() for name in ARTIFACT_FILES),
    reason=f"the shipped model artifact {MODEL_DIR} is incomplete",
)


class FakeContext:
    """The parts of ``ts.context.Context`` the handler uses, recording what it sets."""

    def __init__(self, model_dir: Path, headers: dict[int, dict[str, str]] | None = None):
        self.system_properties = {"model_dir": str(model_dir)}
        self.manifest = {"model": {"modelName": "fashion_mnist"}}
        self.metrics = None
        self.model_yaml_config: dict[str, Any] = {}
        self.headers = headers or {}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.headers.get(idx, {})


class FakeMetric:
    def __init__(self, name: str) -> None:
        self.name = name
        self.updates: list[tuple[float, tuple[str, ...]]] = []

    def add_or_update(self, value: float, dimension_values: list[str]) -> None:
        self.updates.append((value, tuple(dimension_values)))

    def totals(self) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for value, dims in self.updates:
            out[dims] = out.get(dims, 0.0) + value
        return out


class FakeMetricsCache:
    def __init__(self) -> None:
        self.metrics: dict[str, FakeMetric] = {}

    def add_metric_to_cache(self, name, unit, dimension_names, metric_type):  # noqa: ARG002
        self.metrics[name] = FakeMetric(name)
        return self.metrics[name]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("model")
    for name in ARTIFACT_FILES:
        shutil.copy2(MODEL_DIR / name, directory / name)
    if (MODEL_DIR / "background").is_dir():  # the ratio statistic's flow (trustgc/background.py)
        shutil.copytree(MODEL_DIR / "background", directory / "background")
    return directory


@pytest.fixture(scope="module")
def handler(model_dir):
    from serving.handler import TrustGCHandler

    threads = torch.get_num_threads()
    service = TrustGCHandler()
    service.initialize(FakeContext(model_dir))  # sets torch threads to 1, like a worker
    yield service
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> list[bytes]:
    """Two Fashion-MNIST-like images: the real test set if present, else synthetic ones."""
    try:
        from training.data import load_dataset

        data = load_dataset("fashion_mnist", "test")
        return [png(data.images[i, ..., 0]) for i in (0, 1)]
    except Exception:  # noqa: BLE001 - no data set here: any valid images will do
        rng = np.random.default_rng(0)
        return [png(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(2)]


def run(handler, data: list, headers: dict[int, dict[str, str]] | None = None):
    context = FakeContext(Path("."), headers)
    answers = handler.handle(data, context)
    assert isinstance(answers, list) and len(answers) == len(data)
    return answers, context


def parse(answer: bytes | str) -> ClassificationResponse | ErrorResponse:
    text = answer.decode() if isinstance(answer, bytes) else answer
    if json.loads(text).get("error"):
        return ErrorResponse.model_validate_json(text)
    return ClassificationResponse.model_validate_json(text)


def assert_same_answer(batched: ClassificationResponse, alone: ClassificationResponse) -> None:
    """Discrete fields exactly; floats to float32 precision (batch composition may change the
    blocking of float32 kernels, not the result beyond ~1e-5)."""
    assert batched.decision == alone.decision
    assert batched.model == alone.model
    assert batched.prediction.index == alone.prediction.index
    assert [p.index for p in batched.probabilities] == [p.index for p in alone.probabilities]
    for a, b in zip(batched.probabilities, alone.probabilities, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-4)
    assert batched.log_likelihood.bits_per_dim == pytest.approx(
        alone.log_likelihood.bits_per_dim, abs=1e-4
    )
    assert batched.typicality.out_of_distribution == alone.typicality.out_of_distribution
    assert batched.attack.suspected == alone.attack.suspected


def test_initialize_reads_the_context(handler) -> None:
    assert handler.model_name == "fashion_mnist"
    assert handler.model_version == "1"
    assert handler.metrics is None
    assert handler.predictor.input_shape == (1, 28, 28)
    assert torch.get_num_threads() == 1


def test_batch_isolation(handler, images) -> None:
    good_a, good_b = images
    batch = [
        {"body": good_a},
        {"body": b"garbage, not an image"},
        {"body": bytearray(good_b)},
        {"body": b""},
        {"body": "some text the frontend decoded"},
        {"body": {"json": "the frontend parsed this"}},
    ]
    answers, context = run(handler, batch)
    alone_a = parse(run(handler, [{"body": good_a}])[0][0])
    alone_b = parse(run(handler, [{"body": good_b}])[0][0])

    for index, alone in ((0, alone_a), (2, alone_b)):
        answer = parse(answers[index])
        assert isinstance(answer, ClassificationResponse)
        assert_same_answer(answer, alone)
        assert index not in context.statuses  # TorchServe's default: 200
        assert context.content_types[index] == "application/json"

    expected = {
        1: (415, "undecodable_image"),
        3: (400, "empty_body"),
        4: (415, "unsupported_media_type"),
        5: (415, "unsupported_media_type"),
    }
    for index, (status, code) in expected.items():
        answer = parse(answers[index])
        assert isinstance(answer, ErrorResponse), answers[index]
        assert answer.error.code == code
        assert answer.error.message
        assert context.statuses[index][0] == status
        assert 400 <= context.statuses[index][0] < 500
        assert context.content_types[index] == "application/json"


def test_a_batch_of_only_bad_requests(handler) -> None:
    answers, context = run(handler, [{"body": b"\x89PNG\r\n\x1a\n"}, {}, "not a dict"])
    codes = [parse(a).error.code for a in answers]
    assert codes == ["undecodable_image", "missing_image", "missing_image"]
    assert [context.statuses[i][0] for i in range(3)] == [415, 400, 400]


def test_bad_requests_get_no_model_call(handler, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(handler.predictor, "predict", lambda *a, **k: calls.append(1))
    run(handler, [{"body": b""}, {"body": b"junk"}])
    assert calls == []


def test_model_failure_answers_each_request_with_a_500(handler, images, monkeypatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("simulated model failure")

    monkeypatch.setattr(handler.predictor, "predict", fail)
    answers, context = run(handler, [{"body": images[0]}, {"body": b""}, {"body": images[1]}])
    assert [parse(a).error.code for a in answers] == [
        "internal_error",
        "empty_body",
        "internal_error",
    ]
    assert [context.statuses[i][0] for i in range(3)] == [500, 400, 500]


def test_per_request_top_k_and_explain(handler, images) -> None:
    answers, context = run(
        handler,
        [
            {"body": images[0], "top_k": b"2", "explain": b"true"},
            {"data": images[0], "top_k": b"5"},
            {"file": images[1]},
        ],
    )
    first, second, third = (parse(a) for a in answers)
    assert len(first.probabilities) == 2
    assert len(second.probabilities) == 5
    assert len(third.probabilities) == 10  # the default
    assert first.explanation is not None
    assert [m.index for m in first.explanation.posterior_heatmaps] == [
        p.index for p in first.probabilities
    ]
    assert second.explanation is None and third.explanation is None
    assert not context.statuses
    for heatmap, item in zip(
        first.explanation.posterior_heatmaps, first.probabilities, strict=True
    ):
        assert float(np.sum(heatmap.values)) == pytest.approx(np.log(item.probability), abs=1e-4)


def test_header_options(handler, images) -> None:
    headers = {
        0: {"X-Trustgc-Top-K": "3", "Content-Type": "application/octet-stream"},
        1: {"x-trustgc-explain": "TRUE", "x-trustgc-top-k": " 1 "},
        2: {"X-Trustgc-Format": "protobuf", "X-Trustgc-Top-K": "4"},
    }
    answers, context = run(handler, [{"body": images[0]}] * 3, headers)
    first, second = parse(answers[0]), parse(answers[1])
    assert len(first.probabilities) == 3 and first.explanation is None
    assert len(second.probabilities) == 1 and second.explanation is not None
    assert context.content_types[2] == "application/x-protobuf"
    third = from_protobuf(answers[2])
    assert isinstance(third, ClassificationResponse)
    assert len(third.probabilities) == 4
    assert third.probabilities[:3] == first.probabilities


def test_form_fields_override_headers(handler, images) -> None:
    answers, _ = run(handler, [{"data": images[0], "top_k": b"2"}], {0: {"X-Trustgc-Top-K": "7"}})
    assert len(parse(answers[0]).probabilities) == 2


@pytest.mark.parametrize(
    ("entry", "headers"),
    [
        ({"top_k": b"0"}, {}),
        ({"top_k": b"abc"}, {}),
        ({"top_k": b"1001"}, {}),
        ({"explain": b"maybe"}, {}),
        ({"format": b"xml"}, {}),
        ({}, {"X-Trustgc-Top-K": "-3"}),
        ({}, {"X-Trustgc-Unknown-Option": "1"}),
        ({"certify": b"-1"}, {}),
        ({"certify": b"100001"}, {}),
        ({"certify": b"100", "certify_sigma": b"0"}, {}),
        ({}, {"X-Trustgc-Certify": "100", "X-Trustgc-Certify-Sigma": "1.5"}),
    ],
)
def test_invalid_option_is_a_400(handler, images, entry, headers) -> None:
    answers, context = run(
        handler, [{"body": images[0], **entry}, {"body": images[1]}], {0: headers}
    )
    error = parse(answers[0])
    assert isinstance(error, ErrorResponse)
    assert error.error.code == "invalid_parameter"
    assert context.statuses[0] == (400, "Bad Request")
    assert isinstance(parse(answers[1]), ClassificationResponse)  # its neighbour is unaffected
    assert 1 not in context.statuses


def test_headers_of_a_grpc_like_context_are_optional(handler, images) -> None:
    class NoHeaders(FakeContext):
        def get_all_request_header(self, idx):
            raise KeyError(idx)

    context = NoHeaders(Path("."))
    answers = handler.handle([{"data": images[0], "top_k": b"2"}], context)
    assert len(parse(answers[0]).probabilities) == 2


def test_metrics_count_decisions(model_dir, images) -> None:
    from serving.handler import TrustGCHandler

    threads = torch.get_num_threads()
    context = FakeContext(model_dir)
    context.metrics = FakeMetricsCache()
    service = TrustGCHandler()
    try:
        service.initialize(context)
        answers = service.handle([{"body": images[0]}, {"body": b""}, {"body": images[1]}], context)
    finally:
        torch.set_num_threads(threads)
    decisions = context.metrics.metrics["gc_decisions_total"].totals()
    served = [parse(answers[0]).decision, parse(answers[2]).decision]
    expected = {
        ("fashion_mnist", d): float(served.count(d))
        for d in ("accepted", "rejected_ood", "flagged_attack")
    }
    expected[("fashion_mnist", "invalid_input")] = 1.0
    assert decisions == expected
    latency = context.metrics.metrics["gc_handler_latency_seconds"].updates
    assert len(latency) == 1 and latency[0][0] > 0


def test_module_entry_point(model_dir, images) -> None:
    import serving.handler as module

    threads = torch.get_num_threads()
    context = FakeContext(model_dir)
    try:
        assert module.handle(None, context) is None
        answers = module.handle([{"body": images[0]}], context)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(parse(answers[0]), ClassificationResponse)


def test_protobuf_requests_get_protobuf_errors(handler) -> None:
    answers, context = run(handler, [{"data": b"not an image", "format": b"protobuf"}])
    assert context.statuses[0][0] == 415
    error = from_protobuf(answers[0])
    assert isinstance(error, ErrorResponse)
    assert error.error.code == "undecodable_image"


def test_certificate_only_for_the_requests_that_asked(handler, images, monkeypatch) -> None:
    """A batch of four: each certifying request gets the certificate Predictor.certify computes
    for its pixels (same seed; one abstains at sigma 0.12, one is certified at 0.05), the plain
    one none, and one above the server's cap a 400 that names the cap, before any work; the
    plain neighbour's answer is the one it gets alone."""
    from serving.decode import decode_image

    monkeypatch.setattr(handler, "certify_seed", 7)
    monkeypatch.setattr(handler, "max_certify_samples", 300)
    headers = {0: {"X-Trustgc-Certify": "200", "X-Trustgc-Certify-Sigma": "0.12"}}
    answers, context = run(
        handler,
        [
            {"body": images[0]},
            {"body": images[1]},
            {"body": images[0], "certify": b"301"},
            {"body": images[1], "certify": b"200", "certify_sigma": b"0.05"},
        ],
        headers,
    )
    abstained, plain, refused, certified = (parse(a) for a in answers)
    alone, _ = run(handler, [{"body": images[1]}])
    assert_same_answer(plain, parse(alone[0]))
    assert plain.certificate is None
    assert isinstance(refused, ErrorResponse) and refused.error.code == "invalid_parameter"
    assert "limit of 300" in refused.error.message and context.statuses[2][0] == 400
    names = handler.predictor.class_names
    for answer, image, sigma in ((abstained, images[0], 0.12), (certified, images[1], 0.05)):
        pixels = decode_image(image, 28, 28, 1)
        (expected,) = handler.predictor.certify(pixels[None], sigma=sigma, n=200, seed=7)
        certificate = answer.certificate
        assert certificate is not None and certificate.method == "randomized_smoothing"
        assert (certificate.n, certificate.n0, certificate.sigma) == (200, 100, sigma)
        assert certificate.radius == expected.radius and certificate.p_lower == expected.p_lower
        expected_label = None if expected.abstained else names[expected.predicted_index]
        assert certificate.label == expected_label
        assert certificate.agrees_with_prediction == (expected_label == answer.prediction.label)
    assert abstained.certificate.label is None and abstained.certificate.radius == 0.0
    assert certified.certificate.label == certified.prediction.label
    assert certified.certificate.radius > 0
    # the protobuf encoding carries both kinds
    protobuf = {"X-Trustgc-Format": "protobuf"}
    again = [
        ({"body": images[0]}, headers[0] | protobuf, abstained),
        ({"body": images[1], "certify": b"200", "certify_sigma": b"0.05"}, protobuf, certified),
    ]
    for entry, entry_headers, answer in again:
        (encoded,), _ = run(handler, [entry], {0: entry_headers})
        assert from_protobuf(encoded).certificate == answer.certificate


def test_certificates_turned_off(handler, images, monkeypatch) -> None:
    monkeypatch.setattr(handler, "max_certify_samples", 0)
    answers, context = run(handler, [{"body": images[0], "certify": b"1"}, {"body": images[1]}])
    refused = parse(answers[0])
    assert isinstance(refused, ErrorResponse) and "turned off" in refused.error.message
    assert isinstance(parse(answers[1]), ClassificationResponse) and 1 not in context.statuses


def test_a_failed_certificate_fails_only_its_request(handler, images, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("certify broke")

    monkeypatch.setattr(handler.predictor, "certify", broken)
    answers, context = run(handler, [{"body": images[0], "certify": b"10"}, {"body": images[1]}])
    failed, fine = (parse(a) for a in answers)
    assert isinstance(failed, ErrorResponse) and failed.error.code == "internal_error"
    assert context.statuses[0][0] == 500 and "certify" in failed.error.message
    assert isinstance(fine, ClassificationResponse) and 1 not in context.statuses
