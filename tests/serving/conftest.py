"""Fixtures for the serving tests: a real TorchServe for the integration tests.

The session-scoped ``torchserve`` fixture starts TorchServe 0.12 on 127.0.0.1 with the shipped
``model_store/fashion_mnist.mar``, token auth on and non-default ports, waits until the model's
workers are READY and stops it at teardown, asserting that no ``org.pytorch.serve.ModelServer``
java process is left.  Tests marked ``integration`` are skipped (with the reason) when java, the
archive or the Fashion-MNIST test data are missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.processes import alive as _alive
from serving.processes import children as _children
from training.data_root import DataMissingError, require

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
MAR_FILE = REPO_ROOT / "model_store" / "fashion_mnist.mar"
MODEL_NAME = "fashion_mnist"
PREFERRED_PORTS = {
    "inference": 18080,
    "management": 18081,
    "metrics": 18082,
    "grpc_inference": 17070,
    "grpc_management": 17071,
}
JAVA_PROCESS = "org.pytorch.serve.ModelServer"


def integration_skip_reason() -> str | None:
    """Why the integration tests cannot run here, or None when they can."""
    if shutil.which("java") is None:
        return "TorchServe needs java (Java 17) on PATH; none found (make setup installs it)"
    if not MAR_FILE.is_file():
        return f"the model archive {MAR_FILE} is missing (build it with `make archive`)"
    try:
        require("fashion_mnist")
    except DataMissingError as error:
        return str(error)
    return None


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001
    reason = None
    checked = False
    for item in items:
        if item.get_closest_marker("integration") is None:
            continue
        if Path(item.path).resolve().parent != Path(__file__).resolve().parent:
            continue
        if not checked:
            reason, checked = integration_skip_reason(), True
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


def modelserver_pids() -> list[int]:
    """Process ids of TorchServe java frontends alive on this machine (pgrep)."""
    try:
        output = subprocess.run(
            ["pgrep", "-f", JAVA_PROCESS], capture_output=True, text=True, check=False
        ).stdout
    except FileNotFoundError:  # pragma: no cover - procps missing
        return []
    return [int(pid) for pid in output.split()]


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def _ephemeral_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def free_ports() -> dict[str, int]:
    """The preferred non-default ports if all are free, else free ephemeral ones."""
    if all(_port_free(port) for port in PREFERRED_PORTS.values()):
        return dict(PREFERRED_PORTS)
    ports: dict[str, int] = {}
    while len(ports) < len(PREFERRED_PORTS):
        port = _ephemeral_port()
        if port not in ports.values():
            ports[list(PREFERRED_PORTS)[len(ports)]] = port
    return ports


@dataclass(kw_only=True)
class _Served:
    """What the integration tests know of either running runtime: its settings and keys."""

    settings: object  # serving.server.ServerSettings or serving.kserve_runtime.KServeSettings
    keys: dict[str, str]
    model: str = MODEL_NAME

    @property
    def token(self) -> str:
        return self.keys["inference"]

    @property
    def headers(self) -> dict[str, str]:
        """Inference API headers (token auth)."""
        return {"Authorization": f"Bearer {self.keys['inference']}"}


@dataclass(kw_only=True)
class ServedModel(_Served):
    """What the integration tests need to talk to the running TorchServe."""

    server: object  # serving.server.TorchServe

    @property
    def management_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys['management']}"}

    @property
    def inference_url(self) -> str:
        return self.settings.url("inference")

    @property
    def predictions_url(self) -> str:
        return f"{self.settings.url('inference')}/predictions/{self.model}"

    @property
    def metrics_url(self) -> str:
        return f"{self.settings.url('metrics')}/metrics"

    @property
    def grpc_target(self) -> str:
        return f"{self.settings.host}:{self.settings.ports['grpc_inference']}"

    @property
    def run_dir(self) -> Path:
        return Path(self.settings.run_dir)

    def client(self, **kwargs):
        from serving.client import ClassifierClient

        return ClassifierClient(
            model=self.model,
            http_url=self.inference_url,
            grpc_target=self.grpc_target,
            token=self.token,
            **kwargs,
        )


def _log_tail(log_dir: Path, lines: int = 40) -> str:
    tails = []
    for name in ("torchserve.out", "model_log.log", "ts_log.log"):
        path = log_dir / name
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(tails)


@pytest.fixture(scope="session")
def torchserve(tmp_path_factory) -> ServedModel:
    """A real TorchServe serving the shipped .mar on 127.0.0.1 with token auth on."""
    reason = integration_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    # serving.server gives each instance its own TMPDIR (TorchServe's pid file lives there),
    # so this instance coexists with others on other ports and is stopped on its own.
    from serving.server import ServerSettings, TorchServe, read_keys

    settings = ServerSettings(
        run_dir=tmp_path_factory.mktemp("ts"),
        auth=True,
        ports=free_ports(),
    )
    server = TorchServe(settings)
    started = time.monotonic()
    server.start()
    try:
        server.wait_ready(MODEL_NAME, timeout=180)
        keys = read_keys(settings.run_dir)
    except BaseException as error:
        tail = _log_tail(server.log_dir)
        server.stop()
        if isinstance(error, TimeoutError | RuntimeError):
            pytest.fail(f"TorchServe did not become ready: {error}\n{tail}")
        raise
    served = ServedModel(settings=settings, server=server, keys=keys)
    print(f"\nTorchServe ready after {time.monotonic() - started:.1f} s on {settings.ports}")
    try:
        yield served
    finally:
        stopping = time.monotonic()
        frontend = server.frontend_pid()
        workers = _children(frontend) if frontend is not None else []
        server.stop()
        print(f"\nTorchServe stopped in {time.monotonic() - stopping:.1f} s")
        assert frontend is not None, "no pid file for this TorchServe instance"
        assert workers, "the TorchServe frontend had no worker processes"
        left = [pid for pid in [frontend, *workers] if _alive(pid)]
        assert not left, f"TorchServe processes {left} still running after stop()"


# --------------------------------------------------------------------------- KServe runtime


@dataclass(kw_only=True)
class ServedOip(_Served):
    """The KServe runtime (Open Inference Protocol) as the integration tests see it."""

    process: object  # serving.kserve_control.KServeProcess

    @property
    def infer_url(self) -> str:
        return f"{self.settings.url()}/v2/models/{self.model}/infer"

    @property
    def metrics_url(self) -> str:
        return f"{self.settings.url()}/metrics"

    @property
    def grpc_target(self) -> str:
        return self.settings.grpc_target()

    def client(self, **kwargs):
        from serving.oip_client import OipClient

        return OipClient(
            model=self.model,
            http_url=self.settings.url(),
            grpc_target=self.grpc_target,
            token=self.token,
            **kwargs,
        )


def kserve_skip_reason() -> str | None:
    import importlib.util

    if importlib.util.find_spec("kserve") is None:
        return "the kserve package is missing (pip install -e '.[kserve]')"
    if not (MODEL_DIR / "model.json").is_file():
        return f"the model artifact {MODEL_DIR} is missing"
    return None


@pytest.fixture(scope="session")
def kserve(tmp_path_factory) -> ServedOip:
    """The KServe runtime serving the shipped artifact on 127.0.0.1, token auth on; stopped at
    teardown, asserting that its process is gone."""
    reason = kserve_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    from serving.kserve_control import KServeProcess
    from serving.kserve_runtime import KServeSettings

    ports = [_ephemeral_port(), _ephemeral_port()]
    settings = KServeSettings(
        model_dir=MODEL_DIR,
        run_dir=tmp_path_factory.mktemp("kserve"),
        http_port=ports[0],
        grpc_port=ports[1],
    )
    process = KServeProcess(settings)
    process.start()
    try:
        process.wait_ready(timeout=180)
        keys = process.keys()
    except BaseException as error:
        process.stop()
        log = process.log_file.read_text(errors="replace")[-4000:]
        if isinstance(error, TimeoutError | RuntimeError):
            pytest.fail(f"the KServe runtime did not become ready: {error}\n{log}")
        raise
    pid = process.pid()
    try:
        yield ServedOip(settings=settings, process=process, keys=keys)
    finally:
        process.stop()
        assert pid is not None and not _alive(pid), f"KServe runtime {pid} still running"


@pytest.fixture(params=["torchserve", "kserve"])
def runtime(request):
    """Either served runtime, for the tests that hold for both (client(), metrics_url, model)."""
    return request.getfixturevalue(request.param)
