"""Process facts from /proc: whether a pid still runs, and its children.

The runtimes' start/stop code (``serving.server``, ``serving.kserve_control``) must know whether
a server process has really gone, and the tests must know that no worker was left behind; both
read the same /proc fields, so both read them here.  Linux only, like the runtimes' process
control.
"""

from __future__ import annotations

import os

__all__ = ["alive", "children"]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first, then parent pid)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists (a zombie counts as gone: it runs nothing)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent`` (a TorchServe frontend's model workers)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := _stat_fields(int(name))) is not None:
            try:
                if int(fields[1]) == parent:
                    found.append(int(name))
            except (IndexError, ValueError):
                continue
    return found
