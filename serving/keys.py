"""TorchServe's token-auth key file, read by the launcher and by the client alike.

Kept apart from :mod:`serving.server` (which starts java and imports the run-time settings) so
that the client SDK reads the key file without importing anything of the server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["KEY_FILE", "read_keys"]

KEY_FILE = "key_file.json"  # TorchServe writes it into its working (run) directory


def read_keys(run_dir: Path, timeout: float = 30.0) -> dict[str, str]:
    """Inference and management keys from ``key_file.json`` (written non-atomically: retry)."""
    path = Path(run_dir) / KEY_FILE
    deadline = time.monotonic() + timeout
    while True:
        try:
            keys = json.loads(path.read_text())
            return {"inference": keys["inference"]["key"], "management": keys["management"]["key"]}
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no valid key file at {path} after {timeout:.0f} s") from None
            time.sleep(0.2)
