"""Both runtimes, TorchServe and KServe (Open Inference Protocol), against real servers.

The ``runtime`` fixture (conftest.py) runs the runtime-independent tests once per runtime:
one corrupt image among good ones, metrics that count exactly, the backend label.  The
KServe-specific tests cover the OIP tensors, whole-request errors, the guard and a clean stop.
The cross-runtime test sends 200 Fashion-MNIST test images one request at a time to each
(a batch of one on both, so the float results are bit-identical) and compares the JSON answers.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import NormalDist

import grpc
import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from serving.kserve_import import import_kserve
from serving.metrics import DECISIONS
from serving.schema import ClassificationResponse, ErrorResponse

pytestmark = pytest.mark.integration

N_COMPARE = 200
MODEL_DIR = Path(__file__).resolve().parents[2] / "model_store" / "fashion_mnist"


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fashion():
    from training.data import load_dataset

    return load_dataset("fashion_mnist", "test")


@pytest.fixture(scope="module")
def images(fashion) -> list[bytes]:
    return [png(fashion.images[i]) for i in range(N_COMPARE)]


def samples(served, name: str) -> list:
    """Samples called ``name`` of this model from the runtime's Prometheus endpoint."""
    text = requests.get(served.metrics_url, timeout=10).text
    return [
        sample
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels.get("ModelName") == served.model
    ]


def decision_counts(served) -> dict[str, float]:
    counts = dict.fromkeys(DECISIONS, 0.0)
    for sample in samples(served, "gc_decisions_total"):
        counts[sample.labels["decision"]] += sample.value
    return counts


def settled_decision_counts(served, expected_total: float, timeout: float = 15.0) -> dict:
    """TorchServe exports its handler metrics asynchronously: wait for the expected total,
    then re-read once more so that a late excess would show."""
    deadline = time.monotonic() + timeout
    while sum(decision_counts(served).values()) < expected_total and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    return decision_counts(served)


def certificate_counts(served) -> dict[str, float]:
    counts = {"certified": 0.0, "abstained": 0.0}
    for sample in samples(served, "gc_certificates_total"):
        counts[sample.labels["outcome"]] += sample.value
    return counts


# --------------------------------------------------------------------------- both runtimes


def test_identical_answers_on_200_test_images(torchserve, kserve, images) -> None:
    """The same JSON answer from TorchServe (REST) and KServe (REST and gRPC), image by image."""
    ts_client, oip_client = torchserve.client(), kserve.client()
    ts_answers = [ts_client.classify(image).model_dump() for image in images]
    oip_rest = [oip_client.classify(image).model_dump() for image in images]
    oip_grpc = [oip_client.classify(image, use_grpc=True).model_dump() for image in images]
    different = [i for i in range(N_COMPARE) if ts_answers[i] != oip_rest[i]]
    assert not different, f"{len(different)} answers differ, first {different[:5]}"
    assert oip_grpc == oip_rest
    decisions = {answer["decision"] for answer in ts_answers}
    assert "accepted" in decisions  # a real comparison, not of 200 errors


def test_one_corrupt_image_among_good_ones(runtime, images) -> None:
    """Concurrent requests (batched together): the corrupt one alone gets an error."""
    client = runtime.client()
    bodies = list(images[:16])
    bodies[5] = bodies[5][: len(bodies[5]) // 2]  # truncated PNG
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(client.classify, bodies))
    alone = [client.classify(body) for body in bodies]
    assert isinstance(answers[5], ErrorResponse)
    assert answers[5].error.code == "undecodable_image"
    for index, (answer, single) in enumerate(zip(answers, alone, strict=True)):
        if index == 5:
            continue
        assert isinstance(answer, ClassificationResponse), answer
        assert answer.decision == single.decision
        assert answer.prediction.index == single.prediction.index
        assert answer.typicality.p_value == pytest.approx(single.typicality.p_value, abs=2e-3)


def test_decision_metrics_count_exactly(runtime, images) -> None:
    client = runtime.client()
    bodies = [*images[20:27], b"not an image", b""]
    before = decision_counts(runtime)
    answers = [client.classify(body) for body in bodies]  # sequential: one batch each
    expected = dict.fromkeys(DECISIONS, 0.0)
    for answer in answers:
        key = answer.decision if isinstance(answer, ClassificationResponse) else "invalid_input"
        expected[key] += 1
    after = settled_decision_counts(runtime, sum(before.values()) + len(bodies))
    delta = {key: after[key] - before[key] for key in DECISIONS}
    assert delta == expected
    assert expected["invalid_input"] == 2 and sum(expected.values()) == len(bodies)


@pytest.mark.parametrize("over_grpc", [False, True])
def test_a_certificate_when_asked_and_the_cap(runtime, images, over_grpc) -> None:
    """``certify`` = n through the real server: the answer carries a certificate (fresh noise
    per request, so checked for what holds whatever the draw: p_lower <= alpha^(1/n) bounds the
    radius), the same request without it none and the same prediction, and a request above
    the server's cap of 1,000 an invalid_parameter error that names it; gc_certificates_total
    counts the one certificate under its outcome."""
    client = runtime.client()
    client.classify(images[1])  # TorchServe exports model metrics once used
    before = certificate_counts(runtime)
    answer = client.classify(images[1], use_grpc=over_grpc, certify=100, certify_sigma=0.05)
    assert isinstance(answer, ClassificationResponse), answer
    certificate = answer.certificate
    assert certificate is not None
    assert (certificate.n, certificate.n0, certificate.sigma) == (100, 100, 0.05)
    names = {p.label for p in client.classify(images[1], top_k=10).probabilities}
    assert certificate.label is None or certificate.label in names
    largest = 0.05 * NormalDist().inv_cdf(certificate.alpha ** (1 / 100))
    assert 0.0 <= certificate.radius <= largest + 1e-12
    assert (certificate.label is None) == (certificate.radius == 0.0)
    assert certificate.agrees_with_prediction == (certificate.label == answer.prediction.label)
    plain = client.classify(images[1], use_grpc=over_grpc)
    assert plain.certificate is None and plain.prediction == answer.prediction
    refused = client.classify(images[1], use_grpc=over_grpc, certify=1001)
    assert isinstance(refused, ErrorResponse) and refused.error.code == "invalid_parameter"
    assert "limit of 1000" in refused.error.message
    outcome = "abstained" if certificate.label is None else "certified"
    deadline = time.monotonic() + 15  # TorchServe exports handler metrics asynchronously
    while certificate_counts(runtime)[outcome] == before[outcome] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    after = certificate_counts(runtime)
    assert {key: after[key] - before[key] for key in after} == {
        key: float(key == outcome) for key in after
    }


def test_backend_info_says_onnxruntime(runtime, images) -> None:
    runtime.client().classify(images[0])  # TorchServe exports model metrics once used
    deadline = time.monotonic() + 10
    while not (found := samples(runtime, "gc_backend_info")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert {s.labels["backend"] for s in found if s.value == 1} == {"onnxruntime"}


def test_both_runtimes_export_the_served_alpha_and_calibration(torchserve, kserve, images):
    """The alert rules read gc_alpha and gc_calibration_info: the same values on both."""
    from trustgc.trust.calibration import load_calibration

    exported = {}
    for served in (torchserve, kserve):
        served.client().classify(images[0])
        deadline = time.monotonic() + 10
        while not samples(served, "gc_alpha") and time.monotonic() < deadline:
            time.sleep(0.2)
        alphas = {s.labels["test"]: s.value for s in samples(served, "gc_alpha")}
        calibration = {s.labels["calibration"] for s in samples(served, "gc_calibration_info")}
        exported[served.model, type(served).__name__] = (alphas, calibration)
    (ts_alphas, ts_id), (oip_alphas, oip_id) = exported.values()
    shipped = load_calibration(MODEL_DIR)
    assert ts_alphas == oip_alphas == {"ood": shipped.ood_alpha, "attack": shipped.attack_alpha}
    assert ts_id == oip_id and len(ts_id) == 1


# --------------------------------------------------------------------------- KServe / OIP


def infer(kserve, images: list[bytes], parameters: dict | None = None, headers=None):
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode() for image in images],
            }
        ],
        "parameters": parameters or {},
    }
    return requests.post(
        kserve.infer_url, json=body, headers=kserve.headers if headers is None else headers
    )


def test_oip_tensors_for_a_request_with_a_corrupt_image(kserve, images) -> None:
    answer = infer(kserve, [images[0], b"\x89PNG broken", images[1]], {"top_k": 3})
    assert answer.status_code == 200, answer.text
    outputs = {output["name"]: output for output in answer.json()["outputs"]}
    assert set(outputs) == {"answer", "decision", "probabilities", "ood_p_value", "attack_p_value"}
    assert outputs["probabilities"]["datatype"] == "FP32"
    assert outputs["probabilities"]["shape"] == [3, 10]
    assert outputs["ood_p_value"]["datatype"] == outputs["attack_p_value"]["datatype"] == "FP64"
    parsed = [json.loads(text) for text in outputs["answer"]["data"]]
    assert parsed[1]["error"]["code"] == "undecodable_image"
    assert outputs["decision"]["data"][1] == "invalid_input"
    assert outputs["ood_p_value"]["data"][1] is None  # NaN -> JSON null
    probabilities = np.asarray(outputs["probabilities"]["data"][:10], dtype=float)
    for index in (0, 2):
        answer_json = ClassificationResponse.model_validate(parsed[index])
        assert len(answer_json.probabilities) == 3  # top_k parameter
        assert outputs["decision"]["data"][index] == answer_json.decision
        assert outputs["ood_p_value"]["data"][index] == answer_json.typicality.p_value
        assert outputs["attack_p_value"]["data"][index] == answer_json.attack.p_value
    first = ClassificationResponse.model_validate(parsed[0])
    assert int(np.argmax(probabilities)) == first.prediction.index
    assert math.isclose(probabilities.sum(), 1.0, abs_tol=1e-5)


def test_a_request_with_no_usable_image_is_a_4xx(kserve, images) -> None:
    answer = infer(kserve, [b"junk", b""])
    assert answer.status_code == 415
    assert answer.json()["error"]["code"] == "undecodable_image"
    answer = infer(kserve, [images[0]], {"top_k": 0})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_parameter"
    assert "top_k" in answer.json()["error"]["message"]
    pb = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2")
    pb_grpc = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2_grpc")

    request = pb.ModelInferRequest(
        model_name=kserve.model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="images",
                datatype="BYTES",
                shape=[1],
                contents=pb.InferTensorContents(bytes_contents=[b"junk"]),
            )
        ],
    )
    with grpc.insecure_channel(kserve.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=[("authorization", f"Bearer {kserve.token}")])
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert json.loads(caught.value.details())["error"]["code"] == "undecodable_image"
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=[("authorization", "Bearer wrong")])
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ServerReady(pb.ServerReadyRequest()).ready  # health needs no token


def test_the_guard(kserve, images) -> None:
    assert infer(kserve, [images[0]], headers={}).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert infer(kserve, [images[0]], headers=wrong).status_code == 401
    url = kserve.settings.url()
    assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{url}/v2/models/{kserve.model}/ready", timeout=5).status_code == 401
    ready = requests.get(f"{url}/v2/models/{kserve.model}/ready", headers=kserve.headers)
    assert ready.status_code == 200
    key_file = kserve.settings.run_dir / "key_file.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert kserve.settings.host == "127.0.0.1"
    outside = socket.gethostbyname(socket.gethostname())
    if not outside.startswith("127."):  # bound to loopback only: not reachable from outside
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{outside}:{kserve.settings.http_port}/v2/health/ready")


@pytest.mark.parametrize("over_grpc", [False, True])
def test_cli_classify_with_runtime_kserve(kserve, images, tmp_path, capsys, over_grpc) -> None:
    from trustgc_cli.main import main

    path = tmp_path / "image.png"
    path.write_bytes(images[0])
    argv = ["classify", "--runtime", "kserve", "--json", str(path), "--token", kserve.token]
    argv += ["--url", kserve.settings.url(), "--grpc-target", kserve.grpc_target]
    assert main([*argv, "--grpc"] if over_grpc else argv) == 0
    printed = ClassificationResponse.model_validate_json(capsys.readouterr().out)
    assert printed == kserve.client().classify(images[0], top_k=3)  # the CLI default
    # --certify: the table gains the certificate's column (label or abstained, and radius)
    table = [a for a in argv if a != "--json"] + ["--certify", "50", "--sigma", "0.05"]
    assert main([*table, "--grpc"] if over_grpc else table) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.rstrip().endswith("certified (L2 radius)")
    column = row[header.index("  certified") :].strip()  # "Ankle boot (0.080)"
    label, radius = re.fullmatch(r"(.+) \((\d+\.\d+)\)", column).groups()
    names = {p.label for p in kserve.client().classify(images[0]).probabilities}
    assert label in names | {"abstained"} and float(radius) >= 0.0


def test_start_and_stop_leave_no_process(tmp_path) -> None:
    from serving.kserve_control import KServeProcess, start_background, stop
    from serving.kserve_runtime import KServeSettings
    from serving.processes import alive as _alive
    from serving.processes import children as _children

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    settings = KServeSettings(run_dir=tmp_path, http_port=ports[0], grpc_port=ports[1])
    assert start_background(settings) == 0
    pid = KServeProcess(settings).pid()
    assert pid is not None and _alive(pid)
    children = _children(pid)  # none expected; any there must go too
    assert stop(settings) == 0
    assert not _alive(pid)
    assert not [child for child in children if _alive(child)]
    assert not (tmp_path / "kserve.pid").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{settings.url()}/v2/health/live", timeout=2)
