from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    ACCEPTED: _ClassVar[Decision]
    REJECTED_OOD: _ClassVar[Decision]
    FLAGGED_ATTACK: _ClassVar[Decision]
DECISION_UNSPECIFIED: Decision
ACCEPTED: Decision
REJECTED_OOD: Decision
FLAGGED_ATTACK: Decision

class ClassProbability(_message.Message):
    __slots__ = ("label", "index", "probability")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    probability: float
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., probability: _Optional[float] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class LogLikelihood(_message.Message):
    __slots__ = ("bits_per_dim", "per_class_bits_per_dim")
    BITS_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_BITS_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    bits_per_dim: float
    per_class_bits_per_dim: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, bits_per_dim: _Optional[float] = ..., per_class_bits_per_dim: _Optional[_Iterable[float]] = ...) -> None: ...

class Typicality(_message.Message):
    __slots__ = ("p_value", "alpha", "out_of_distribution", "statistic", "components", "rejected_by")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    REJECTED_BY_FIELD_NUMBER: _ClassVar[int]
    p_value: float
    alpha: float
    out_of_distribution: bool
    statistic: str
    components: _containers.ScalarMap[str, float]
    rejected_by: str
    def __init__(self, p_value: _Optional[float] = ..., alpha: _Optional[float] = ..., out_of_distribution: _Optional[bool] = ..., statistic: _Optional[str] = ..., components: _Optional[_Mapping[str, float]] = ..., rejected_by: _Optional[str] = ...) -> None: ...

class Attack(_message.Message):
    __slots__ = ("p_value", "alpha", "suspected", "statistic")
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    SUSPECTED_FIELD_NUMBER: _ClassVar[int]
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    p_value: float
    alpha: float
    suspected: bool
    statistic: str
    def __init__(self, p_value: _Optional[float] = ..., alpha: _Optional[float] = ..., suspected: _Optional[bool] = ..., statistic: _Optional[str] = ...) -> None: ...

class HeatMap(_message.Message):
    __slots__ = ("label", "index", "height", "width", "values")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    label: str
    index: int
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, label: _Optional[str] = ..., index: _Optional[int] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class DecisionSpace(_message.Message):
    __slots__ = ("classes", "means_xy", "z_xy", "residual_distance", "radius_horizontal", "radius_vertical")
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MEANS_XY_FIELD_NUMBER: _ClassVar[int]
    Z_XY_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    RADIUS_HORIZONTAL_FIELD_NUMBER: _ClassVar[int]
    RADIUS_VERTICAL_FIELD_NUMBER: _ClassVar[int]
    classes: _containers.RepeatedScalarFieldContainer[int]
    means_xy: _containers.RepeatedScalarFieldContainer[float]
    z_xy: _containers.RepeatedScalarFieldContainer[float]
    residual_distance: float
    radius_horizontal: float
    radius_vertical: float
    def __init__(self, classes: _Optional[_Iterable[int]] = ..., means_xy: _Optional[_Iterable[float]] = ..., z_xy: _Optional[_Iterable[float]] = ..., residual_distance: _Optional[float] = ..., radius_horizontal: _Optional[float] = ..., radius_vertical: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("posterior_heatmaps", "decision_space")
    POSTERIOR_HEATMAPS_FIELD_NUMBER: _ClassVar[int]
    DECISION_SPACE_FIELD_NUMBER: _ClassVar[int]
    posterior_heatmaps: _containers.RepeatedCompositeFieldContainer[HeatMap]
    decision_space: DecisionSpace
    def __init__(self, posterior_heatmaps: _Optional[_Iterable[_Union[HeatMap, _Mapping]]] = ..., decision_space: _Optional[_Union[DecisionSpace, _Mapping]] = ...) -> None: ...

class Certificate(_message.Message):
    __slots__ = ("method", "label", "radius", "p_lower", "agrees_with_prediction", "sigma", "n", "n0", "alpha")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    RADIUS_FIELD_NUMBER: _ClassVar[int]
    P_LOWER_FIELD_NUMBER: _ClassVar[int]
    AGREES_WITH_PREDICTION_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    N0_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    method: str
    label: str
    radius: float
    p_lower: float
    agrees_with_prediction: bool
    sigma: float
    n: int
    n0: int
    alpha: float
    def __init__(self, method: _Optional[str] = ..., label: _Optional[str] = ..., radius: _Optional[float] = ..., p_lower: _Optional[float] = ..., agrees_with_prediction: _Optional[bool] = ..., sigma: _Optional[float] = ..., n: _Optional[int] = ..., n0: _Optional[int] = ..., alpha: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ClassificationResult(_message.Message):
    __slots__ = ("schema_version", "model", "decision", "prediction", "probabilities", "log_likelihood", "typicality", "attack", "explanation", "error", "certificate")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    TYPICALITY_FIELD_NUMBER: _ClassVar[int]
    ATTACK_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    schema_version: str
    model: ModelInfo
    decision: Decision
    prediction: ClassProbability
    probabilities: _containers.RepeatedCompositeFieldContainer[ClassProbability]
    log_likelihood: LogLikelihood
    typicality: Typicality
    attack: Attack
    explanation: Explanation
    error: Error
    certificate: Certificate
    def __init__(self, schema_version: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., decision: _Optional[_Union[Decision, str]] = ..., prediction: _Optional[_Union[ClassProbability, _Mapping]] = ..., probabilities: _Optional[_Iterable[_Union[ClassProbability, _Mapping]]] = ..., log_likelihood: _Optional[_Union[LogLikelihood, _Mapping]] = ..., typicality: _Optional[_Union[Typicality, _Mapping]] = ..., attack: _Optional[_Union[Attack, _Mapping]] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., certificate: _Optional[_Union[Certificate, _Mapping]] = ...) -> None: ...
