"""Open Inference Protocol (KServe v2) tensors <-> the service's images, options and answers.

Request: one BYTES input tensor (any name; ``images`` by convention) with one encoded image per
element, shape ``[N]``.  Over gRPC the elements are ``bytes_contents`` or raw bytes; over REST
they travel in the binary-tensor extension (``Inference-Header-Content-Length``) or, in plain
JSON, as base64 strings.  Per-request options are OIP request parameters ``top_k`` (int) and
``explain`` (bool), validated by the same :class:`serving.requests.RequestOptions` as TorchServe's
headers; other parameters (``binary_data_output``) are the protocol's and are left alone.

Response, one element per image in request order:

    answer          BYTES [N]     the JSON answer (serving.schema), or the image's JSON error
    decision        BYTES [N]     accepted / rejected_ood / flagged_attack, or invalid_input
    probabilities   FP32  [N, K]  class posteriors in class order (NaN row for an error)
    ood_p_value     FP64  [N]     the served OoD p-value (NaN for an error)
    attack_p_value  FP64  [N]     the served attack p-value (NaN for an error)

This module does no I/O and holds no model: the runtime adapter (serving.kserve_runtime) calls
it around the shared :class:`trustgc.trust.Predictor`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from serving.errors import ErrorCode, InputError
from serving.requests import RequestOptions
from serving.schema import ClassificationResponse, ErrorResponse

__all__ = [
    "ImageAnswer",
    "OUTPUT_NAMES",
    "image_elements",
    "outputs",
    "request_options",
]

OUTPUT_NAMES = ("answer", "decision", "probabilities", "ood_p_value", "attack_p_value")
_OPTION_KEYS = ("top_k", "explain", "certify", "certify_sigma")


@dataclass(frozen=True)
class ImageAnswer:
    """One image's outcome: a classification or an error, plus its class posteriors."""

    response: ClassificationResponse | ErrorResponse
    probabilities: np.ndarray | None = None  # (K,) in class order; None for an error


def _plain(parameters: Any) -> dict[str, Any]:
    """REST dicts and gRPC ``InferParameter`` maps as one plain dict."""
    if not parameters:
        return {}
    plain: dict[str, Any] = {}
    for key, value in dict(parameters).items():
        if hasattr(value, "WhichOneof"):
            field = value.WhichOneof("parameter_choice")
            value = getattr(value, field) if field else None
        plain[str(key)] = value
    return plain


def request_options(parameters: Any) -> RequestOptions:
    """``top_k``, ``explain``, ``certify`` and ``certify_sigma`` from the request's parameters
    (they apply to every image of the request); raises InputError if invalid."""
    raw = {k: v for k, v in _plain(parameters).items() if k in _OPTION_KEYS}
    try:
        return RequestOptions.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(
            ErrorCode.INVALID_PARAMETER, f"invalid parameter(s): {problems}"
        ) from error


def _element(value: Any) -> bytes | InputError:
    if isinstance(value, bytes | bytearray | np.bytes_):
        return bytes(value)
    if isinstance(value, str):  # plain REST JSON: base64 text
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return InputError(
                ErrorCode.UNDECODABLE_IMAGE,
                "a BYTES element sent as JSON text must be base64 (or use the binary tensor "
                "extension with Inference-Header-Content-Length)",
            )
    return InputError(ErrorCode.MISSING_IMAGE, f"a BYTES element of type {type(value).__name__}")


def image_elements(inputs: list[Any]) -> list[bytes | InputError]:
    """The encoded images of the request's one BYTES input; an element that is not usable
    becomes its own InputError (the others are still answered)."""
    if len(inputs) != 1:
        raise InputError(
            ErrorCode.MISSING_IMAGE,
            f"expected exactly one BYTES input tensor of encoded images, got {len(inputs)}",
        )
    tensor = inputs[0]
    if tensor.datatype != "BYTES":
        raise InputError(
            ErrorCode.UNSUPPORTED_MEDIA,
            f"input {tensor.name!r} has datatype {tensor.datatype}: send encoded images "
            "(PNG, JPEG, ...) as a BYTES tensor, one image per element",
        )
    if getattr(tensor, "_raw_data", None) is not None:
        values = list(np.asarray(tensor.as_numpy(), dtype=object).reshape(-1))
    else:
        values = list(np.asarray(tensor.data if tensor.data is not None else [], object).ravel())
    if not values:
        raise InputError(ErrorCode.EMPTY_BODY, "the BYTES input holds no images")
    return [_element(value) for value in values]


def outputs(answers: list[ImageAnswer], num_classes: int) -> list[dict[str, Any]]:
    """The response tensors as ``{name, datatype, shape, data}`` (numpy data)."""
    count = len(answers)
    probabilities = np.full((count, num_classes), np.nan, dtype=np.float32)
    ood = np.full(count, np.nan, dtype=np.float64)
    attack = np.full(count, np.nan, dtype=np.float64)
    texts, decisions = [], []
    for i, answer in enumerate(answers):
        response = answer.response
        if isinstance(response, ClassificationResponse):
            texts.append(response.model_dump_json(exclude_none=True).encode())
            decisions.append(response.decision.encode())
            probabilities[i] = answer.probabilities
            ood[i] = response.typicality.p_value
            attack[i] = response.attack.p_value
        else:
            texts.append(response.model_dump_json().encode())
            decisions.append(b"invalid_input")
    return [
        {"name": "answer", "datatype": "BYTES", "shape": [count], "data": _bytes(texts)},
        {"name": "decision", "datatype": "BYTES", "shape": [count], "data": _bytes(decisions)},
        {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [count, num_classes],
            "data": probabilities,
        },
        {"name": "ood_p_value", "datatype": "FP64", "shape": [count], "data": ood},
        {"name": "attack_p_value", "datatype": "FP64", "shape": [count], "data": attack},
    ]


def _bytes(values: list[bytes]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
