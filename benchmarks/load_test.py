"""Closed-loop load test of the served model over loopback REST, checked against its metrics.

    .venv/bin/python benchmarks/load_test.py                      # 32 clients for 60 s
    .venv/bin/python benchmarks/load_test.py --clients 8 --duration 10 --json-out load.json
    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:8080 --token KEY \\
        --metrics-url http://127.0.0.1:8082/metrics                # an already running server

Without ``--url`` it starts its own TorchServe (the production config with token auth, in a
temporary run directory on free loopback ports) and stops it afterwards.  Each client sends
Fashion-MNIST test images as PNG, one request at a time, until the duration is over; a small
share of the requests (``--invalid-every``) are deliberately broken images, so the
``invalid_input`` path is loaded too.  The run passes when every request was answered, with no
5xx and no timeout, every valid image got a 200 and every broken one its 4xx, and the server's
``gc_decisions_total`` counters grew by exactly the decisions the clients saw, decision by
decision.  Prints a summary (requests, throughput, latency percentiles, errors) and exits 1 if a
check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (str(REPO_ROOT), str(REPO_ROOT / "benchmarks")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from traffic import closed_loop, fashion_png_images, free_ports  # noqa: E402

DECISIONS = ("accepted", "rejected_ood", "flagged_attack", "invalid_input")
INVALID_BODY = b"\x89PNG\r\n\x1a\n this is not really an image"


@dataclass
class Target:
    """Where the load goes: the inference API (with its token) and the metrics endpoint."""

    inference_url: str
    metrics_url: str
    token: str | None = None
    model: str = "fashion_mnist"

    @property
    def predictions_url(self) -> str:
        return f"{self.inference_url}/predictions/{self.model}"

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/octet-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


@dataclass
class Record:
    """One request as the client saw it."""

    started: float  # time.monotonic() when sent
    latency: float  # seconds until the answer (or the failure)
    status: int | None  # HTTP status, None when no answer came
    outcome: str  # a decision, an error code, or "timeout" / "connection_error" / "http_<n>"
    valid: bool  # whether a valid image was sent
    client: int = 0


@dataclass
class LoadReport:
    clients: int
    duration_s: float
    requests: int
    throughput_rps: float
    latency_ms: dict[str, float]
    status_counts: dict[str, int]
    outcomes: dict[str, int]
    errors: dict[str, int]
    server_decisions: dict[str, float] | None = None
    client_decisions: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


# --------------------------------------------------------------------------- inputs


def fashion_bodies(count: int = 256) -> list[bytes]:
    """The first ``count`` Fashion-MNIST test images as PNG (synthetic ones if absent)."""
    return fashion_png_images(count)[0]


# --------------------------------------------------------------------------- requests


def raw_sender(target: Target, timeout: float) -> Callable[[requests.Session, bytes], tuple]:
    """One POST, no retry: returns (HTTP status or None, outcome)."""
    headers = target.headers()

    def send(session: requests.Session, body: bytes) -> tuple[int | None, str]:
        try:
            answer = session.post(
                target.predictions_url, data=body, headers=headers, timeout=timeout
            )
        except requests.Timeout:
            return None, "timeout"
        except requests.ConnectionError:
            return None, "connection_error"
        return answer.status_code, outcome_of(answer.status_code, answer.content)

    return send


def outcome_of(status: int, content: bytes) -> str:
    """The decision of a 200, the handler's error code of a 4xx, else ``http_<status>``."""
    try:
        payload = json.loads(content)
    except ValueError:
        return f"http_{status}"
    if status == 200 and isinstance(payload, dict) and "decision" in payload:
        return str(payload["decision"])
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("code", f"http_{status}"))
    return f"http_{status}"


def run_load(
    bodies: list[bytes],
    send: Callable[[requests.Session, bytes], tuple],
    clients: int,
    duration: float,
    invalid_every: int = 0,
    on_start: Callable[[], None] | None = None,
) -> list[Record]:
    """``clients`` closed-loop threads sending ``bodies`` round robin for ``duration`` s.

    Every ``invalid_every``-th request of a client (0: none) sends a broken image instead.  Each
    client keeps its own keep-alive session.
    """
    sessions = [requests.Session() for _ in range(clients)]

    def request(client: int, sent: int) -> tuple[bool, tuple]:
        valid = not (invalid_every and sent % invalid_every == invalid_every - 1)
        body = bodies[(client * 7919 + sent) % len(bodies)] if valid else INVALID_BODY
        return valid, send(sessions[client], body)

    try:
        traffic = closed_loop(request, clients, duration, on_start)
    finally:
        for session in sessions:
            session.close()
    return [
        Record(sample.started, sample.latency, status, outcome, valid, sample.client)
        for sample in traffic.samples
        for valid, (status, outcome) in [sample.result]
    ]


# --------------------------------------------------------------------------- metrics


def decision_counts(metrics_url: str, model: str = "fashion_mnist") -> dict[str, float]:
    """gc_decisions_total per decision (summed over other labels) from the metrics endpoint."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(metrics_url, timeout=10).text
    counts = dict.fromkeys(DECISIONS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gc_decisions_total" and sample.labels.get("ModelName") == model:
                decision = sample.labels.get("decision", "")
                counts[decision] = counts.get(decision, 0.0) + sample.value
    return counts


def stable_decision_counts(metrics_url: str, model: str, settle: float = 0.6) -> dict:
    """Counts once two reads ``settle`` s apart agree (metrics arrive asynchronously)."""
    deadline = time.monotonic() + 15
    previous = decision_counts(metrics_url, model)
    while True:
        time.sleep(settle)
        current = decision_counts(metrics_url, model)
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


def decisions_since(
    metrics_url: str, model: str, before: dict, expected_total: int, timeout: float = 30.0
) -> dict[str, float]:
    """Counter deltas since ``before`` once ``expected_total`` decisions are exported."""
    deadline = time.monotonic() + timeout
    while True:
        after = decision_counts(metrics_url, model)
        delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
        if sum(delta.values()) >= expected_total or time.monotonic() > deadline:
            time.sleep(1.0)  # anything late would show up as an excess
            after = decision_counts(metrics_url, model)
            return {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
        time.sleep(0.2)


# --------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def summarize(records: list[Record], clients: int, duration: float) -> LoadReport:
    latencies = [record.latency for record in records]
    elapsed = max(
        duration,
        max((r.started + r.latency for r in records), default=0)
        - min((r.started for r in records), default=0),
    )
    statuses = Counter(str(record.status) for record in records)
    outcomes = Counter(record.outcome for record in records)
    errors = Counter()
    for record in records:
        if record.status is None:
            errors[record.outcome] += 1
        elif record.status >= 500:
            errors[f"http_{record.status}"] += 1
        elif record.valid and record.status != 200:
            errors[f"valid_image_answered_{record.status}"] += 1
        elif not record.valid and not 400 <= record.status < 500:
            errors[f"broken_image_answered_{record.status}"] += 1
    client_decisions = dict.fromkeys(DECISIONS, 0)
    for record in records:
        if record.status == 200 and record.outcome in client_decisions:
            client_decisions[record.outcome] += 1
        elif record.status is not None and 400 <= record.status < 500:
            client_decisions["invalid_input"] += 1
    return LoadReport(
        clients=clients,
        duration_s=round(elapsed, 3),
        requests=len(records),
        throughput_rps=round(len(records) / elapsed, 2) if elapsed else 0.0,
        latency_ms={
            "p50": round(percentile(latencies, 50) * 1000, 1),
            "p90": round(percentile(latencies, 90) * 1000, 1),
            "p99": round(percentile(latencies, 99) * 1000, 1),
            "max": round(max(latencies, default=float("nan")) * 1000, 1),
        },
        status_counts=dict(statuses),
        outcomes=dict(outcomes),
        errors=dict(errors),
        client_decisions=client_decisions,
    )


def check(report: LoadReport, server_decisions: dict[str, float] | None) -> LoadReport:
    """Fill in ``failures``: unanswered, 5xx, timeouts, wrong statuses, metric mismatches."""
    if report.requests == 0:
        report.failures.append("no request was sent")
    for kind, count in report.errors.items():
        report.failures.append(f"{count} request(s) failed: {kind}")
    if server_decisions is not None:
        report.server_decisions = server_decisions
        expected = {key: float(value) for key, value in report.client_decisions.items()}
        observed = {key: server_decisions.get(key, 0.0) for key in expected}
        extra = {k: v for k, v in server_decisions.items() if k not in expected and v}
        if observed != expected or extra:
            report.failures.append(
                f"gc_decisions_total grew by {server_decisions}, clients saw {expected}"
            )
    return report


def load_test(
    target: Target,
    clients: int = 32,
    duration: float = 60.0,
    timeout: float = 30.0,
    invalid_every: int = 50,
    bodies: list[bytes] | None = None,
    check_metrics: bool = True,
) -> LoadReport:
    """Run the load against ``target`` and check the answers and the decision counters."""
    bodies = bodies or fashion_bodies()
    before = stable_decision_counts(target.metrics_url, target.model) if check_metrics else None
    records = run_load(bodies, raw_sender(target, timeout), clients, duration, invalid_every)
    report = summarize(records, clients, duration)
    server = None
    if before is not None:
        expected_total = sum(report.client_decisions.values())
        server = decisions_since(target.metrics_url, target.model, before, expected_total)
    return check(report, server)


# --------------------------------------------------------------------------- own server


def start_own_server(run_dir: Path):
    """TorchServe with the production config on free loopback ports in ``run_dir``."""
    from serving.server import ServerSettings, TorchServe, runtime_properties

    ports = free_ports(("inference", "management", "metrics", "grpc_inference", "grpc_management"))
    vmargs = runtime_properties(ServerSettings()).get("vmargs", "")
    temp_dir = run_dir / "tmp"
    settings = ServerSettings(
        run_dir=run_dir,
        ports=ports,
        # java keeps worker sockets and unpacked archives in java.io.tmpdir (/tmp by default,
        # shared by every TorchServe on the machine): give this instance its own.
        overrides={"vmargs": f"{vmargs} -Djava.io.tmpdir={temp_dir}".strip()},
    )
    server = TorchServe(settings)
    server.start()
    try:
        server.wait_ready(settings.models.split("=")[0], timeout=240)
    except BaseException:
        server.stop()
        raise
    return settings, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--invalid-every", type=int, default=50, help="0: only valid images")
    parser.add_argument("--images", type=int, default=256, help="distinct test images")
    parser.add_argument("--url", help="inference API of a running server (default: start one)")
    parser.add_argument("--token", help="inference key (token auth)")
    parser.add_argument(
        "--metrics-url", help="metrics endpoint, e.g. http://127.0.0.1:8082/metrics"
    )
    parser.add_argument("--model", default="fashion_mnist")
    parser.add_argument("--no-metrics-check", action="store_true")
    parser.add_argument("--json-out", type=Path, help="write the report as JSON here")
    args = parser.parse_args(argv)

    server = None
    scratch = None
    if args.url:
        if not args.metrics_url and not args.no_metrics_check:
            parser.error("--metrics-url is needed with --url (or pass --no-metrics-check)")
        target = Target(args.url, args.metrics_url or "", args.token, args.model)
    else:
        scratch = tempfile.TemporaryDirectory(prefix="trustgc-load-")
        started = time.monotonic()
        settings, server = start_own_server(Path(scratch.name))
        print(f"TorchServe ready after {time.monotonic() - started:.1f} s on {settings.ports}")
        target = Target(
            settings.url("inference"),
            f"{settings.url('metrics')}/metrics",
            server.keys()["inference"],
            args.model,
        )
    try:
        report = load_test(
            target,
            clients=args.clients,
            duration=args.duration,
            timeout=args.timeout,
            invalid_every=args.invalid_every,
            bodies=fashion_bodies(args.images),
            check_metrics=not args.no_metrics_check,
        )
    finally:
        if server is not None:
            server.stop()
        if scratch is not None:
            scratch.cleanup()
    summary = asdict(report) | {"ok": report.ok}
    print(json.dumps(summary, indent=2))
    if args.json_out:
        args.json_out.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
