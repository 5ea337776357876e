"""The attack evaluation's settings and command-line options, without heavy imports.

Shared by ``python -m training.attack_eval`` and ``trustgc attack``; kept free of torch so that
building the ``trustgc`` parser (every invocation, ``--help`` included) stays fast.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from trustgc.trust.statistics import (
    ATTACK_STATISTIC,
    COMBINATIONS,
    PAPER_STATISTIC,
    STATISTICS,
    differentiable,
)

__all__ = ["DETECT_STATISTICS", "DETECT_WEIGHTS", "KAPPAS", "add_attack_arguments"]

#: What an attacker's L_detect penalises by default: the paper's typicality score and the
#: components of the served attack statistic that have a gradient (see
#: training.attacks.DetectionPenalty); any statistic with a torch form can be chosen.
DETECT_STATISTICS = differentiable((PAPER_STATISTIC, *COMBINATIONS[ATTACK_STATISTIC].components))
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
        choices=differentiable(),
        help="what L_detect penalises: the default is the fully adaptive attacker, typicality "
        "only the paper's detection-aware attacker.  "
        + "; ".join(f"{name}: {STATISTICS[name].description}" for name in differentiable()),
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
