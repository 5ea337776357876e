"""TorchServe adapter: decode each request, run the core Predictor once per batch, encode.

This is the only module (with ``serving.server``) that knows TorchServe.  It holds no model
math: everything numerical happens in :class:`trustgc.trust.Predictor`.  Per-request errors
are isolated: a bad input gets its own 4xx status and JSON error body while every other
request of the same batch is answered normally.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from serving.certificates import (
    CERTIFICATE_FAILED,
    DEFAULT_MAX_CERTIFY_SAMPLES,
    certify_registration,
    check_certify_limit,
    with_certificate,
)
from serving.decode import DecodeLimits, decode_image
from serving.errors import ErrorCode, InputError, http_status
from serving.metrics import HandlerMetrics, MetricSpec, calibration_id
from serving.requests import RequestOptions, parse_request, wants_protobuf
from serving.responses import build_response
from serving.schema import error_response
from trustgc.backend import choose_backend
from trustgc.trust.calibration import CALIBRATION_FILE
from trustgc.trust.predictor import Predictor

__all__ = ["TrustGCHandler"]

logger = logging.getLogger(__name__)


def _model_yaml(context) -> dict[str, Any]:
    config = getattr(context, "model_yaml_config", None) or {}
    return dict(config.get("trustgc", {}) or {})


def _headers(context, index: int) -> dict[str, Any]:
    try:
        return dict(context.get_all_request_header(index) or {})
    except (AttributeError, IndexError, KeyError, TypeError):  # gRPC and unit-test contexts
        return {}


def ts_register(cache) -> Callable[[MetricSpec], Any]:
    """Register metrics in TorchServe's metrics cache (the only place that knows ``ts``)."""
    from ts.metrics.metric_type_enum import MetricTypes

    kinds = {
        "counter": MetricTypes.COUNTER,
        "gauge": MetricTypes.GAUGE,
        "histogram": MetricTypes.HISTOGRAM,
    }

    def register(spec: MetricSpec):
        return cache.add_metric_to_cache(spec.name, spec.unit, list(spec.labels), kinds[spec.kind])

    return register


class TrustGCHandler:
    """Loaded once per worker in :meth:`initialize`; :meth:`handle` answers one batch."""

    def __init__(self) -> None:
        self.predictor: Predictor | None = None
        self.metrics: HandlerMetrics | None = None
        self.limits = DecodeLimits()
        self.max_certify_samples = DEFAULT_MAX_CERTIFY_SAMPLES
        self.certify_seed: int | None = None  # fresh noise per certificate (tests may fix it)
        self.certify_at: str | None = None  # set on a batched registration: where certify goes
        self.model_name = "unknown"
        self.model_version = "1"

    def initialize(self, context) -> None:
        settings = _model_yaml(context)
        threads = int(settings.get("torch_threads", os.environ.get("TRUSTGC_TORCH_THREADS", 1)))
        torch.set_num_threads(max(1, threads))
        model_dir = Path(context.system_properties["model_dir"])
        choice = choose_backend(model_dir, str(settings.get("backend", "auto")))
        backend = choice.backend
        onnx_threads = int(settings.get("onnx_threads", os.environ.get("TRUSTGC_ONNX_THREADS", 1)))
        self.predictor = Predictor.from_artifact(
            model_dir, device="cpu", backend=backend, onnx_threads=max(1, onnx_threads)
        )
        manifest = self.predictor.manifest
        self.model_name = context.manifest.get("model", {}).get("modelName", manifest.name)
        self.model_version = manifest.version
        self.limits = DecodeLimits(
            max_bytes=int(settings.get("max_body_bytes", self.limits.max_bytes)),
            max_pixels=int(settings.get("max_image_pixels", self.limits.max_pixels)),
        )
        self.max_certify_samples = int(
            settings.get("max_certify_samples", DEFAULT_MAX_CERTIFY_SAMPLES)
        )
        seed = settings.get("certify_seed")
        self.certify_seed = None if seed is None else int(seed)
        # A certificate (~1 s) holds every request of its batch: a batched registration sends
        # certify requests to NAME_certify (batch size 1, serving/server.py) unless told not to.
        batch_size = int(context.system_properties.get("batch_size") or 1)
        registered = getattr(context, "model_name", None) or self.model_name
        self.certify_at = (
            certify_registration(registered)
            if batch_size > 1 and not settings.get("certify_in_batches", False)
            else None
        )
        self.metrics = None
        if context.metrics:
            self.metrics = HandlerMetrics(
                ts_register(context.metrics), self.model_name, manifest.class_names
            )
            calibration = self.predictor.calibration
            if calibration is None:  # a discriminative baseline: no tests, no alphas
                self.metrics.served(backend)
            else:
                self.metrics.served(
                    backend,
                    {"ood": calibration.ood_alpha, "attack": calibration.attack_alpha},
                    calibration_id(model_dir / CALIBRATION_FILE),
                )
        logger.info(
            "trustgc handler ready: model %s, backend %s (%s), %d torch threads",
            self.model_name,
            backend,
            choice.reason,
            threads,
        )

    def handle(self, data: list[dict[str, Any]], context) -> list[bytes | str]:
        started = time.perf_counter()
        assert self.predictor is not None, "initialize() was not called"
        channels, height, width = self.predictor.input_shape
        answers: list[bytes | str | None] = [None] * len(data)
        good: list[tuple[int, np.ndarray, RequestOptions]] = []
        for index, entry in enumerate(data):
            try:
                image_bytes, options = parse_request(entry, _headers(context, index))
                check_certify_limit(options.certify, self.max_certify_samples, self.certify_at)
                good.append(
                    (
                        index,
                        decode_image(image_bytes, height, width, channels, self.limits),
                        options,
                    )
                )
            except InputError as error:
                protobuf = wants_protobuf(entry, _headers(context, index))
                answers[index] = self._error(context, index, error.code, error.message, protobuf)
            except Exception:  # a bug in reading one request must not fail the whole batch
                logger.exception("request %d of a batch of %d could not be read", index, len(data))
                answers[index] = self._error(
                    context, index, ErrorCode.INTERNAL, "the server could not read this request"
                )
        if good:
            try:
                self._predict(good, answers, context)
            except Exception:  # never fail the whole batch: answer each request with a 500
                logger.exception("prediction failed for a batch of %d", len(good))
                for index, _, _ in good:
                    answers[index] = self._error(
                        context, index, ErrorCode.INTERNAL, "the model failed on this batch; retry"
                    )
        if self.metrics:
            self.metrics.latency(time.perf_counter() - started, len(data))
        return [answer if answer is not None else b"" for answer in answers]

    def _predict(self, good, answers, context) -> None:
        pixels = np.stack([pixels for _, pixels, _ in good])
        explain = [options.explain for _, _, options in good]
        with torch.inference_mode():
            results = self.predictor.predict(pixels, explain=explain)
        for (index, image, options), result in zip(good, results, strict=True):
            response = build_response(
                result,
                self.model_name,
                self.model_version,
                self.predictor.class_names,
                options.top_k,
            )
            try:
                response = with_certificate(
                    response,
                    self.predictor,
                    image,
                    options.certify,
                    options.certify_sigma,
                    seed=self.certify_seed,
                )
            except Exception:  # one failed certificate must not fail its batch-mates
                logger.exception("the certificate of request %d failed", index)
                answers[index] = self._error(context, index, ErrorCode.INTERNAL, CERTIFICATE_FAILED)
                continue
            if self.metrics:
                self.metrics.observe(response)
                self.metrics.certified(response)
            answers[index] = self._encode(context, index, response, options)

    def _encode(self, context, index: int, response, options: RequestOptions) -> bytes | str:
        if options.format == "protobuf":
            from serving.proto_codec import to_protobuf

            context.set_response_content_type(index, "application/x-protobuf")
            return to_protobuf(response)
        context.set_response_content_type(index, "application/json")
        return response.model_dump_json(exclude_none=True)

    def _error(
        self, context, index: int, code: ErrorCode, message: str, protobuf: bool = False
    ) -> bytes | str:
        """A per-request error in the encoding the request asked for (JSON by default)."""
        status, phrase = http_status(code)
        context.set_response_status(status, phrase, index)
        if self.metrics:
            self.metrics.invalid_input()
        error = error_response(code.value, message)
        if protobuf:
            from serving.proto_codec import to_protobuf

            context.set_response_content_type(index, "application/x-protobuf")
            return to_protobuf(error)
        context.set_response_content_type(index, "application/json")
        return error.model_dump_json()


_service = TrustGCHandler()


def handle(data, context):
    """TorchServe's module-level entry point (see serving/torchserve_entry.py)."""
    if _service.predictor is None:
        # data None is TorchServe's initialisation call: loading here makes a refused artifact
        # (stale calibration, missing file) fail the model's load, visible in TorchServe's log,
        # instead of a READY model failing every request.
        _service.initialize(context)
    if data is None:
        return None
    return _service.handle(data, context)
