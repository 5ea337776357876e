"""The gRPC/protobuf interface: committed stubs are current, messages round-trip, and the
service descriptors have the shape TorchServe 0.12 serves."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serving.grpc_stubs import (
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
    result_pb2,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STUBS_DIR = REPO_ROOT / "serving" / "grpc_stubs"
GEN_SCRIPT = REPO_ROOT / "scripts" / "gen_protos.sh"


def _tree(root: Path) -> dict[str, Path]:
    """Relative path -> file, for every file under root except bytecode caches."""
    return {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


# --- (a) the committed stubs match what the generator produces -------------------------


def test_committed_stubs_are_current(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    if shutil.which("bash") is None:
        pytest.skip("bash is needed to run scripts/gen_protos.sh")
    out_dir = tmp_path / "grpc_stubs"
    env = {**os.environ, "OUT_DIR": str(out_dir), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(GEN_SCRIPT)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr

    fresh, committed = _tree(out_dir), _tree(STUBS_DIR)
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs; run scripts/gen_protos.sh"
    )
    stale = [rel for rel in fresh if not filecmp.cmp(fresh[rel], committed[rel], shallow=False)]
    assert not stale, f"stale generated files {stale}; run scripts/gen_protos.sh"


def test_generated_imports_are_package_relative() -> None:
    """protoc's top-level imports were rewritten; google.protobuf imports were kept."""
    for rel, path in _tree(STUBS_DIR).items():
        if not rel.endswith((".py", ".pyi")):
            continue
        for line in path.read_text().splitlines():
            if line.startswith(("from org.", "from trustgc.", "from google.rpc ")):
                pytest.fail(f"{rel}: unrewritten import {line!r}")
    inference_src = (STUBS_DIR / "org/pytorch/serve/grpc/inference/inference_pb2.py").read_text()
    assert "from google.protobuf import empty_pb2" in inference_src
    assert "from serving.grpc_stubs.google.rpc import status_pb2" in inference_src


# --- (b) messages round-trip ---------------------------------------------------------


def _full_result() -> result_pb2.ClassificationResult:
    probs = [
        result_pb2.ClassProbability(label=label, index=i, probability=p)
        for i, (label, p) in enumerate([("T-shirt/top", 0.9), ("Trouser", 0.07), ("Bag", 0.03)])
    ]
    return result_pb2.ClassificationResult(
        schema_version="1",
        model=result_pb2.ModelInfo(name="fashion_mnist", version="1.0"),
        decision=result_pb2.REJECTED_OOD,
        prediction=probs[0],
        probabilities=probs,
        log_likelihood=result_pb2.LogLikelihood(
            bits_per_dim=3.25, per_class_bits_per_dim=[3.3, 5.1, 6.0]
        ),
        typicality=result_pb2.Typicality(
            p_value=0.004,
            alpha=0.01,
            out_of_distribution=True,
            statistic="fisher",
            components={"bits_per_dim": 0.02, "latent_norm": 0.01},
        ),
        attack=result_pb2.Attack(p_value=0.5, alpha=0.01, suspected=False, statistic="ratio"),
        explanation=result_pb2.Explanation(
            posterior_heatmaps=[
                result_pb2.HeatMap(
                    label="T-shirt/top",
                    index=0,
                    height=2,
                    width=3,
                    values=[0.1 * k for k in range(6)],
                )
            ],
            decision_space=result_pb2.DecisionSpace(
                classes=[0, 1],
                means_xy=[0.0, 0.0, 1.0, 0.5],
                z_xy=[0.2, 0.1],
                residual_distance=0.3,
                radius_horizontal=1.5,
                radius_vertical=0.75,
            ),
        ),
    )


def test_classification_result_round_trips() -> None:
    msg = _full_result()
    parsed = result_pb2.ClassificationResult.FromString(msg.SerializeToString())
    assert parsed == msg
    assert parsed.decision == result_pb2.Decision.Value("REJECTED_OOD")
    assert parsed.HasField("explanation")
    assert list(parsed.explanation.posterior_heatmaps[0].values) == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    )
    assert dict(parsed.typicality.components) == {"bits_per_dim": 0.02, "latent_norm": 0.01}
    assert not parsed.HasField("error")


def test_explanation_is_optional_and_error_result_round_trips() -> None:
    msg = _full_result()
    msg.ClearField("explanation")
    assert not result_pb2.ClassificationResult.FromString(msg.SerializeToString()).HasField(
        "explanation"
    )

    err = result_pb2.ClassificationResult(
        schema_version="1",
        error=result_pb2.Error(code="invalid_image", message="cannot decode image bytes"),
    )
    parsed = result_pb2.ClassificationResult.FromString(err.SerializeToString())
    assert parsed == err
    assert parsed.error.code == "invalid_image"
    assert parsed.decision == result_pb2.DECISION_UNSPECIFIED
    assert not parsed.HasField("prediction")


def test_decision_enum_values() -> None:
    assert {v.name: v.number for v in result_pb2.Decision.DESCRIPTOR.values} == {
        "DECISION_UNSPECIFIED": 0,
        "ACCEPTED": 1,
        "REJECTED_OOD": 2,
        "FLAGGED_ATTACK": 3,
    }


def test_predictions_request_round_trips() -> None:
    payload = bytes(range(256)) * 4  # arbitrary binary, including NUL bytes
    req = inference_pb2.PredictionsRequest(
        model_name="fashion_mnist", input={"data": payload, "explain": b"true"}
    )
    assert not req.HasField("sequence_id")
    parsed = inference_pb2.PredictionsRequest.FromString(req.SerializeToString())
    assert parsed == req
    assert parsed.input["data"] == payload
    assert parsed.model_version == ""
    assert not parsed.HasField("sequence_id")

    req.sequence_id = "seq-1"
    assert inference_pb2.PredictionsRequest.FromString(req.SerializeToString()).sequence_id == (
        "seq-1"
    )


def test_prediction_response_with_status_round_trips() -> None:
    resp = inference_pb2.PredictionResponse(prediction=b'{"schema_version": "1"}')
    resp.status.code = 3
    resp.status.message = "bad input"
    parsed = inference_pb2.PredictionResponse.FromString(resp.SerializeToString())
    assert parsed == resp
    assert parsed.HasField("status")
    assert parsed.status.DESCRIPTOR.full_name == "google.rpc.Status"


# --- (c) service descriptors -----------------------------------------------------------


def test_inference_service_descriptor() -> None:
    service = inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert service.full_name == "org.pytorch.serve.grpc.inference.InferenceAPIsService"
    pkg = "org.pytorch.serve.grpc.inference."
    expected = {
        # name: (input, output, client_streaming, server_streaming)
        "Ping": ("google.protobuf.Empty", pkg + "TorchServeHealthResponse", False, False),
        "Predictions": (pkg + "PredictionsRequest", pkg + "PredictionResponse", False, False),
        "StreamPredictions": (
            pkg + "PredictionsRequest",
            pkg + "PredictionResponse",
            False,
            True,
        ),
        "StreamPredictions2": (
            pkg + "PredictionsRequest",
            pkg + "PredictionResponse",
            True,
            True,
        ),
    }
    actual = {
        m.name: (
            m.input_type.full_name,
            m.output_type.full_name,
            m.client_streaming,
            m.server_streaming,
        )
        for m in service.methods
    }
    assert actual == expected
    assert hasattr(inference_pb2_grpc, "InferenceAPIsServiceStub")
    assert hasattr(inference_pb2_grpc, "add_InferenceAPIsServiceServicer_to_server")


def test_management_service_descriptor() -> None:
    service = management_pb2.DESCRIPTOR.services_by_name["ManagementAPIsService"]
    assert service.full_name == "org.pytorch.serve.grpc.management.ManagementAPIsService"
    names = {
        "DescribeModel",
        "ListModels",
        "RegisterModel",
        "ScaleWorker",
        "SetDefault",
        "UnregisterModel",
    }
    assert {m.name for m in service.methods} == names
    for m in service.methods:
        assert m.input_type.full_name == f"org.pytorch.serve.grpc.management.{m.name}Request"
        assert m.output_type.full_name == "org.pytorch.serve.grpc.management.ManagementResponse"
        assert not m.client_streaming and not m.server_streaming
    assert hasattr(management_pb2_grpc, "ManagementAPIsServiceStub")


def test_stub_binds_full_method_paths() -> None:
    """The client stub calls /<package>.<Service>/<Method>, which TorchServe routes on."""
    grpc = pytest.importorskip("grpc")
    with grpc.insecure_channel("127.0.0.1:1") as channel:  # never connected
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        assert callable(stub.Predictions) and callable(stub.StreamPredictions2)
    source = Path(inference_pb2_grpc.__file__).read_text()
    for method in ("Ping", "Predictions", "StreamPredictions", "StreamPredictions2"):
        assert f"'/org.pytorch.serve.grpc.inference.InferenceAPIsService/{method}'" in source
