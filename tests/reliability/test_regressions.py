"""Unit regressions for the bugs the reliability tests found (no TorchServe needed).

1. A TIFF whose StripOffsets tag is a FLOAT made Pillow raise ``TypeError`` inside
   ``decode_image``; it escaped the handler and TorchServe failed the whole batch (503 for every
   request in it).  ``decode_image`` now maps any decoder exception to ``undecodable_image``
   and the handler answers an unexpected per-request failure with that request's own 500.
2. A long, thin image (a 100-byte PNG of 40000 x 1 pixels) was padded to a 40000 x 40000 square
   before resizing: 1.6 GB and seconds of CPU per request.  Such images are now shrunk first.
3. Error messages quoted Pillow's ``cannot identify image file <_io.BytesIO object at 0x...>``:
   a heap address in every answer to a non-image.
4. The client SDK did not retry TorchServe's "Worker died." answers (HTTP 507, or 500): every
   request in the batch of a killed worker was lost even with retries on.
"""

from __future__ import annotations

import http.server
import json
import resource
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from reliability_inputs import encode, extreme_aspect_png, tiff_with_float_strip_offsets

from serving.decode import MAX_PADDED_SIDE, decode_image
from serving.errors import ErrorCode, InputError

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_store" / "fashion_mnist"


def error_code(data: bytes) -> ErrorCode:
    with pytest.raises(InputError) as caught:
        decode_image(data, 28, 28, 1)
    return caught.value.code


# --------------------------------------------------------------------------- decode


def test_malformed_tiff_tag_is_undecodable_not_a_type_error() -> None:
    data = tiff_with_float_strip_offsets()
    assert len(data) < 400
    with pytest.raises(InputError) as caught:
        decode_image(data, 28, 28, 1)
    assert caught.value.code == ErrorCode.UNDECODABLE_IMAGE
    assert isinstance(caught.value.__cause__, TypeError)  # what Pillow raised


@pytest.mark.parametrize(
    "exception",
    [KeyError("x"), TypeError("x"), ZeroDivisionError(), IndexError(), RecursionError()],
)
def test_any_decoder_exception_becomes_undecodable(monkeypatch, exception) -> None:
    def broken(image):
        raise exception

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    assert error_code(encode(Image.new("L", (5, 5)), "PNG")) == ErrorCode.UNDECODABLE_IMAGE


def test_memory_error_while_decoding_is_image_too_large(monkeypatch) -> None:
    def exhausted(image):
        raise MemoryError

    monkeypatch.setattr(ImageOps, "exif_transpose", exhausted)
    assert error_code(encode(Image.new("L", (5, 5)), "PNG")) == ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.parametrize("size", [(40_000, 1), (1, 40_000), (100_000, 3)])
def test_long_thin_images_decode_fast_in_bounded_memory(size) -> None:
    data = encode(Image.new("L", size, 255), "PNG")
    assert len(data) < 1000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    out = decode_image(data, 28, 28, 1)
    elapsed = time.perf_counter() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out.shape == (1, 28, 28)
    assert elapsed < 2.0, elapsed
    assert grown_mib < MAX_PADDED_SIDE**2 / 2**20 + 64  # was 1.6 GB+ for 40000 x 1
    line = out[0] if size[0] > size[1] else out[0].T
    assert line[14].max() > 0 and line[0].max() == 0  # a centred line on black


def test_extreme_aspect_png_of_the_catalogue_decodes() -> None:
    assert decode_image(extreme_aspect_png(), 28, 28, 1).shape == (1, 28, 28)


def test_moderately_non_square_images_are_unchanged_by_the_fix() -> None:
    """Below MAX_PADDED_SIDE the policy is exactly pad-to-square then resize."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (300, 1000), dtype=np.uint8)
    square = np.zeros((1000, 1000), np.uint8)
    square[350:650] = pixels
    expected = np.asarray(
        Image.fromarray(square).resize((28, 28), Image.Resampling.BILINEAR, reducing_gap=3.0)
    )
    out = decode_image(encode(Image.fromarray(pixels), "PNG"), 28, 28, 1)[0]
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(
    "data", [b"definitely not an image", b"\x89PNG\r\n\x1a\nbroken", b"GIF89a\x00"]
)
def test_error_messages_carry_no_heap_addresses(data) -> None:
    with pytest.raises(InputError) as caught:
        decode_image(data, 28, 28, 1)
    assert " at 0x" not in caught.value.message
    assert "<_io." not in caught.value.message


# --------------------------------------------------------------------------- handler


class Context:
    def __init__(self) -> None:
        self.system_properties = {"model_dir": str(MODEL_DIR)}
        self.manifest = {"model": {"modelName": "fashion_mnist"}}
        self.metrics = None
        self.model_yaml_config: dict = {}
        self.statuses: dict[int, int] = {}

    def set_response_status(self, code=200, phrase="", idx=0) -> None:  # noqa: ARG002
        self.statuses[idx] = code

    def set_response_content_type(self, idx, value) -> None:
        pass

    def get_all_request_header(self, idx) -> dict:  # noqa: ARG002
        return {}


def test_an_unexpected_per_request_failure_stays_in_that_request(monkeypatch) -> None:
    import torch

    import serving.handler as handler_module

    if not (MODEL_DIR / "weights.safetensors").is_file():
        pytest.skip(f"the model artifact {MODEL_DIR} is missing")
    threads = torch.get_num_threads()
    service = handler_module.TrustGCHandler()
    try:
        service.initialize(Context())
        real = handler_module.decode_image

        def flaky(data, *args, **kwargs):
            if data == b"poison":
                raise RuntimeError("a bug in the decoder")
            return real(data, *args, **kwargs)

        monkeypatch.setattr(handler_module, "decode_image", flaky)
        good = encode(Image.new("L", (28, 28), 80), "PNG")
        context = Context()
        answers = service.handle([{"body": good}, {"body": b"poison"}, {"body": good}], context)
    finally:
        torch.set_num_threads(threads)
    assert context.statuses.get(0, 200) == 200 and context.statuses.get(2, 200) == 200
    assert context.statuses[1] == 500
    assert json.loads(answers[1])["error"]["code"] == "internal_error"
    assert json.loads(answers[0])["decision"] and json.loads(answers[2])["decision"]


# --------------------------------------------------------------------------- client


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, body) pairs."""

    script: list[tuple[int, bytes]] = []
    calls: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).calls.append(self.path)
        status, body = type(self).script.pop(0)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Scripted.calls = []
    yield server
    server.shutdown()
    server.server_close()


WORKER_DIED = (
    b'{\n  "code": %d,\n  "type": "InternalServerException",\n  "message": "Worker died."\n}'
)
BAD_IMAGE = b'{"error":{"code":"undecodable_image","message":"not an image"}}'


@pytest.mark.parametrize("status", [507, 500])
def test_client_retries_worker_died(scripted_server, status) -> None:
    from serving.client import ClassifierClient
    from serving.schema import ErrorResponse

    _Scripted.script = [(status, WORKER_DIED % status), (415, BAD_IMAGE)]
    url = f"http://127.0.0.1:{scripted_server.server_port}"
    answer = ClassifierClient(http_url=url, token="t", backoff=0.01).classify(b"x")
    assert isinstance(answer, ErrorResponse) and answer.error.code == "undecodable_image"
    assert len(_Scripted.calls) == 2


def test_client_does_not_retry_the_handlers_own_500(scripted_server) -> None:
    from serving.client import ClassifierClient, ClientError

    body = b'{"error":{"code":"internal_error","message":"the model failed on this batch"}}'
    _Scripted.script = [(500, body), (415, BAD_IMAGE)]
    url = f"http://127.0.0.1:{scripted_server.server_port}"
    with pytest.raises(ClientError):
        ClassifierClient(http_url=url, token="t", backoff=0.01).classify(b"x")
    assert len(_Scripted.calls) == 1


def test_client_retries_grpc_worker_died() -> None:
    import grpc

    from serving.client import _retryable_grpc

    class Error(grpc.RpcError):
        def __init__(self, code, details) -> None:
            self._code, self._details = code, details

        def code(self):
            return self._code

        def details(self):
            return self._details

    assert _retryable_grpc(Error(grpc.StatusCode.INTERNAL, "Worker died."))
    assert _retryable_grpc(Error(grpc.StatusCode.UNAVAILABLE, ""))
    assert not _retryable_grpc(Error(grpc.StatusCode.INTERNAL, '{"error": {}}'))
    assert not _retryable_grpc(Error(grpc.StatusCode.INVALID_ARGUMENT, "Worker died."))
