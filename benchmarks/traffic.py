"""The one traffic generator of the benchmark scripts: closed-loop client threads, test images.

``load_test.py`` (answers and metrics checked under load) and ``serve_load.py`` (GC against the
baseline, REST and gRPC) both drive a server with client threads that each send one request at a
time, back to back, until a deadline.  The loop, the PNG test images and the free loopback ports
live here once; what a request is and what counts as success stays with each script.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

__all__ = ["Sample", "Traffic", "closed_loop", "free_ports", "png_bytes", "fashion_png_images"]

R = TypeVar("R")


@dataclass(frozen=True)
class Sample(Generic[R]):
    """One request: which client sent it, its number within that client, when, and the answer."""

    client: int
    sequence: int
    started: float  # time.monotonic() when sent: comparable with the caller's own clock reads
    latency: float  # seconds until ``request`` returned
    result: R


@dataclass
class Traffic(Generic[R]):
    """All samples (in sending order), the wall time until the last answer and the CPU cores this
    process used meanwhile (the generator shares the machine with the server it measures)."""

    samples: list[Sample[R]] = field(default_factory=list)
    elapsed: float = 0.0
    client_cpu: float = 0.0


def closed_loop(
    request: Callable[[int, int], R],
    clients: int,
    duration: float,
    on_start: Callable[[], None] | None = None,
) -> Traffic[R]:
    """``clients`` threads call ``request(client, sequence)`` back to back for ``duration`` s.

    All threads start together (a barrier), so no client gets a head start; requests in flight
    at the deadline finish and count fully, and ``elapsed`` runs until the last of them.
    ``request`` owns its failures: what it raises ends its thread (and is re-raised here).
    """
    samples: list[Sample[R]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    deadline: list[float] = [0.0]

    def client(number: int) -> None:
        own: list[Sample[R]] = []
        barrier.wait()
        sequence = 0
        try:
            while time.monotonic() < deadline[0]:
                started = time.monotonic()
                result = request(number, sequence)
                own.append(Sample(number, sequence, started, time.monotonic() - started, result))
                sequence += 1
        except BaseException as error:  # noqa: BLE001 - handed to the caller below
            with lock:
                failures.append(error)
        with lock:
            samples.extend(own)

    threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(clients)]
    for thread in threads:
        thread.start()
    cpu_before = time.process_time()
    started = time.monotonic()
    deadline[0] = started + duration
    barrier.wait()
    if on_start is not None:
        on_start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if failures:
        raise failures[0]
    samples.sort(key=lambda sample: sample.started)
    cpu = (time.process_time() - cpu_before) / elapsed if elapsed > 0 else float("nan")
    return Traffic(samples, elapsed, cpu)


def png_bytes(image: np.ndarray) -> bytes:
    """One uint8 image, (H, W) or (H, W, 1), as PNG bytes."""
    from PIL import Image

    array = np.asarray(image, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array.reshape(array.shape[0], array.shape[1])).save(buffer, format="PNG")
    return buffer.getvalue()


def fashion_png_images(count: int) -> tuple[list[bytes], str]:
    """The first ``count`` Fashion-MNIST test images as PNG, and where they came from (random
    28x28 images when the data set or the training package is absent, so a load run still
    works on a serving-only install)."""
    try:
        from training.data import load_fashion_mnist

        images = load_fashion_mnist("test").images[:count, :, :, 0]
        source = f"{len(images)} Fashion-MNIST test images"
    except (OSError, ValueError, ImportError):
        images = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
        source = f"{count} random 28x28 images (Fashion-MNIST test data not found)"
    return [png_bytes(image) for image in images], source


def free_ports(names: Sequence[str], host: str = "127.0.0.1") -> dict[str, int]:
    """One distinct ephemeral port per name, free at the time of asking (all probes are held
    open together, so no two names get the same port)."""
    ports: dict[str, int] = {}
    probes = []
    try:
        for name in names:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind((host, 0))
            probes.append(probe)
            ports[name] = int(probe.getsockname()[1])
    finally:
        for probe in probes:
            probe.close()
    return ports
