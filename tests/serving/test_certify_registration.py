"""Certificates on their own TorchServe registration: NAME_certify (batch size 1, one worker).

The batched registration refuses ``certify`` with a 400 that names the certify registration, so
no plain request shares a batch with a ~1 s certificate (serving/server.py, docs/serving.md).
The unit tests check how the registration is built from the archive and how the handler decides;
the integration tests run against the real TorchServe of conftest.py (the shipped archive,
production settings), over REST, gRPC and the CLI.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import grpc
import pytest
import requests
import yaml

from serving.certificates import certify_registration, check_certify_limit
from serving.errors import InputError
from serving.schema import ClassificationResponse, ErrorResponse

REPO_ROOT = Path(__file__).resolve().parents[2]
MAR_FILE = REPO_ROOT / "model_store" / "fashion_mnist.mar"
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
CERTIFY_MODEL = "fashion_mnist_certify"
OCTET = {"Content-Type": "application/octet-stream"}
EXAMPLE = REPO_ROOT / "docs" / "examples" / "ankle_boot.png"  # the README's example

needs_archive = pytest.mark.skipif(not MAR_FILE.is_file(), reason=f"{MAR_FILE} is missing")


# --------------------------------------------------------------------------- naming and limits


def test_certify_registration_names() -> None:
    assert certify_registration("fashion_mnist") == CERTIFY_MODEL
    assert certify_registration(CERTIFY_MODEL) == CERTIFY_MODEL  # never NAME_certify_certify


def test_a_batched_registration_names_the_certify_one() -> None:
    check_certify_limit(0, 1000, certify_at=CERTIFY_MODEL)  # a plain request passes
    with pytest.raises(InputError) as refused:
        check_certify_limit(10, 1000, certify_at=CERTIFY_MODEL)
    assert refused.value.code == "invalid_parameter"
    assert f"/predictions/{CERTIFY_MODEL}" in refused.value.message
    with pytest.raises(InputError, match="turned off"):  # certificates off: say that instead
        check_certify_limit(10, 0, certify_at=CERTIFY_MODEL)
    with pytest.raises(InputError, match="exceeds this server's limit of 1000"):
        check_certify_limit(1001, 1000)
    check_certify_limit(1000, 1000)


# --------------------------------------------------------------------------- building it


def _with_config(source: Path, target: Path, change) -> None:
    """Copy the archive ``source`` to ``target`` with its model-config.yaml changed."""
    with zipfile.ZipFile(source) as packed, zipfile.ZipFile(target, "w") as copy:
        for member in packed.namelist():
            data = packed.read(member)
            if member == "model-config.yaml":
                config = yaml.safe_load(data)
                change(config)
                data = yaml.safe_dump(config).encode()
            copy.writestr(member, data)


@needs_archive
def test_the_certify_registration_is_the_archive_with_batch_size_one(tmp_path) -> None:
    from serving.server import ServerSettings, prepare_certify_registrations, served_names

    settings = ServerSettings(run_dir=tmp_path)
    items = prepare_certify_registrations(settings)
    name, _, directory = items.partition("=")
    assert name == CERTIFY_MODEL and Path(directory) == tmp_path.resolve() / "certify" / name
    assert served_names(settings) == ["fashion_mnist", CERTIFY_MODEL]
    with zipfile.ZipFile(MAR_FILE) as packed:
        members = [m for m in packed.namelist() if not m.endswith("/")]
        for member in members:
            if member != "model-config.yaml":
                assert (Path(directory) / member).read_bytes() == packed.read(member), member
        batched = yaml.safe_load(packed.read("model-config.yaml"))
    certify = yaml.safe_load((Path(directory) / "model-config.yaml").read_text())
    assert (certify["batchSize"], certify["minWorkers"], certify["maxWorkers"]) == (1, 1, 1)
    assert batched["batchSize"] > 1
    unchanged = {
        k: v for k, v in batched.items() if k not in ("batchSize", "minWorkers", "maxWorkers")
    }
    assert {k: certify[k] for k in unchanged} == unchanged  # the cap and backend included
    assert sorted(p.name for p in (tmp_path / "certify").iterdir()) == [CERTIFY_MODEL]
    prepare_certify_registrations(settings)  # a restart rebuilds it in place
    assert sorted(p.name for p in (tmp_path / "certify").iterdir()) == [CERTIFY_MODEL]


@needs_archive
def test_no_certify_registration_when_off_or_certificates_are_off(tmp_path) -> None:
    from serving.server import ServerSettings, certify_registrations

    settings = ServerSettings(run_dir=tmp_path, certify_registration=False)
    assert certify_registrations(settings) == []
    store = tmp_path / "store"
    store.mkdir()
    _with_config(MAR_FILE, store / "off.mar", lambda c: c["trustgc"].update(max_certify_samples=0))
    _with_config(MAR_FILE, store / "on.mar", lambda c: None)
    settings = ServerSettings(run_dir=tmp_path, model_store=store, models="off=off.mar,on=on.mar")
    assert [name for name, _ in certify_registrations(settings)] == ["on_certify"]


@needs_archive
def test_a_model_named_like_a_certify_registration_is_refused(tmp_path) -> None:
    from serving.server import ServerSettings, certify_registrations

    store = tmp_path / "store"
    store.mkdir()
    for name in ("a", "a_certify"):
        (store / f"{name}.mar").write_bytes(MAR_FILE.read_bytes())
    settings = ServerSettings(model_store=store, models="a=a.mar,a_certify=a_certify.mar")
    with pytest.raises(ValueError, match="--no-certify-registration"):
        certify_registrations(settings)


def test_the_server_flag_turns_it_off() -> None:
    from serving.commands import server_settings
    from trustgc_cli.main import build_parser

    parser = build_parser()
    assert server_settings(parser.parse_args(["start"])).certify_registration is True
    args = parser.parse_args(["serve", "--no-certify-registration"])
    assert server_settings(args).certify_registration is False


# --------------------------------------------------------------------------- the handler


class _Context:
    """What the handler reads at initialize from TorchServe's context."""

    def __init__(self, batch_size: int, yaml_settings: dict | None = None) -> None:
        self.system_properties = {"model_dir": str(MODEL_DIR), "batch_size": batch_size}
        self.manifest = {"model": {"modelName": "fashion_mnist"}}
        self.model_name = "fashion_mnist"
        self.metrics = None
        self.model_yaml_config = {"trustgc": yaml_settings or {}}


@pytest.mark.skipif(not (MODEL_DIR / "model.json").is_file(), reason="no shipped artifact")
def test_the_handler_certifies_only_without_batch_mates() -> None:
    from serving.handler import TrustGCHandler

    handler = TrustGCHandler()
    handler.initialize(_Context(batch_size=16))
    assert handler.certify_at == CERTIFY_MODEL
    handler.initialize(_Context(batch_size=1))
    assert handler.certify_at is None
    handler.initialize(_Context(batch_size=16, yaml_settings={"certify_in_batches": True}))
    assert handler.certify_at is None


# --------------------------------------------------------------------------- real TorchServe


@pytest.fixture(scope="module")
def served(torchserve):
    """The conftest TorchServe once its certify registration is READY too."""
    torchserve.server.wait_ready(CERTIFY_MODEL, timeout=180)
    return torchserve


@pytest.fixture(scope="module")
def image() -> bytes:
    return EXAMPLE.read_bytes()


def _grpc_predict(served, model: str, inputs: dict[str, bytes]):
    from serving.grpc_stubs import inference_pb2, inference_pb2_grpc

    request = inference_pb2.PredictionsRequest(model_name=model, input=inputs)
    with grpc.insecure_channel(served.grpc_target) as channel:
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        metadata = [("authorization", f"Bearer {served.token}")]
        return stub.Predictions(request, metadata=metadata, timeout=60)


def _check_certificate(answer, n: int, sigma: float) -> None:
    assert isinstance(answer, ClassificationResponse), answer
    certificate = answer.certificate
    assert certificate is not None
    assert (certificate.n, certificate.n0, certificate.sigma) == (n, 100, sigma)
    assert 0.0 <= certificate.p_lower <= 1.0 and certificate.radius >= 0.0
    assert answer.model.name == "fashion_mnist"


@pytest.mark.integration
def test_both_registrations_are_listed(served) -> None:
    management = served.settings.url("management")
    listed = requests.get(f"{management}/models", headers=served.management_headers, timeout=10)
    assert {m["modelName"] for m in listed.json()["models"]} == {"fashion_mnist", CERTIFY_MODEL}
    described = {}
    for name in ("fashion_mnist", CERTIFY_MODEL):
        answer = requests.get(
            f"{management}/models/{name}", headers=served.management_headers, timeout=10
        )
        (described[name],) = answer.json()
    assert described["fashion_mnist"]["batchSize"] == 16
    assert len(described["fashion_mnist"]["workers"]) == 2
    assert described[CERTIFY_MODEL]["batchSize"] == 1
    assert len(described[CERTIFY_MODEL]["workers"]) == 1


@pytest.mark.integration
def test_certify_on_the_batched_registration_names_the_other(served, image) -> None:
    answer = requests.post(
        served.predictions_url,
        data=image,
        headers={**OCTET, **served.headers, "X-Trustgc-Certify": "50"},
        timeout=60,
    )
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    error = ErrorResponse.model_validate_json(answer.text).error
    assert error.code == "invalid_parameter" and f"/predictions/{CERTIFY_MODEL}" in error.message
    reply = _grpc_predict(served, "fashion_mnist", {"data": image, "certify": b"50"})
    error = json.loads(reply.prediction)["error"]
    assert error["code"] == "invalid_parameter" and CERTIFY_MODEL in error["message"]
    plain = requests.post(served.predictions_url, data=image, headers={**OCTET, **served.headers})
    assert plain.status_code == 200 and "certificate" not in plain.json()


@pytest.mark.integration
def test_certify_on_the_certify_registration(served, image) -> None:
    url = f"{served.inference_url}/predictions/{CERTIFY_MODEL}"
    headers = {**OCTET, **served.headers}
    answer = requests.post(
        url, data=image, headers={**headers, "X-Trustgc-Certify": "60"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    _check_certificate(ClassificationResponse.model_validate_json(answer.text), 60, 0.25)
    reply = _grpc_predict(
        served, CERTIFY_MODEL, {"data": image, "certify": b"40", "certify_sigma": b"0.5"}
    )
    _check_certificate(ClassificationResponse.model_validate_json(reply.prediction), 40, 0.5)
    too_many = requests.post(
        url, data=image, headers={**headers, "X-Trustgc-Certify": "1001"}, timeout=60
    )
    assert too_many.status_code == 400 and "limit of 1000" in too_many.text  # the same cap
    plain = requests.post(url, data=image, headers=headers, timeout=60)
    batched = requests.post(served.predictions_url, data=image, headers=headers, timeout=60)
    assert plain.json()["prediction"] == batched.json()["prediction"]


@pytest.mark.integration
@pytest.mark.parametrize("over_grpc", [False, True])
def test_the_client_and_cli_reach_the_certify_registration(
    served, image, tmp_path, capsys, over_grpc
):
    from trustgc_cli.main import main

    answer = served.client().classify(image, certify=30, use_grpc=over_grpc)
    _check_certificate(answer, 30, 0.25)
    path = tmp_path / "image.png"
    path.write_bytes(image)
    argv = ["classify", str(path), "--url", served.inference_url, "--token", served.token]
    argv += ["--json", "--certify", "20", "--sigma", "0.5"]
    if over_grpc:
        argv += ["--grpc", "--grpc-target", served.grpc_target]
    capsys.readouterr()
    assert main(argv) == 0
    _check_certificate(ClassificationResponse.model_validate_json(capsys.readouterr().out), 20, 0.5)


@pytest.mark.integration
@pytest.mark.parametrize("over_grpc", [False, True])
def test_without_a_certify_registration_the_client_asks_the_model(served, image, over_grpc):
    """A server with no NAME_certify (--no-certify-registration): the client asks NAME itself,
    so its error (or certificate) is the model's, not 'NAME_certify not found'."""
    from serving.client import ClientError

    client = served.client(retries=0)
    client.model = "not_served"
    with pytest.raises(ClientError) as failed:
        client.classify(image, certify=10, use_grpc=over_grpc)
    assert "not_served" in failed.value.body and "not_served_certify" not in failed.value.body
