"""scripts/install_system_deps.sh with stand-ins for dpkg-query, apt-get, id and sudo on PATH:
what it installs, when it stays quiet, and what it tells a user who cannot install."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_system_deps.sh"
PACKAGES = ("dataset-fashion-mnist", "prometheus", "prometheus-alertmanager", "docker-compose")


def _tool(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_system(tmp_path):
    """A bin folder whose dpkg-query reports the packages listed in installed.txt, whose
    apt-get and sudo log their arguments, and a java; returns a runner."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log, installed = tmp_path / "calls.log", tmp_path / "installed.txt"
    installed.write_text("")
    _tool(
        bin_dir,
        "dpkg-query",
        f'grep -qx "${{@: -1}}" {installed} && printf installed || exit 1',
    )
    _tool(bin_dir, "apt-get", f'echo "apt-get $*" >> {log}')
    _tool(bin_dir, "java", "exit 0")
    for name in ("bash", "env", "grep", "printf", "cat"):  # the script's own needs
        (bin_dir / name).symlink_to(
            subprocess.check_output(["bash", "-c", f"command -v {name}"], text=True).strip()
        )

    def run(*args: str, uid: int = 0, sudo: bool = False) -> subprocess.CompletedProcess:
        _tool(bin_dir, "id", f"echo {uid}")
        if sudo:
            _tool(bin_dir, "sudo", f'[ "$1" = -n ] && shift; echo "sudo $*" >> {log}; "$@"')
        env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")}
        return subprocess.run(
            ["/bin/bash", str(SCRIPT), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run, installed, log


def test_all_present_is_quiet_and_installs_nothing(fake_system) -> None:
    run, installed, log = fake_system
    installed.write_text("\n".join((*PACKAGES, "procps")) + "\n")
    result = run()
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert not log.exists()  # no apt-get update either


def test_root_installs_only_what_is_missing(fake_system) -> None:
    run, installed, log = fake_system
    installed.write_text("prometheus\nprocps\n")
    result = run()
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        "apt-get update -qq",
        "apt-get install -y -qq --no-install-recommends "
        "dataset-fashion-mnist prometheus-alertmanager docker-compose",
    ]


def test_a_user_with_sudo_goes_through_sudo(fake_system) -> None:
    run, installed, log = fake_system
    installed.write_text("\n".join(PACKAGES) + "\n")
    result = run(uid=1000, sudo=True)
    assert result.returncode == 0, result.stderr
    calls = [c for c in log.read_text().splitlines() if c != "sudo true"]  # the -n probe
    assert calls == [
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq",
        "apt-get update -qq",
        "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "
        "--no-install-recommends procps",
        "apt-get install -y -qq --no-install-recommends procps",
    ]


def test_a_user_without_sudo_gets_the_commands_and_a_failure(fake_system) -> None:
    run, _, log = fake_system
    result = run(uid=1000)
    assert result.returncode == 1
    assert "sudo apt-get update -qq" in result.stderr
    assert "--no-install-recommends " + " ".join((*PACKAGES, "procps")) in result.stderr
    assert not log.exists()


def test_check_only_reports(fake_system) -> None:
    run, installed, log = fake_system
    installed.write_text("prometheus\n")
    result = run("--check")
    assert (
        result.returncode == 1 and "missing Debian packages: dataset-fashion-mnist" in result.stderr
    )
    assert not log.exists()
