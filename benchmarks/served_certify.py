"""What a served certificate costs, and what it costs the other requests, on both runtimes.

    .venv/bin/python benchmarks/served_certify.py --out docs/results/served_certify.json
    .venv/bin/python benchmarks/served_certify.py --quick          # smoke run, small n
    .venv/bin/python benchmarks/served_certify.py --registration \
        --out docs/results/served_certify_registration.json      # TorchServe: where to certify

Starts a real TorchServe (the shipped archive, production config, token auth) and the KServe
runtime (same artifact, its default settings) on free loopback ports, then per runtime:

- ``plain``: latency of a request without a certificate, sent alone (median of ``--plain``);
- ``certify n``: latency of a request with ``certify = n`` (sigma 0.25), sent alone, for each n;
- ``beside``: the latency of 8 plain requests sent together with one ``certify = n_max``
  request (at the same moment, and 20 ms after it), against the same 8 sent with nothing beside
  them.  On TorchServe the certifying request goes to the certify registration
  ``fashion_mnist_certify`` (batch size 1, one worker; the batched registration refuses
  certificates, serving/server.py).  KServe computes certificates after the batch, in a thread
  pool, so its plain requests should not wait in either case.

``--registration`` compares, on one TorchServe and in one run, the two places a TorchServe
certificate can be computed: the 8 plain requests (to ``fashion_mnist``) sent with one
``certify = n_max`` request to the batched registration itself (the old shared batch: this run's
archive is the shipped artifact packed with ``certify_in_batches: true``, into a temporary
store), and with it sent to the certify registration; rounds alternate between the two.  It
also measures what the certify registration costs: TorchServe's time until every worker is
READY and each worker's resident memory (VmRSS, by the workers' pids in the management API),
from starts of the shipped archive with and without it (alternating).

Latencies are the client's wall clock (same machine).  Results are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from machine import cpu_name, load_average  # noqa: E402
from serve_load import PORT_NAMES  # noqa: E402
from traffic import fashion_png_images, free_ports  # noqa: E402

MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"
SIGMA = 0.25
BESIDE = 8  # plain requests sent beside one certifying request
OFFSETS_MS = (0, 20)  # when the plain requests follow the certifying one


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    answer = call()
    return 1000.0 * (time.perf_counter() - started), answer


def plain_burst(client, images: list[bytes]) -> list[float]:
    """Latencies (ms) of BESIDE plain requests sent at once."""
    with ThreadPoolExecutor(max_workers=BESIDE) as pool:
        results = list(pool.map(lambda image: timed(lambda: client.classify(image)), images))
    return [latency for latency, _ in results]


def bursts_alone(client, burst: list[bytes], repeats: int) -> dict:
    """Median and max latency (ms) of the plain burst sent ``repeats`` times with nothing beside."""
    alone = [latency for _ in range(repeats) for latency in plain_burst(client, burst)]
    return {"median": statistics.median(alone), "max": max(alone)}


def burst_beside_certificate(
    client, certifier, burst: list[bytes], image: bytes, n: int, offset_ms: float = 0.0
) -> tuple[list[float], float]:
    """The plain burst from ``client`` sent ``offset_ms`` after ``certifier`` asked for one
    certify = n answer: the burst's latencies and the certifying request's (its certificate
    checked), all in ms."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(
            timed, lambda: certifier.classify(image, certify=n, certify_sigma=SIGMA)
        )
        time.sleep(offset_ms / 1000.0)
        beside = plain_burst(client, burst)
        latency, answer = future.result()
    if getattr(answer, "certificate", None) is None:
        raise RuntimeError(f"certify={n}: no certificate in {answer}")
    return beside, latency


def measure(client, images: list[bytes], args: argparse.Namespace) -> dict:
    """One runtime's rows (see the module docstring); every answer is checked."""
    for image in images[:4]:  # warm-up: both workers, both flows
        client.classify(image)
    # and the worker that certifies (on TorchServe its own registration, cold until asked)
    client.classify(images[0], certify=10, certify_sigma=SIGMA)
    plain = [timed(lambda image=image: client.classify(image))[0] for image in images[: args.plain]]
    rows: dict = {"plain_ms": statistics.median(plain), "certify": {}}
    for n in args.n:
        latencies = []
        for image in images[: args.repeats]:
            latency, answer = timed(
                lambda image=image, n=n: client.classify(image, certify=n, certify_sigma=SIGMA)
            )
            if getattr(answer, "certificate", None) is None:
                raise RuntimeError(f"certify={n}: no certificate in {answer}")
            latencies.append(latency)
        rows["certify"][str(n)] = statistics.median(latencies)
    burst = images[:BESIDE]
    largest = max(args.n)
    rows["beside"] = {"n": largest, "plain_alone_ms": bursts_alone(client, burst, args.repeats)}
    for offset in OFFSETS_MS:
        beside, certifying = [], []
        for _ in range(args.repeats):
            latencies, latency = burst_beside_certificate(
                client, client, burst, images[0], largest, offset
            )
            beside += latencies
            certifying.append(latency)
        rows["beside"][f"plain_after_{offset}ms"] = {
            "median": statistics.median(beside),
            "max": max(beside),
            "certifying_ms": statistics.median(certifying),
        }
    return rows


@contextmanager
def torchserve_client(settings) -> Iterator:
    """A TorchServe started with ``settings``, every registration READY (the certify one
    included: certify requests go there), and a client of ``fashion_mnist``; stopped after."""
    from serving.client import ClassifierClient
    from serving.server import TorchServe, _wait_all

    server = TorchServe(settings)
    server.start()
    try:
        _wait_all(server)
        yield ClassifierClient(
            model="fashion_mnist",
            http_url=settings.url("inference"),
            token=server.keys()["inference"],
            timeout=120,
        )
    finally:
        server.stop()


def run_torchserve(images: list[bytes], args: argparse.Namespace) -> dict:
    from serving.server import ServerSettings

    settings = ServerSettings(
        run_dir=Path(tempfile.mkdtemp(prefix="served-certify-ts-")),
        auth=True,
        ports=free_ports(PORT_NAMES),
    )
    with torchserve_client(settings) as client:
        return measure(client, images, args)


def run_kserve(images: list[bytes], args: argparse.Namespace) -> dict:
    from serving.kserve_control import KServeProcess
    from serving.kserve_runtime import KServeSettings
    from serving.oip_client import OipClient

    ports = free_ports(("http", "grpc"))
    settings = KServeSettings(
        model_dir=MODEL_DIR,
        run_dir=Path(tempfile.mkdtemp(prefix="served-certify-kserve-")),
        http_port=ports["http"],
        grpc_port=ports["grpc"],
    )
    process = KServeProcess(settings)
    process.start()
    try:
        process.wait_ready(timeout=180)
        client = OipClient(
            model=settings.model_name,
            http_url=settings.url(),
            token=process.keys()["inference"],
            timeout=120,
        )
        return measure(client, images, args)
    finally:
        process.stop()


def _archive_with(store: Path, **trustgc: object) -> str:
    """The shipped artifact packed into ``store`` with these handler settings changed; TorchServe's
    ``--models`` value."""
    import yaml

    from serving import paths
    from serving.server import ModelSpec, prepare_models

    config = yaml.safe_load(paths.model_config().read_text())
    config["trustgc"].update(trustgc)
    model_config = store / "model-config.yaml"
    store.mkdir(parents=True, exist_ok=True)
    model_config.write_text(yaml.safe_dump(config, sort_keys=False))
    return prepare_models([ModelSpec(MODEL_DIR, "fashion_mnist")], store, model_config)


def beside_where(client, images: list[bytes], args: argparse.Namespace) -> dict:
    """The 8 plain requests alone, with one certify = n_max sent to the batched registration
    (shared batch) and with it sent to the certify registration; rounds alternate."""
    from dataclasses import replace

    for image in images[:4]:  # warm-up: both batched workers, both flows
        client.classify(image)
    largest = max(args.n)
    burst = images[:BESIDE]
    targets = {"shared_batch": client.model, "certify_registration": None}
    for target in targets.values():  # warm-up: the certifying worker of each target
        replace(client, certify_model=target).classify(images[0], certify=10, certify_sigma=SIGMA)
    rows: dict = {"n": largest, "offset_ms": 0}
    rows["plain_alone_ms"] = bursts_alone(client, burst, args.repeats)
    collected = {name: ([], []) for name in targets}
    for _ in range(args.repeats):
        for name, target in targets.items():
            certifier = replace(client, certify_model=target)
            beside, certifying = collected[name]
            latencies, latency = burst_beside_certificate(
                client, certifier, burst, images[0], largest
            )
            beside += latencies
            certifying.append(latency)
    for name, (beside, certifying) in collected.items():
        rows[name] = {
            "median": statistics.median(beside),
            "max": max(beside),
            "certifying_ms": statistics.median(certifying),
            "plain_ms": beside,
        }
    return rows


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def start_cost(certify_registration: bool) -> dict:
    """One start of the shipped archive: seconds until every worker is READY, workers' RSS."""
    import requests

    from serving.server import ServerSettings, TorchServe, _wait_all, served_names

    settings = ServerSettings(
        run_dir=Path(tempfile.mkdtemp(prefix="served-certify-start-")),
        auth=True,
        ports=free_ports(PORT_NAMES),
        certify_registration=certify_registration,
    )
    server = TorchServe(settings)
    started = time.monotonic()
    server.start()
    try:
        _wait_all(server)
        ready = time.monotonic() - started
        time.sleep(2.0)  # let the workers settle after loading
        rss = {}
        for name in served_names(settings):
            (described,) = requests.get(
                f"{settings.url('management')}/models/{name}",
                headers=server.headers("management"),
                timeout=10,
            ).json()
            rss[name] = [_rss_mb(int(worker["pid"])) for worker in described["workers"]]
        java = server.frontend_pid()
        return {
            "certify_registration": certify_registration,
            "ready_s": ready,
            "worker_rss_mb": rss,
            "frontend_rss_mb": _rss_mb(java),
        }
    finally:
        server.stop()


def run_registration(images: list[bytes], args: argparse.Namespace) -> dict:
    """``--registration``: where TorchServe computes a certificate, and what that costs."""
    from serving.server import ServerSettings

    run_dir = Path(tempfile.mkdtemp(prefix="served-certify-registration-"))
    settings = ServerSettings(run_dir=run_dir, auth=True, ports=free_ports(PORT_NAMES))
    settings.model_store = run_dir / "model_store"
    settings.models = _archive_with(settings.model_store, certify_in_batches=True)
    with torchserve_client(settings) as client:
        rows = beside_where(client, images, args)
    starts = [start_cost(on) for _ in range(args.starts) for on in (True, False)]
    rows["starts"] = {
        "with_certify_registration": [s for s in starts if s["certify_registration"]],
        "without": [s for s in starts if not s["certify_registration"]],
    }
    return rows


def render_registration(rows: dict) -> str:
    """The --registration table: plain latencies by where the certificate ran, then the cost."""
    lines = [
        f"| 8 plain requests sent with one certify {rows['n']} | plain median ms | plain max ms "
        "| certifying request ms |",
        "|---|---|---|---|",
        f"| alone (no certificate) | {rows['plain_alone_ms']['median']:.0f} "
        f"| {rows['plain_alone_ms']['max']:.0f} | - |",
    ]
    for name, text in (
        ("shared_batch", "certificate in the batched registration (old)"),
        ("certify_registration", "certificate on fashion_mnist_certify"),
    ):
        row = rows[name]
        lines.append(
            f"| {text} | {row['median']:.0f} | {row['max']:.0f} | {row['certifying_ms']:.0f} |"
        )
    starts = rows.get("starts")
    if starts:
        lines += [
            "",
            "| start | ready s (median) | worker RSS MB (median per worker) |",
            "|---|---|---|",
        ]
        for name, runs in starts.items():
            ready = statistics.median(run["ready_s"] for run in runs)
            per_worker = {}
            for run in runs:
                for registration, values in run["worker_rss_mb"].items():
                    per_worker.setdefault(registration, []).extend(values)
            rss = ", ".join(
                f"{registration} {statistics.median(values):.0f} x {len(values) // len(runs)}"
                for registration, values in per_worker.items()
            )
            lines.append(f"| {name} | {ready:.1f} | {rss} |")
    return "\n".join(lines)


def render(result: dict) -> str:
    ns = result["n"]
    head = " | ".join(f"certify {n} ms" for n in ns)
    beside_heads = " | ".join(
        f"8 plain {offset} ms after one certify {max(ns)}: median / max ms" for offset in OFFSETS_MS
    )
    lines = [
        f"| runtime | plain ms | {head} | 8 plain alone: median / max ms | {beside_heads} |",
        "|---" * (4 + len(ns) + len(OFFSETS_MS) - 1) + "|",
    ]
    for runtime, rows in result["runtimes"].items():
        beside = rows["beside"]
        cells = [f"{rows['plain_ms']:.1f}"]
        cells += [f"{rows['certify'][str(n)]:.0f}" for n in ns]
        for key in ["plain_alone_ms", *(f"plain_after_{offset}ms" for offset in OFFSETS_MS)]:
            cells.append(f"{beside[key]['median']:.0f} / {beside[key]['max']:.0f}")
        lines.append(f"| {runtime} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--plain", type=int, default=20, help="plain requests timed alone")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runtimes", nargs="+", default=["torchserve", "kserve"])
    parser.add_argument("--quick", action="store_true", help="n 20 and 50, 2 repeats")
    parser.add_argument(
        "--registration",
        action="store_true",
        help="TorchServe only: shared batch against the certify registration, and its cost",
    )
    parser.add_argument("--starts", type=int, default=2, help="--registration: starts each way")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.plain, args.repeats, args.starts = [20, 50], 4, 2, 1
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    images, source = fashion_png_images(max(args.plain, args.repeats, BESIDE))
    load_before = load_average()
    if args.registration:
        result = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": cpu_name(),
            "images": source,
            "load_before": load_before,
            "sigma": SIGMA,
            "repeats": args.repeats,
            "torchserve": run_registration(images, args),
            "load_after": load_average(),
        }
        print(render_registration(result["torchserve"]))
        print(f"load average before / after: {load_before} / {result['load_after']}")
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
        return result
    runners = {"torchserve": run_torchserve, "kserve": run_kserve}
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": cpu_name(),
        "images": source,
        "load_before": load_before,
        "n": args.n,
        "sigma": SIGMA,
        "runtimes": {name: runners[name](images, args) for name in args.runtimes},
    }
    result["load_after"] = load_average()
    print(render(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
