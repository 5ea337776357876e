"""The pydantic response <-> the typed protobuf ``trustgc.v1.ClassificationResult``.

gRPC clients that send ``format=protobuf`` get this message's bytes in
``PredictionResponse.prediction`` instead of JSON; both encodings carry the same fields.
"""

from __future__ import annotations

from serving.grpc_stubs import result_pb2
from serving.schema import (
    SCHEMA_VERSION,
    Attack,
    Certificate,
    ClassificationResponse,
    ClassProbability,
    DecisionSpace,
    ErrorDetail,
    ErrorResponse,
    Explanation,
    HeatMap,
    LogLikelihood,
    ModelInfo,
    Typicality,
)

__all__ = ["from_protobuf", "to_protobuf"]

_DECISIONS = {
    "accepted": result_pb2.ACCEPTED,
    "rejected_ood": result_pb2.REJECTED_OOD,
    "flagged_attack": result_pb2.FLAGGED_ATTACK,
}
_DECISION_NAMES = {value: key for key, value in _DECISIONS.items()}


def _probability(item: ClassProbability) -> result_pb2.ClassProbability:
    return result_pb2.ClassProbability(
        label=item.label, index=item.index, probability=item.probability
    )


def _explanation(explanation: Explanation) -> result_pb2.Explanation:
    space = explanation.decision_space
    return result_pb2.Explanation(
        posterior_heatmaps=[
            result_pb2.HeatMap(
                label=m.label,
                index=m.index,
                height=len(m.values),
                width=len(m.values[0]) if m.values else 0,
                values=[v for row in m.values for v in row],
            )
            for m in explanation.posterior_heatmaps
        ],
        decision_space=result_pb2.DecisionSpace(
            classes=space.classes,
            means_xy=[v for pair in space.means_xy for v in pair],
            z_xy=space.z_xy,
            residual_distance=space.residual_distance,
            radius_horizontal=space.radius_horizontal,
            radius_vertical=space.radius_vertical,
        ),
    )


def to_protobuf(response: ClassificationResponse | ErrorResponse) -> bytes:
    """Serialise an answer (or an error) as ``trustgc.v1.ClassificationResult`` bytes."""
    if isinstance(response, ErrorResponse):
        message = result_pb2.ClassificationResult(
            schema_version=SCHEMA_VERSION,
            error=result_pb2.Error(code=response.error.code, message=response.error.message),
        )
        return message.SerializeToString(deterministic=True)
    message = result_pb2.ClassificationResult(
        schema_version=response.schema_version,
        model=result_pb2.ModelInfo(name=response.model.name, version=response.model.version),
        decision=_DECISIONS[response.decision],
        prediction=_probability(response.prediction),
        probabilities=[_probability(p) for p in response.probabilities],
        log_likelihood=result_pb2.LogLikelihood(
            bits_per_dim=response.log_likelihood.bits_per_dim,
            per_class_bits_per_dim=response.log_likelihood.per_class_bits_per_dim,
        ),
        typicality=result_pb2.Typicality(**response.typicality.model_dump()),
        attack=result_pb2.Attack(**response.attack.model_dump()),
    )
    if response.explanation is not None:
        message.explanation.CopyFrom(_explanation(response.explanation))
    if response.certificate is not None:
        message.certificate.CopyFrom(
            result_pb2.Certificate(**response.certificate.model_dump(exclude_none=True))
        )
    return message.SerializeToString(deterministic=True)


def _probability_model(item) -> ClassProbability:
    return ClassProbability(label=item.label, index=item.index, probability=item.probability)


def from_protobuf(data: bytes) -> ClassificationResponse | ErrorResponse:
    """Parse ``trustgc.v1.ClassificationResult`` bytes back into the pydantic models."""
    message = result_pb2.ClassificationResult.FromString(data)
    if message.HasField("error"):
        return ErrorResponse(
            error=ErrorDetail(code=message.error.code, message=message.error.message)
        )
    explanation = None
    if message.HasField("explanation"):
        e = message.explanation
        explanation = Explanation(
            posterior_heatmaps=[
                HeatMap(
                    label=m.label,
                    index=m.index,
                    values=[
                        list(m.values[r * m.width : (r + 1) * m.width]) for r in range(m.height)
                    ],
                )
                for m in e.posterior_heatmaps
            ],
            decision_space=DecisionSpace(
                classes=list(e.decision_space.classes),
                means_xy=[
                    list(e.decision_space.means_xy[i : i + 2])
                    for i in range(0, len(e.decision_space.means_xy), 2)
                ],
                z_xy=list(e.decision_space.z_xy),
                residual_distance=e.decision_space.residual_distance,
                radius_horizontal=e.decision_space.radius_horizontal,
                radius_vertical=e.decision_space.radius_vertical,
            ),
        )
    return ClassificationResponse(
        schema_version=message.schema_version,
        model=ModelInfo(name=message.model.name, version=message.model.version),
        decision=_DECISION_NAMES[message.decision],
        prediction=_probability_model(message.prediction),
        probabilities=[_probability_model(p) for p in message.probabilities],
        log_likelihood=LogLikelihood(
            bits_per_dim=message.log_likelihood.bits_per_dim,
            per_class_bits_per_dim=list(message.log_likelihood.per_class_bits_per_dim),
        ),
        typicality=Typicality(
            p_value=message.typicality.p_value,
            alpha=message.typicality.alpha,
            out_of_distribution=message.typicality.out_of_distribution,
            statistic=message.typicality.statistic,
            components=dict(message.typicality.components),
            rejected_by=(
                message.typicality.rejected_by
                if message.typicality.HasField("rejected_by")
                else None
            ),
        ),
        attack=Attack(
            p_value=message.attack.p_value,
            alpha=message.attack.alpha,
            suspected=message.attack.suspected,
            statistic=message.attack.statistic,
        ),
        explanation=explanation,
        certificate=_certificate_model(message),
    )


def _certificate_model(message) -> Certificate | None:
    if not message.HasField("certificate"):
        return None
    c = message.certificate
    fields = {name: getattr(c, name) for name in Certificate.model_fields if name != "label"}
    return Certificate(**fields, label=c.label if c.HasField("label") else None)
