"""benchmarks/certify.py end to end on two test images with few noisy copies: the JSON carries
a row per model, its certified accuracies fall with the radius, and the table is printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "certify.py"


def test_certify_script_writes_rows_per_model(tmp_path: Path, data_set_dir) -> None:
    data_set_dir("fashion_mnist")
    out = tmp_path / "certify.json"
    model = ROOT / "model_store" / "fashion_mnist_robust"
    command = [sys.executable, str(SCRIPT), "--models", str(model), "--images", "2", "--n", "40"]
    completed = subprocess.run(
        [*command, "--n0", "10", "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    assert "| model | served acc." in completed.stdout
    result = json.loads(out.read_text())
    assert result["n"] == 40 and result["images"] == 2
    (row,) = result["rows"]
    certified = [row["certified_accuracy"][key] for key in ("0.0", "0.25", "0.5", "0.75", "1.0")]
    assert certified == sorted(certified, reverse=True)
    assert 0.0 <= row["smoothed_accuracy"] <= 1.0 and row["seconds_per_image"] > 0
