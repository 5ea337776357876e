"""What the report measures: :class:`ReportOptions` and the ``--quick`` settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from training.corruptions import SEVERITIES


@dataclass(frozen=True)
class ReportOptions:
    """What to measure and on how many images (defaults: the full report)."""

    work_dir: Path = Path("runs/report")
    n_test: int | None = None  # Table 2 and every clean reference; None: the whole test set
    n_corrupt: int = 200  # test images per corruption type and severity
    severities: tuple[int, ...] = SEVERITIES
    n_ood: int = 500  # images per OoD set
    attack_betas: tuple[str, ...] | None = None  # None: every GC with beta > 0
    attack_n: int = 20
    attack_steps: int = 30
    attack_rounds: int = 3
    attack_clean: int = 1000  # clean test images: the attack-detection reference
    calibration_size: int | None = None  # None: the split the model was trained with
    explain_beta: str = "16"
    seed: int = 0
    threads: int = 1  # one thread: on a shared 2-core machine a second only adds contention
    batch_size: int = 250
    data_dir: Path | None = None
    progress: bool = True
    quick: bool = False
    command: str = "trustgc report"


QUICK = {
    "n_test": 300,
    "n_corrupt": 8,
    "severities": (1, 3, 5),
    "n_ood": 30,
    "attack_n": 3,
    "attack_steps": 12,
    "attack_rounds": 2,
    "attack_clean": 100,
    "calibration_size": 300,
    "quick": True,
}


def quick_options(options: ReportOptions) -> ReportOptions:
    """The ``--quick`` settings: small subsets, tiny attack budget, one attacked model."""
    return replace(options, **QUICK)
