#!/usr/bin/env python3
"""Health probes for a TorchServe with token auth on (Kubernetes exec probes, compose healthcheck).

TorchServe's token auth protects every API, /ping included, and its keys live in
``key_file.json`` in the run directory (rewritten at each start, valid 60 minutes), so a plain
HTTP probe cannot pass.  This script runs inside the container, reads the current management
key and asks the management API whether the model's workers are READY::

    python3 deploy/kubernetes/probe.py ready     # exit 0: every worker of the model is READY
    python3 deploy/kubernetes/probe.py live      # exit 0: the metrics port (no auth) answers

Standard library only (about 0.1-0.3 s a probe).  Settings: --model / $TRUSTGC_MODEL
(fashion_mnist), --run-dir / $TRUSTGC_RUN_DIR (/app/.run/torchserve), --management-url /
$TRUSTGC_MANAGEMENT_URL (http://127.0.0.1:8081), --metrics-url / $TRUSTGC_METRICS_URL
(http://127.0.0.1:8082).
Exit status: 0 healthy, 1 not (the reason goes to stdout, which Kubernetes shows in events).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def _management_key(run_dir: Path) -> str:
    # key_file.json is written non-atomically: a parse error is reported, the next probe retries
    keys = json.loads((run_dir / "key_file.json").read_text())
    return keys["management"]["key"]


def check_ready(model: str, run_dir: Path, management_url: str, timeout: float) -> str | None:
    """None when every worker of ``model`` is READY, else why not."""
    headers = {}
    try:
        headers["Authorization"] = f"Bearer {_management_key(run_dir)}"
    except FileNotFoundError:
        pass  # token auth off: TorchServe writes no key file
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"cannot read {run_dir / 'key_file.json'}: {error!r}"
    request = urllib.request.Request(f"{management_url}/models/{model}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            description = json.load(answer)
    except urllib.error.HTTPError as error:
        return f"management API answered HTTP {error.code} for model {model}"
    except (OSError, ValueError) as error:
        return f"management API unreachable: {error!r}"
    try:
        workers = description[0].get("workers", [])
    except (IndexError, KeyError, TypeError, AttributeError):
        return f"unexpected answer: {str(description)[:200]}"
    statuses = [worker.get("status") for worker in workers]
    if not statuses or any(status != "READY" for status in statuses):
        return f"model {model} workers not ready: {statuses}"
    return None


def check_live(metrics_url: str, timeout: float) -> str | None:
    """None when the metrics endpoint answers 200 (the java frontend is alive)."""
    try:
        with urllib.request.urlopen(f"{metrics_url}/metrics", timeout=timeout) as answer:
            answer.read(1)
            return None if answer.status == 200 else f"metrics answered HTTP {answer.status}"
    except (OSError, ValueError) as error:
        return f"metrics endpoint unreachable: {error!r}"


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("check", choices=("ready", "live"))
    parser.add_argument("--model", default=env("TRUSTGC_MODEL", "fashion_mnist"))
    parser.add_argument(
        "--run-dir", type=Path, default=Path(env("TRUSTGC_RUN_DIR", "/app/.run/torchserve"))
    )
    parser.add_argument(
        "--management-url", default=env("TRUSTGC_MANAGEMENT_URL", "http://127.0.0.1:8081")
    )
    parser.add_argument(
        "--metrics-url", default=env("TRUSTGC_METRICS_URL", "http://127.0.0.1:8082")
    )
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.check == "ready":
        problem = check_ready(args.model, args.run_dir, args.management_url, args.timeout)
    else:
        problem = check_live(args.metrics_url, args.timeout)
    print(problem or f"{args.check}: ok")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
