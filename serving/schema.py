"""The versioned response schema (pydantic v2): what the server answers and the client parses.

Free of torch and of the core on purpose: the client SDK (``pip install 'trustgc[client]'``)
imports it to validate answers.  The conversion from the core's results lives in
:mod:`serving.responses`, which only the handler imports.

A rejected input is a normal answer with ``decision = rejected_ood``; only inputs that cannot be
classified at all (undecodable, too large, bad parameters) get an :class:`ErrorResponse`.
The JSON Schema is published in ``docs/response.schema.json`` (``make schema``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "SCHEMA_VERSION",
    "ClassificationResponse",
    "ErrorResponse",
    "error_response",
]

SCHEMA_VERSION = "2"  # 2: typicality.rejected_by


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
    rejected_by: str | None = Field(
        default=None,
        description="when out_of_distribution: the served OoD component with the smallest "
        "p-value (the test that found the image least typical, e.g. background_ratio for a "
        "photo); null when accepted",
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
    schema_version: Literal["2"] = SCHEMA_VERSION
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


def error_response(code: str, message: str) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(code=code, message=message))
