"""Fixtures for the deployment tests: a real TorchServe and real Prometheus servers on loopback.

``served_model`` serves the shipped ``model_store/fashion_mnist.mar`` with token auth on, on
non-default ports.  It is started once for tests/deploy and stopped after the last test of this
folder (``pytest_runtest_teardown`` below), not at the end of the session, so the serving tests
can start their own TorchServe afterwards: TorchServe allows one instance per machine.
``start_prometheus`` runs Debian's ``prometheus`` binary with a temporary config and data
directory, scraping that TorchServe every second.  Integration tests skip with the reason when
java, prometheus, the model archive or the data sets are missing, or when another TorchServe
is already running.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from training.data_root import DataMissingError, require

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.rules.yml"))
# The shipped archive by default; TRUSTGC_TEST_MODEL_STORE points the tests at another model
# store (e.g. one with a freshly built `trustgc archive --export-path DIR`).
MODEL_STORE = Path(os.environ.get("TRUSTGC_TEST_MODEL_STORE", REPO_ROOT / "model_store"))
MAR_FILE = MODEL_STORE / "fashion_mnist.mar"
MODEL_NAME = "fashion_mnist"
SCRAPE_JOB = "trustgc-torchserve"  # the job name the alert rules match
JAVA_PROCESS = "org.pytorch.serve.ModelServer"
PREFERRED_PORTS = {
    "inference": 28080,
    "management": 28081,
    "metrics": 28082,
    "grpc_inference": 27070,
    "grpc_management": 27071,
}


# ----------------------------------------------------------------------------- skip reasons
def torchserve_skip_reason() -> str | None:
    if shutil.which("java") is None:
        return "TorchServe needs java (Java 17) on PATH; none found (make setup installs it)"
    if not MAR_FILE.is_file():
        return f"the model archive {MAR_FILE} is missing (build it with `make archive`)"
    try:
        require("fashion_mnist")
    except DataMissingError as error:
        return str(error)
    return None


def prometheus_skip_reason() -> str | None:
    if shutil.which("prometheus") is None:
        return "the prometheus binary is missing (make setup installs Debian's prometheus)"
    return None


def modelserver_pids(pattern: str = JAVA_PROCESS) -> list[int]:
    """TorchServe java frontends alive on this machine (whose command line matches)."""
    try:
        output = subprocess.run(
            ["pgrep", "-f", pattern], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:  # pragma: no cover - procps missing
        return []
    return [int(pid) for pid in output.split()]


# ----------------------------------------------------------------------------------- ports
def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def torchserve_ports() -> dict[str, int]:
    if all(port_free(port) for port in PREFERRED_PORTS.values()):
        return dict(PREFERRED_PORTS)
    ports: dict[str, int] = {}
    while len(ports) < len(PREFERRED_PORTS):
        port = ephemeral_port()
        if port not in ports.values():
            ports[list(PREFERRED_PORTS)[len(ports)]] = port
    return ports


# ------------------------------------------------------------------------------ TorchServe
def png_bytes(images) -> list[bytes]:
    """PNG-encode (N, H, W, 1) uint8 images, as a client would upload them."""
    from PIL import Image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded


@dataclass
class ServedModel:
    settings: object  # serving.server.ServerSettings
    server: object  # serving.server.TorchServe
    keys: dict[str, str]
    model: str = MODEL_NAME
    stopped: bool = False
    _fashion: list[bytes] = field(default_factory=list, repr=False)

    def stop(self) -> None:
        """Stop TorchServe (java included) once; later calls do nothing."""
        if self.stopped:
            return
        self.stopped = True
        self.server.stop()
        # this instance's java only (its command line names its config in its run dir): a
        # TorchServe someone else started meanwhile is not ours to judge
        left = modelserver_pids(str(Path(self.settings.run_dir) / "config.properties"))
        assert not left, f"TorchServe java process(es) {left} still running after stop()"

    @property
    def metrics_target(self) -> str:
        return f"127.0.0.1:{self.settings.ports['metrics']}"

    def client(self):
        from serving.client import ClassifierClient

        return ClassifierClient(
            model=self.model,
            http_url=self.settings.url("inference"),
            token=self.keys["inference"],
            timeout=30,
        )

    @staticmethod
    def png(images) -> list[bytes]:
        return png_bytes(images)

    def fashion_images(self, count: int = 600) -> list[bytes]:
        """The first ``count`` Fashion-MNIST test images as PNG (in-distribution traffic)."""
        if len(self._fashion) < count:
            from training.data import load_dataset

            self._fashion = png_bytes(load_dataset("fashion_mnist", "test").images[:count])
        return self._fashion[:count]

    def classify_all(self, images: list[bytes], workers: int = 4) -> list[str]:
        """Decisions for ``images``, sent concurrently (so TorchServe batches them)."""
        client = self.client()

        def one(image: bytes) -> str:
            return client.classify(image, top_k=1).decision

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, images))


_RUNNING: list[ServedModel] = []


@pytest.fixture(scope="session")
def served_model(tmp_path_factory) -> Iterator[ServedModel]:
    """A real TorchServe with the shipped model, token auth on, on free loopback ports."""
    reason = torchserve_skip_reason()
    if reason:
        pytest.skip(reason)
    running = modelserver_pids()
    if running:
        pytest.skip(
            f"another TorchServe is running on this machine (pids {running}); TorchServe allows "
            "one instance per machine: stop it first (`torchserve --stop`)"
        )
    from serving.server import ServerSettings, TorchServe, read_keys

    run_dir = tmp_path_factory.mktemp("torchserve")
    settings = ServerSettings(model_store=MODEL_STORE, run_dir=run_dir, ports=torchserve_ports())
    server = TorchServe(settings)
    started = time.monotonic()
    server.start()
    try:
        server.wait_ready(MODEL_NAME, timeout=180)
        keys = read_keys(settings.run_dir)
    except BaseException:
        server.stop()
        raise
    print(f"\nTorchServe ready after {time.monotonic() - started:.1f} s on {settings.ports}")
    served = ServedModel(settings=settings, server=server, keys=keys)
    _RUNNING.append(served)
    try:
        yield served
    finally:
        served.stop()


def pytest_runtest_teardown(item, nextitem) -> None:
    """Stop TorchServe after the last test of this folder (before other folders' tests run)."""
    here = Path(__file__).resolve().parent
    if _RUNNING and (nextitem is None or here not in Path(nextitem.path).resolve().parents):
        while _RUNNING:
            _RUNNING.pop().stop()


# ------------------------------------------------------------------------------ Prometheus
@dataclass
class PrometheusServer:
    url: str
    directory: Path

    def query(self, expr: str, timeout: float = 10.0) -> dict:
        """The /api/v1/query answer (JSON) for an instant query at the current time."""
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=timeout)
        try:
            return answer.json()
        except ValueError:
            return {"status": "error", "error": f"HTTP {answer.status_code}: {answer.text[:300]}"}

    def value(self, expr: str) -> float | None:
        """The first sample's value of an instant query, None when the result is empty."""
        result = self.query(expr).get("data", {}).get("result", [])
        return float(result[0]["value"][1]) if result else None

    def rules(self) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/rules", timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["groups"]

    def alerts(self) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/alerts", timeout=10)
        answer.raise_for_status()
        return answer.json()["data"]["alerts"]

    def wait_for(self, expr: str, timeout: float, what: str) -> float:
        """Poll until ``expr`` has a result; returns its first value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.value(expr)
            if value is not None:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"no result for {expr!r} after {timeout:.0f} s ({what})")

    def log_tail(self, lines: int = 30) -> str:
        path = self.directory / "prometheus.log"
        text = path.read_text(errors="replace").splitlines() if path.is_file() else []
        return "\n".join(text[-lines:])


@pytest.fixture(scope="session")
def start_prometheus():
    """``start_prometheus(directory, target, rule_files)``: a context manager (see below)."""
    if prometheus_skip_reason():
        pytest.skip(prometheus_skip_reason())
    return prometheus_server


@contextlib.contextmanager
def prometheus_server(
    directory: Path, target: str, rule_files: list[Path], interval: str = "1s"
) -> Iterator[PrometheusServer]:
    """Debian's prometheus on a free loopback port, scraping ``target`` as the rules expect."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": SCRAPE_JOB,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "static_configs": [{"targets": [target]}],
            }
        ],
    }
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    port = ephemeral_port()
    url = f"http://127.0.0.1:{port}"
    log = open(directory / "prometheus.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={config_file}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=directory,
    )
    server = PrometheusServer(url=url, directory=directory)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"prometheus exited with {process.returncode}:\n{server.log_tail()}"
                )
            try:
                if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after 30 s:\n{server.log_tail()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        log.close()
