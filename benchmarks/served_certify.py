"""What a served certificate costs, and what it costs the other requests, on both runtimes.

    .venv/bin/python benchmarks/served_certify.py --out docs/results/served_certify.json
    .venv/bin/python benchmarks/served_certify.py --quick          # smoke run, small n

Starts a real TorchServe (the shipped archive, production config, token auth) and the KServe
runtime (same artifact, its default settings) on free loopback ports, then per runtime:

- ``plain``: latency of a request without a certificate, sent alone (median of ``--plain``);
- ``certify n``: latency of a request with ``certify = n`` (sigma 0.25), sent alone, for each n;
- ``beside``: the latency of 8 plain requests sent together with one ``certify = n_max``
  request (at the same moment, and 20 ms after it), against the same 8 sent with nothing beside
  them.  On TorchServe a plain request that lands in the certifying request's batch (the same
  5 ms batching window) waits for the certificate; later ones go to the other worker.  KServe
  computes certificates after the batch, in a thread pool, so its plain requests should not
  wait in either case.

Latencies are the client's wall clock (same machine).  Results are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
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


def measure(client, images: list[bytes], args: argparse.Namespace) -> dict:
    """One runtime's rows (see the module docstring); every answer is checked."""
    for image in images[:4]:  # warm-up: both workers, both flows
        client.classify(image)
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
    alone = [latency for _ in range(args.repeats) for latency in plain_burst(client, burst)]
    rows["beside"] = {
        "n": largest,
        "plain_alone_ms": {"median": statistics.median(alone), "max": max(alone)},
    }
    for offset in OFFSETS_MS:
        beside, certifying = [], []
        for _ in range(args.repeats):
            with ThreadPoolExecutor(max_workers=1) as pool:
                future = pool.submit(
                    timed, lambda: client.classify(images[0], certify=largest, certify_sigma=SIGMA)
                )
                time.sleep(offset / 1000.0)
                beside += plain_burst(client, burst)
                certifying.append(future.result()[0])
        rows["beside"][f"plain_after_{offset}ms"] = {
            "median": statistics.median(beside),
            "max": max(beside),
            "certifying_ms": statistics.median(certifying),
        }
    return rows


def run_torchserve(images: list[bytes], args: argparse.Namespace) -> dict:
    from serving.client import ClassifierClient
    from serving.server import ServerSettings, TorchServe

    settings = ServerSettings(
        run_dir=Path(tempfile.mkdtemp(prefix="served-certify-ts-")),
        auth=True,
        ports=free_ports(PORT_NAMES),
    )
    server = TorchServe(settings)
    server.start()
    try:
        server.wait_ready("fashion_mnist", timeout=180)
        client = ClassifierClient(
            model="fashion_mnist",
            http_url=settings.url("inference"),
            token=server.keys()["inference"],
            timeout=120,
        )
        return measure(client, images, args)
    finally:
        server.stop()


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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.plain, args.repeats = [20, 50], 4, 2
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    images, source = fashion_png_images(max(args.plain, args.repeats, BESIDE))
    load_before = load_average()
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
