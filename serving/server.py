"""Start, wait for and stop a TorchServe instance serving trustgc models on loopback.

``trustgc serve`` (and ``make serve``) run TorchServe in the foreground and stop it cleanly,
java included, on Ctrl-C or SIGTERM; ``trustgc start``/``stop`` do the same in the background.
The runtime config is ``deploy/torchserve/config.properties`` with paths made absolute, written
to the run directory, which is also where TorchServe writes ``key_file.json`` (token auth).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from serving import paths
from serving.keys import KEY_FILE, read_keys

__all__ = ["ServerSettings", "TorchServe", "read_keys"]


@dataclass
class ServerSettings:
    """Where and how to run; defaults are the production config's, with the files and folders
    in the project directory (:func:`serving.paths.project_dir`: ``$TRUSTGC_HOME``, the source
    checkout, or the working directory)."""

    model_store: Path = field(default_factory=lambda: paths.project_dir() / "model_store")
    models: str = "fashion_mnist=fashion_mnist.mar"
    run_dir: Path = field(default_factory=lambda: paths.project_dir() / ".run" / "torchserve")
    auth: bool = True
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(
        default_factory=lambda: {
            "inference": 8080,
            "management": 8081,
            "metrics": 8082,
            "grpc_inference": 7070,
            "grpc_management": 7071,
        }
    )
    overrides: dict[str, str] = field(default_factory=dict)
    config_template: Path = field(default_factory=paths.config_template)
    metrics_config: Path = field(default_factory=paths.metrics_config)

    def url(self, api: str) -> str:
        return f"http://{self.host}:{self.ports[api]}"


def _read_properties(path: Path) -> dict[str, str]:
    properties: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def runtime_properties(settings: ServerSettings) -> dict[str, str]:
    """The template's properties with this run's paths, ports and auth setting."""
    properties = _read_properties(settings.config_template)
    host = settings.host
    properties.update(
        {
            "inference_address": f"http://{host}:{settings.ports['inference']}",
            "management_address": f"http://{host}:{settings.ports['management']}",
            "metrics_address": f"http://{host}:{settings.ports['metrics']}",
            "grpc_inference_address": host,
            "grpc_management_address": host,
            "grpc_inference_port": str(settings.ports["grpc_inference"]),
            "grpc_management_port": str(settings.ports["grpc_management"]),
            "model_store": str(Path(settings.model_store).resolve()),
            "load_models": settings.models,
            "metrics_config": str(Path(settings.metrics_config).resolve()),
            "disable_token_authorization": "false" if settings.auth else "true",
            "python": sys.executable,
            # worker sockets and unpacked archives go to java's temp dir: one per instance
            "vmargs": f"{properties.get('vmargs', '')} "
            f"-Djava.io.tmpdir={Path(settings.run_dir).resolve() / 'tmp'}".strip(),
            **settings.overrides,
        }
    )
    return properties


class TorchServe:
    """One TorchServe process tree (TorchServe allows one per machine)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen | None = None

    @property
    def log_dir(self) -> Path:
        return self.settings.run_dir / "logs"

    @property
    def temp_dir(self) -> Path:
        return self.settings.run_dir / "tmp"

    def frontend_pid(self) -> int | None:
        """The java frontend's pid, from this instance's pid file."""
        try:
            return int((self.temp_dir / ".model_server.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "LOG_LOCATION": str(self.log_dir),
                "METRICS_LOCATION": str(self.log_dir),
                # TorchServe keeps its pid file in the temp directory: one per run_dir lets
                # separate instances (on separate ports) coexist and be stopped one by one.
                "TMPDIR": str(self.temp_dir),
            }
        )
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def _command(self, foreground: bool) -> list[str]:
        run_dir = self.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.temp_dir.mkdir(exist_ok=True)
        (run_dir / KEY_FILE).unlink(missing_ok=True)
        config = run_dir / "config.properties"
        config.write_text(
            "".join(f"{k}={v}\n" for k, v in runtime_properties(self.settings).items())
        )
        torchserve = (
            shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
        )
        command = [
            torchserve,
            "--start",
            "--ncs",
            "--ts-config",
            str(config),
            "--model-store",
            str(Path(self.settings.model_store).resolve()),
            "--models",
            self.settings.models,
        ]
        if not self.settings.auth:
            command.append("--disable-token-auth")
        if foreground:
            command.append("--foreground")
        return command

    def start(self, foreground: bool = False, output=None) -> subprocess.Popen:
        """Launch TorchServe; output goes to a file (never a pipe: java would hold it open)."""
        command = self._command(foreground)
        if output is None:
            output = open(self.log_dir / "torchserve.out", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            cwd=self.settings.run_dir,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=not foreground,
        )
        return self.process

    def keys(self) -> dict[str, str] | None:
        return read_keys(self.settings.run_dir) if self.settings.auth else None

    def headers(self, api: str = "inference") -> dict[str, str]:
        keys = self.keys()
        return {"Authorization": f"Bearer {keys[api]}"} if keys else {}

    def wait_ready(self, model: str, timeout: float = 120.0) -> None:
        """Poll the management API until every worker of ``model`` is READY."""
        deadline = time.monotonic() + timeout
        url = f"{self.settings.url('management')}/models/{model}"
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() not in (None, 0):
                raise RuntimeError(
                    f"torchserve exited with {self.process.returncode}; see {self.log_dir}"
                )
            try:
                answer = requests.get(url, headers=self.headers("management"), timeout=2)
                if answer.ok:
                    workers = answer.json()[0].get("workers", [])
                    if workers and all(w.get("status") == "READY" for w in workers):
                        return
                    last = f"workers {[w.get('status') for w in workers]}"
                else:
                    last = f"HTTP {answer.status_code}"
            except (requests.RequestException, TimeoutError, ValueError) as error:
                last = str(error)
            time.sleep(0.5)
        raise TimeoutError(
            f"model {model} not ready after {timeout:.0f} s ({last}); logs in {self.log_dir}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """``torchserve --stop``, then wait until the java process has exited."""
        pid = self.frontend_pid()
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        torchserve = Path(sys.executable).with_name("torchserve")
        subprocess.run(
            [str(torchserve), "--stop"],
            cwd=self.settings.run_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._environment(),
            check=False,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid is not None and _alive(pid):
            time.sleep(0.3)
        if self.process is not None:
            try:
                self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _announce(settings: ServerSettings, server: TorchServe) -> None:
    key_file = settings.run_dir / KEY_FILE
    auth = ""
    if settings.auth:
        auth = (
            f"-H \"Authorization: Bearer $(python3 -c 'import json; print(json.load(open("
            f'"{key_file}"))["inference"]["key"])\')" '
        )
        print(f"token auth is on: keys are in {key_file}")
    print(
        "classify an image with:\n"
        f"  curl {auth}-H 'Content-Type: application/octet-stream' "
        f"--data-binary @docs/examples/ankle_boot.png {settings.url('inference')}"
        "/predictions/fashion_mnist\n"
        f"metrics: {settings.url('metrics')}/metrics",
        flush=True,
    )


def run_foreground(settings: ServerSettings) -> int:
    """Serve until Ctrl-C or SIGTERM, then stop TorchServe and its java process."""
    server = TorchServe(settings)
    stopping = False

    def _stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    process = server.start(foreground=True, output=sys.stdout)
    try:
        server.wait_ready(settings.models.split("=")[0], timeout=180)
        _announce(settings, server)
        while not stopping and process.poll() is None:
            time.sleep(0.3)
    except (TimeoutError, RuntimeError) as error:
        print(f"trustgc serve: {error}", file=sys.stderr)
    finally:
        print("stopping TorchServe ...", flush=True)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else 1


def start_background(settings: ServerSettings) -> int:
    server = TorchServe(settings)
    server.start(foreground=False)
    server.wait_ready(settings.models.split("=")[0], timeout=180)
    _announce(settings, server)
    print(f"logs in {server.log_dir}; stop with `trustgc stop` or `make stop`")
    return 0


def stop_server(settings: ServerSettings) -> int:
    TorchServe(settings).stop()
    print("TorchServe stopped")
    return 0
