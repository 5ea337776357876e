"""Smoke test of benchmarks/onnx_vs_torch.py on the shipped model: a tiny run end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "model_store" / "fashion_mnist"


@pytest.mark.skipif(
    not (SHIPPED / "model.onnx").is_file(), reason="the shipped model.onnx is missing"
)
def test_tiny_run_reports_throughput_and_parity(onnx_vs_torch, tmp_path, capsys) -> None:
    try:
        from training.data import load_dataset

        load_dataset("fashion_mnist", "test")
    except (OSError, ValueError) as error:
        pytest.skip(f"Fashion-MNIST test set unavailable: {error}")
    output = tmp_path / "onnx.md"
    argv = ["--threads", "1", "--batches", "1", "--rounds", "1", "--seconds", "0.05"]
    argv += ["--parity-images", "30", "--output", str(output)]
    assert onnx_vs_torch.main(argv) == 0
    text = output.read_text()
    assert "| 1 | 1 |" in text  # the one throughput row
    assert "## Parity on 30 Fashion-MNIST test images" in text
    # the p-value parity line: counts out of 30 images, decisions compared
    line = next(row for row in text.splitlines() if row.startswith("- p-values"))
    within = int(line.split("within 1e-6 on ")[1].split(" of ")[0])
    assert 27 <= within <= 30 and "same decision on 30" in line
