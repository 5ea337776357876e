"""Typed input errors and the one table that maps them to HTTP status codes.

gRPC answers carry no per-request status (TorchServe ignores one set by the handler), so there
the error code in the response body names the problem.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode", "InputError", "http_status"]


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


# code -> (HTTP status, HTTP reason phrase)
_STATUS: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.EMPTY_BODY: (400, "Bad Request"),
    ErrorCode.MISSING_IMAGE: (400, "Bad Request"),
    ErrorCode.INVALID_PARAMETER: (400, "Bad Request"),
    ErrorCode.UNDECODABLE_IMAGE: (415, "Unsupported Media Type"),
    ErrorCode.UNSUPPORTED_MEDIA: (415, "Unsupported Media Type"),
    ErrorCode.IMAGE_TOO_SMALL: (422, "Unprocessable Entity"),
    ErrorCode.BODY_TOO_LARGE: (413, "Payload Too Large"),
    ErrorCode.IMAGE_TOO_LARGE: (413, "Payload Too Large"),
    ErrorCode.INTERNAL: (500, "Internal Server Error"),
}


class InputError(ValueError):
    """A request that cannot be answered; carries the code that names the problem."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def http_status(code: ErrorCode) -> tuple[int, str]:
    return _STATUS[code]
