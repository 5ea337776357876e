"""Start, wait for and stop the KServe runtime, mirroring serving.server for TorchServe.

``run_foreground`` serves until Ctrl-C or SIGTERM; ``start_background`` detaches a server and
returns once the model is ready; ``stop`` ends the one recorded in the run directory and waits
until its process is gone.  The server is one Python process (``python -m
serving.kserve_runtime``) whose settings are written to ``<run_dir>/settings.json``; its pid is
in ``<run_dir>/kserve.pid`` and its keys in ``<run_dir>/key_file.json`` (0600).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from serving.kserve_runtime import KServeSettings
from serving.processes import alive as _alive

__all__ = ["KServeProcess", "run_foreground", "start_background", "stop"]


class KServeProcess:
    """One KServe runtime process for ``settings`` (its own run directory and ports)."""

    def __init__(self, settings: KServeSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.settings.run_dir)

    @property
    def log_file(self) -> Path:
        return self.run_dir / "kserve.out"

    def pid(self) -> int | None:
        try:
            return int((self.run_dir / "kserve.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return self.process.pid if self.process is not None else None

    def start(self, foreground: bool = False, output=None) -> subprocess.Popen:
        """Launch the server; output goes to a file unless given (never a captured pipe)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "key_file.json").unlink(missing_ok=True)
        config = self.run_dir / "settings.json"
        config.write_text(self.settings.model_dump_json(indent=2))
        if output is None:
            output = open(self.log_file, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "serving.kserve_runtime", str(config)],
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=not foreground,
            cwd=Path(__file__).resolve().parents[1],
        )
        return self.process

    def keys(self) -> dict[str, str] | None:
        if not self.settings.auth:
            return None
        from serving.keys import read_keys

        return read_keys(self.run_dir)

    def headers(self) -> dict[str, str]:
        keys = self.keys()
        return {"Authorization": f"Bearer {keys['inference']}"} if keys else {}

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/v2/models/NAME/ready`` until it answers 200."""
        url = f"{self.settings.url()}/v2/models/{self.settings.model_name}/ready"
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the KServe runtime exited with {self.process.returncode}; see {self.log_file}"
                )
            try:
                answer = requests.get(url, headers=self.headers(), timeout=2)
                if answer.status_code == 200:
                    return
                last = f"HTTP {answer.status_code}"
            except (requests.RequestException, TimeoutError) as error:
                last = str(error)
            time.sleep(0.3)
        raise TimeoutError(f"KServe runtime not ready after {timeout:.0f} s ({last})")

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM, wait for a graceful exit, SIGKILL after ``timeout``; True if one ran."""
        pid = self.pid()
        if pid is None or not _alive(pid):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            if self.process is not None:
                self.process.poll()  # reap our own child
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=10)
        (self.run_dir / "kserve.pid").unlink(missing_ok=True)
        return True


def _announce(settings: KServeSettings) -> None:
    key_file = Path(settings.run_dir) / "key_file.json"
    auth = ""
    if settings.auth:
        auth = (
            "-H \"Authorization: Bearer $(python3 -c 'import json; print(json.load(open("
            f'"{key_file}"))["inference"]["key"])\')" '
        )
        print(f"token auth is on: keys are in {key_file}")
    print(
        "classify an image with (Open Inference Protocol, image as base64 BYTES):\n"
        f"  curl {auth}-H 'Content-Type: application/json' -d "
        '"{\\"inputs\\": [{\\"name\\": \\"images\\", \\"shape\\": [1], \\"datatype\\": '
        '\\"BYTES\\", \\"data\\": [\\"$(base64 -w0 docs/examples/ankle_boot.png)\\"]}]}" '
        f"{settings.url()}/v2/models/{settings.model_name}/infer\n"
        f"gRPC: {settings.grpc_target()} (inference.GRPCInferenceService); "
        f"metrics: {settings.url()}/metrics",
        flush=True,
    )


def run_foreground(settings: KServeSettings) -> int:
    """Serve until Ctrl-C or SIGTERM, then stop the server process."""
    server = KServeProcess(settings)
    stopping = False

    def _stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    process = server.start(foreground=True, output=sys.stdout)
    try:
        server.wait_ready(timeout=180)
        _announce(settings)
        while not stopping and process.poll() is None:
            time.sleep(0.3)
    except (TimeoutError, RuntimeError) as error:
        print(f"trustgc serve: {error}", file=sys.stderr)
    finally:
        print("stopping the KServe runtime ...", flush=True)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if stopping else 1


def start_background(settings: KServeSettings) -> int:
    server = KServeProcess(settings)
    server.start(foreground=False)
    try:
        server.wait_ready(timeout=180)
    except (TimeoutError, RuntimeError):
        server.stop()
        raise
    _announce(settings)
    print(f"log in {server.log_file}; stop with `trustgc stop --runtime kserve`")
    return 0


def stop(settings: KServeSettings) -> int:
    stopped = KServeProcess(settings).stop()
    print("KServe runtime stopped" if stopped else "no KServe runtime was running")
    return 0
