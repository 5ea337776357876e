"""Units of the OIP runtime without a server: the dynamic batcher and the tensor codec."""

from __future__ import annotations

import asyncio
import base64
import threading

import numpy as np
import pytest

from serving.errors import ErrorCode, InputError
from serving.kserve_import import import_kserve
from serving.oip_batcher import MicroBatcher
from serving.oip_codec import ImageAnswer, image_elements, outputs, request_options
from serving.schema import error_response


def _images(count: int, value: int) -> np.ndarray:
    return np.full((count, 1, 2, 2), value, dtype=np.uint8)


def test_concurrent_requests_share_a_batch_and_get_their_own_results() -> None:
    calls: list[tuple[int, list[bool]]] = []

    def run(pixels: np.ndarray, flags: list[bool]) -> list[int]:
        calls.append((len(pixels), flags))
        return [int(p[0, 0, 0]) for p in pixels]  # each image's marker value

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(run, max_batch=8, max_delay=0.05, workers=1)
        try:
            return await asyncio.gather(
                batcher.submit(_images(1, 1), False),
                batcher.submit(_images(2, 2), True),
                batcher.submit(_images(3, 3), False),
            )
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert results == [[1], [2, 2], [3, 3, 3]]
    assert calls == [(6, [False, True, True, False, False, False])]


def test_a_batch_never_exceeds_max_batch() -> None:
    sizes: list[int] = []
    lock = threading.Lock()

    def run(pixels, flags):  # noqa: ARG001
        with lock:
            sizes.append(len(pixels))
        return list(range(len(pixels)))

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch=4, max_delay=0.02, workers=2)
        try:
            await asyncio.gather(*(batcher.submit(_images(3, 0), False) for _ in range(4)))
            assert await batcher.submit(_images(6, 0), False) == list(range(6))  # alone
        finally:
            batcher.close()

    asyncio.run(main())
    assert sorted(sizes) == [3, 3, 3, 3, 6]


def test_a_failing_batch_fails_its_requests_only() -> None:
    def run(pixels, flags):  # noqa: ARG001
        if pixels[0, 0, 0, 0] == 9:
            raise RuntimeError("boom")
        return [0] * len(pixels)

    async def main() -> None:
        batcher = MicroBatcher(run, max_batch=1, max_delay=0.0, workers=1)
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(_images(1, 9), False)
            assert await batcher.submit(_images(1, 1), False) == [0]
        finally:
            batcher.close()

    asyncio.run(main())


class _Tensor:
    def __init__(self, data, datatype: str = "BYTES") -> None:
        self.name, self.datatype, self.data = "images", datatype, data


def test_image_elements_from_bytes_and_base64() -> None:
    elements = image_elements([_Tensor([b"abc", base64.b64encode(b"xyz").decode(), "%%%"])])
    assert elements[:2] == [b"abc", b"xyz"]
    assert isinstance(elements[2], InputError)
    assert elements[2].code == ErrorCode.UNDECODABLE_IMAGE


@pytest.mark.parametrize(
    ("inputs", "code"),
    [
        ([], ErrorCode.MISSING_IMAGE),
        ([_Tensor([1.0], "FP32")], ErrorCode.UNSUPPORTED_MEDIA),
        ([_Tensor([])], ErrorCode.EMPTY_BODY),
    ],
)
def test_unusable_inputs_name_the_problem(inputs, code) -> None:
    with pytest.raises(InputError) as caught:
        image_elements(inputs)
    assert caught.value.code == code


def test_request_options_from_rest_and_grpc_parameters() -> None:
    pb = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2")

    assert request_options({"top_k": 3, "explain": True, "binary_data_output": False}).top_k == 3
    grpc_params = {
        "top_k": pb.InferParameter(int64_param=2),
        "explain": pb.InferParameter(bool_param=True),
    }
    options = request_options(grpc_params)
    assert (options.top_k, options.explain) == (2, True)
    with pytest.raises(InputError, match="top_k") as caught:
        request_options({"top_k": 0})
    assert caught.value.code == ErrorCode.INVALID_PARAMETER
    # a certificate's options: OIP has no float parameter, so sigma may come as text
    certify = {
        "certify": pb.InferParameter(int64_param=100),
        "certify_sigma": pb.InferParameter(string_param="0.1"),
    }
    options = request_options(certify)
    assert (options.certify, options.certify_sigma) == (100, 0.1)
    assert request_options({"certify": 5, "certify_sigma": 0.5}).certify_sigma == 0.5
    with pytest.raises(InputError, match="certify_sigma"):
        request_options({"certify": 5, "certify_sigma": "two"})


def test_outputs_for_errors_are_nan_and_invalid_input() -> None:
    tensors = {t["name"]: t for t in outputs([ImageAnswer(error_response("x", "y"))], 4)}
    assert tensors["probabilities"]["shape"] == [1, 4]
    assert np.isnan(tensors["probabilities"]["data"]).all()
    assert np.isnan(tensors["ood_p_value"]["data"][0])
    assert list(tensors["decision"]["data"]) == [b"invalid_input"]
    assert tensors["answer"]["data"][0].startswith(b'{"error"')


def test_a_failed_certificate_fails_only_its_image() -> None:
    """The KServe model adds certificates after the batch; one that raises becomes that image's
    internal error, counted once as such and not also as a decision; the other image keeps its
    certificate and its decision is counted."""
    import asyncio
    from pathlib import Path

    from serving.kserve_runtime import KServeSettings, TrustGCModel
    from serving.requests import RequestOptions
    from serving.responses import build_response
    from serving.schema import ClassificationResponse, ErrorResponse
    from trustgc.trust.predictor import Predictor

    model_dir = Path(__file__).resolve().parents[2] / "model_store" / "fashion_mnist"
    predictor = Predictor.from_artifact(model_dir, "cpu", "onnxruntime", 1)
    images = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    images[1, :, 8:20, 8:20] = 200
    results = predictor.predict(images)

    calls = []

    def certify(pixels, **kwargs):
        calls.append(int(pixels.max()))
        if pixels.max() > 0:
            raise RuntimeError("certify broke")
        return Predictor.certify(predictor, pixels, **kwargs)

    class Metrics:
        def __init__(self) -> None:
            self.counted: list[str] = []

        def certified(self, response) -> None:
            self.counted.append("certificate")

        def invalid_input(self) -> None:
            self.counted.append("error")

        def observe(self, response) -> None:
            self.counted.append(f"decision {response.decision}")

    model = TrustGCModel(KServeSettings(model_dir=model_dir, certify_seed=0))
    model.predictor, model.metrics = predictor, Metrics()
    predictor.certify = certify
    names = predictor.class_names
    answers = [ImageAnswer(build_response(r, "m", "1", names, 3)) for r in results]
    options = RequestOptions(certify=20, certify_sigma=0.1)
    asyncio.run(model._certify(answers, [(0, images[0]), (1, images[1])], options))
    assert calls == [0, 200]
    assert isinstance(answers[0].response, ClassificationResponse)
    assert answers[0].response.certificate is not None and answers[0].response.certificate.n == 20
    assert isinstance(answers[1].response, ErrorResponse)
    assert answers[1].response.error.code == "internal_error"
    assert model.metrics.counted == ["certificate", "error"]
    model._observe(answers, [(0, images[0]), (1, images[1])])
    assert model.metrics.counted == [
        "certificate",
        "error",
        f"decision {answers[0].response.decision}",
    ]


def test_fresh_keys_are_hex_in_a_private_file(tmp_path, monkeypatch) -> None:
    """write_keys: 192-bit hex keys (never a leading "-", which a command line would read as an
    option), the file readable by its owner only, and an injected inference key kept."""
    import json
    import re
    import stat

    from serving.kserve_guard import KEY_ENV, write_keys

    monkeypatch.delenv(KEY_ENV, raising=False)
    for run in range(20):
        keys = write_keys(tmp_path / str(run))
        assert all(re.fullmatch(r"[0-9a-f]{48}", key) for key in keys.values()), keys
        assert keys["inference"] != keys["management"]
    path = tmp_path / "0" / "key_file.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    monkeypatch.setenv(KEY_ENV, "injected-key")
    keys = write_keys(tmp_path / "injected")
    stored = json.loads((tmp_path / "injected" / "key_file.json").read_text())
    assert keys["inference"] == stored["inference"]["key"] == "injected-key"
