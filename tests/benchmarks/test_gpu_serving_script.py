"""benchmarks/gpu_serving.py: the dry run covers every path, with the GPU machine's packages only.

The GPU machine has numpy, torch, pydantic, safetensors, pillow and onnxruntime, and nothing
that serves; the dry run is therefore run with the serving and analysis packages made
unimportable, so that an import added to the score, decode or response path fails here first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_serving.py"
ABSENT_ON_GPU_MACHINE = (
    "scipy",
    "matplotlib",
    "onnx",
    "grpc",
    "prometheus_client",
    "ts",
    "kserve",
    "fastapi",
    "uvicorn",
    "orjson",
    "requests",
    "training",
    "trustgc_cli",
)
RUNNER = """
import runpy, sys
from importlib.abc import MetaPathFinder

ABSENT = set(sys.argv[1].split(","))

class Absent(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ImportError(f"{name} is not installed on the GPU machine")
        return None

sys.meta_path.insert(0, Absent())
script = sys.argv[2]
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""


def test_dry_run_covers_every_path(tmp_path: Path) -> None:
    out = tmp_path / "gpu_serving.json"
    command = [sys.executable, "-c", RUNNER, ",".join(ABSENT_ON_GPU_MACHINE), str(SCRIPT)]
    completed = subprocess.run(
        [*command, "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True
    assert result["cuda_predictor_devices"] == ["cpu"]
    roles = [(r["role"], r["backend"], r["batch"]) for r in result["rows"]]
    assert roles == [
        ("accelerator", "torch", 1),
        ("accelerator", "torch", 8),
        ("cpu_reference", "onnxruntime", 8),
        ("cpu_reference", "torch", 8),
    ]
    for row in result["rows"]:
        assert row["score_ms"] > 0 and row["forward_ms"] > 0 and row["host_ms"] > 0
        assert row["score_img_s"] == pytest.approx(row["batch"] / row["score_ms"] * 1e3)
    parity = result["parity_vs_cpu_torch"]  # the same torch model on the same CPU: identical
    assert parity["max_abs_log_posterior"] == 0.0 and parity["decisions_equal"] == 1.0
    costs = result["host_costs"]
    assert costs["images"] == 8
    assert 0 < costs["decode_png_28x28_us"] < costs["decode_png_224x224_rgb_us"]
    assert costs["build_response_us"] > 0 and costs["build_and_encode_us"] > 0
    lines = completed.stdout.strip().splitlines()
    assert lines[-1].startswith("Predictor on cpu; vs CPU torch on 8 images")
    assert sum(" | cpu | " in line for line in lines) == 4


def test_needs_cuda_or_dry_run() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the refusal path is for machines without one")
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--batches", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert "needs a GPU" in completed.stderr


@pytest.mark.gpu
def test_cuda_predictor_holds_everything_on_the_device(gpu_serving) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from trustgc.trust.predictor import Predictor

    model = SCRIPT.parents[1] / "model_store" / "fashion_mnist"
    predictor = Predictor.from_artifact(model, device="cuda", backend="torch")
    assert [d.split(":")[0] for d in gpu_serving.devices_of(predictor)] == ["cuda"]
    pixels = gpu_serving.sample_images(16, predictor.input_shape)
    reference = Predictor.from_artifact(model, device="cpu", backend="torch").score(pixels)
    table = predictor.score(pixels)
    assert table.log_posterior.shape == (16, len(predictor.class_names))
    assert np.abs(table.log_posterior - reference.log_posterior).max() < 0.05  # TF32 convs
