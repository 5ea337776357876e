"""Number and model-label formatting shared by the markdown sections."""

from __future__ import annotations

import math
from typing import Any


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value * scale:.{digits}f}"


def _label(results: dict, name: str) -> str:
    info = next(m for m in results["models"] if m["name"] == name)
    return "baseline (CNN)" if info["beta"] is None else f"beta={info['label']}"


def _beta_of(results: dict, name: str) -> float | None:
    return next(m["beta"] for m in results["models"] if m["name"] == name)
