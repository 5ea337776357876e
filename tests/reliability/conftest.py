"""Fixtures for the reliability tests: this folder's own TorchServe, and the in-process core.

``rel_server`` starts TorchServe 0.12 with the production ``config.properties`` (token auth on,
model API off, 10 MiB request limit) on free ephemeral loopback ports, in a run directory under
pytest's temporary directory, and stops it at the end of the session.  It is separate from the
serving tests' instance because these tests kill workers and restart the whole server.  Its
``java.io.tmpdir`` is the run directory's ``tmp/``: TorchServe puts worker sockets
(``.ts.sock.9000``, ...) and unpacked archives there, and the default ``/tmp`` is shared by
every TorchServe on the machine (two instances' workers would take over each other's sockets).

This folder is put on ``sys.path`` (``--import-mode=importlib`` does not) so that the test
modules share ``reliability_support.py`` (server helpers, partly imported from
tests/serving/conftest.py), ``reliability_inputs.py`` and ``reliability_fuzz.py``.  Tests marked
``integration`` skip with the reason when java, the model archive or the Fashion-MNIST data are
missing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from reliability_support import (  # noqa: E402
    MODEL_DIR,
    ReliabilityServer,
    integration_skip_reason,
    isolated_settings,
    start_isolated,
    stop_isolated,
)


def pytest_collection_modifyitems(config, items) -> None:  # noqa: ARG001
    reason, checked = None, False
    for item in items:
        if item.get_closest_marker("integration") is None:
            continue
        if Path(item.path).resolve().parent != HERE:
            continue
        if not checked:
            reason, checked = integration_skip_reason(), True
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


_RUNNING: list[tuple] = []  # (server, settings) of the live rel_server


def pytest_runtest_teardown(item, nextitem) -> None:  # noqa: ARG001
    """Stop this folder's TorchServe after its last test, not at the end of the session, so it
    does not compete for the CPUs with the TorchServe instances of later folders."""
    if _RUNNING and (nextitem is None or HERE not in Path(nextitem.path).resolve().parents):
        while _RUNNING:
            stop_isolated(*_RUNNING.pop())


@pytest.fixture(scope="session")
def rel_server(tmp_path_factory) -> ReliabilityServer:
    """This folder's own TorchServe (production config, token auth, ephemeral ports)."""
    reason = integration_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    settings = isolated_settings(tmp_path_factory.mktemp("reliability-ts"), auth=True)
    started = time.monotonic()
    server, keys = start_isolated(settings)
    served = ReliabilityServer(settings=settings, server=server, keys=keys)
    print(f"\nreliability TorchServe ready after {time.monotonic() - started:.1f} s")
    _RUNNING.append((server, settings))
    try:
        yield served
    finally:
        while _RUNNING:
            stop_isolated(*_RUNNING.pop())


@pytest.fixture(scope="session")
def fashion():
    from training.data import load_dataset

    return load_dataset("fashion_mnist", "test")


@pytest.fixture(scope="session")
def predictor():
    from trustgc.backend import choose_backend
    from trustgc.trust.predictor import Predictor

    backend = choose_backend(MODEL_DIR).backend  # the served one (onnxruntime when exported)
    return Predictor.from_artifact(MODEL_DIR, device="cpu", backend=backend)
