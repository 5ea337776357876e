"""Calibration: the reference score distributions behind every p-value, stored with the model.

Fitted on the held-out calibration split (never seen in training):

- the whole split gives each statistic's reference distribution: the reported component
  p-values, among them the paper's typicality test;
- the two served statistics combine components (see
  :data:`trustgc.trust.statistics.COMBINATIONS`): the production OoD statistic and the attack
  statistic.  Their component p-values must be out-of-sample for the
  calibration of T, so the split is divided: part A fits the combinations' own component
  references (with exponential tails beyond their range, so that one extreme component can
  reject on its own), part B the reference of each T.

Which statistics exist, their sides and the combinations come from the registry in
trustgc.trust.statistics; the file records what it was fitted for (``components`` and each
served combination's components), and :func:`check_against_registry` refuses a file whose
combinations differ from the code's, since its p-values would be invalid.

Calibrating T empirically (instead of assuming a chi^2 or Beta law) keeps the combined p-value
valid although the components are correlated.  The result is stored in
``calibration.json`` inside the model artifact: sorted arrays plus a summary, and the alphas.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trustgc.artifact import WEIGHTS_FILE, check_derived, read_json, weights_sha256, write_json
from trustgc.trust.pvalues import EmpiricalReference, Interpolation, Side
from trustgc.trust.statistics import (
    ATTACK_STATISTIC,
    COMBINATIONS,
    PRODUCTION_OOD_STATISTIC,
    STATISTICS,
    computable,
    served_ood_statistic,
)

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_INTERPOLATION",
    "Calibration",
    "ReferenceDistribution",
    "check_against_registry",
    "check_resolution",
    "fit_calibration",
    "load_calibration",
    "save_calibration",
]

CALIBRATION_FILE = "calibration.json"
#: 2: the attack statistic became a combination; ``combined`` holds one reference per
#: combination.  Version 1 files are refused with a request to recalibrate.
CALIBRATION_FORMAT_VERSION = 2
#: How calibrations read p-values off their references (see trustgc.trust.pvalues).  "step",
#: the exact conservative p-value: measured against ONNX Runtime on 1,000 test images, 995 get
#: bit-identical p-values and 5 differ by one or two steps of 1 / (n + 1) (torch against itself
#: at another batch size: the same, 995).  "linear" is continuous: every image differs a
#: little (665 of 1,000 within 1e-6, all within 4e-5).
DEFAULT_INTERPOLATION: Interpolation = "step"


class ReferenceDistribution(BaseModel):
    """One statistic's in-distribution sample (sorted) and which tail is rejected."""

    model_config = ConfigDict(extra="forbid")

    statistic: str
    side: Side
    sorted_scores: list[float]
    summary: dict[str, float]
    interpolation: Interpolation = "step"

    @classmethod
    def fit(
        cls,
        statistic: str,
        side: Side,
        scores: np.ndarray,
        interpolation: Interpolation = DEFAULT_INTERPOLATION,
    ) -> ReferenceDistribution:
        scores = np.sort(np.asarray(scores, dtype=np.float64))
        quantiles = {
            f"q{q:g}": float(np.quantile(scores, q))
            for q in (0.001, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999)
        }
        summary = {
            "n": float(scores.size),
            "mean": float(scores.mean()),
            "std": float(scores.std()),
            **quantiles,
        }
        return cls(
            statistic=statistic,
            side=side,
            sorted_scores=scores.tolist(),
            summary=summary,
            interpolation=interpolation,
        )

    def reference(self, tail_extrapolation: bool = False) -> EmpiricalReference:
        return EmpiricalReference(
            np.asarray(self.sorted_scores),
            self.side,
            tail_extrapolation,
            interpolation=self.interpolation,
        )


class Calibration(BaseModel):
    """Everything the p-values need; one file per model artifact.

    ``components`` names the statistics it was fitted for (the served components);
    ``ood_components`` / ``attack_components`` record the served combinations' components,
    checked against the registry on load.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: int = CALIBRATION_FORMAT_VERSION
    ood_alpha: float = Field(gt=0, lt=1)
    attack_alpha: float = Field(gt=0, lt=1)
    ood_statistic: str = PRODUCTION_OOD_STATISTIC
    ood_components: tuple[str, ...] = COMBINATIONS[PRODUCTION_OOD_STATISTIC].components
    attack_statistic: str = ATTACK_STATISTIC
    attack_components: tuple[str, ...] = COMBINATIONS[ATTACK_STATISTIC].components
    components: dict[str, ReferenceDistribution]  # fitted on the whole calibration split
    combination_components: dict[str, ReferenceDistribution]  # part A, inside the Ts only
    combined: dict[str, ReferenceDistribution]  # each combination's T on part B
    split: dict[str, int | str] = Field(default_factory=dict)
    #: SHA-256 of the weights.safetensors these references were computed with (None: unknown,
    #: refused by load_calibration inside an artifact).
    weights_sha256: str | None = None


def check_resolution(calibration: Calibration) -> None:
    """Refuse references too small to ever reach their alpha.

    The smallest p-value an empirical reference of n scores can give is 1 / (n + 1); if that is
    above alpha, nothing is ever rejected and the served flag is silently dead.
    """
    for name, alpha, flag in (
        (calibration.ood_statistic, calibration.ood_alpha, "--ood-alpha"),
        (calibration.attack_statistic, calibration.attack_alpha, "--attack-alpha"),
    ):
        n = len(calibration.combined[name].sorted_scores)
        if 1.0 / (n + 1) > alpha:
            needed = math.ceil(1.0 / alpha) - 1
            raise ValueError(
                f"the {name} reference holds {n} calibration scores: its smallest p-value "
                f"1/{n + 1} = {1 / (n + 1):.3g} is above alpha = {alpha:g}, so nothing could be "
                f"flagged; calibrate with at least {needed} scores in part B (a larger "
                f"calibration split) or a larger {flag}"
            )


def _references(
    statistics: dict[str, np.ndarray], names, interpolation: Interpolation
) -> dict[str, ReferenceDistribution]:
    return {
        name: ReferenceDistribution.fit(
            name, STATISTICS[name].side, statistics[name], interpolation
        )
        for name in sorted(names)
    }


def fit_calibration(
    statistics_a: dict[str, np.ndarray],
    statistics_b: dict[str, np.ndarray],
    ood_alpha: float,
    attack_alpha: float,
    split: dict[str, int | str] | None = None,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
) -> Calibration:
    """Fit all references from the two parts A and B of the calibration split.

    Every registered statistic the model can compute gets a reference on A + B (those needing a
    background flow only when given: their presence in both parts says the model has one);
    each served combination's components a tail-extrapolated one on A, and each served
    combination's T one on B.  A model with a background serves the OoD combination with the
    likelihood ratio, one without the production combination.
    """
    has_background = all(
        name in statistics_a and name in statistics_b
        for name, statistic in STATISTICS.items()
        if statistic.requires_background
    )
    needed = set(computable(has_background))
    missing = needed - set(statistics_a) | needed - set(statistics_b)
    if missing:
        raise ValueError(f"calibration needs the statistics {sorted(missing)}")
    both = {name: np.concatenate([statistics_a[name], statistics_b[name]]) for name in needed}
    ood_statistic = served_ood_statistic(has_background)
    served = {name: COMBINATIONS[name] for name in (ood_statistic, ATTACK_STATISTIC)}
    served_components = {c for combination in served.values() for c in combination.components}
    inner = _references(statistics_a, served_components, interpolation)
    combined = {}
    for name, combination in served.items():
        p_b = {
            component: inner[component]
            .reference(tail_extrapolation=True)
            .p_value(statistics_b[component])
            for component in combination.components
        }
        combined[name] = ReferenceDistribution.fit(
            name, "upper", combination.combine(p_b), interpolation
        )
    calibration = Calibration(
        ood_alpha=ood_alpha,
        attack_alpha=attack_alpha,
        ood_statistic=ood_statistic,
        ood_components=COMBINATIONS[ood_statistic].components,
        attack_statistic=ATTACK_STATISTIC,
        attack_components=COMBINATIONS[ATTACK_STATISTIC].components,
        components=_references(both, needed, interpolation),
        combination_components=inner,
        combined=combined,
        split=split or {},
    )
    check_resolution(calibration)  # refused at calibrate time, before anything is written
    return calibration


def check_against_registry(calibration: Calibration, model_dir: str = "DIR") -> None:
    """Refuse a calibration whose statistics or combinations differ from the registry's.

    Each served combination must be registered with the recorded components, and each fitted
    statistic registered with the recorded side; otherwise the stored references belong to
    other statistics and the served p-values would be invalid.
    """
    problems = []
    served = {
        calibration.ood_statistic: calibration.ood_components,
        calibration.attack_statistic: calibration.attack_components,
    }
    for name, recorded in served.items():
        combination = COMBINATIONS.get(name)
        if combination is None:
            problems.append(f"combination {name!r} is not in the registry")
        elif set(recorded) != set(combination.components):
            problems.append(
                f"{name} was fitted for components {sorted(recorded)}, the registry combines "
                f"{sorted(combination.components)}"
            )
        elif name not in calibration.combined:
            problems.append(f"combination {name!r} has no fitted reference")
        elif not set(recorded) <= set(calibration.combination_components):
            problems.append(f"{name}: components without a part-A reference")
    unknown = set(calibration.combined) - set(COMBINATIONS)
    if unknown:
        problems.append(f"combinations {sorted(unknown)} are not in the registry")
    for name, reference in calibration.components.items():
        statistic = STATISTICS.get(name)
        if statistic is None:
            problems.append(f"statistic {name!r} is not in the registry")
        elif reference.side != statistic.side:
            problems.append(
                f"{name} was fitted {reference.side}, the registry says {statistic.side}"
            )
    if problems:
        raise ValueError(
            f"{model_dir}: its calibration does not match this code ({'; '.join(problems)}): "
            f"run `trustgc calibrate --model {model_dir}` to refit it"
        )


def save_calibration(directory: Path, calibration: Calibration) -> None:
    """Write ``calibration.json``; stamps the artifact's weights hash if none was recorded."""
    directory = Path(directory)
    if calibration.weights_sha256 is None and (directory / WEIGHTS_FILE).is_file():
        calibration = calibration.model_copy(update={"weights_sha256": weights_sha256(directory)})
    write_json(directory / CALIBRATION_FILE, calibration.model_dump(mode="json"))


def load_calibration(directory: Path) -> Calibration | None:
    """The artifact's calibration, or None if it was never calibrated.

    Refused (with the command that fixes it) when it was computed from other weights than the
    artifact's, when its references are too small for its alphas (:func:`check_resolution`), or
    when its statistics or combinations differ from the registry's (:func:`check_against_registry`).
    """
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    version = data.get("format_version") if isinstance(data, dict) else None
    if version != CALIBRATION_FORMAT_VERSION:
        raise ValueError(
            f"{path}: calibration format {version}, this code reads "
            f"{CALIBRATION_FORMAT_VERSION}: run `trustgc calibrate --model {directory}` again"
        )
    calibration = Calibration.model_validate(data)
    if (Path(directory) / WEIGHTS_FILE).is_file():
        check_derived(directory, CALIBRATION_FILE, calibration.weights_sha256)
    check_against_registry(calibration, str(directory))  # first: it names every reference
    check_resolution(calibration)
    return calibration
