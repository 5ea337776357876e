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
    "Certificate",
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


class Certificate(_Model):
    """A randomized-smoothing certificate (Cohen et al., ICML 2019), only when a request asked
    for one (``certify`` = n noisy copies): the smoothed classifier's label and the L2 radius,
    in [0, 1] pixel units, within which that label provably cannot change, with probability at
    least 1 - alpha over the server's noise.  It certifies the *label*, not the OoD or attack
    decision."""

    method: Literal["randomized_smoothing"] = "randomized_smoothing"
    label: str | None = Field(
        default=None, description="the smoothed label; absent (null): abstained, nothing certified"
    )
    radius: float = Field(ge=0, description="certified L2 radius, [0, 1] pixels; 0 if abstained")
    p_lower: float = Field(ge=0, le=1, description="lower confidence bound of P(label | noise)")
    agrees_with_prediction: bool = Field(description="the smoothed label is the served one")
    sigma: float = Field(gt=0, description="noise standard deviation, [0, 1] pixels")
    n: int = Field(ge=1, description="noisy copies that estimated p_lower")
    n0: int = Field(ge=1, description="noisy copies that picked the label")
    alpha: float = Field(gt=0, lt=1)


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
    certificate: Certificate | None = Field(
        default=None,
        description="only when the request asked for one (certify = n); added within schema "
        "version 2 because no answer carries it unless its client asked",
    )


class ErrorDetail(_Model):
    code: str
    message: str


class ErrorResponse(_Model):
    error: ErrorDetail


def error_response(code: str, message: str) -> ErrorResponse:
    return ErrorResponse(error=ErrorDetail(code=code, message=message))
