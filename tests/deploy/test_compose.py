"""docker-compose.yml and the Dockerfile, checked offline (no Docker engine needed).

``docker-compose config`` (Debian's docker-compose 1.29) validates the file's keys and types
without an engine; where it is missing, ``check-jsonschema --builtin-schema
vendor.compose-spec`` does; with neither the test skips with the reason.  The rest reads the
files: a non-root image, the model store mounted read-only, every port on the host's loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


# ---------------------------------------------------------------------------------- compose
def test_compose_file_is_valid() -> None:
    env = dict(os.environ, GRAFANA_ADMIN_PASSWORD="test-only")
    if shutil.which("docker-compose"):
        command = ["docker-compose", "-f", str(COMPOSE), "config", "-q"]
    elif shutil.which("check-jsonschema"):
        command = ["check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)]
    else:
        pytest.skip(
            "neither docker-compose (apt-get install docker-compose) nor check-jsonschema "
            "(pip install check-jsonschema) is installed"
        )
    result = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_requires_a_grafana_password() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is missing (apt-get install docker-compose)")
    env = {k: v for k, v in os.environ.items() if k != "GRAFANA_ADMIN_PASSWORD"}
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


def test_compose_services_and_mounts() -> None:
    services = _compose()["services"]
    assert set(services) == {"torchserve", "kserve", "prometheus", "alertmanager", "grafana"}
    assert services["kserve"]["profiles"] == ["kserve"]  # TorchServe stays the default service
    assert "torchserve" not in services["kserve"]["command"]
    torchserve = services["torchserve"]
    assert torchserve["build"]["dockerfile"] == "Dockerfile"
    assert "./model_store:/app/model_store:ro" in torchserve["volumes"]
    assert torchserve["read_only"] is True and torchserve["cap_drop"] == ["ALL"]
    assert "probe.py" in " ".join(torchserve["healthcheck"]["test"])
    assert "./deploy/prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./deploy/alertmanager:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (REPO_ROOT / source).exists(), f"{name} mounts missing {source}"
                assert volume.endswith(":ro"), f"{name}: bind mount {volume} is writable"


def test_compose_ports_are_on_loopback_only() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_compose_prometheus_scrapes_the_torchserve_service() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "trustgc-torchserve")
    assert job["static_configs"][0]["targets"] == ["torchserve:8082"]
    alertmanagers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanagers == ["alertmanager:9093"]


# ------------------------------------------------------------------------------- Dockerfile
def test_dockerfile_runs_as_non_root() -> None:
    instructions = _instructions()
    users = [args for name, args in instructions if name == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    last_user = max(i for i, (name, _) in enumerate(instructions) if name == "USER")
    assert all(name != "RUN" for name, _ in instructions[last_user:]), "RUN after USER"


def test_dockerfile_base_java_and_cpu_torch() -> None:
    instructions = _instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    runs = " ".join(args for name, args in instructions if name == "RUN")
    assert "openjdk-17-jre-headless" in runs
    assert "--index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in runs
    assert runs.index("torch==2.13.0") < runs.index("pip install -e '.[serve,kserve]'")


def test_dockerfile_command_serves_on_all_container_interfaces_with_auth(monkeypatch) -> None:
    """Run the CMD's Python with run_foreground replaced: it must build the settings of
    `trustgc serve` with host 0.0.0.0 and token auth on (off only when asked)."""
    cmd = json.loads(next(args for name, args in _instructions() if name == "CMD"))
    assert cmd[:2] == ["python", "-c"]
    import serving.server

    seen = []
    monkeypatch.setattr(serving.server, "run_foreground", lambda s: seen.append(s) or 0)
    for value, auth in (("true", True), ("false", False)):
        monkeypatch.setenv("TRUSTGC_TOKEN_AUTH", value)
        with pytest.raises(SystemExit) as exit_:
            exec(compile(cmd[2], "<CMD>", "exec"), {"__name__": "__main__"})
        assert exit_.value.code == 0
        settings = seen.pop()
        assert settings.host == "0.0.0.0" and settings.auth is auth
        assert settings.models == "fashion_mnist=fashion_mnist.mar"
    env = dict(
        args.split("=", 1) for name, args in _instructions() if name == "ENV" and "=" in args
    )
    assert env.get("TRUSTGC_TOKEN_AUTH") == "true"


def test_dockerignore_keeps_secrets_and_data_out() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assert lines[0] == "*", "an allowlist: everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        args.split()[0].rstrip("/")
        for name, args in _instructions()
        if name == "COPY" and not args.startswith("--")
    }
    assert copied <= allowed, f"COPY sources excluded by .dockerignore: {copied - allowed}"
    assert not allowed & {".venv", "runs", ".run", "tests", ".git"}
    assert "**/key_file.json" in lines
