"""The CI skip policy of tests/conftest.py, run on a small suite in a child pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")
SUITE = """
import pytest

def test_gpu():
    pytest.skip("no GPU here")

def test_promtool():
    pytest.skip("promtool is missing (apt-get install prometheus)")

@pytest.mark.skipif(True, reason="needs a Docker engine")
def test_engine():
    pass

@pytest.mark.skipif(True, reason="java missing")
def test_java():
    pass

def test_import():
    pytest.importorskip("trustgc_no_such_module")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_passes():
    pass
"""


def _run(tmp_path: Path, ci: str | None, suite: str = SUITE, module_skip: bool = False):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_suite.py").write_text(suite)
    if module_skip:
        (tmp_path / "test_module.py").write_text(
            'import pytest\npytest.importorskip("trustgc_no_such_module")\n'
        )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TRUSTGC_SKIP_REPORT")}
    if ci is not None:
        env["CI"] = ci
    env["TRUSTGC_SKIP_REPORT"] = str(tmp_path / "skips.txt")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", str(tmp_path)]
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _outcomes(stdout: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR/SKIPPED/XFAIL from the -rA short summary."""
    out = {}
    for line in stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "XFAIL") and "::" in rest:
            out[rest.split("::")[1].split()[0]] = word
        elif word == "SKIPPED":
            out[rest.split(": ", 1)[1]] = word  # skips are listed by reason
    return out


def test_outside_ci_skips_stay_skips(tmp_path) -> None:
    result = _run(tmp_path, ci=None)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 5 skipped, 1 xfailed" in result.stdout
    assert not (tmp_path / "skips.txt").exists()


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_only_allow_listed_skips_pass(tmp_path, ci) -> None:
    result = _run(tmp_path, ci=ci)
    outcomes = _outcomes(result.stdout)
    assert result.returncode == 1, result.stdout
    assert outcomes["test_promtool"] == "FAILED"
    assert outcomes["test_import"] == "FAILED"
    assert outcomes["test_java"] == "ERROR"  # a skipif fails in setup
    assert outcomes["test_passes"] == "PASSED" and outcomes["test_xfail"] == "XFAIL"
    assert outcomes["no GPU here"] == outcomes["needs a Docker engine"] == "SKIPPED"
    assert "promtool is missing (apt-get install prometheus)" in result.stdout  # reason kept
    assert "allowed skips under CI=true (2)" in result.stdout
    assert (tmp_path / "skips.txt").read_text().splitlines() == [
        "test_suite.py::test_gpu: no GPU here",
        "test_suite.py::test_engine: needs a Docker engine",
    ]


def test_under_ci_a_module_that_skips_fails_the_session(tmp_path) -> None:
    result = _run(tmp_path, ci="true", suite="def test_passes():\n    pass\n", module_skip=True)
    assert result.returncode == 1, result.stdout  # although every test that ran passed
    assert "modules skipped under CI=true: failures" in result.stdout
    assert "test_module.py: could not import 'trustgc_no_such_module'" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    outside = _run(tmp_path, ci=None, suite="def test_passes():\n    pass\n", module_skip=True)
    assert outside.returncode == 0, outside.stdout
