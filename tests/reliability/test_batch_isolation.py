"""Bad inputs mixed into concurrent batches never change the answers to the good ones.

Rounds of 32 concurrent requests (the model batches up to 16 per worker, two workers) mix valid
Fashion-MNIST images, some asking for explanations or protobuf answers, with broken and
malicious bodies.  Every valid image must get the in-process ``Predictor``'s answer: the same
predicted class and decision, every probability within 1e-4 (float32 kernels block differently
per batch size, so bit equality is not expected); every bad one its own 4xx; no worker restarts.
The crafted TIFF is the regression case: before the fix in ``serving/decode.py`` Pillow's
``TypeError`` escaped the handler and failed every request of its batch with a 503.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image
from reliability_fuzz import png_declaring
from reliability_inputs import extreme_aspect_png, garment_png, tiff_with_float_strip_offsets

from serving.proto_codec import from_protobuf
from serving.schema import ClassificationResponse, ErrorResponse

pytestmark = pytest.mark.integration

ROUNDS = 2
GOOD_PER_ROUND = 24


def bad_requests() -> list[tuple[bytes, dict, int, str]]:
    """Body, extra headers, expected status and error code."""
    return [
        (b"", {}, 400, "empty_body"),
        (b"\x89PNG\r\n\x1a\n broken", {}, 415, "undecodable_image"),
        (tiff_with_float_strip_offsets(), {}, 415, "undecodable_image"),
        (png_declaring(100_000, 100_000), {}, 413, "image_too_large"),
        (b"hello", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (garment_png(), {"X-Trustgc-Top-K": "0"}, 400, "invalid_parameter"),
        (garment_png(), {"X-Trustgc-Format": "yaml"}, 400, "invalid_parameter"),
        (np.random.default_rng(5).bytes(3000), {}, 415, "undecodable_image"),
    ]


def send_together(url: str, jobs: list[tuple[bytes, dict]]) -> list[requests.Response]:
    """All requests at once (a barrier), so they share the server's batches."""
    barrier = threading.Barrier(len(jobs))

    def send(job: tuple[bytes, dict]) -> requests.Response:
        body, headers = job
        barrier.wait()
        return requests.post(url, data=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(send, jobs))


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def expected(predictor, fashion):
    import torch

    count = ROUNDS * GOOD_PER_ROUND
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        images = np.ascontiguousarray(fashion.images[:count].transpose(0, 3, 1, 2))
        return predictor.predict(images)
    finally:
        torch.set_num_threads(previous)


def test_bad_inputs_in_concurrent_batches_do_not_change_good_answers(
    rel_server, fashion, expected
) -> None:
    workers_before = rel_server.worker_pids()
    bad = bad_requests()
    odd_but_valid = extreme_aspect_png()
    base = {**rel_server.headers, "Content-Type": "application/octet-stream"}
    bad_seen = 0
    for round_number in range(ROUNDS):
        kinds, jobs = [], []  # kinds: ("good", index, headers) / ("bad", case) / ("odd",)
        for offset in range(GOOD_PER_ROUND):
            index = round_number * GOOD_PER_ROUND + offset
            extra = {}
            if index % 4 == 1:
                extra["X-Trustgc-Explain"] = "true"
            if index % 5 == 2:
                extra["X-Trustgc-Format"] = "protobuf"
            kinds.append(("good", index, extra))
            jobs.append((png(fashion.images[index]), {**base, **extra}))
            if offset % 3 == 2:
                case = bad[bad_seen % len(bad)]
                bad_seen += 1
                kinds.append(("bad", case))
                jobs.append((case[0], {**base, **case[1]}))
        kinds.append(("odd",))
        jobs.append((odd_but_valid, base))

        answers = send_together(rel_server.predictions_url, jobs)

        for kind, answer in zip(kinds, answers, strict=True):
            if kind[0] == "bad":
                _, extra, status, code = kind[1]
                assert answer.status_code == status, (code, extra, answer.text[:200])
                assert ErrorResponse.model_validate_json(answer.text).error.code == code
                continue
            assert answer.status_code == 200, (kind, answer.text[:300])
            if kind[0] == "odd":
                ClassificationResponse.model_validate_json(answer.text)
                continue
            _, index, extra = kind
            if extra.get("X-Trustgc-Format") == "protobuf":
                parsed = from_protobuf(answer.content)
            else:
                parsed = ClassificationResponse.model_validate_json(answer.text)
            reference = expected[index]
            assert parsed.prediction.index == reference.predicted_index, index
            assert parsed.decision == reference.decision.value, index
            assert (parsed.explanation is not None) == ("X-Trustgc-Explain" in extra)
            assert len(parsed.probabilities) == len(reference.probabilities)
            for item in parsed.probabilities:
                assert item.probability == pytest.approx(
                    reference.probabilities[item.index], abs=1e-4
                ), index
    assert bad_seen >= len(bad)  # every bad kind was sent at least once
    assert rel_server.worker_pids() == workers_before  # nothing crashed or restarted
