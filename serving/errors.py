"""Typed input errors and the one table that maps them to HTTP and gRPC status codes."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "InputError", "http_status", "grpc_status_name"]


class ErrorCode(StrEnum):
    EMPTY_BODY = "empty_body"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA = "unsupported_media_type"
    UNDECODABLE_IMAGE = "undecodable_image"
    IMAGE_TOO_LARGE = "image_too_large"
    IMAGE_TOO_SMALL = "image_too_small"
    INVALID_PARAMETER = "invalid_parameter"
    MISSING_IMAGE = "missing_image"
    INTERNAL = "internal_error"


# code -> (HTTP status, HTTP reason phrase, gRPC status name)
_STATUS: dict[ErrorCode, tuple[int, str, str]] = {
    ErrorCode.EMPTY_BODY: (400, "Bad Request", "INVALID_ARGUMENT"),
    ErrorCode.MISSING_IMAGE: (400, "Bad Request", "INVALID_ARGUMENT"),
    ErrorCode.INVALID_PARAMETER: (400, "Bad Request", "INVALID_ARGUMENT"),
    ErrorCode.UNDECODABLE_IMAGE: (415, "Unsupported Media Type", "INVALID_ARGUMENT"),
    ErrorCode.UNSUPPORTED_MEDIA: (415, "Unsupported Media Type", "INVALID_ARGUMENT"),
    ErrorCode.IMAGE_TOO_SMALL: (422, "Unprocessable Entity", "INVALID_ARGUMENT"),
    ErrorCode.BODY_TOO_LARGE: (413, "Payload Too Large", "RESOURCE_EXHAUSTED"),
    ErrorCode.IMAGE_TOO_LARGE: (413, "Payload Too Large", "RESOURCE_EXHAUSTED"),
    ErrorCode.INTERNAL: (500, "Internal Server Error", "INTERNAL"),
}


class InputError(ValueError):
    """A request that cannot be answered; carries the code that names the problem."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def http_status(code: ErrorCode) -> tuple[int, str]:
    status, phrase, _ = _STATUS[code]
    return status, phrase


def grpc_status_name(code: ErrorCode) -> str:
    return _STATUS[code][2]
