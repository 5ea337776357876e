"""The API answer built from the core's per-image result: the handler's side of the schema.

Kept apart from :mod:`serving.schema` (torch-free, shared with the client) because it reads the
core's :class:`~trustgc.trust.predictor.TrustResult`, which brings torch with it.
"""

from __future__ import annotations

import numpy as np

from serving.schema import (
    Attack,
    ClassificationResponse,
    ClassProbability,
    DecisionSpace,
    Explanation,
    HeatMap,
    LogLikelihood,
    ModelInfo,
    Typicality,
)
from trustgc.trust.predictor import TrustResult

__all__ = ["build_response"]


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
            rejected_by=result.rejected_by,
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
