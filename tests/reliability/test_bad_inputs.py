"""The bad-input catalogue against a real TorchServe (documented in docs/reliability.md).

Each case sends one odd or malicious request and checks its documented answer: the HTTP status
and the handler's JSON error code, or a 200 with a decision for valid-but-odd images.  After
every case the model's workers must be the same processes (pids from the management API: no
crash, no restart) and the next valid request must succeed.  Option values already covered by
tests/serving/test_integration.py (top_k "abc", "0", "-1", "1001", "2.5"; explain "perhaps";
an unknown X-Trustgc header) are not repeated here.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from PIL import Image
from reliability_fuzz import png_declaring
from reliability_inputs import (
    TEN_MIB,
    animated_gif,
    cmyk_jpeg,
    encode,
    exif_rotated_jpeg,
    extreme_aspect_png,
    garment,
    garment_png,
    huge_rgb_jpeg,
    noise,
    palette_with_transparency,
    png_16_bit,
    tiff_with_float_strip_offsets,
    truncated,
)

from serving.proto_codec import from_protobuf
from serving.schema import ClassificationResponse, ErrorResponse

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
DECISIONS = {"accepted", "rejected_ood", "flagged_attack"}


# --------------------------------------------------------------------------- the catalogue


def multipart(fields: dict, files: dict | None = None) -> dict:
    return {"data": fields, "files": files or {}}


@dataclass(frozen=True)
class Case:
    """One catalogue entry: what is sent and the documented answer."""

    id: str
    body: Callable[[], bytes | None] | None = None  # raw body (octet-stream unless headers)
    headers: dict = field(default_factory=dict)
    form: Callable[[], dict] | None = None  # multipart/form fields instead of a raw body
    method: str = "POST"
    status: int = 200
    code: str | None = None  # the handler's error code; None for a 200 or TorchServe's own
    message: str | None = None  # a part of the error message that names the problem
    protobuf: bool = False
    max_seconds: float = 30.0


CATALOGUE = [
    Case("empty_body", lambda: b"", status=400, code="empty_body"),
    Case("get_without_body", None, method="GET", status=400, code="empty_body"),
    Case("random_bytes", lambda: noise(64, 64, 1).tobytes(), status=415, code="undecodable_image"),
    Case(
        "png_signature_then_garbage",
        lambda: b"\x89PNG\r\n\x1a\n" + noise(16, 16, 2).tobytes(),
        status=415,
        code="undecodable_image",
    ),
    Case(
        "truncated_png",
        lambda: truncated(encode(Image.fromarray(noise(64, 64)), "PNG")),
        status=415,
        code="undecodable_image",
    ),
    Case(
        "truncated_jpeg",
        lambda: truncated(encode(Image.fromarray(noise(64, 64)), "JPEG")),
        status=415,
        code="undecodable_image",
    ),
    Case("png_header_only", lambda: garment_png()[:33], status=415, code="undecodable_image"),
    Case(
        "text_body",
        lambda: b"hello, is this a shoe?",
        headers={"Content-Type": "text/plain"},
        status=415,
        code="unsupported_media_type",
        message="the body was parsed as text or JSON",
    ),
    Case(
        "json_body",
        lambda: b'{"image": "ankle_boot.png"}',
        headers={"Content-Type": "application/json"},
        status=415,
        code="unsupported_media_type",
    ),
    Case(
        "json_base64_image",
        lambda: b'{"data": "' + base64.b64encode(garment_png()) + b'"}',
        headers={"Content-Type": "application/json"},
        status=415,
        code="unsupported_media_type",
    ),
    Case(
        "malformed_json_body",
        lambda: b'{"data": ',
        headers={"Content-Type": "application/json"},
        status=415,
        code="undecodable_image",
    ),
    Case(
        "svg_image",
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"/>',
        headers={"Content-Type": "application/octet-stream"},
        status=415,
        code="undecodable_image",
    ),
    Case(
        "unsupported_format_ppm",
        lambda: encode(Image.fromarray(garment()), "PPM"),
        status=415,
        code="undecodable_image",
    ),
    Case("zero_size_png", lambda: png_declaring(0, 0), status=415, code="undecodable_image"),
    Case("one_by_one_png", lambda: encode(Image.new("L", (1, 1), 255), "PNG")),
    Case(
        "decompression_bomb_png",
        lambda: png_declaring(100_000, 100_000),
        status=413,
        code="image_too_large",
        max_seconds=5,
    ),
    Case(
        "over_pixel_limit_png",
        lambda: png_declaring(8_000, 6_000),
        status=413,
        code="image_too_large",
        max_seconds=5,
    ),
    Case("extreme_aspect_png", extreme_aspect_png, max_seconds=10),
    Case("png_16_bit", png_16_bit),
    Case("cmyk_jpeg", cmyk_jpeg),
    Case("palette_with_transparency", palette_with_transparency),
    Case("animated_gif", animated_gif),
    Case("exif_rotated_jpeg", exif_rotated_jpeg),
    Case("huge_rgb_jpeg_4000x3000", huge_rgb_jpeg, max_seconds=30),
    Case(
        "png_with_trailing_garbage",
        lambda: garment_png() + noise(256, 256, 4).tobytes(),
    ),
    Case(
        "tiff_float_strip_offsets",
        tiff_with_float_strip_offsets,
        status=415,
        code="undecodable_image",
    ),
    Case("body_over_10_mib", lambda: b"\x00" * (TEN_MIB + 1), status=413, code=None),
    Case(
        "body_of_exactly_10_mib",
        lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * (TEN_MIB - 8),
        status=415,
        code="undecodable_image",
    ),
    Case(
        "multipart_without_file",
        form=lambda: multipart({"top_k": "3", "explain": "false"}),
        status=400,
        code="missing_image",
    ),
    Case(
        "multipart_empty_file",
        form=lambda: multipart({}, {"data": ("empty.png", b"", "image/png")}),
        status=400,
        code="empty_body",
    ),
    Case(
        "form_urlencoded_body",
        form=lambda: {"data": {"image": "ankle_boot.png"}},
        status=415,
        code="undecodable_image",
        message="it is text ('ankle_boot.png')",
    ),
    Case(
        "multipart_text_field",
        form=lambda: multipart({}, {"data": (None, b"hello, is this a shoe?")}),
        status=415,
        code="undecodable_image",
        message="it is text ('hello, is this a shoe?')",
    ),
    Case(
        "multipart_text_plain_field",
        form=lambda: multipart({}, {"data": (None, b"hello, is this a shoe?", "text/plain")}),
        status=415,
        code="undecodable_image",
        message="it is text ('hello, is this a shoe?')",
    ),
    Case(
        "png_sent_as_text_plain",
        garment_png,
        headers={"Content-Type": "text/plain"},
    ),
    Case(
        "png_sent_as_application_json",
        garment_png,
        headers={"Content-Type": "application/json"},
    ),
    Case(
        "top_k_header_empty",
        garment_png,
        headers={"X-Trustgc-Top-K": ""},
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "top_k_header_huge_integer",
        garment_png,
        headers={"X-Trustgc-Top-K": "9" * 40},
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "top_k_header_latin1_bytes",
        garment_png,
        headers={"X-Trustgc-Top-K": "\xff3"},
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "explain_form_field_invalid",
        form=lambda: multipart(
            {"explain": "maybe"}, {"data": ("boot.png", garment_png(), "image/png")}
        ),
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "format_header_invalid",
        garment_png,
        headers={"X-Trustgc-Format": "xml"},
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "format_form_field_invalid",
        form=lambda: multipart(
            {"format": "yaml"}, {"data": ("boot.png", garment_png(), "image/png")}
        ),
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "top_k_form_field_empty",
        form=lambda: multipart({"top_k": ""}, {"data": ("boot.png", garment_png(), "image/png")}),
        status=400,
        code="invalid_parameter",
    ),
    Case(
        "protobuf_format_with_bad_image",
        lambda: b"not an image",
        headers={"X-Trustgc-Format": "protobuf"},
        status=415,
        code="undecodable_image",
        protobuf=True,
    ),
]


def send(served, case: Case) -> requests.Response:
    if case.form is not None:
        return requests.post(
            served.predictions_url, headers=served.headers, timeout=120, **case.form()
        )
    body = case.body() if case.body is not None else None
    headers = {**served.headers, "Content-Type": "application/octet-stream", **case.headers}
    return requests.request(
        case.method, served.predictions_url, data=body, headers=headers, timeout=120
    )


def check_answer(case: Case, answer: requests.Response) -> str:
    """Assert the documented answer; returns what it was, for the log."""
    assert answer.status_code == case.status, (case.id, answer.status_code, answer.text[:300])
    if case.status == 200:
        parsed = ClassificationResponse.model_validate_json(answer.text)
        assert parsed.decision in DECISIONS
        return f"200 {parsed.decision} ({parsed.prediction.label})"
    if case.code is None:  # TorchServe answered before the handler: no JSON error body
        return f"{answer.status_code} (TorchServe, {len(answer.content)} byte body)"
    if case.protobuf:
        assert answer.headers["content-type"].startswith("application/x-protobuf")
        parsed = from_protobuf(answer.content)
    else:
        assert answer.headers["content-type"].startswith("application/json"), answer.headers
        parsed = ErrorResponse.model_validate_json(answer.text)
    assert isinstance(parsed, ErrorResponse)
    assert parsed.error.code == case.code, (case.id, parsed.error)
    assert parsed.error.message
    assert case.message is None or case.message in parsed.error.message, parsed.error
    assert " at 0x" not in parsed.error.message  # no Python object reprs (heap addresses)
    return f"{answer.status_code} {parsed.error.code}"


def test_catalogue_has_at_least_25_distinct_cases() -> None:
    assert len(CATALOGUE) >= 25
    assert len({case.id for case in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_bad_input(rel_server, case: Case) -> None:
    workers_before = rel_server.worker_pids()
    started = time.monotonic()
    answer = send(rel_server, case)
    elapsed = time.monotonic() - started
    seen = check_answer(case, answer)
    print(f"\n{case.id}: {seen} in {elapsed * 1000:.0f} ms")
    assert elapsed < case.max_seconds, f"{case.id} took {elapsed:.1f} s"
    # the same worker processes: nothing crashed or was restarted
    assert rel_server.worker_pids() == workers_before
    assert all(worker["status"] == "READY" for worker in rel_server.workers())
    # and the next valid request succeeds
    follow_up = rel_server.post(garment_png())
    assert follow_up.status_code == 200, follow_up.text
    assert ClassificationResponse.model_validate_json(follow_up.text).prediction.index == 9


def test_exif_rotation_is_undone(rel_server) -> None:
    """The EXIF-rotated JPEG is classified like the upright image."""
    upright = ClassificationResponse.model_validate_json(rel_server.post(garment_png()).text)
    rotated = rel_server.post(exif_rotated_jpeg())
    assert rotated.status_code == 200, rotated.text
    parsed = ClassificationResponse.model_validate_json(rotated.text)
    assert parsed.prediction.index == upright.prediction.index == 9  # ankle boot


def test_catalogue_is_documented() -> None:
    """docs/reliability.md has a table row for every case, with its status."""
    text = DOC.read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if "|" in line
    }
    for case in CATALOGUE:
        assert case.id in rows, f"{case.id} is missing from {DOC}"
        assert f"| {case.status}" in rows[case.id], f"{case.id}: status {case.status} not in doc"
        if case.code:
            assert case.code in rows[case.id], f"{case.id}: code {case.code} not in doc"
