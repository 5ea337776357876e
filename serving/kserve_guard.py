"""Token auth for the KServe runtime, REST and gRPC alike, mirroring TorchServe's key file.

KServe's model server has no authentication of its own (on a cluster the mesh or an
authorizing proxy guards it).  Standalone, this runtime binds 127.0.0.1 and requires
``Authorization: Bearer <key>`` (gRPC metadata ``authorization``) on every inference and
model-repository call.  Keys are written at start-up to ``<run_dir>/key_file.json`` with mode
0600, in TorchServe's format (``{"inference": {"key": ...}, "management": {"key": ...}}``), so
``serving.server.read_keys`` and the clients read either runtime's file.  A deployment can
inject its own key with ``TRUSTGC_INFERENCE_KEY`` (a Kubernetes Secret).

Open without a key, so that probes and Prometheus need no secret: ``/``, ``/v2``, the health
endpoints (``/v2/health/live|ready``, and their gRPC ``ServerLive``/``ServerReady``) and
``/metrics`` (TorchServe's metrics port is unprotected too).  A missing or wrong key answers
HTTP 401 with a JSON error, gRPC ``UNAUTHENTICATED``.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from grpc.aio import ServerInterceptor

__all__ = ["KEY_ENV", "BearerAuthMiddleware", "BearerAuthInterceptor", "write_keys"]

KEY_ENV = "TRUSTGC_INFERENCE_KEY"
OPEN_PATHS = frozenset({"/", "/v2", "/v2/health/live", "/v2/health/ready", "/metrics"})
OPEN_RPCS = frozenset({"ServerLive", "ServerReady"})
_DENIED = json.dumps(
    {"error": {"code": "unauthorized", "message": "missing or invalid bearer token"}}
).encode()


def write_keys(run_dir: Path) -> dict[str, str]:
    """Create ``run_dir/key_file.json`` (0600) with fresh keys, or the injected inference key.

    Fresh keys are 192 random bits in hex: a URL-safe base64 key starts with "-" one time in 64,
    and ``trustgc classify --token KEY`` (argparse) then reads it as an option."""
    run_dir.mkdir(parents=True, exist_ok=True)
    inference = os.environ.get(KEY_ENV) or secrets.token_hex(24)
    keys = {"inference": inference, "management": secrets.token_hex(24)}
    path = run_dir / "key_file.json"
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({name: {"key": key} for name, key in keys.items()}, handle)
    temporary.replace(path)  # atomic: readers never see half a file
    return keys


def _accepted(header: str | bytes | None, keys: tuple[str, ...]) -> bool:
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header or not header.startswith("Bearer "):
        return False
    offered = header[len("Bearer ") :].strip().encode()
    return any(hmac.compare_digest(offered, key.encode()) for key in keys)


class BearerAuthMiddleware:
    """ASGI middleware: every HTTP path but the open ones needs a key.

    Inference paths accept the inference key; ``/v2/repository`` (load/unload) only the
    management key, as TorchServe separates them.
    """

    def __init__(self, app, keys: dict[str, str]) -> None:
        self.app = app
        self.inference = (keys["inference"], keys["management"])
        self.management = (keys["management"],)

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in OPEN_PATHS | {""}:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        keys = self.management if scope["path"].startswith("/v2/repository") else self.inference
        if _accepted(header, keys):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _DENIED})


class BearerAuthInterceptor(ServerInterceptor):
    """gRPC: ``authorization: Bearer <key>`` metadata on every RPC but the health ones."""

    def __init__(self, keys: dict[str, str]) -> None:
        self.keys = (keys["inference"], keys["management"])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method.rsplit("/", 1)[-1] in OPEN_RPCS:
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if _accepted(metadata.get("authorization"), self.keys):
            return await continuation(details)

        async def deny(request, context) -> None:  # noqa: ARG001
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, _DENIED.decode())

        return grpc.unary_unary_rpc_method_handler(deny)
