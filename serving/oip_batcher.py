"""Server-side dynamic batching for the KServe runtime, like TorchServe's batchSize/maxBatchDelay.

KServe's Python model server calls ``predict`` once per request; the network is several times
cheaper per image in a batch of 16 than alone (docs/benchmarks.md), so concurrent requests are
gathered here: the first waiting request opens a batch, which closes when it holds ``max_batch``
images or ``max_delay`` seconds have passed, and runs in a thread (torch and onnxruntime release
the GIL) while the event loop keeps accepting requests.  ``workers`` batches run at once, one
per core, as TorchServe's workers do.  A request never waits for a batch that cannot hold it:
a request larger than ``max_batch`` runs as its own batch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["MicroBatcher"]


@dataclass
class _Item:
    pixels: np.ndarray  # (n, C, H, W) uint8
    explain: bool
    future: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatcher:
    """``await submit(pixels, explain)`` -> that request's results, computed in a shared batch.

    ``run(pixels, explain_flags)`` is the batch function (``Predictor.predict``); it gets one
    explain flag per image and returns one result per image.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray, list[bool]], list[Any]],
        max_batch: int = 16,
        max_delay: float = 0.005,
        workers: int = 1,
    ) -> None:
        if max_batch < 1 or workers < 1 or max_delay < 0:
            raise ValueError("max_batch and workers must be >= 1, max_delay >= 0")
        self.run = run
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch")
        self.queue: asyncio.Queue[_Item] | None = None
        self.tasks: list[asyncio.Task] = []
        self.batch_sizes: list[int] = []  # for tests and the benchmark's notes

    def _start(self) -> None:
        self.queue = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]

    async def submit(self, pixels: np.ndarray, explain: bool) -> list[Any]:
        if self.queue is None:  # created lazily: the server's event loop is not known earlier
            self._start()
        item = _Item(pixels, explain)
        await self.queue.put(item)
        return await item.future

    async def _collect(self) -> list[_Item]:
        items = [await self.queue.get()]
        size = len(items[0].pixels)
        deadline = time.monotonic() + self.max_delay
        while size < self.max_batch:
            try:
                item = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), remaining)
                except TimeoutError:
                    break
            if size + len(item.pixels) > self.max_batch:
                self.queue.put_nowait(item)  # it opens the next batch
                break
            items.append(item)
            size += len(item.pixels)
        return items

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            pixels = np.concatenate([item.pixels for item in items])
            flags = [item.explain for item in items for _ in range(len(item.pixels))]
            self.batch_sizes.append(len(pixels))
            try:
                results = await loop.run_in_executor(self.executor, self.run, pixels, flags)
            except Exception as error:  # every request of the batch gets the error
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(error)
                continue
            start = 0
            for item in items:
                if not item.future.done():
                    item.future.set_result(results[start : start + len(item.pixels)])
                start += len(item.pixels)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.executor.shutdown(wait=False, cancel_futures=True)
