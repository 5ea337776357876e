"""The versioned response schema (pydantic v2) and the conversion from the core's results.

A rejected input is a normal answer with ``decision = rejected_ood``; only inputs that cannot be
classified at all (undecodable, too large, bad parameters) get an :class:`ErrorResponse`.
The JSON Schema is published in ``docs/response.schema.json`` (``make schema``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trustgc.trust.predictor import TrustResult

__all__ = [
    "SCHEMA_VERSION",
    "ClassificationResponse",
    "ErrorResponse",
    "build_response",
    "error_response",
]

SCHEMA_VERSION = "1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelInfo(_Model):
    name: str
    version: str


class ClassProbability(_Model):
    label: str
    index: int = Field(ge=0)
    probability: float = Field(ge=0, le=1)


class LogLikelihood(_Model):
    bits_per_dim: float = Field(description="-log2 q(x) per dimension, 8-bit pixels")
    per_class_bits_per_dim: list[float] = Field(description="-log2 q(x|y) per dimension")


class Typicality(_Model):
    p_value: float = Field(ge=0, le=1, description="p-value of the production OoD statistic")
    alpha: float
    out_of_distribution: bool
    statistic: str = Field(description="name of the production OoD statistic")
    components: dict[str, float] = Field(
        description="calibrated p-values of the individual statistics (typicality is the "
        "paper's two-sided test)"
    )


class Attack(_Model):
    p_value: float = Field(ge=0, le=1)
    alpha: float
    suspected: bool
    statistic: str


class HeatMap(_Model):
    label: str
    index: int
    values: list[list[float]] = Field(description="Q(k, l, y); sums to log q(y|x)")


class DecisionSpace(_Model):
    classes: list[int]
    means_xy: list[list[float]]
    z_xy: list[float]
    residual_distance: float
    radius_horizontal: float
    radius_vertical: float


class Explanation(_Model):
    posterior_heatmaps: list[HeatMap]
    decision_space: DecisionSpace


class ClassificationResponse(_Model):
    schema_version: Literal["1"] = SCHEMA_VERSION
    model: ModelInfo
    decision: Literal["accepted", "rejected_ood", "flagged_attack"]
    prediction: ClassProbability
    probabilities: list[ClassProbability] = Field(description="top_k classes, most likely first")
    log_likelihood: LogLikelihood
    typicality: Typicality
    attack: Attack
    explanation: Explanation | None = None


class ErrorDetail(_Model):
    code: str
    message: str


class ErrorResponse(_Model):
    error: ErrorDetail


def _explanation(result: TrustResult, class_names: tuple[str, ...], top: list[int]) -> Explanation:
    explanation = result.explanation or {}
    maps = explanation["posterior_heatmaps"]
    space = explanation["decision_space"]
    return Explanation(
        posterior_heatmaps=[
            HeatMap(label=class_names[i], index=i, values=maps[i].tolist()) for i in top
        ],
        decision_space=DecisionSpace(
            classes=[int(c) for c in space["classes"]],
            means_xy=np.asarray(space["means_xy"]).tolist(),
            z_xy=np.asarray(space["z_xy"]).tolist(),
            residual_distance=float(space["residual_distance"]),
            radius_horizontal=float(space["radius_horizontal"]),
            radius_vertical=float(space["radius_vertical"]),
        ),
    )


def build_response(
    result: TrustResult,
    model_name: str,
    model_version: str,
    class_names: tuple[str, ...],
    top_k: int,
) -> ClassificationResponse:
    """The API answer for one image from the core's :class:`TrustResult`."""
    order = [int(i) for i in np.argsort(-result.probabilities, kind="stable")[:top_k]]
    probabilities = [
        ClassProbability(
            label=class_names[i], index=i, probability=float(min(1.0, result.probabilities[i]))
        )
        for i in order
    ]
    return ClassificationResponse(
        model=ModelInfo(name=model_name, version=model_version),
        decision=result.decision.value,
        prediction=probabilities[0],
        probabilities=probabilities,
        log_likelihood=LogLikelihood(
            bits_per_dim=result.bits_per_dim,
            per_class_bits_per_dim=[float(v) for v in result.class_bits_per_dim],
        ),
        typicality=Typicality(
            p_value=result.ood_p_value,
            alpha=result.ood_alpha,
            out_of_distribution=result.out_of_distribution,
            statistic=result.ood_statistic,
            components=result.component_p_values,
        ),
        attack=Attack(
            p_value=result.attack_p_value,
            alpha=result.attack_alpha,
            suspected=result.attack_suspected,
            statistic=result.attack_statistic,
        ),
        explanation=(
            _explanation(result, class_names, order) if result.explanation is not None else None
        ),
    )


def error_response(code: str, message: str) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(code=code, message=message))
