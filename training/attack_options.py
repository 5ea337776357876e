"""The attack evaluation's settings and command-line options, without heavy imports.

Shared by ``python -m training.attack_eval`` and ``trustgc attack``; kept free of torch so that
building the ``trustgc`` parser (every invocation, ``--help`` included) stays fast.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["DETECT_STATISTICS", "DETECT_WEIGHTS", "KAPPAS", "add_attack_arguments"]

#: Statistics an attacker's L_detect can penalise: the paper's typicality score and the two
#: components of the served attack statistic (see training.attacks.DetectionPenalty).
DETECT_STATISTICS = ("typicality", "class_distance", "logit_margin")
#: The paper's attack grid, plus kappa = 10 (a moderate confidence on the GC's logit scale).
KAPPAS = (0.01, 1.0, 10.0, math.inf)
DETECT_WEIGHTS = (0.0, 66.0, 1000.0)


def add_attack_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", type=Path, required=True, help="calibrated GC artifact")
    parser.add_argument("--baseline", type=Path, required=True, help="CNN baseline artifact")
    parser.add_argument("--n", type=int, default=50, help="images attacked per setting")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="binary-search rounds over c")
    parser.add_argument("--c0", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/attacks.md"))
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON")
    parser.add_argument(
        "--detect-statistics",
        nargs="+",
        default=list(DETECT_STATISTICS),
        choices=DETECT_STATISTICS,
        help="what L_detect penalises: all (fully adaptive attacker, default) or typicality "
        "only (the paper's detection-aware attacker)",
    )
    parser.add_argument("--kappas", type=float, nargs="+", default=list(KAPPAS))
    parser.add_argument("--d", type=float, nargs="+", default=list(DETECT_WEIGHTS))
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the attacks on the CNN baseline"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: on a busy 2-core machine a second thread is much slower)",
    )
    return parser
