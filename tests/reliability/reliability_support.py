"""Helpers shared by the reliability tests: private TorchServe instances and the load test.

Imported by ``conftest.py`` and the test modules (this folder is on ``sys.path``; see
conftest.py).  ``ServedModel``, ``integration_skip_reason`` and ``modelserver_pids`` come from
``tests/serving/conftest.py``, imported from its file (``--import-mode=importlib`` puts no test
folder on ``sys.path``).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import requests

from serving.processes import alive as _alive

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
LOAD_TEST = REPO_ROOT / "benchmarks" / "load_test.py"


def load_benchmark():
    """benchmarks/load_test.py as a module (benchmarks/ is not a package)."""
    name = "trustgc_benchmarks_load_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LOAD_TEST)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _load_serving_conftest():
    name = "trustgc_tests_serving_conftest"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "serving" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_serving = _load_serving_conftest()
MODEL_NAME = _serving.MODEL_NAME
ServedModel = _serving.ServedModel
integration_skip_reason = _serving.integration_skip_reason
modelserver_pids = _serving.modelserver_pids
OCTET = {"Content-Type": "application/octet-stream"}
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def log_tail(log_dir: Path, lines: int = 40) -> str:
    tails = []
    for name in ("torchserve.out", "model_log.log", "ts_log.log"):
        path = log_dir / name
        if path.is_file():
            text = path.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {path} ---\n" + "\n".join(text))
    return "\n".join(tails)


def ephemeral_ports(names=PORT_NAMES) -> dict[str, int]:
    """Distinct free loopback ports chosen by the kernel (never TorchServe's defaults)."""
    ports: dict[str, int] = {}
    while len(ports) < len(names):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in ports.values() and port not in (8080, 8081, 8082, 7070, 7071):
            ports[names[len(ports)]] = port
    return ports


def isolated_settings(run_dir: Path, **kwargs):
    """ServerSettings for a private instance: own run dir, ports and java.io.tmpdir."""
    from serving.server import ServerSettings, runtime_properties

    overrides = dict(kwargs.pop("overrides", {}))
    vmargs = runtime_properties(ServerSettings()).get("vmargs", "")
    overrides.setdefault("vmargs", f"{vmargs} -Djava.io.tmpdir={run_dir / 'tmp'}".strip())
    return ServerSettings(
        run_dir=run_dir,
        ports=kwargs.pop("ports", None) or ephemeral_ports(),
        overrides=overrides,
        **kwargs,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for candidate in all_pids():
        try:
            with open(f"/proc/{candidate}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(candidate)
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class ReliabilityServer(ServedModel):
    """A ServedModel that can also describe, kill and restart its workers and itself."""

    def refresh_keys(self) -> None:
        from serving.server import read_keys

        self.keys = read_keys(self.settings.run_dir)

    def describe(self) -> dict:
        answer = requests.get(
            f"{self.settings.url('management')}/models/{self.model}",
            headers=self.management_headers,
            timeout=10,
        )
        answer.raise_for_status()
        return answer.json()[0]

    def workers(self) -> list[dict]:
        return self.describe().get("workers", [])

    def worker_pids(self) -> list[int]:
        return sorted(int(worker["pid"]) for worker in self.workers())

    def java_pid(self) -> int | None:
        return self.server.frontend_pid()

    def run_dir_pids(self) -> list[int]:
        """Processes whose command line names this instance's run directory (the workers)."""
        needle = str(self.run_dir)
        return [pid for pid in all_pids() if pid != os.getpid() and needle in cmdline(pid)]

    def wait_workers_ready(self, timeout: float = 120.0, gone: tuple[int, ...] = ()) -> float:
        """Seconds until every worker is READY and none of the pids ``gone`` is among them."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            try:
                workers = self.workers()
                pids = {int(w["pid"]) for w in workers if w.get("pid")}
                if (
                    workers
                    and all(w.get("status") == "READY" for w in workers)
                    and not pids & set(gone)
                ):
                    return time.monotonic() - started
            except (requests.RequestException, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"workers not READY after {timeout:.0f} s: {self.workers()}")

    def post(self, body: bytes, headers: dict | None = None, **kwargs) -> requests.Response:
        return requests.post(
            self.predictions_url,
            data=body,
            headers={**self.headers, **OCTET, **(headers or {})},
            timeout=kwargs.pop("timeout", 60),
            **kwargs,
        )

    def kill_worker(self, pid: int) -> None:
        assert pid in self.worker_pids(), f"{pid} is not a worker of this instance"
        os.kill(pid, signal.SIGKILL)

    def restart(self) -> float:
        """Stop the whole server and start it again on the same ports; seconds it took."""
        started = time.monotonic()
        self.server.stop()
        self.server.start()
        self.server.wait_ready(self.model, timeout=240)
        self.refresh_keys()
        return time.monotonic() - started


def start_isolated(settings, model: str | None = MODEL_NAME, timeout: float = 240):
    from serving.server import TorchServe, read_keys

    server = TorchServe(settings)
    server.start()
    try:
        if model:
            server.wait_ready(model, timeout=timeout)
        keys = read_keys(settings.run_dir, timeout=timeout)
    except BaseException as error:
        tail = log_tail(server.log_dir)
        server.stop()
        if isinstance(error, TimeoutError | RuntimeError):
            pytest.fail(f"TorchServe did not become ready: {error}\n{tail}")
        raise
    return server, keys


def stop_isolated(server, settings) -> None:
    frontend = server.frontend_pid()
    workers = descendants(frontend) if frontend else []
    server.stop()
    assert frontend is not None, "no pid file for this TorchServe instance"
    assert frontend not in modelserver_pids(), f"TorchServe java {frontend} still running"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.3)
    assert not [pid for pid in workers if _alive(pid)], "workers of this instance still run"
