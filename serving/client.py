"""Client SDK: classify images over REST or gRPC and get the typed pydantic answer back.

The token comes from the argument, the ``TRUSTGC_TOKEN`` environment variable, or TorchServe's
``key_file.json``; requests time out; 503 answers (no worker free, a worker restarting),
TorchServe's "Worker died." answers (the worker handling the batch crashed or was killed:
HTTP 507, or 500; gRPC RESOURCE_EXHAUSTED or INTERNAL) and connection failures are retried with
exponential backoff.  Classification is idempotent, so a retry is always safe.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import requests

from serving.certificates import DEFAULT_CERTIFY_SIGMA, certify_registration
from serving.grpc_stubs import inference_pb2, inference_pb2_grpc
from serving.keys import read_keys
from serving.schema import ClassificationResponse, ErrorResponse

__all__ = [
    "ClassifierClient",
    "ClientError",
    "parse_answer",
    "request_options",
    "resolve_token",
]


def request_options(
    explain: bool = False,
    top_k: int = 10,
    certify: int = 0,
    certify_sigma: float = DEFAULT_CERTIFY_SIGMA,
) -> dict[str, bool | int | float]:
    """A request's options by name, as every client sends them (serving/requests.py); the
    certificate's are left out unless one is asked for."""
    options: dict[str, bool | int | float] = {"explain": explain, "top_k": top_k}
    if certify:
        options |= {"certify": certify, "certify_sigma": certify_sigma}
    return options


def _option_text(value: bool | int | float) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


RETRYABLE_HTTP = {502, 503, 504, 507}  # 507: TorchServe's "Worker died." (worker killed)
RETRYABLE_GRPC = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
WORKER_DIED = "Worker died"  # TorchServe's message when a worker crashes mid-batch


def _retryable_http(status: int, text: str) -> bool:
    return status in RETRYABLE_HTTP or (status == 500 and WORKER_DIED in text[:500])


def _retryable_grpc(error: grpc.RpcError) -> bool:
    code = error.code()
    return code in RETRYABLE_GRPC or (
        code == grpc.StatusCode.INTERNAL and WORKER_DIED in (error.details() or "")
    )


class ClientError(RuntimeError):
    """The server answered with an error the client cannot fix by retrying."""

    def __init__(self, status: int | str, body: str) -> None:
        super().__init__(f"server answered {status}: {body[:500]}")
        self.status = status
        self.body = body


def resolve_token(token: str | None = None, key_file: Path | None = None) -> str | None:
    """An explicit token, else $TRUSTGC_TOKEN, else the inference key from the key file."""
    if token:
        return token
    if os.environ.get("TRUSTGC_TOKEN"):
        return os.environ["TRUSTGC_TOKEN"]
    if key_file is not None and Path(key_file).is_file():
        return read_keys(Path(key_file).parent, timeout=5)["inference"]
    return None


def parse_answer(payload: bytes | str) -> ClassificationResponse | ErrorResponse:
    """One image's served answer (JSON text) as the typed model: an error or a classification."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    if '"error"' in text[:20]:
        return ErrorResponse.model_validate_json(text)
    return ClassificationResponse.model_validate_json(text)


@dataclass
class RetryingClient:
    """What every runtime's client shares: the model, its addresses, the token and the retries.

    A runtime's client overrides the address defaults (a redeclared dataclass field keeps its
    position, so positional construction is the same for every client).
    """

    model: str = "fashion_mnist"
    http_url: str = "http://127.0.0.1:8080"
    grpc_target: str = "127.0.0.1:7070"
    token: str | None = None
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.25

    def _sleep(self, attempt: int) -> None:
        time.sleep(self.backoff * (2**attempt))

    def classify(
        self,
        image: bytes,
        explain: bool = False,
        top_k: int = 10,
        use_grpc: bool = False,
        certify: int = 0,
        certify_sigma: float = DEFAULT_CERTIFY_SIGMA,
    ) -> ClassificationResponse | ErrorResponse:
        """Classify one image; a bad image comes back as :class:`ErrorResponse`.  ``certify`` =
        n > 0 also asks for a randomized-smoothing certificate (n noisy copies, ~1 ms each)."""
        options = request_options(explain, top_k, certify, certify_sigma)
        return self._classify(image, options, use_grpc)

    def _classify(
        self, image: bytes, options: dict[str, bool | int | float], use_grpc: bool
    ) -> ClassificationResponse | ErrorResponse:
        """Send one image with its options in the runtime's protocol."""
        raise NotImplementedError


def _model_not_found(error: ClientError) -> bool:
    """TorchServe's answer for a model name it does not serve: REST 404; over gRPC INTERNAL
    naming its ModelNotFoundException (NOT_FOUND accepted too)."""
    return error.status in (404, "NOT_FOUND") or (
        error.status == "INTERNAL" and "ModelNotFoundException" in error.body
    )


@dataclass
class ClassifierClient(RetryingClient):
    """Talks to one TorchServe model over REST (``http_url``) or gRPC (``grpc_target``).

    A request with ``certify`` goes to the model's certify registration (``MODEL_certify``,
    batch size 1: serving/server.py), since the batched one refuses it; when the server has
    none (started with ``--no-certify-registration``), to ``model`` itself, whose answer then
    says why it cannot certify (or certifies, where its yaml allows it).
    """

    #: Where certify requests go; None: the model's certify registration, ``MODEL_certify``.
    certify_model: str | None = None

    def _classify(self, image: bytes, options: dict[str, bool | int | float], use_grpc: bool):
        send = self._classify_grpc if use_grpc else self._classify_http
        if not options.get("certify"):
            return send(image, options, self.model)
        certify_model = self.certify_model or certify_registration(self.model)
        try:
            return send(image, options, certify_model)
        except ClientError as error:
            if certify_model == self.model or not _model_not_found(error):
                raise
        return send(image, options, self.model)

    def _classify_http(self, image: bytes, options: dict[str, bool | int | float], model: str):
        headers = {"Content-Type": "application/octet-stream"}
        for key, value in options.items():
            name = "-".join(part.capitalize() for part in key.split("_"))  # top_k -> Top-K
            headers[f"X-Trustgc-{name}"] = _option_text(value)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.http_url}/predictions/{model}"
        for attempt in range(self.retries + 1):
            try:
                answer = requests.post(url, data=image, headers=headers, timeout=self.timeout)
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise
                self._sleep(attempt)
                continue
            if _retryable_http(answer.status_code, answer.text) and attempt < self.retries:
                self._sleep(attempt)
                continue
            if (
                answer.status_code < 500
                and answer.headers.get("content-type", "").startswith("application/json")
                and answer.text.startswith('{"')
            ):
                parsed = parse_answer(answer.text)
                if answer.ok or isinstance(parsed, ErrorResponse):
                    return parsed
            raise ClientError(answer.status_code, answer.text)
        raise AssertionError("unreachable")

    def _classify_grpc(self, image: bytes, options: dict[str, bool | int | float], model: str):
        fields = {key: _option_text(value).encode() for key, value in options.items()}
        request = inference_pb2.PredictionsRequest(
            model_name=model, input={"data": image, **fields}
        )
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
            for attempt in range(self.retries + 1):
                try:
                    reply = stub.Predictions(request, metadata=metadata, timeout=self.timeout)
                    return parse_answer(reply.prediction)
                except grpc.RpcError as error:
                    if _retryable_grpc(error) and attempt < self.retries:
                        self._sleep(attempt)
                        continue
                    details = error.details() or ""
                    if details.startswith('{"error"'):
                        return ErrorResponse.model_validate_json(details)
                    raise ClientError(error.code().name, details) from error
        raise AssertionError("unreachable")
