"""One TorchServe request entry -> image bytes and validated per-request options.

TorchServe hands the handler one dict per request: the raw body under ``body``, or one key per
multipart form field (REST), or one key per entry of the input map (gRPC).  Options are read
from those fields, or from ``X-Trustgc-<Option>`` headers for raw-body uploads: TorchServe 0.12
does not pass URL query strings to handlers (verified), so ``?explain=true`` cannot work.
Options come from *each* request, never from the batch's first one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.certificates import DEFAULT_CERTIFY_SIGMA, MAX_CERTIFY_SAMPLES
from serving.errors import ErrorCode, InputError

__all__ = ["RequestOptions", "parse_request", "wants_protobuf"]

_OPTION_KEYS = ("explain", "top_k", "format", "certify", "certify_sigma")
_BODY_KEYS = ("data", "body", "file", "image")


class RequestOptions(BaseModel):
    """Per-request options: explanations, how many classes, the answer's encoding, and a
    randomized-smoothing certificate (``certify`` noisy copies; 0: none; serving/certificates.py;
    the deployment's own cap is checked by the runtime)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    explain: bool = False
    top_k: int = Field(default=10, ge=1, le=1000)
    format: Literal["json", "protobuf"] = "json"
    certify: int = Field(default=0, ge=0, le=MAX_CERTIFY_SAMPLES)
    certify_sigma: float = Field(default=DEFAULT_CERTIFY_SIGMA, gt=0, le=1)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


HEADER_PREFIX = "x-trustgc-"


def _options(entry: dict[str, Any], headers: dict[str, Any]) -> RequestOptions:
    raw = {}
    for name, value in headers.items():
        lowered = str(name).lower()
        if lowered.startswith(HEADER_PREFIX):
            key = lowered[len(HEADER_PREFIX) :].replace("-", "_")
            raw[key if key in _OPTION_KEYS else f"header {name}"] = _text(value).strip()
    raw.update({key: _text(entry[key]).strip() for key in _OPTION_KEYS if key in entry})
    try:
        options = RequestOptions.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(
            ErrorCode.INVALID_PARAMETER, f"invalid parameter(s): {problems}"
        ) from error
    return options


def _image_bytes(entry: dict[str, Any]) -> bytes:
    candidates = [key for key in _BODY_KEYS if key in entry]
    candidates += [key for key in entry if key not in _BODY_KEYS and key not in _OPTION_KEYS]
    for key in candidates:
        value = entry[key]
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        if isinstance(value, dict | list | str) and key in _BODY_KEYS:
            raise InputError(
                ErrorCode.UNSUPPORTED_MEDIA,
                "the body was parsed as text or JSON: send the image bytes with "
                "Content-Type application/octet-stream (curl -T image.png, or "
                "--data-binary @image.png -H 'Content-Type: application/"
                "octet-stream') or as a multipart file field",
            )
    raise InputError(
        ErrorCode.MISSING_IMAGE,
        "the request carries no image: send image bytes as the body or as a multipart file field",
    )


def parse_request(
    entry: Any, headers: dict[str, Any] | None = None
) -> tuple[bytes, RequestOptions]:
    """Validate one request; raises :class:`InputError` naming what is wrong."""
    if not isinstance(entry, dict):
        raise InputError(ErrorCode.MISSING_IMAGE, "malformed request entry")
    options = _options(entry, headers or {})
    return _image_bytes(entry), options


def wants_protobuf(entry: Any, headers: dict[str, Any] | None = None) -> bool:
    """Best effort for error answers: did the request ask for protobuf, valid or not?"""
    values = [entry.get("format")] if isinstance(entry, dict) else []
    values += [v for k, v in (headers or {}).items() if str(k).lower() == HEADER_PREFIX + "format"]
    return any(v is not None and _text(v).strip().lower() == "protobuf" for v in values)
