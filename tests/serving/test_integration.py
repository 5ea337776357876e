"""End-to-end tests against a real TorchServe 0.12 serving the shipped model (see conftest.py).

Each served answer is compared with the in-process core (``Predictor`` / ``training.evaluate``)
on the same images.  Float results depend on the batch a request lands in (float32 kernels
block differently per batch size), so bit-level comparisons (1e-9) use sequential requests
(a batch of one) against a one-image, one-thread in-process prediction, exactly the server
worker's setting (``torch_threads: 1``); the 200-image comparisons use concurrent requests and
compare discrete outcomes (accuracy, decisions), which are exact.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serving.client import ClassifierClient
from serving.grpc_stubs import inference_pb2, inference_pb2_grpc
from serving.metrics import DECISIONS
from serving.proto_codec import from_protobuf
from serving.schema import ClassificationResponse, ErrorResponse
from training.data import load_dataset, load_mnist
from trustgc.backend import choose_backend
from trustgc.trust.predictor import Predictor

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
N_EVAL = 200
N_MNIST = 200
OCTET = {"Content-Type": "application/octet-stream"}


# --------------------------------------------------------------------------- helpers


def png(image: np.ndarray) -> bytes:
    """One (28, 28, 1) uint8 image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def post(served, body: bytes, headers: dict | None = None, **kwargs) -> requests.Response:
    return requests.post(
        served.predictions_url,
        data=body,
        headers={**served.headers, **OCTET, **(headers or {})},
        timeout=60,
        **kwargs,
    )


def classify_all(client: ClassifierClient, images: list[bytes], workers: int = 16) -> list:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(client.classify, images))


def decision_counts(served) -> dict[str, float]:
    """gc_decisions_total per decision, summed over label sets, from the metrics endpoint."""
    text = requests.get(served.metrics_url, timeout=10).text
    counts = dict.fromkeys(DECISIONS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "gc_decisions_total"
                and sample.labels.get("ModelName") == served.model
            ):
                counts[sample.labels["decision"]] += sample.value
    return counts


def stable_decision_counts(served, settle: float = 0.6, timeout: float = 15.0) -> dict:
    """Counts once two reads ``settle`` seconds apart agree (metrics arrive asynchronously)."""
    deadline = time.monotonic() + timeout
    previous = decision_counts(served)
    while True:
        time.sleep(settle)
        current = decision_counts(served)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


def wait_for_decisions(served, before: dict, expected_total: int, timeout: float = 15.0) -> dict:
    """Deltas since ``before`` once ``expected_total`` new decisions have been exported."""
    deadline = time.monotonic() + timeout
    while True:
        after = decision_counts(served)
        delta = {key: after[key] - before[key] for key in before}
        if sum(delta.values()) >= expected_total or time.monotonic() > deadline:
            time.sleep(0.5)  # anything late would show up as an excess
            after = decision_counts(served)
            return {key: after[key] - before[key] for key in before}
        time.sleep(0.1)


def in_process_single(predictor: Predictor, image: np.ndarray):
    """The worker's computation for one request: a batch of one on one torch thread."""
    with torch_threads(1):
        return predictor.predict(image.transpose(2, 0, 1)[None].copy())[0]


def in_process_batch(predictor: Predictor, images: np.ndarray) -> list:
    with torch_threads(1):
        return predictor.predict(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion_mnist", "test")


@pytest.fixture(scope="module")
def mnist(data_set_dir):
    return load_mnist("test", data_set_dir("mnist"))


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    """The core on the backend the server chooses (trustgc.backend: onnxruntime for the shipped
    model), so that bit-level comparisons compare like with like."""
    backend = choose_backend(MODEL_DIR).backend
    return Predictor.from_artifact(MODEL_DIR, device="cpu", backend=backend)


@pytest.fixture(scope="module")
def fashion_results(predictor, fashion) -> list:
    """In-process results for the first N_EVAL test images."""
    return in_process_batch(predictor, fashion.images[:N_EVAL])


@pytest.fixture(scope="module")
def client(torchserve) -> ClassifierClient:
    return torchserve.client()


# --------------------------------------------------------------------------- REST and gRPC


@pytest.mark.parametrize(("explain", "top_k"), [(False, 10), (True, 3)])
def test_rest_and_grpc_give_identical_answers(client, fashion, explain, top_k) -> None:
    image, label = fashion.images[0], int(fashion.labels[0])
    rest = client.classify(png(image), explain=explain, top_k=top_k)
    over_grpc = client.classify(png(image), explain=explain, top_k=top_k, use_grpc=True)
    assert isinstance(rest, ClassificationResponse), rest
    assert isinstance(over_grpc, ClassificationResponse), over_grpc
    assert rest.prediction.index == label
    assert rest.prediction.label == fashion.class_names[label]
    assert rest.decision == "accepted"
    assert len(rest.probabilities) == top_k
    assert (rest.explanation is not None) == explain
    assert rest == over_grpc
    assert rest.model_dump() == over_grpc.model_dump()
    assert rest.model_dump_json() == over_grpc.model_dump_json()


def test_served_probabilities_equal_in_process_predictor(
    client, predictor, fashion, torchserve
) -> None:
    """Sequential requests (a batch of one each) match the Predictor to 1e-9."""
    for index in (0, 1, 2, 3, 4):
        image = fashion.images[index]
        served = client.classify(png(image), top_k=10)
        expected = in_process_single(predictor, image)
        assert isinstance(served, ClassificationResponse)
        assert served.model.name == torchserve.model
        assert served.decision == expected.decision.value
        assert served.prediction.index == expected.predicted_index
        assert [p.index for p in served.probabilities] == list(
            np.argsort(-expected.probabilities, kind="stable")
        )
        for item in served.probabilities:
            assert item.probability == pytest.approx(expected.probabilities[item.index], abs=1e-9)
        assert served.log_likelihood.bits_per_dim == pytest.approx(expected.bits_per_dim, abs=1e-9)
        assert served.log_likelihood.per_class_bits_per_dim == pytest.approx(
            list(expected.class_bits_per_dim), abs=1e-9
        )
        assert served.typicality.p_value == pytest.approx(expected.ood_p_value, abs=1e-9)
        assert served.attack.p_value == pytest.approx(expected.attack_p_value, abs=1e-9)
        assert served.typicality.components == pytest.approx(expected.component_p_values, abs=1e-9)


def test_served_accuracy_equals_evaluate(client, fashion, fashion_results) -> None:
    from training.evaluate import evaluate_artifact

    images = [png(image) for image in fashion.images[:N_EVAL]]
    started = time.monotonic()
    answers = classify_all(client, images)
    elapsed = time.monotonic() - started
    assert all(isinstance(a, ClassificationResponse) for a in answers)
    predicted = np.array([a.prediction.index for a in answers])
    served_accuracy = float(np.mean(predicted == fashion.labels[:N_EVAL]))
    with torch_threads(1):
        evaluated = evaluate_artifact(MODEL_DIR, limit=N_EVAL)
    print(
        f"\nserved accuracy on {N_EVAL}: {served_accuracy:.4f} ({elapsed:.1f} s); "
        f"training.evaluate: {evaluated['accuracy']:.4f}; decisions "
        f"{dict(Counter(a.decision for a in answers))}"
    )
    assert evaluated["num_samples"] == N_EVAL
    assert served_accuracy == evaluated["accuracy"]
    # ... and the same per-image predictions and decisions as the in-process Predictor
    assert predicted.tolist() == [r.predicted_index for r in fashion_results]
    assert [a.decision for a in answers] == [r.decision.value for r in fashion_results]


def test_mnist_rejected_at_the_in_process_rate(client, predictor, mnist) -> None:
    images = mnist.images[:N_MNIST]
    answers = classify_all(client, [png(image) for image in images])
    assert all(isinstance(a, ClassificationResponse) for a in answers)
    served = [a.decision for a in answers]
    expected = [r.decision.value for r in in_process_batch(predictor, images)]
    served_fraction = served.count("rejected_ood") / len(served)
    expected_fraction = expected.count("rejected_ood") / len(expected)
    print(
        f"\nMNIST rejected_ood fraction on {N_MNIST}: served {served_fraction:.3f}, "
        f"in-process {expected_fraction:.3f}; served decisions {dict(Counter(served))}"
    )
    assert served_fraction == expected_fraction
    assert served == expected
    assert served_fraction > 0.5  # digits are out of distribution for Fashion-MNIST


def test_concurrent_requests_with_one_corrupt_image(torchserve, fashion, fashion_results) -> None:
    corrupt_at = 7
    bodies = [png(fashion.images[i]) for i in range(16)]
    bodies[corrupt_at] = bodies[corrupt_at][: len(bodies[corrupt_at]) // 2]  # truncated PNG
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda body: post(torchserve, body), bodies))
    for index, answer in enumerate(answers):
        if index == corrupt_at:
            continue
        assert answer.status_code == 200, answer.text
        parsed = ClassificationResponse.model_validate_json(answer.text)
        expected = fashion_results[index]
        assert parsed.prediction.index == expected.predicted_index
        assert parsed.decision == expected.decision.value
        for item in parsed.probabilities:  # batch composition varies: float32-level agreement
            assert item.probability == pytest.approx(expected.probabilities[item.index], abs=1e-4)
    bad = answers[corrupt_at]
    assert 400 <= bad.status_code < 500
    assert bad.status_code == 415
    assert bad.headers["content-type"].startswith("application/json")
    body = bad.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == "undecodable_image"
    assert body["error"]["message"]
    assert ErrorResponse.model_validate(body).error.code == "undecodable_image"


# --------------------------------------------------------------------------- metrics


def test_decision_metrics_count_each_request(
    torchserve, fashion, mnist, predictor, fashion_results
) -> None:
    mnist_results = in_process_batch(predictor, mnist.images[:50])
    chosen: list[bytes] = []
    expected = dict.fromkeys(DECISIONS, 0)
    for wanted, count, images, results in (
        ("accepted", 3, fashion.images, fashion_results),
        ("flagged_attack", 1, fashion.images, fashion_results),
        ("rejected_ood", 2, mnist.images, mnist_results),
    ):
        picked = [i for i, r in enumerate(results) if r.decision.value == wanted][:count]
        chosen += [png(images[i]) for i in picked]
        expected[wanted] += len(picked)
    chosen += [b"this is not an image", b""]
    expected["invalid_input"] += 2
    before = stable_decision_counts(torchserve)
    for body in chosen:  # sequential: batch of one, answers bit-identical to in-process
        answer = post(torchserve, body)
        assert answer.status_code in (200, 400, 415), answer.text
    delta = wait_for_decisions(torchserve, before, sum(expected.values()))
    print(f"\ngc_decisions_total deltas: {delta}")
    assert delta == {key: float(value) for key, value in expected.items()}
    assert expected["accepted"] == 3 and expected["rejected_ood"] == 2


# --------------------------------------------------------------------------- options


def test_top_k_header(torchserve, fashion) -> None:
    answer = post(torchserve, png(fashion.images[0]), {"X-Trustgc-Top-K": "3"})
    assert answer.status_code == 200, answer.text
    parsed = ClassificationResponse.model_validate_json(answer.text)
    assert len(parsed.probabilities) == 3
    assert parsed.explanation is None
    probabilities = [p.probability for p in parsed.probabilities]
    assert probabilities == sorted(probabilities, reverse=True)


def test_multipart_options_and_explanation(torchserve, fashion) -> None:
    answer = requests.post(
        torchserve.predictions_url,
        files={"data": ("image.png", png(fashion.images[0]), "image/png")},
        data={"top_k": "2", "explain": "true"},
        headers=torchserve.headers,
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    parsed = ClassificationResponse.model_validate_json(answer.text)
    assert len(parsed.probabilities) == 2
    assert parsed.explanation is not None
    maps = parsed.explanation.posterior_heatmaps
    assert [(m.label, m.index) for m in maps] == [(p.label, p.index) for p in parsed.probabilities]
    for heatmap, item in zip(maps, parsed.probabilities, strict=True):
        total = float(np.sum(heatmap.values))
        assert total == pytest.approx(math.log(item.probability), abs=1e-4)


def test_explain_header_and_protobuf_format_over_rest(torchserve, fashion) -> None:
    image = png(fashion.images[1])
    as_json = post(torchserve, image, {"X-Trustgc-Explain": "true", "X-Trustgc-Top-K": "4"})
    as_proto = post(
        torchserve,
        image,
        {"X-Trustgc-Explain": "true", "X-Trustgc-Top-K": "4", "X-Trustgc-Format": "protobuf"},
    )
    assert as_json.status_code == as_proto.status_code == 200
    assert as_proto.headers["content-type"].startswith("application/x-protobuf")
    parsed = ClassificationResponse.model_validate_json(as_json.text)
    assert parsed.explanation is not None and len(parsed.probabilities) == 4
    assert from_protobuf(as_proto.content) == parsed


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1001", "2.5"])
@pytest.mark.parametrize("how", ["header", "multipart"])
def test_invalid_top_k_is_a_400(torchserve, fashion, value, how) -> None:
    image = png(fashion.images[0])
    if how == "header":
        answer = post(torchserve, image, {"X-Trustgc-Top-K": value})
    else:
        answer = requests.post(
            torchserve.predictions_url,
            files={"data": ("image.png", image, "image/png")},
            data={"top_k": value},
            headers=torchserve.headers,
            timeout=60,
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "invalid_parameter"
    assert "top_k" in answer.json()["error"]["message"]


def test_invalid_explain_and_unknown_option_are_400(torchserve, fashion) -> None:
    image = png(fashion.images[0])
    for headers in ({"X-Trustgc-Explain": "perhaps"}, {"X-Trustgc-Colour": "red"}):
        answer = post(torchserve, image, headers)
        assert answer.status_code == 400, (headers, answer.text)
        assert answer.json()["error"]["code"] == "invalid_parameter"


def _grpc_predict(served, inputs: dict[str, bytes], token: str | None = "default"):
    token = served.token if token == "default" else token
    metadata = [("authorization", f"Bearer {token}")] if token else []
    request = inference_pb2.PredictionsRequest(model_name=served.model, input=inputs)
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        return stub.Predictions(request, metadata=metadata, timeout=60)


@pytest.mark.parametrize("explain", [b"false", b"true"])
def test_protobuf_format_over_grpc(torchserve, fashion, explain) -> None:
    image = png(fashion.images[2])
    options = {"explain": explain, "top_k": b"5"}
    as_json = _grpc_predict(torchserve, {"data": image, **options})
    as_proto = _grpc_predict(torchserve, {"data": image, **options, "format": b"protobuf"})
    parsed_json = ClassificationResponse.model_validate_json(as_json.prediction)
    parsed_proto = from_protobuf(as_proto.prediction)
    assert isinstance(parsed_proto, ClassificationResponse)
    assert len(parsed_proto.probabilities) == 5
    assert (parsed_proto.explanation is not None) == (explain == b"true")
    assert parsed_proto == parsed_json
    assert parsed_proto.model_dump() == parsed_json.model_dump()


def test_grpc_errors_are_visible_in_the_body(torchserve) -> None:
    """gRPC ignores set_response_status: the error must be in the answer itself."""
    reply = _grpc_predict(torchserve, {"data": b"\x89PNG but not really"})
    assert json.loads(reply.prediction)["error"]["code"] == "undecodable_image"
    reply = _grpc_predict(torchserve, {"data": b"", "top_k": b"3"})
    assert json.loads(reply.prediction)["error"]["code"] == "empty_body"
    reply = _grpc_predict(torchserve, {"data": b"x", "top_k": b"zero"})
    assert json.loads(reply.prediction)["error"]["code"] == "invalid_parameter"


# --------------------------------------------------------------------------- auth


def test_requests_without_a_valid_token_are_refused(torchserve, fashion) -> None:
    image = png(fashion.images[0])
    before = stable_decision_counts(torchserve)
    missing = requests.post(torchserve.predictions_url, data=image, headers=OCTET, timeout=30)
    wrong = requests.post(
        torchserve.predictions_url,
        data=image,
        headers={**OCTET, "Authorization": "Bearer not-the-key"},
        timeout=30,
    )
    management_key = requests.post(
        torchserve.predictions_url,
        data=image,
        headers={**OCTET, **torchserve.management_headers},
        timeout=30,
    )
    for answer in (missing, wrong, management_key):
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.status_code in (400, 401, 403)
        assert "error" not in answer.text[:20]  # TorchServe answered, not the handler
    with pytest.raises(grpc.RpcError) as refused:
        _grpc_predict(torchserve, {"data": image}, token=None)
    assert refused.value.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    with pytest.raises(grpc.RpcError):
        _grpc_predict(torchserve, {"data": image}, token="not-the-key")
    time.sleep(1.0)
    assert stable_decision_counts(torchserve) == before  # the handler never ran


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("over_grpc", [False, True])
def test_cli_classify_prints_json(torchserve, client, fashion, tmp_path, capsys, over_grpc):
    from trustgc_cli.main import main

    path = tmp_path / "ankle_boot.png"
    path.write_bytes(png(fashion.images[0]))
    argv = [str(path), "--url", torchserve.inference_url, "--token", torchserve.token, "--json"]
    if over_grpc:
        argv += ["--grpc", "--grpc-target", torchserve.grpc_target]
    capsys.readouterr()
    assert main(["classify", *argv]) == 0
    printed = capsys.readouterr().out
    parsed = ClassificationResponse.model_validate(json.loads(printed))
    assert parsed.prediction.index == int(fashion.labels[0])
    assert len(parsed.probabilities) == 3  # the CLI's default --top-k
    assert parsed == client.classify(path.read_bytes(), top_k=3)


def test_cli_classify_reports_a_bad_image(torchserve, tmp_path, capsys) -> None:
    from trustgc_cli.main import main

    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all")
    capsys.readouterr()
    argv = ["classify", str(path), "--url", torchserve.inference_url]
    assert main([*argv, "--token", torchserve.token, "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["error"]["code"] == "undecodable_image"


def test_cli_classify_with_a_wrong_token_fails_cleanly(torchserve, tmp_path, capsys) -> None:
    from trustgc_cli.main import main

    path = tmp_path / "image.png"
    path.write_bytes(png(np.zeros((28, 28, 1), np.uint8)))
    argv = ["classify", str(path), "--url", torchserve.inference_url, "--token", "wrong"]
    assert main([*argv, "--json"]) != 0
    assert "error" in capsys.readouterr().err
