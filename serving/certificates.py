"""Randomized-smoothing certificates in answers: one place for every runtime and ``trustgc score``.

A request asks for one with ``certify`` = n (noisy copies) and optionally ``certify_sigma``; the
answer then carries a :class:`~serving.schema.Certificate` (Cohen et al., ICML 2019, computed by
:meth:`trustgc.trust.predictor.Predictor.certify`).  It costs n0 + n forward passes of the flow
for that image, about 1 s at n = 1,000 on one CPU core, and any request batched with it would
wait for it: each deployment caps n (``max_certify_samples``, default
:data:`DEFAULT_MAX_CERTIFY_SAMPLES`; 0 turns certification off), and a request above the cap is
refused with ``invalid_parameter`` before any work is done (docs/serving.md).

On TorchServe no plain request waits for a certificate: a registration that answers batches
(batch size above 1) refuses ``certify`` with ``invalid_parameter`` naming the registration
that computes them, ``NAME_certify`` (:func:`certify_registration`; batch size 1, one worker,
registered by ``trustgc serve``), unless its yaml sets ``certify_in_batches: true``.  KServe
computes certificates after the batch and needs no such registration.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from serving.errors import ErrorCode, InputError
from serving.schema import Certificate, ClassificationResponse

if TYPE_CHECKING:
    from trustgc.trust.predictor import Predictor

__all__ = [
    "CERTIFY_ALPHA",
    "CERTIFY_SUFFIX",
    "DEFAULT_CERTIFY_SIGMA",
    "DEFAULT_MAX_CERTIFY_SAMPLES",
    "CERTIFICATE_FAILED",
    "MAX_CERTIFY_SAMPLES",
    "certificate_for",
    "certify_registration",
    "check_certify_limit",
    "with_certificate",
]

#: The largest n any caller may ask for (the offline scorer's bound too).
MAX_CERTIFY_SAMPLES = 100_000
#: A server's default cap on n per request: about one second of one core for the shipped model.
DEFAULT_MAX_CERTIFY_SAMPLES = 1_000
#: Noise level of the shipped robust model's certificates (docs/attacks_adaptive.md).
DEFAULT_CERTIFY_SIGMA = 0.25
#: The certificate's error probability over the noise (Cohen et al.'s choice).
CERTIFY_ALPHA = 0.001
#: The message of the internal error answered when one request's certificate fails: only that
#: request fails, never its batch-mates.
CERTIFICATE_FAILED = "the certificate could not be computed; retry, or ask without certify"
#: TorchServe serves a model NAME's certificates under NAME + this suffix (serving/server.py).
CERTIFY_SUFFIX = "_certify"


def certify_registration(model: str) -> str:
    """The TorchServe registration that computes ``model``'s certificates (itself when ``model``
    already is one)."""
    return model if model.endswith(CERTIFY_SUFFIX) else f"{model}{CERTIFY_SUFFIX}"


def check_certify_limit(samples: int, max_samples: int, certify_at: str | None = None) -> None:
    """Refuse a request for more noisy copies than this deployment allows, or any certificate
    where ``certify_at`` names the registration that computes them instead (a batched one)."""
    if samples <= 0:
        return
    if max_samples == 0:
        message = "certification is turned off on this server (max_certify_samples = 0)"
    elif certify_at is not None:
        message = (
            "certify: this registration answers requests in shared batches and computes no "
            "certificates (one takes ~1 s and would hold its batch-mates); send certify requests "
            f"to the model {certify_at} (/predictions/{certify_at}; `trustgc classify --certify "
            "N` does so itself)"
        )
    elif samples > max_samples:
        message = (
            f"certify = {samples} noisy copies exceeds this server's limit of {max_samples} "
            "(max_certify_samples)"
        )
    else:
        return
    raise InputError(ErrorCode.INVALID_PARAMETER, message)


def certificate_for(
    predictor: Predictor,
    pixels: np.ndarray,
    served_label: str,
    samples: int,
    sigma: float = DEFAULT_CERTIFY_SIGMA,
    alpha: float = CERTIFY_ALPHA,
    seed: int | None = None,
) -> Certificate:
    """The certificate of one uint8 image (C, H, W); ``seed`` None draws fresh noise (servers)."""
    (certificate,) = predictor.certify(pixels[None], sigma=sigma, n=samples, alpha=alpha, seed=seed)
    label = None if certificate.abstained else predictor.class_names[certificate.predicted_index]
    return Certificate(
        label=label,
        radius=certificate.radius,
        p_lower=certificate.p_lower,
        agrees_with_prediction=label == served_label,
        sigma=certificate.sigma,
        n=certificate.n,
        n0=certificate.n0,
        alpha=certificate.alpha,
    )


def with_certificate(
    response: ClassificationResponse,
    predictor: Predictor,
    pixels: np.ndarray,
    samples: int,
    sigma: float,
    seed: int | None = None,
) -> ClassificationResponse:
    """``response`` with the certificate of its image when ``samples`` > 0, else unchanged."""
    if samples <= 0:
        return response
    certificate = certificate_for(
        predictor, pixels, response.prediction.label, samples, sigma, seed=seed
    )
    return response.model_copy(update={"certificate": certificate})
