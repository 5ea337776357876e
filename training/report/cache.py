"""Results cache per (stage, model) under ``WORK/cache``, and the hashes that key it."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Cache:
    """Results per (stage, model) as npz/json under WORK/cache, one file per key (hashed)."""

    def __init__(self, root: Path) -> None:
        self.root = root / "cache"
        self.root.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def _account(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def arrays(self, stage: str, name: str, key: dict, compute: Callable[[], dict]) -> dict:
        text = json.dumps(key, sort_keys=True, default=str)
        path = self.root / f"{stage}_{name}_{_digest(text)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["__key__"]) == text:
                    self._account(stage, float(stored["__seconds__"]))
                    return {k: stored[k] for k in stored.files if not k.startswith("__")}
        started = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - started
        np.savez(path, __key__=np.array(text), __seconds__=np.array(seconds), **result)
        self._account(stage, seconds)
        return result

    def json(self, stage: str, name: str, key: dict, compute: Callable[[], Any]) -> Any:
        text = json.dumps(key, sort_keys=True, default=str)
        path = self.root / f"{stage}_{name}_{_digest(text)}.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == text:
                self._account(stage, stored["seconds"])
                return stored["result"]
        started = time.perf_counter()
        result = compute()
        seconds = time.perf_counter() - started
        payload = {"key": text, "seconds": seconds, "result": result}
        path.write_text(json.dumps(payload, default=_json_default) + "\n")
        self._account(stage, seconds)
        return json.loads(json.dumps(result, default=_json_default))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
