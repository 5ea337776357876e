"""Load the benchmark scripts (benchmarks/ is not a package) as modules for their smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    """Import ``benchmarks/NAME.py`` once under the module name ``bench_NAME``."""
    module_name = f"bench_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def serve_load():
    return load_script("serve_load")


@pytest.fixture(scope="session")
def model_cost():
    return load_script("model_cost")


@pytest.fixture(scope="session")
def onnx_vs_torch():
    return load_script("onnx_vs_torch")


@pytest.fixture(scope="session")
def answer_snapshot():
    return load_script("answer_snapshot")


@pytest.fixture(scope="session")
def gpu_serving():
    return load_script("gpu_serving")


@pytest.fixture(scope="session")
def quantize_int8():
    return load_script("quantize_int8")


@pytest.fixture(scope="session")
def served_certify():
    return load_script("served_certify")
