"""A time-budget cut is announced on stderr and recorded in the artifact and its model card."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from training.data import make_synthetic
from trustgc.artifact import load_manifest
from trustgc_cli.main import main


def _folder(root: Path) -> Path:
    data = make_synthetic(num_per_class=100, num_classes=4, size=8, seed=3)
    for i, (pixels, label) in enumerate(zip(data.images, data.labels, strict=True)):
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels[..., 0]).save(root / f"c{label}" / f"{i:04d}.png")
    return root


def test_time_budget_cut_is_announced_and_recorded(tmp_path, capsys) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "run"
        argv = ["train", "--data-dir", str(_folder(tmp_path / "data")), "--out", str(out)]
        argv += ["--preset", "tiny", "--device", "cpu", "--no-progress"]
        # 30 ms: far less than the 10 configured epochs take, so the budget ends the run
        assert main([*argv, "--time-budget-minutes", "0.0005"]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    training = load_manifest(out).training
    epochs, steps = training["epochs_completed"], training["steps"]
    assert training["stopped_early"] == "--time-budget-minutes 0.0005"
    assert epochs < training["config"]["epochs"] == 10
    assert (
        f"training stopped by --time-budget-minutes 0.0005 after {epochs} of 10 epochs "
        f"({steps} steps); the model card records it"
    ) in err
    card = (out / "MODEL_CARD.md").read_text()
    assert (
        f"**Stopped early** by --time-budget-minutes 0.0005 after {epochs} of 10 configured "
        f"epochs ({steps} steps)"
    ) in card
