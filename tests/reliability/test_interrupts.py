"""Ctrl-C on ``trustgc serve`` (``make serve``): a stop message, no traceback, no java left.

A terminal's Ctrl-C sends SIGINT to the whole foreground process group: to the Python launcher
and to TorchServe's java alike.  The test runs the foreground server in its own session and
signals that group the same way once the model answers; a waiting client command is
interrupted the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import (
    _alive,
    descendants,
    ephemeral_ports,
    integration_skip_reason,
)

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

# The CLI's foreground serve with this test's run directory and ports (the CLI has no port
# flags: the settings are built as `trustgc serve` builds them, then given private ports).
SERVE = """
import json, sys
from reliability_support import isolated_settings
from serving.server import run_foreground
from trustgc_cli.main import guard_interrupt
settings = isolated_settings(__import__("pathlib").Path(sys.argv[1]),
                             ports=json.loads(sys.argv[2]), auth=False)
sys.exit(guard_interrupt("trustgc serve", lambda: run_foreground(settings)))
"""


def _serve(run_dir: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(REPO_ROOT)]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", SERVE, str(run_dir), json.dumps(ephemeral_ports())],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def _interrupt(process: subprocess.Popen) -> tuple[int, str, str]:
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


@pytest.fixture
def skip_without_torchserve() -> None:
    reason = integration_skip_reason()
    if reason is not None:
        pytest.skip(reason)


def test_ctrl_c_when_serving_stops_quietly(tmp_path, skip_without_torchserve) -> None:
    process = _serve(tmp_path / "run")
    deadline = time.monotonic() + 240
    lines = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        lines.append(line)
        if line.startswith("serving ") or (not line and process.poll() is not None):
            break
    assert any(line.startswith("serving ") for line in lines), "".join(lines)[-3000:]
    children = descendants(process.pid)
    assert children, "TorchServe's java runs below the launcher"
    code, out, err = _interrupt(process)
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert "stopping TorchServe" in out
    assert code == 0
    time.sleep(1)
    assert not [pid for pid in children if _alive(pid)], "java or a worker outlived Ctrl-C"


def test_ctrl_c_on_a_waiting_command_prints_one_line(tmp_path) -> None:
    """The real command line, interrupted while it waits: ``classify`` against a socket that
    accepts connections and never answers (its 30 s timeout is far away).  Whether the signal
    lands while the subcommands load or while the request waits, the answer is one line."""
    image = tmp_path / "boot.png"
    image.write_bytes((REPO_ROOT / "docs" / "examples" / "ankle_boot.png").read_bytes())
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        process = subprocess.Popen(
            [sys.executable, "-m", "trustgc_cli.main", "classify", str(image), "--url", url]
            + ["--token", "t"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        time.sleep(3.0)
        assert process.poll() is None, process.communicate()
        code, out, err = _interrupt(process)
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert code == 130, (code, out[-2000:], err[-2000:])
    assert err.strip().splitlines()[-1] in ("trustgc: interrupted", "trustgc classify: interrupted")
