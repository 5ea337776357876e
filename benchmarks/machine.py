"""What the benchmark scripts record about the machine they ran on (Linux /proc, with fallbacks).

One place for the CPU name and the load average, so every results table describes its machine
the same way.
"""

from __future__ import annotations

import platform
from pathlib import Path

__all__ = ["cpu_name", "load_average"]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> float:
    """The 1-minute load average (NaN where /proc/loadavg cannot be read): other jobs' CPU."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")
