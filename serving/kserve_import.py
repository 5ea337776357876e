"""Import kserve without letting it read this process's command line.

``kserve.model_server`` (imported by ``import kserve`` and by its gRPC stubs' package) parses
``sys.argv`` with argparse at import time.  In any other program (``trustgc classify --grpc``,
pytest) that parse can fail ("ambiguous option: --grpc") and exit the process, so the first
import happens with the program name alone on the command line.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

__all__ = ["import_kserve"]


def import_kserve(module: str = "kserve") -> ModuleType:
    """``importlib.import_module(module)`` with ``sys.argv`` hidden from kserve's parser."""
    if "kserve.model_server" in sys.modules:
        return importlib.import_module(module)
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        return importlib.import_module(module)
    finally:
        sys.argv = saved
