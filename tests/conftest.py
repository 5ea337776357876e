"""Test-suite-wide fixtures and the CI skip policy.

No silent skips in CI: with ``CI=true`` in the environment a test that skips (``pytest.skip``, a
skip/skipif marker, ``pytest.importorskip``) is reported as *failed* unless its reason matches
:data:`ALLOWED_SKIPS`: things a CI machine legitimately lacks (a GPU, a container engine).  A
missing package, binary or data set is a broken setup, and ``make setup`` / ``make data`` fix
it.  The allowed skips are listed with their reasons at the end of the terminal summary and,
when ``TRUSTGC_SKIP_REPORT`` names a file, written there (``.ci/run`` prints it last).

Outside CI a skip stays a skip, with a reason that says what to install.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

#: Skip reasons a CI run accepts: hardware or a container engine, nothing an install provides.
ALLOWED_SKIPS = re.compile(
    r"\b(CUDA|GPU|container engine|Docker engine|docker daemon)\b", re.IGNORECASE
)
ALLOWED_DESCRIPTION = "a GPU/CUDA or a container engine"
SKIP_REPORT_ENV = "TRUSTGC_SKIP_REPORT"
_allowed: list[tuple[str, str]] = []
_refused_modules: list[tuple[str, str]] = []


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _refused(report) -> str | None:
    """The reason of a skip CI must not accept (None: not a skip, not CI, or allowed)."""
    if not (report.skipped and in_ci()) or hasattr(report, "wasxfail"):
        return None
    reason = _skip_reason(report)
    if ALLOWED_SKIPS.search(reason):
        _allowed.append((report.nodeid, reason))
        return None
    return reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001
    """A refused skip becomes this test's failure, with the skip's reason."""
    outcome = yield
    report = outcome.get_result()
    reason = _refused(report)
    if reason is not None:
        report.outcome = "failed"
        report.longrepr = (
            f"skipped under CI=true (allowed only for {ALLOWED_DESCRIPTION}): {reason}"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # noqa: ARG001
    """A module that skips as a whole stays skipped (a collection error would stop the run)
    but fails the session at the end."""
    outcome = yield
    report = outcome.get_result()
    reason = _refused(report)
    if reason is not None:
        _refused_modules.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus) -> None:
    if _refused_modules and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:
    if not in_ci():
        return
    if _refused_modules:
        terminalreporter.section("modules skipped under CI=true: failures", red=True)
        for nodeid, reason in _refused_modules:
            terminalreporter.write_line(f"{nodeid}: {reason}")
    lines = [f"{nodeid}: {reason}" for nodeid, reason in _allowed]
    terminalreporter.section(f"allowed skips under CI=true ({len(lines)})")
    for line in lines or ["none"]:
        terminalreporter.write_line(line)
    target = os.environ.get(SKIP_REPORT_ENV)
    if target:
        Path(target).write_text("".join(line + "\n" for line in lines))


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one CPU thread for a module (``pytestmark = pytest.mark.usefixtures(...)``).

    Single-threaded CPU inference and training of the small test models is barely slower on an
    idle machine and several times faster on a busy, shared one (thread oversubscription).
    Module scope, so the module's own model fixtures are built under it as well.
    """
    import torch  # lazily: a conftest of the whole suite should not need torch to load

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_set_dir() -> Callable[..., Path]:
    """``data_set_dir(name, splits=("test",))``: the set's folder under the data root
    (training.data_root); skips naming ``make data`` when it is missing (a failure in CI)."""
    from training.data_root import DataMissingError, require

    def get(name: str, splits: tuple[str, ...] = ("test",)) -> Path:
        try:
            return require(name, splits)
        except DataMissingError as error:
            pytest.skip(str(error))

    return get


@pytest.fixture(scope="session")
def fashion_mnist_test_images() -> Callable[[int], np.ndarray]:
    """``fashion_mnist_test_images(count)``: the first ``count`` Fashion-MNIST test images,
    uint8 (N, C, H, W), read by the training subproject's reader, so that the core's tests get
    real images without importing it (tests/test_architecture.py); skips when the set is
    missing (a failure in CI)."""

    def get(count: int) -> np.ndarray:
        from training.data import load_dataset

        try:
            data = load_dataset("fashion_mnist", "test")
        except (OSError, ValueError) as error:
            pytest.skip(f"Fashion-MNIST test set unavailable: {error}")
        return np.ascontiguousarray(data.images[:count].transpose(0, 3, 1, 2))

    return get
