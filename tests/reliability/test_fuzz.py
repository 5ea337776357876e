"""Property-based fuzzing of the request path: nothing but ``InputError`` may escape.

``serving.decode.decode_image`` and ``serving.requests.parse_request`` get structured inputs
from ``reliability_fuzz``: valid images of random sizes, modes and formats made with Pillow,
then mutated (truncated, bit-flipped, overwritten, spliced), PNG headers declaring any size,
format magics followed by junk, and raw bytes; request entries with every kind of field value
and ``X-Trustgc-*`` headers.  The default suite runs CI-sized campaigns (about 500 examples
each, a few seconds); the ``slow`` campaign runs 10,000 decoder inputs, 2,000 whole requests
and 300 handler batches.  ``atheris`` (coverage-guided, optional) runs a further campaign when
installed.  Each campaign counts the inputs it actually ran and asserts the count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reliability_fuzz as rf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.errors import ErrorCode, InputError, http_status
from serving.requests import RequestOptions, parse_request, wants_protobuf

HERE = Path(__file__).resolve().parent
MODEL_DIR = HERE.parents[1] / "model_store" / "fashion_mnist"
CI_EXAMPLES = int(os.environ.get("TRUSTGC_FUZZ_CI_EXAMPLES", "500"))
SLOW_EXAMPLES = int(os.environ.get("TRUSTGC_FUZZ_SLOW_EXAMPLES", "10000"))
SETTINGS = {
    "deadline": None,
    "database": None,  # no .hypothesis/ directory in the repository
    "suppress_health_check": list(HealthCheck),
    "print_blob": True,  # a failure prints the @reproduce_failure blob
}


@pytest.fixture(autouse=True)
def _quiet_pillow():
    """Pillow warns about the corrupt EXIF and TIFF tags the fuzzer makes; they are expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def check_request(entry: Any, headers: dict, decode: bool) -> str:
    """parse_request (and decode_image on what it returns) raise only InputError."""
    assert isinstance(wants_protobuf(entry, headers), bool)
    try:
        image, options = parse_request(entry, headers)
    except InputError as error:
        assert isinstance(error.code, ErrorCode) and error.message
        assert 400 <= http_status(error.code)[0] < 500
        return error.code.value
    assert isinstance(image, bytes)
    assert isinstance(options, RequestOptions)
    assert 1 <= options.top_k <= 1000 and options.format in ("json", "protobuf")
    if decode:
        code = rf.check_decode(image)
        return code.value if code else "ok"
    return "ok"


def decode_campaign(examples: int) -> dict[str, int]:
    seen: dict[str, int] = {}

    @settings(max_examples=examples, **SETTINGS)
    @given(body=rf.any_body(), channels=st.sampled_from([1, 3]))
    def campaign(body: bytes, channels: int) -> None:
        code = rf.check_decode(body, channels)
        key = code.value if code else "decoded"
        seen[key] = seen.get(key, 0) + 1

    campaign()
    return seen


def request_campaign(examples: int, decode: bool) -> dict[str, int]:
    seen: dict[str, int] = {}
    body = rf.any_body() if decode else None

    @settings(max_examples=examples, **SETTINGS)
    @given(entry=rf.entries(body), headers=rf.request_headers())
    def campaign(entry: Any, headers: dict) -> None:
        key = check_request(entry, headers, decode)
        seen[key] = seen.get(key, 0) + 1

    campaign()
    return seen


def report(name: str, seen: dict[str, int]) -> None:
    print(f"\n{name}: {sum(seen.values())} inputs, outcomes {dict(sorted(seen.items()))}")


# --------------------------------------------------------------------------- CI-sized


def test_decode_image_fuzz_ci() -> None:
    seen = decode_campaign(CI_EXAMPLES)
    report("decode_image", seen)
    assert sum(seen.values()) >= CI_EXAMPLES
    assert seen.get("decoded", 0) > CI_EXAMPLES // 10  # the valid images do get through
    assert seen.get("undecodable_image", 0) > 0


def test_parse_request_fuzz_ci() -> None:
    seen = request_campaign(CI_EXAMPLES, decode=False)
    report("parse_request", seen)
    assert sum(seen.values()) >= CI_EXAMPLES
    assert {"ok", "invalid_parameter", "missing_image"} <= set(seen)


def test_parse_then_decode_fuzz_ci() -> None:
    seen = request_campaign(CI_EXAMPLES // 2, decode=True)
    report("parse_request + decode_image", seen)
    assert sum(seen.values()) >= CI_EXAMPLES // 2


# --------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_decode_image_fuzz_10k() -> None:
    seen = decode_campaign(SLOW_EXAMPLES)
    report("decode_image (slow)", seen)
    assert sum(seen.values()) >= SLOW_EXAMPLES


@pytest.mark.slow
def test_parse_then_decode_fuzz_slow() -> None:
    seen = request_campaign(SLOW_EXAMPLES // 5, decode=True)
    report("parse_request + decode_image (slow)", seen)
    assert sum(seen.values()) >= SLOW_EXAMPLES // 5


# --------------------------------------------------------------------------- the handler


class FakeContext:
    """What TrustGCHandler uses of TorchServe's context, recording statuses."""

    def __init__(self, headers: list[dict]) -> None:
        self.system_properties = {"model_dir": str(MODEL_DIR)}
        self.manifest = {"model": {"modelName": "fashion_mnist"}}
        self.metrics = None
        self.model_yaml_config: dict = {}
        self.headers = headers
        self.statuses: dict[int, int] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:  # noqa: ARG002
        self.statuses[idx] = code

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def get_all_request_header(self, idx: int) -> dict:
        return self.headers[idx]


@pytest.fixture(scope="module")
def handler():
    import torch

    from serving.handler import TrustGCHandler

    if not (MODEL_DIR / "weights.safetensors").is_file():
        pytest.skip(f"the model artifact {MODEL_DIR} is missing")
    threads = torch.get_num_threads()
    service = TrustGCHandler()
    service.initialize(FakeContext([]))
    yield service
    torch.set_num_threads(threads)


def handler_campaign(handler, examples: int) -> int:
    from serving.proto_codec import from_protobuf
    from serving.schema import ClassificationResponse, ErrorResponse

    valid = rf.encode(rf.make_image("L", (28, 28), "gradient", 0), "PNG", {})
    request = st.tuples(rf.entries(st.one_of(st.just(valid), rf.any_body())), rf.request_headers())
    count = [0]

    @settings(max_examples=examples, **SETTINGS)
    @given(batch=st.lists(request, min_size=1, max_size=6))
    def campaign(batch) -> None:
        context = FakeContext([headers for _, headers in batch])
        answers = handler.handle([entry for entry, _ in batch], context)
        assert len(answers) == len(batch)
        for index, answer in enumerate(answers):
            count[0] += 1
            status = context.statuses.get(index, 200)
            if isinstance(answer, bytes) and not answer.startswith(b"{"):
                parsed = from_protobuf(answer)
            else:
                text = answer.decode() if isinstance(answer, bytes) else answer
                payload = json.loads(text)
                model = ErrorResponse if "error" in payload else ClassificationResponse
                parsed = model.model_validate(payload)
            if isinstance(parsed, ErrorResponse):
                assert 400 <= status < 500, (status, parsed)  # never the batch's 500
            else:
                assert status == 200

    campaign()
    return count[0]


def test_handler_batches_fuzz_ci(handler) -> None:
    """Whole fuzzed batches through the handler: one answer each, 4xx or 200, never a 500."""
    requests_seen = handler_campaign(handler, 40)
    print(f"\nhandler: {requests_seen} fuzzed requests in 40 batches")
    assert requests_seen >= 40


@pytest.mark.slow
def test_handler_batches_fuzz_slow(handler) -> None:
    requests_seen = handler_campaign(handler, 300)
    print(f"\nhandler (slow): {requests_seen} fuzzed requests in 300 batches")
    assert requests_seen >= 300


# --------------------------------------------------------------------------- atheris


@pytest.mark.slow
def test_atheris_decode_campaign(tmp_path) -> None:
    """Coverage-guided fuzzing of decode_image with atheris, seeded with valid images."""
    pytest.importorskip("atheris", reason="atheris is optional (pip install atheris)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for fmt, modes in rf.ACCEPTED.items():
        for mode in modes:
            size = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
            image = rf.make_image(mode, size, "noise", int(rng.integers(0, 1000)))
            (corpus / f"{fmt}-{mode.replace(';', '_')}").write_bytes(rf.encode(image, fmt, {}))
    runs = int(os.environ.get("TRUSTGC_ATHERIS_RUNS", "100000"))
    log = tmp_path / "atheris.log"
    with open(log, "wb") as output:
        finished = subprocess.run(
            [
                sys.executable,
                str(HERE / "atheris_decode.py"),
                f"-runs={runs}",
                "-max_len=8192",
                "-rss_limit_mb=4096",
                "-timeout=20",
                str(corpus),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            timeout=1800,
            check=False,
        )
    text = log.read_text(errors="replace")
    done = [line for line in text.splitlines() if line.startswith("Done ")]
    print(f"\natheris: {done[-1] if done else text[-400:]}")
    assert finished.returncode == 0, text[-3000:]
    assert done, text[-3000:]
