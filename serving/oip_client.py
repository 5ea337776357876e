"""Client SDK for the Open Inference Protocol runtime (KServe v2): REST and gRPC.

Same answers as :class:`serving.client.ClassifierClient` (the typed pydantic models of
``serving.schema``), for a server speaking OIP: ``trustgc serve --runtime kserve``, or a KServe
InferenceService on a cluster.  Images travel as one BYTES tensor (gRPC: ``bytes_contents``;
REST: base64 text in JSON, because KServe 0.21 turns a REST binary-extension BYTES input into
UTF-8 text and refuses image bytes), options as request parameters; each image's answer is
read from the ``answer`` output tensor.  A request refused as a whole (every image bad) comes
back as the server's :class:`ErrorResponse` for every image, as the TorchServe client does for
one image.
Connection failures and 502/503/504 (gRPC UNAVAILABLE) are retried with exponential backoff.

The gRPC messages are KServe's own OIP stubs (``kserve.protocol.grpc``): ``pip install
'trustgc[kserve]'``.
"""

from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass

import requests

from serving.certificates import DEFAULT_CERTIFY_SIGMA
from serving.client import ClientError, RetryingClient, request_options
from serving.client import parse_answer as _parse
from serving.schema import ClassificationResponse, ErrorResponse

__all__ = ["OipClient", "grpc_infer_request", "rest_infer_body"]

RETRYABLE_HTTP = {502, 503, 504}
INPUT_NAME = "images"


def rest_infer_body(
    images: list[bytes], parameters: dict | None = None, outputs: tuple[str, ...] = ()
) -> dict:
    """The OIP REST request for encoded images: one BYTES tensor of base64 text (see above)."""
    body: dict = {
        "inputs": [
            {
                "name": INPUT_NAME,
                "shape": [len(images)],
                "datatype": "BYTES",
                "data": [base64.b64encode(image).decode("ascii") for image in images],
            }
        ]
    }
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    if parameters:
        body["parameters"] = parameters
    return body


def grpc_infer_request(
    pb,
    model: str,
    images: list[bytes],
    parameters: dict | None = None,
    outputs: tuple[str, ...] = (),
):
    """The OIP gRPC ``ModelInferRequest`` for encoded images; ``pb`` is KServe's
    ``grpc_predict_v2_pb2`` module, ``parameters`` maps names to ``pb.InferParameter``."""
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=INPUT_NAME,
                datatype="BYTES",
                shape=[len(images)],
                contents=pb.InferTensorContents(bytes_contents=images),
            )
        ],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs],
        parameters=parameters or {},
    )


def _parameter(pb, value: bool | int | float):
    """An option as an OIP ``InferParameter``: the protocol has bool, int64 and string ones, so
    a float travels as its text (validated as a number by the server's RequestOptions)."""
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    return pb.InferParameter(string_param=str(value))


def _deserialize_bytes(raw: bytes) -> list[bytes]:
    """OIP's raw BYTES layout: each element as a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


@dataclass
class OipClient(RetryingClient):
    """Talks to one model over OIP REST (``http_url``) or gRPC (``grpc_target``)."""

    http_url: str = "http://127.0.0.1:8090"
    grpc_target: str = "127.0.0.1:8091"

    def _classify(self, image: bytes, options: dict[str, bool | int | float], use_grpc: bool):
        return self._send([image], options, use_grpc)[0]

    def classify_many(
        self,
        images: list[bytes],
        explain: bool = False,
        top_k: int = 10,
        use_grpc: bool = False,
        certify: int = 0,
        certify_sigma: float = DEFAULT_CERTIFY_SIGMA,
    ) -> list[ClassificationResponse | ErrorResponse]:
        """Classify several images in one request; one answer per image, in order (the options,
        a certificate's too, apply to each image)."""
        return self._send(images, request_options(explain, top_k, certify, certify_sigma), use_grpc)

    def _send(self, images: list[bytes], options: dict[str, bool | int | float], use_grpc: bool):
        if use_grpc:
            return self._grpc(images, options)
        return self._rest(images, options)

    def _rest(self, images: list[bytes], options: dict[str, bool | int | float]):
        body = rest_infer_body(images, options, ("answer",))
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        url = f"{self.http_url}/v2/models/{self.model}/infer"
        for attempt in range(self.retries + 1):
            try:
                answer = requests.post(
                    url, data=json.dumps(body), headers=headers, timeout=self.timeout
                )
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise
                self._sleep(attempt)
                continue
            if answer.status_code in RETRYABLE_HTTP and attempt < self.retries:
                self._sleep(attempt)
                continue
            if answer.ok:
                return self._answers_from_rest(answer)
            if answer.status_code < 500 and answer.text.startswith('{"error":{"code"'):
                return [ErrorResponse.model_validate_json(answer.text)] * len(images)
            raise ClientError(answer.status_code, answer.text)
        raise AssertionError("unreachable")

    @staticmethod
    def _answers_from_rest(answer: requests.Response) -> list:
        length = answer.headers.get("inference-header-content-length")
        body = answer.content
        document = json.loads(body[: int(length)] if length else body)
        offset = int(length) if length else 0
        for output in document["outputs"]:
            size = (output.get("parameters") or {}).get("binary_data_size")
            if output["name"] == "answer":
                if size is not None:
                    return [_parse(t) for t in _deserialize_bytes(body[offset : offset + size])]
                return [_parse(text) for text in output["data"]]
            offset += size or 0
        raise ClientError(answer.status_code, "the answer has no 'answer' output")

    def _grpc(self, images: list[bytes], options: dict[str, bool | int | float]):
        import grpc

        from serving.kserve_import import import_kserve

        pb = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2")
        pb_grpc = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2_grpc")

        parameters = {key: _parameter(pb, value) for key, value in options.items()}
        request = grpc_infer_request(pb, self.model, images, parameters, ("answer",))
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else []
        with grpc.insecure_channel(self.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for attempt in range(self.retries + 1):
                try:
                    reply = stub.ModelInfer(request, metadata=metadata, timeout=self.timeout)
                    return self._answers_from_grpc(reply)
                except grpc.RpcError as error:
                    if error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                        self._sleep(attempt)
                        continue
                    details = error.details() or ""
                    if details.startswith('{"error":{"code"'):
                        return [ErrorResponse.model_validate_json(details)] * len(images)
                    raise ClientError(error.code().name, details) from error
        raise AssertionError("unreachable")

    @staticmethod
    def _answers_from_grpc(reply) -> list:
        for index, output in enumerate(reply.outputs):
            if output.name != "answer":
                continue
            if reply.raw_output_contents:
                return [_parse(t) for t in _deserialize_bytes(reply.raw_output_contents[index])]
            return [_parse(text) for text in output.contents.bytes_contents]
        raise ClientError("OK", "the answer has no 'answer' output")
