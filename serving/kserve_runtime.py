"""The second runtime: KServe's Python model server on the Open Inference Protocol (KServe v2).

A thin adapter like ``serving.handler`` is for TorchServe: the same :class:`Predictor`, the
same decoding (``serving.decode``) and error codes (``serving.errors``), the same JSON answers
(``serving.schema``), the same ``gc_*`` metric names; only the transport differs
(``serving.oip_codec`` says how tensors map to images and answers).

Endpoints (REST on 8090, gRPC ``inference.GRPCInferenceService`` on 8091, both 127.0.0.1 by
default): ``/v2/health/live|ready``, ``/v2/models/NAME/ready``, ``/v2/models/NAME/infer``,
``/metrics``; token auth as described in ``serving.kserve_guard``.

Status mapping: a request is answered with 200 when at least one of its images could be
classified; an image that could not (undecodable, too large) gets its JSON error in the
``answer`` tensor and ``invalid_input`` in ``decision``.  A request with nothing to classify
(every image bad, bad parameters, no BYTES input) is refused as a whole: REST with the first
problem's HTTP status (serving.errors) and its JSON error as the body, gRPC with the matching
status code (INVALID_ARGUMENT, RESOURCE_EXHAUSTED) and the JSON error as details.

Run ``python -m serving.kserve_runtime SETTINGS.json`` (serving.kserve_control does this for
``trustgc serve|start|stop --runtime kserve``), or without a file with the settings as JSON in
``$TRUSTGC_KSERVE_SETTINGS`` (the container image, deploy/kubernetes/kserve/).  KServe binds
all interfaces and has no auth; this module starts its REST and gRPC servers itself to bind
``host`` and add the guard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving import paths
from serving.certificates import (
    CERTIFICATE_FAILED,
    DEFAULT_MAX_CERTIFY_SAMPLES,
    check_certify_limit,
    with_certificate,
)
from serving.decode import DecodeLimits, decode_image
from serving.errors import ErrorCode, InputError, http_status
from serving.oip_codec import ImageAnswer, image_elements, outputs, request_options
from serving.responses import build_response
from serving.schema import ClassificationResponse, error_response

__all__ = ["KServeSettings", "TrustGCModel", "serve"]

logger = logging.getLogger("trustgc.kserve")


class KServeSettings(BaseModel):
    """Where and how the KServe runtime serves; defaults are the production config's."""

    model_config = ConfigDict(extra="forbid")

    model_dir: Path = Field(
        default_factory=lambda: paths.project_dir() / "model_store" / "fashion_mnist"
    )
    model_name: str = "fashion_mnist"
    host: str = "127.0.0.1"
    http_port: int = Field(default=8090, ge=1, le=65535)
    grpc_port: int = Field(default=8091, ge=1, le=65535)
    run_dir: Path = Field(default_factory=lambda: paths.project_dir() / ".run" / "kserve")
    auth: bool = True
    backend: str = "auto"  # trustgc.backend.choose_backend
    batch_size: int = Field(default=16, ge=1)  # as deploy/torchserve/model-config.yaml
    max_batch_delay_ms: float = Field(default=5.0, ge=0)
    workers: int = Field(default=2, ge=1)  # batches computed at once (one per core)
    torch_threads: int = Field(default=1, ge=1)
    onnx_threads: int = Field(default=1, ge=1)
    grpc_threads: int = Field(default=4, ge=1)
    noop: bool = False  # answer without the model: the runtime's own floor (benchmarks)
    max_body_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    # certificates (request parameter certify = n): cap on n, 0 = off; as model-config.yaml
    max_certify_samples: int = Field(default=DEFAULT_MAX_CERTIFY_SAMPLES, ge=0)
    certify_seed: int | None = None  # None: fresh noise per certificate (a fixed one for tests)

    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"


# How an HTTP status of serving.errors translates to gRPC (the usual HTTP <-> gRPC mapping).
_GRPC_STATUS = {413: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}


def _rejection_type():
    from grpc import StatusCode
    from grpc_interceptor.exceptions import GrpcException

    class RequestRejected(GrpcException):
        """Nothing in the request can be classified: one status for the whole request."""

        def __init__(self, error: InputError) -> None:
            self.error = error
            self.http_status = http_status(error.code)[0]
            self.body = error_response(error.code.value, error.message).model_dump_json()
            name = _GRPC_STATUS.get(self.http_status, "INVALID_ARGUMENT")
            super().__init__(self.body, getattr(StatusCode, name))

    return RequestRejected


def _model_base():
    from serving.kserve_import import import_kserve

    return import_kserve().Model


class TrustGCModel(_model_base()):
    """A KServe ``Model`` around the core Predictor; batches concurrent requests."""

    def __init__(self, settings: KServeSettings) -> None:
        super().__init__(settings.model_name)
        self.settings = settings
        self.predictor = None
        self.metrics = None
        self.batcher = None
        self.backend = "none"
        self.version = "1"
        self.limits = DecodeLimits(
            max_bytes=settings.max_body_bytes, max_pixels=settings.max_image_pixels
        )
        self.rejected = _rejection_type()

    def load(self) -> bool:
        import torch

        from serving.kserve_metrics import served_metrics
        from serving.oip_batcher import MicroBatcher
        from trustgc.backend import choose_backend
        from trustgc.trust.predictor import Predictor

        settings = self.settings
        torch.set_num_threads(settings.torch_threads)
        choice = choose_backend(settings.model_dir, settings.backend)
        self.predictor = Predictor.from_artifact(
            settings.model_dir, "cpu", choice.backend, settings.onnx_threads
        )
        self.backend = "noop" if settings.noop else choice.backend
        self.version = self.predictor.manifest.version
        self.metrics = served_metrics(self.predictor, self.name, settings.model_dir, self.backend)
        self.batcher = MicroBatcher(
            self._run,
            settings.batch_size,
            settings.max_batch_delay_ms / 1000.0,
            settings.workers,
        )
        logger.info(
            "trustgc kserve model %s ready: backend %s (%s)", self.name, self.backend, choice.reason
        )
        self.ready = True
        return self.ready

    def _run(self, pixels: np.ndarray, explain: list[bool]) -> list[Any]:
        import torch

        if self.settings.noop:
            return [None] * len(pixels)
        with torch.inference_mode():
            return self.predictor.predict(pixels, explain=explain)

    def _error(self, error: InputError) -> ImageAnswer:
        self.metrics.invalid_input()
        return ImageAnswer(error_response(error.code.value, error.message))

    async def predict(self, payload, headers=None, response_headers=None):  # noqa: ARG002
        from kserve import InferOutput, InferResponse

        started = time.perf_counter()
        try:
            options = request_options(payload.parameters)
            check_certify_limit(options.certify, self.settings.max_certify_samples)
            elements = image_elements(payload.inputs)
        except InputError as error:
            self.metrics.invalid_input()
            raise self.rejected(error) from error
        channels, height, width = self.predictor.input_shape
        answers: list[ImageAnswer | None] = [None] * len(elements)
        errors: list[InputError] = []
        good: list[tuple[int, np.ndarray]] = []
        for index, element in enumerate(elements):
            try:
                if isinstance(element, InputError):
                    raise element
                good.append((index, self._decode(element, channels, height, width)))
            except InputError as error:
                errors.append(error)
                answers[index] = self._error(error)
        if not good:
            self.metrics.latency(time.perf_counter() - started, len(elements))
            raise self.rejected(errors[0])
        pixels = np.stack([p for _, p in good])
        try:
            results = await self.batcher.submit(pixels, options.explain)
        except Exception:
            logger.exception("prediction failed for %d images", len(good))
            error = InputError(ErrorCode.INTERNAL, "the model failed on this batch; retry")
            results = None
            for index, _ in good:
                answers[index] = self._error(error)
        if results is not None:
            for (index, _), result in zip(good, results, strict=True):
                answers[index] = self._answer(result, options.top_k)
            if options.certify:
                await self._certify(answers, good, options)
            self._observe(answers, good)
        self.metrics.latency(time.perf_counter() - started, len(elements))
        tensors = outputs(answers, len(self.predictor.class_names))
        return InferResponse(
            response_id=payload.id or str(uuid.uuid4()),
            model_name=self.name,
            model_version=self.version,
            infer_outputs=[
                InferOutput(t["name"], t["shape"], t["datatype"], data=t["data"]) for t in tensors
            ],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )

    async def _certify(self, answers: list, good: list[tuple[int, np.ndarray]], options) -> None:
        """Add the certificates the request asked for, off the event loop (n + 100 flow passes
        per image): other requests keep being read and batched meanwhile."""
        loop = asyncio.get_running_loop()
        for index, image in good:
            answer = answers[index]
            if not isinstance(answer.response, ClassificationResponse):
                continue  # an error or the no-op floor's fixed answer
            try:
                response = await loop.run_in_executor(
                    None,
                    with_certificate,
                    answer.response,
                    self.predictor,
                    image,
                    options.certify,
                    options.certify_sigma,
                    self.settings.certify_seed,
                )
            except Exception:  # only this image's answer fails, not the request's others
                logger.exception("the certificate of image %d failed", index)
                answers[index] = self._error(InputError(ErrorCode.INTERNAL, CERTIFICATE_FAILED))
                continue
            self.metrics.certified(response)
            answers[index] = replace(answer, response=response)

    def _observe(self, answers: list, good: list[tuple[int, np.ndarray]]) -> None:
        """Count each classified image's decision once its answer is final: an image whose
        certificate failed is answered, and counted, as an error only (as on TorchServe)."""
        for index, _ in good:
            if isinstance(answers[index].response, ClassificationResponse):
                self.metrics.observe(answers[index].response)

    def _decode(self, element: bytes, channels: int, height: int, width: int) -> np.ndarray:
        if self.settings.noop:  # the floor measures the frontend and batching, not decoding
            return np.zeros((channels, height, width), dtype=np.uint8)
        return decode_image(element, height, width, channels, self.limits)

    def _answer(self, result, top_k: int) -> ImageAnswer:
        if result is None:  # the no-op floor: a fixed answer, no model
            return ImageAnswer(error_response("noop", "no-op model"))
        response = build_response(
            result, self.name, self.version, self.predictor.class_names, top_k
        )
        return ImageAnswer(response, np.asarray(result.probabilities, dtype=np.float32))


def _servers(settings: KServeSettings, model: TrustGCModel, keys: dict[str, str] | None):
    """KServe's REST and gRPC servers bound to ``settings.host``, with the guard."""
    from fastapi.responses import JSONResponse
    from grpc import aio
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
    from kserve.protocol.grpc.server import GRPCServer
    from kserve.protocol.grpc.servicer import InferenceServicer
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

    from serving.kserve_guard import BearerAuthInterceptor, BearerAuthMiddleware

    repository = ModelRepository(models_dir=str(settings.model_dir))
    repository.update(model)
    dataplane = DataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)

    class GuardedREST(RESTServer):
        def _add_middlewares(self, app) -> None:  # no per-request timing log lines
            if keys is not None:
                app.add_middleware(BearerAuthMiddleware, keys=keys)

        def _add_exception_handlers(self, app) -> None:
            super()._add_exception_handlers(app)

            async def rejected(_, error) -> JSONResponse:
                return JSONResponse(status_code=error.http_status, content=json.loads(error.body))

            app.add_exception_handler(model.rejected, rejected)

    class GuardedGRPC(GRPCServer):
        async def start(self, max_workers: int) -> None:
            from concurrent import futures

            interceptors = [ExceptionToStatusInterceptor()]
            if keys is not None:
                interceptors.insert(0, BearerAuthInterceptor(keys))
            self._server = aio.server(
                futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors
            )
            grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
                InferenceServicer(self._data_plane, self._model_repository_extension),
                self._server,
            )
            self._server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
            await self._server.start()
            await self._server.wait_for_termination()

    rest = GuardedREST(
        "kserve.model_server:app", dataplane, extension, settings.http_port, grace_period=5
    )
    rest.config.host = settings.host
    grpc_server = GuardedGRPC(settings.grpc_port, dataplane, extension, kwargs={}, grace_period=5)
    return rest, grpc_server


async def _serve(settings: KServeSettings, model: TrustGCModel, keys) -> None:
    rest, grpc_server = _servers(settings, model, keys)
    grpc_task = asyncio.create_task(grpc_server.start(settings.grpc_threads))
    try:
        await rest.start()  # returns after SIGTERM/SIGINT (uvicorn's own handlers)
    finally:
        await grpc_server.stop()
        grpc_task.cancel()
        if model.batcher is not None:
            model.batcher.close()


def serve(settings: KServeSettings) -> int:
    """Load the model, write the keys and the pid file, serve until SIGTERM/SIGINT."""
    from serving.kserve_guard import write_keys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # one log line per request costs throughput (TorchServe's quieter log config gained 5-20%)
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("kserve.trace").disabled = True
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    keys = write_keys(run_dir) if settings.auth else None
    model = TrustGCModel(settings)
    model.load()
    # uvicorn re-raises the stop signal after its graceful shutdown; a handler that only notes
    # it lets the gRPC server and the batcher stop too before the process exits.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: None)
    (run_dir / "kserve.pid").write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(_serve(settings, model, keys))
    finally:
        (run_dir / "kserve.pid").unlink(missing_ok=True)
    logger.info("trustgc kserve stopped")
    return 0


SETTINGS_ENV = "TRUSTGC_KSERVE_SETTINGS"


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.kserve_runtime [SETTINGS.json]``; without a file the settings are
    the JSON in ``$TRUSTGC_KSERVE_SETTINGS`` (a container's env), over the defaults."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: python -m serving.kserve_runtime [SETTINGS.json]", file=sys.stderr)
        return 2
    text = Path(args[0]).read_text() if args else os.environ.get(SETTINGS_ENV, "{}")
    return serve(KServeSettings.model_validate_json(text))


if __name__ == "__main__":
    sys.exit(main())
