"""Secure defaults, each checked against the shipped configuration and a running TorchServe.

- every listening socket of this folder's instance (java and its workers, production
  config.properties except ports and paths) is bound to 127.0.0.1;
- token auth is on by default: no key, a wrong key or the other API's key is refused;
- the model registration API is off: POST/DELETE /models with the management key are refused,
  over REST and gRPC;
- allowed_urls is locked: even with the model API switched on and the management key,
  registering an http(s)/file URL is refused and TorchServe never fetches it (no SSRF);
- request size and pixel limits are set, and the shipped .mar carries the same limits;
- the Dockerfile runs as a non-root USER, compose mounts the model store read-only and
  publishes ports on loopback only (skipped when those files are absent);
- no secrets in the repository (tracked and to-be-tracked files).
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import re
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import grpc
import pytest
import requests
import yaml
from reliability_inputs import garment_png

from serving.server import served_names

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "deploy" / "torchserve" / "config.properties"
MODEL_CONFIG = REPO_ROOT / "deploy" / "torchserve" / "model-config.yaml"
MAR_FILE = REPO_ROOT / "model_store" / "fashion_mnist.mar"
DOCKERFILE = REPO_ROOT / "Dockerfile"
COMPOSE = REPO_ROOT / "docker-compose.yml"
TEN_MIB = 10 * 1024 * 1024
LISTEN = "0A"


def properties(path: Path = CONFIG) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


# --------------------------------------------------------------------------- sockets


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _address(hex_address: str) -> tuple[ipaddress._BaseAddress, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        address = ipaddress.IPv4Address(raw[::-1])
    else:  # /proc/net/tcp6 stores four little-endian 32-bit words
        address = ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))
    return address, int(port, 16)


def listening_sockets(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by one of ``pids``."""
    inodes = set().union(*(_socket_inodes(pid) for pid in pids))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == LISTEN and fields[9] in inodes:
                    address, port = _address(fields[1])
                    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                        address = address.ipv4_mapped
                    found.append((str(address), port))
    return sorted(found)


@pytest.mark.integration
def test_every_listening_port_is_bound_to_loopback(rel_server) -> None:
    from reliability_support import descendants

    java = rel_server.java_pid()
    assert java is not None
    pids = [java, *descendants(java)]
    assert set(rel_server.worker_pids()) <= set(pids)
    sockets = listening_sockets(pids)
    print(f"\nlistening sockets of java {java} and its workers: {sockets}")
    assert sockets, "found no listening socket: /proc inspection failed"
    assert all(address == "127.0.0.1" for address, _ in sockets), sockets
    assert {port for _, port in sockets} == set(rel_server.settings.ports.values())
    # the run-time config is production's apart from ports and paths
    runtime = properties(rel_server.run_dir / "config.properties")
    production = properties()
    changed = ("model_store", "metrics_config", "vmargs")  # absolute paths; java.io.tmpdir
    for key in production:
        if not key.endswith(("_address", "_port")) and key not in changed:
            assert runtime[key] == production[key], key
    assert runtime["vmargs"].startswith(production["vmargs"])


def test_config_binds_every_address_to_loopback() -> None:
    config = properties()
    for key in ("inference_address", "management_address", "metrics_address"):
        assert re.fullmatch(r"https?://127\.0\.0\.1:\d+", config[key]), (key, config[key])
    for key in ("grpc_inference_address", "grpc_management_address"):
        assert config[key] == "127.0.0.1", key


# --------------------------------------------------------------------------- token auth


def test_token_auth_is_on_by_default() -> None:
    from serving.server import ServerSettings, runtime_properties

    assert properties()["disable_token_authorization"] == "false"
    assert ServerSettings().auth is True
    assert runtime_properties(ServerSettings())["disable_token_authorization"] == "false"


@pytest.mark.integration
def test_requests_without_the_right_key_are_refused(rel_server) -> None:
    inference, management = rel_server.inference_url, rel_server.settings.url("management")
    wrong = {"Authorization": "Bearer not-the-key"}
    checks = [
        ("GET", f"{inference}/ping", {}),
        ("GET", f"{inference}/ping", wrong),
        ("GET", f"{inference}/models", {}),
        ("GET", f"{management}/models", {}),
        ("GET", f"{management}/models", rel_server.headers),  # the inference key
        ("PUT", f"{management}/models/{rel_server.model}?min_worker=8", rel_server.headers),
        ("POST", f"{rel_server.predictions_url}", {}),
    ]
    for method, url, headers in checks:
        answer = requests.request(method, url, headers=headers, data=garment_png(), timeout=30)
        assert answer.status_code in (400, 401, 403), (method, url, answer.status_code)
        assert "InvalidKeyException" in answer.text or answer.status_code in (401, 403)
    # with the right keys the same calls work (so the refusals above were about the key)
    assert requests.get(f"{inference}/ping", headers=rel_server.headers, timeout=30).ok
    assert requests.get(
        f"{management}/models", headers=rel_server.management_headers, timeout=30
    ).ok
    assert len(rel_server.worker_pids()) == 2  # the scale-up above never happened


# --------------------------------------------------------------------------- model API


def test_model_api_and_url_loading_are_locked_in_the_config() -> None:
    config = properties()
    assert config["enable_model_api"] == "false"
    assert config["allowed_urls"] == "^file:///nonexistent/only-the-local-model-store$"
    assert config["install_py_dep_per_model"] == "false"  # no pip install from an archive
    assert config["enable_envvars_config"] == "false"  # TS_* variables cannot override this


@pytest.mark.integration
def test_model_registration_api_is_refused(rel_server) -> None:
    management = rel_server.settings.url("management")
    key = rel_server.management_headers
    for method, url in [
        ("POST", f"{management}/models?url=fashion_mnist.mar&model_name=again"),
        ("POST", f"{management}/models?url=https://example.invalid/evil.mar"),
        ("DELETE", f"{management}/models/{rel_server.model}"),
    ]:
        answer = requests.request(method, url, headers=key, timeout=30)
        assert answer.status_code == 405, (method, url, answer.text)
        assert "MethodNotAllowedException" in answer.text
    from serving.grpc_stubs import management_pb2, management_pb2_grpc

    target = f"127.0.0.1:{rel_server.settings.ports['grpc_management']}"
    metadata = [("authorization", f"Bearer {rel_server.keys['management']}")]
    with grpc.insecure_channel(target) as channel:
        stub = management_pb2_grpc.ManagementAPIsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.RegisterModel(
                management_pb2.RegisterModelRequest(url="fashion_mnist.mar", model_name="again"),
                metadata=metadata,
                timeout=30,
            )
    print(f"\ngRPC RegisterModel: {refused.value.code()} {refused.value.details()}")
    assert refused.value.code() != grpc.StatusCode.OK
    # nothing was added: the start's own registrations (the model and its certify twin) only
    assert sorted(m["modelName"] for m in _models(rel_server)) == sorted(
        served_names(rel_server.settings)
    )
    assert rel_server.model in served_names(rel_server.settings)


def _models(served) -> list[dict]:
    answer = requests.get(
        f"{served.settings.url('management')}/models", headers=served.management_headers
    )
    return answer.json()["models"]


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).hits.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET  # noqa: N815

    def log_message(self, *args) -> None:
        pass


@pytest.mark.integration
def test_allowed_urls_refuse_remote_and_file_urls_even_with_the_model_api_on(
    tmp_path_factory,
) -> None:
    """Defence in depth against ShellTorch-style SSRF: the URL allowlist alone refuses."""
    from reliability_support import (
        integration_skip_reason,
        isolated_settings,
        start_isolated,
        stop_isolated,
    )

    reason = integration_skip_reason()
    if reason:
        pytest.skip(reason)
    settings = isolated_settings(
        tmp_path_factory.mktemp("allowed-urls"),
        models="",
        overrides={"enable_model_api": "true", "load_models": ""},
    )
    recorder = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    _Recorder.hits = []
    server, keys = start_isolated(settings, model=None)
    try:
        management = settings.url("management")
        key = {"Authorization": f"Bearer {keys['management']}"}
        deadline = time.monotonic() + 60
        while not _up(f"{management}/models", key) and time.monotonic() < deadline:
            time.sleep(0.3)
        urls = [
            f"http://127.0.0.1:{recorder.server_port}/evil.mar",
            f"http://localhost:{recorder.server_port}/evil.mar",
            "https://example.invalid/evil.mar",
            "file:///etc/passwd",
            f"file://{MAR_FILE}",
            "../../etc/passwd",
        ]
        for url in urls:
            answer = requests.post(
                f"{management}/models",
                params={"url": url, "model_name": "evil"},
                headers=key,
                timeout=60,
            )
            print(f"\nregister {url}: {answer.status_code} {answer.json().get('message')}")
            assert answer.status_code in (400, 404), (url, answer.text)
            assert (
                "does not match any allowed URL" in answer.text or "Relative path" in answer.text
            ), answer.text
        without_key = requests.post(f"{management}/models", params={"url": urls[0]}, timeout=60)
        assert without_key.status_code == 400 and "InvalidKeyException" in without_key.text
        models = requests.get(f"{management}/models", headers=key, timeout=30).json()["models"]
        assert models == []
        time.sleep(0.5)
        assert _Recorder.hits == [], "TorchServe fetched a URL it should have refused"
    finally:
        recorder.shutdown()
        recorder.server_close()
        stop_isolated(server, settings)


def _up(url: str, headers: dict) -> bool:
    try:
        return requests.get(url, headers=headers, timeout=2).ok
    except requests.RequestException:
        return False


# --------------------------------------------------------------------------- limits


def test_request_size_and_pixel_limits_are_set() -> None:
    from serving.decode import DecodeLimits

    config = properties()
    assert int(config["max_request_size"]) == TEN_MIB
    assert int(config["max_response_size"]) == TEN_MIB
    model_config = yaml.safe_load(MODEL_CONFIG.read_text())
    limits = model_config["trustgc"]
    assert int(limits["max_body_bytes"]) == TEN_MIB
    assert int(limits["max_image_pixels"]) == 40_000_000
    assert DecodeLimits().max_bytes == TEN_MIB and DecodeLimits().max_pixels == 40_000_000
    assert int(model_config["responseTimeout"]) <= 120
    # a certificate costs ~1 ms per noisy copy: the shipped cap keeps one request near 1 s
    from serving.certificates import DEFAULT_MAX_CERTIFY_SAMPLES

    assert int(limits["max_certify_samples"]) == DEFAULT_MAX_CERTIFY_SAMPLES == 1_000
    assert int(config["job_queue_size"]) <= 10_000


def test_the_shipped_archive_carries_the_same_limits_and_no_secrets() -> None:
    if not MAR_FILE.is_file():
        pytest.skip(f"{MAR_FILE} is missing (make archive)")
    with zipfile.ZipFile(MAR_FILE) as archive:
        names = archive.namelist()
        assert not [n for n in names if n.endswith("key_file.json") or n.startswith("/")]
        assert not [n for n in names if ".." in Path(n).parts], "path traversal in the .mar"
        configs = [n for n in names if n.endswith((".yaml", ".yml"))]
        assert configs, names
        packed = yaml.safe_load(archive.read(configs[0]))
    shipped = yaml.safe_load(MODEL_CONFIG.read_text())
    assert packed["trustgc"]["max_body_bytes"] == shipped["trustgc"]["max_body_bytes"]
    assert packed["trustgc"]["max_image_pixels"] == shipped["trustgc"]["max_image_pixels"]
    assert packed["trustgc"]["max_certify_samples"] == shipped["trustgc"]["max_certify_samples"]


# --------------------------------------------------------------------------- container


def _last_user(dockerfile: str) -> str | None:
    users = re.findall(r"^\s*USER\s+(\S+)", dockerfile, flags=re.MULTILINE | re.IGNORECASE)
    return users[-1] if users else None


def test_dockerfile_runs_as_non_root() -> None:
    if not DOCKERFILE.is_file():
        pytest.skip("no Dockerfile in the repository")
    user = _last_user(DOCKERFILE.read_text())
    assert user is not None, "the Dockerfile has no USER instruction: the container runs as root"
    name = user.split(":")[0]
    assert name not in ("root", "0"), user
    group = user.split(":")[1] if ":" in user else None
    assert group not in ("root", "0"), user


def test_compose_mounts_the_model_store_read_only_and_publishes_on_loopback() -> None:
    if not COMPOSE.is_file():
        pytest.skip("no docker-compose.yml in the repository")
    compose = yaml.safe_load(COMPOSE.read_text())
    service = compose["services"]["torchserve"]
    mounts = [str(v) for v in service.get("volumes", [])]
    store = [m for m in mounts if "model_store" in m]
    assert store, f"the model store is not mounted: {mounts}"
    assert all(m.endswith(":ro") for m in store), store
    for port in service.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"published beyond loopback: {port}"


# --------------------------------------------------------------------------- secrets

SECRET_PATTERNS = {
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "AWS access key": re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "HF token": re.compile(r"\bhf_[A-Za-z0-9]{34,}\b"),
    "TorchServe key file": re.compile(r'"inference"\s*:\s*\{\s*"key"\s*:\s*"[A-Za-z0-9_\-]{6,}"'),
    "literal bearer token": re.compile(r"Bearer [A-Za-z0-9_\-]{8,}(?![A-Za-z0-9_\-{}$])"),
    "password assignment": re.compile(
        r"(?i)\b(?:password|passwd|secret|api_?key)\s*[:=]\s*['\"][^'\"\s$]{8,}['\"]"
    ),
}
ALLOWED_BEARER = {"Bearer not-the-key"}  # test fixtures for refused keys


def repository_files() -> list[Path]:
    """Tracked files plus untracked ones that are not ignored (what the next commit holds)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as error:
        pytest.skip(f"git ls-files failed: {error}")
    files = [REPO_ROOT / name for name in listed.decode().split("\0") if name]
    return [path for path in files if path.is_file()]


def test_no_secrets_in_the_repository() -> None:
    files = repository_files()
    assert len(files) > 20
    names = [path.name for path in files]
    assert "key_file.json" not in names
    assert not [n for n in names if n.endswith((".pem", ".key", ".p12", ".pfx", ".jks"))]
    assert not [n for n in names if n in ("id_rsa", "id_ed25519", ".env", ".netrc")]
    findings = []
    for path in files:
        if path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:4096]:
            continue  # binary (images, archives)
        text = data.decode("utf-8", errors="replace")
        for kind, pattern in SECRET_PATTERNS.items():
            for match in pattern.finditer(text):
                if match.group(0) in ALLOWED_BEARER:
                    continue
                findings.append(f"{path.relative_to(REPO_ROOT)}: {kind}: {match.group(0)[:40]}")
    assert not findings, "\n".join(findings)
    for ignore in (".gitignore", ".dockerignore"):
        path = REPO_ROOT / ignore
        if path.is_file():
            assert "key_file.json" in path.read_text(), f"{ignore} does not exclude key_file.json"
