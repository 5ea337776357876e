"""The Kubernetes manifests (no kubectl here: YAML loads and the fields that matter) and the
exec probe they use, against a stub management API and against the real TorchServe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "kubernetes"
PROBE = K8S / "probe.py"


def _documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def _one(name: str, kind: str) -> dict:
    [document] = [d for d in _documents(name) if d["kind"] == kind]
    return document


def test_every_manifest_loads_and_is_listed() -> None:
    files = sorted(p.relative_to(K8S).as_posix() for p in K8S.rglob("*.yaml"))
    assert files, "no manifests"
    for name in files:
        for document in _documents(name):
            assert {"apiVersion", "kind"} <= set(document), name
            if document["kind"] != "Kustomization":
                assert document["metadata"]["name"], name
    resources = set(_one("kustomization.yaml", "Kustomization")["resources"])
    top_level = {f for f in files if "/" not in f and f != "kustomization.yaml"}
    assert resources == top_level


def test_deployment_is_hardened() -> None:
    deployment = _one("deployment.yaml", "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's USER
    assert pod["automountServiceAccountToken"] is False
    [container] = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"/tmp", "/app/.run"}, "the only writable paths TorchServe needs"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "USER 10001:10001" in dockerfile


def test_deployment_probes_work_with_token_auth() -> None:
    [container] = _one("deployment.yaml", "Deployment")["spec"]["template"]["spec"]["containers"]
    ready = ["python", "/app/deploy/kubernetes/probe.py", "ready"]
    assert container["startupProbe"]["exec"]["command"] == ready
    assert container["readinessProbe"]["exec"]["command"] == ready
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["port"] == "metrics" and liveness["path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 8082
    annotations = _one("deployment.yaml", "Deployment")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == "8082"
    assert "deploy/kubernetes/probe.py" in (REPO_ROOT / "Dockerfile").read_text()


def test_service_hpa_pdb_networkpolicy_select_the_deployment() -> None:
    deployment = _one("deployment.yaml", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one("service.yaml", "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    exposed = {p["targetPort"] for p in service["spec"]["ports"]}
    assert exposed == {"http-inference", "grpc-inference", "metrics"}, "management stays private"
    hpa = _one("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = _one("pdb.yaml", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = _one("networkpolicy.yaml", "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert allowed == {8080, 7070, 8082}


def test_kserve_variant() -> None:
    service = _one("kserve/inferenceservice.yaml", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "pytorch"
    assert model["protocolVersion"] == "v1"
    assert "REPLACE" in model["storageUri"], "storageUri is a documented placeholder"
    runtime = _one("kserve/servingruntime.yaml", "ServingRuntime")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert "pytorch" in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert runtime["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is True
    properties = dict(
        line.split("=", 1)
        for line in (K8S / "kserve" / "config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert properties["inference_address"] == "http://0.0.0.0:8080"
    assert properties["metrics_mode"] == "prometheus"
    assert properties["model_store"] == "/mnt/models/model-store"


def test_kserve_oip_variant() -> None:
    """The maintained variant: trustgc's KServe model server on the Open Inference Protocol."""
    import json as _json

    from serving.kserve_runtime import KServeSettings

    service = _one("kserve/inferenceservice-oip.yaml", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert "REPLACE" in model["storageUri"], "storageUri is a documented placeholder"
    runtime = _one("kserve/servingruntime-oip.yaml", "ServingRuntime")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    [container] = runtime["spec"]["containers"]
    assert container["command"] == ["python", "-m", "serving.kserve_runtime"]
    assert container["securityContext"]["runAsNonRoot"] is True
    env = {item["name"]: item for item in container["env"]}
    settings = KServeSettings.model_validate(_json.loads(env["TRUSTGC_KSERVE_SETTINGS"]["value"]))
    assert settings.auth, "the in-cluster runtime keeps token auth"
    assert env["TRUSTGC_INFERENCE_KEY"]["valueFrom"]["secretKeyRef"]["name"]
    assert str(settings.model_dir) == "/mnt/models"
    assert settings.model_name == service["metadata"]["name"].removesuffix("-oip")
    assert container["ports"][0]["containerPort"] == settings.http_port == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    from serving.kserve_guard import OPEN_PATHS

    for probe in ("readinessProbe", "livenessProbe"):  # probes carry no token
        assert container[probe]["httpGet"]["path"] in OPEN_PATHS
    annotations = runtime["metadata"]["annotations"]
    assert annotations["prometheus.kserve.io/path"] in OPEN_PATHS


# ---------------------------------------------------------------------------- probe.py
class _Management(BaseHTTPRequestHandler):
    key = "secret"
    statuses = ["READY", "READY"]

    def do_GET(self):  # noqa: N802
        if self.headers.get("Authorization") != f"Bearer {self.key}":
            self.send_response(400)
            self.end_headers()
            return
        if self.path != "/models/fashion_mnist":
            self.send_response(404)
            self.end_headers()
            return
        body = json.dumps([{"workers": [{"status": s} for s in self.statuses]}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _probe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROBE), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probe_reads_the_key_file_and_checks_workers(tmp_path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Management)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {
        "TRUSTGC_RUN_DIR": str(tmp_path),
        "TRUSTGC_MANAGEMENT_URL": f"http://127.0.0.1:{server.server_address[1]}",
    }
    try:
        keys = {"management": {"key": "secret"}, "inference": {"key": "other"}}
        (tmp_path / "key_file.json").write_text(json.dumps(keys))
        assert _probe("ready", env=env).returncode == 0
        _Management.statuses = ["READY", "UNLOADING"]
        result = _probe("ready", env=env)
        assert result.returncode == 1 and "UNLOADING" in result.stdout
        _Management.statuses = ["READY"]
        assert _probe("ready", "--model", "other", env=env).returncode == 1  # 404
        (tmp_path / "key_file.json").write_text('{"management": {"ke')  # half-written
        result = _probe("ready", env=env)
        assert result.returncode == 1 and "key_file.json" in result.stdout
        (tmp_path / "key_file.json").unlink()  # token auth off: no header, stub answers 400
        assert _probe("ready", env=env).returncode == 1
        result = _probe("live", env={"TRUSTGC_METRICS_URL": "http://127.0.0.1:9"})
        assert result.returncode == 1 and "unreachable" in result.stdout
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_probe_against_real_torchserve(served_model) -> None:
    settings = served_model.settings
    env = {
        "TRUSTGC_RUN_DIR": str(settings.run_dir),
        "TRUSTGC_MANAGEMENT_URL": settings.url("management"),
        "TRUSTGC_METRICS_URL": settings.url("metrics"),
    }
    ready = _probe("ready", env=env)
    assert ready.returncode == 0, ready.stdout
    assert _probe("live", env=env).returncode == 0
    missing = _probe("ready", "--model", "no_such_model", env=env)
    assert missing.returncode == 1 and "404" in missing.stdout
