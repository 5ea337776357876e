"""Load test: the served GC, the CNN baseline and each runtime's no-op floor, on TorchServe and
on the KServe runtime (Open Inference Protocol), over REST and gRPC.

    .venv/bin/python benchmarks/serve_load.py                  # 15 s per cell and model
    .venv/bin/python benchmarks/serve_load.py --quick          # smoke test: seconds per cell
    .venv/bin/python benchmarks/serve_load.py --runtimes torchserve --batch-sizes 1 16 --no-floor

Runtimes: ``torchserve`` serves every model from one TorchServe; ``kserve`` starts one KServe
runtime process per model (serving/kserve_runtime.py, same batching: ``batch_size`` images per
batch, 5 ms delay, 2 batches at once).  The floor is a no-op model through the same frontend,
batching and concurrency (TorchServe: benchmarks/noop_handler.py; KServe: ``noop=True``), so
``GC / floor`` says how close the served GC comes to what the runtime itself allows here.

Builds four archives into a scratch model store (default ``runs/bench_store``): the shipped GC
(``model_store/fashion_mnist``) and the CNN baseline (``runs/sweep/fashion_mnist_dc``, archived
without calibration: its answers carry neutral trust fields), each with batching off
(``batchSize: 1``) and on (the production ``batchSize: 16``, ``maxBatchDelay: 5``); everything
else is the production model-config yaml (two workers, one torch thread each).  Starts its own
TorchServe (production config, token auth on) on free non-default ports in its own run
directory, and always stops it.

For each protocol (REST, gRPC), batching setting and concurrency (1, 8, 32 client threads, each
sending one request at a time, back to back), GC and baseline run over the same real
Fashion-MNIST test images (PNG bytes): a warm-up each, then a bounded measurement split into
segments that alternate GC and baseline (ABBA), so that load from other jobs hits both alike.
Reports throughput, latency percentiles, errors, the client's own CPU use (it shares the
machine), the CPU other jobs used meanwhile, and the ratio GC / baseline throughput.  Writes JSON
and a markdown table.

Also the CPU that the server processes and the client spent per answered request, and from it
the GC's CPU ceiling (all cores at that cost) over the floor's throughput: the most GC / floor
can be on this machine.  Before any server starts, the GC's compute per image in-process
(:func:`gc_compute`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from machine import cpu_name, load_average  # noqa: E402
from traffic import closed_loop, fashion_png_images, free_ports  # noqa: E402

from serving.kserve_import import import_kserve  # noqa: E402
from serving.oip_client import grpc_infer_request, rest_infer_body  # noqa: E402

GC_DIR = REPO / "model_store" / "fashion_mnist"
BASELINE_DIR = REPO / "runs" / "sweep" / "fashion_mnist_dc"
UNTRAINED_BASELINE_DIR = REPO / "runs" / "bench_baseline_untrained"
NOOP_HANDLER = REPO / "benchmarks" / "noop_handler.py"
RUNTIMES = ("torchserve", "kserve")
FLOOR_TARGET = 0.5  # served GC throughput >= 0.5x the runtime's own no-op floor
PRODUCTION_MODEL_CONFIG = REPO / "deploy" / "torchserve" / "model-config.yaml"
PORT_NAMES = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
THROUGHPUT_TARGET = 0.5  # served GC throughput >= 0.5x the baseline's


# ------------------------------------------------------------------------- pure helpers


def model_config_text(base: str, batch_size: int, max_batch_delay: int | None = None) -> str:
    """The model-config yaml ``base`` with ``batchSize`` (and ``maxBatchDelay``) replaced."""

    def put(text: str, key: str, value: int) -> str:
        # Replace the value only: the blank before a trailing "# comment" must stay, or YAML
        # reads "5# comment" as a string and TorchServe falls back to its default.
        pattern = re.compile(rf"^{key}:[ \t]*[^\s#]*", re.MULTILINE)
        if pattern.search(text):
            return pattern.sub(f"{key}: {value}", text, count=1)
        return text.rstrip("\n") + f"\n{key}: {value}\n"

    text = put(base, "batchSize", batch_size)
    if max_batch_delay is not None:
        text = put(text, "maxBatchDelay", max_batch_delay)
    return text


def check_model_config(path: Path, batch_size: int, max_batch_delay: int) -> None:
    """Fail unless the yaml parses to these integers (TorchServe ignores invalid values)."""
    import yaml

    parsed = yaml.safe_load(path.read_text())
    wanted = {"batchSize": batch_size, "maxBatchDelay": max_batch_delay}
    got = {key: parsed.get(key) for key in wanted}
    if got != wanted:
        raise ValueError(f"{path}: expected {wanted}, the yaml gives {got}")


def model_name(role: str, batch_size: int) -> str:
    """Served name of one archive, e.g. ``gc_batch16`` or ``baseline_batch1``."""
    return f"{role}_batch{batch_size}"


def summarize(latencies_ms: list[float], errors: int, elapsed_s: float) -> dict[str, float]:
    """Throughput (successful answers per second) and latency percentiles of one run."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    count = int(values.size)

    def pct(q: float) -> float:
        return float(np.percentile(values, q)) if count else float("nan")

    return {
        "requests": count,
        "errors": int(errors),
        "seconds": float(elapsed_s),
        "throughput": count / elapsed_s if elapsed_s > 0 else float("nan"),
        "mean_ms": float(values.mean()) if count else float("nan"),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
    }


def ratio(gc: float, baseline: float) -> float:
    """GC / baseline, NaN when either is missing or the baseline is zero."""
    if not (np.isfinite(gc) and np.isfinite(baseline)) or baseline == 0:
        return float("nan")
    return gc / baseline


def render(result: dict) -> str:
    """Markdown: one row per protocol, batching and concurrency, GC and baseline side by side."""
    lines = [
        f"Machine: {result['machine']}; per cell and model {result['duration']:g} s measured "
        f"in {result.get('segments', 1)} segments alternating GC and baseline (ABBA), after "
        f"{result['warmup']:g} s warm-up; {result['workers']}; load average (1 min) "
        f"{result['load_before']:.2f} before, {result['load_after']:.2f} after.",
        "",
        "| protocol | batching | concurrency | GC req/s | GC p50 / p95 / p99 ms | "
        "baseline req/s | baseline p50 / p95 / p99 ms | errors GC / baseline | client CPU | "
        "other CPU | GC / baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in result["cells"]:
        gc, base = cell["gc"], cell["baseline"]
        batching = "off (1)" if cell["batch_size"] == 1 else f"on ({cell['batch_size']})"
        client = max(gc["client_cpu"], base["client_cpu"])
        other = max(gc.get("other_cpu", float("nan")), base.get("other_cpu", float("nan")))
        lines.append(
            f"| {cell['protocol']} | {batching} | {cell['concurrency']} | "
            f"{gc['throughput']:.1f} | {gc['p50_ms']:.1f} / {gc['p95_ms']:.1f} / "
            f"{gc['p99_ms']:.1f} | {base['throughput']:.1f} | {base['p50_ms']:.1f} / "
            f"{base['p95_ms']:.1f} / {base['p99_ms']:.1f} | {gc['errors']} / {base['errors']} | "
            f"{client:.2f} | {other:.2f} | **{cell['ratio']:.2f}x** |"
        )
    ratios = [c["ratio"] for c in result["cells"] if np.isfinite(c["ratio"])]
    if ratios:
        met = sum(r >= THROUGHPUT_TARGET for r in ratios)
        lines += [
            "",
            f"GC / baseline throughput: {min(ratios):.2f}x to {max(ratios):.2f}x; target >= "
            f"{THROUGHPUT_TARGET:.1f}x met in {met} of {len(ratios)} cells. Client CPU: cores "
            "used by this load generator (same machine); other CPU: cores used by everything "
            "else on the machine (other jobs) while the cell ran; both the higher of the GC and "
            "baseline runs.",
        ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ clients


class RestSender:
    """One keep-alive HTTP session per thread; a request is OK when the answer is 200."""

    content_type = "application/octet-stream"

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.headers = {"Content-Type": self.content_type}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.local = threading.local()

    def body(self, image: bytes) -> bytes:
        """What is posted for ``image``: the raw file bytes."""
        return image

    def __call__(self, image: bytes) -> tuple[bool, bytes]:
        import requests

        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        answer = session.post(self.url, data=self.body(image), headers=self.headers, timeout=60)
        return answer.status_code == 200, answer.content

    def close(self) -> None:
        pass


class GrpcSender:
    """One gRPC channel shared by all threads (HTTP/2 multiplexing), TorchServe's Predictions."""

    def __init__(self, target: str, model: str, token: str | None) -> None:
        import grpc

        from serving.grpc_stubs import inference_pb2, inference_pb2_grpc

        self.grpc = grpc
        self.request_type = inference_pb2.PredictionsRequest
        self.model = model
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.channel = grpc.insecure_channel(target)
        self.stub = inference_pb2_grpc.InferenceAPIsServiceStub(self.channel)

    def __call__(self, image: bytes) -> tuple[bool, bytes]:
        request = self.request_type(model_name=self.model, input={"data": image})
        try:
            reply = self.stub.Predictions(request, metadata=self.metadata, timeout=60)
        except self.grpc.RpcError as error:
            return False, str(error.code()).encode()
        return True, reply.prediction

    def close(self) -> None:
        self.channel.close()


@dataclass
class RunResult:
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_answer: bytes | None = None
    error_sample: str | None = None


def drive(
    send: Callable[[bytes], tuple[bool, bytes]],
    images: list[bytes],
    concurrency: int,
    duration: float,
) -> tuple[RunResult, float, float]:
    """``concurrency`` threads send back to back for ``duration`` s: (result, elapsed, client CPU).

    Elapsed runs from the start to the last answer, so requests still in flight at the deadline
    count fully; client CPU is this process's CPU seconds per wall second (all threads).  A
    request that raises is a counted error, its message the error sample.
    """

    def request(client: int, sequence: int) -> tuple[bool, bytes]:
        try:
            return send(images[(client * 97 + sequence) % len(images)])
        except Exception as error:  # noqa: BLE001 - a failed request is a counted error
            return False, repr(error).encode()

    traffic = closed_loop(request, concurrency, duration)
    result = RunResult()
    for sample in traffic.samples:
        ok, body = sample.result
        if ok:
            result.latencies_ms.append(sample.latency * 1e3)
            if result.first_answer is None:
                result.first_answer = body
        else:
            result.errors += 1
            if result.error_sample is None:
                result.error_sample = body[:300].decode(errors="replace")
    return result, traffic.elapsed, traffic.client_cpu


ROLES = ("gc", "baseline")


def segment_order(segments: int, roles: tuple[str, ...] = ROLES) -> list[str]:
    """Which model runs in each slot: ABBA order (gc, baseline, baseline, gc, ...; with a floor
    ABC CBA ...), so a drift in the machine's load during the cell hits all alike."""
    order: list[str] = []
    for index in range(segments):
        order += list(roles) if index % 2 == 0 else list(reversed(roles))
    return order


def measure_cell(
    senders: dict[str, Callable[[bytes], tuple[bool, bytes]]],
    images: list[bytes],
    concurrency: int,
    duration: float,
    warmup: float,
    segments: int,
    server_pids: Callable[[], list[int]],
) -> dict:
    """GC and baseline at one concurrency: ``duration`` s each, in alternating segments.

    Returns per role the summary (see :func:`summarize`) plus the client's CPU (cores), the
    CPU used by everything else on the machine during its segments (cores: other jobs, not
    this benchmark's server or client) and the answer check; and the throughput ratio.
    """
    roles = tuple(senders)
    try:
        for role in roles:
            if warmup > 0:
                drive(senders[role], images, concurrency, warmup)
        parts: dict[str, dict] = {
            role: {
                "latencies": [],
                "errors": 0,
                "elapsed": 0.0,
                "client": 0.0,
                "other": 0.0,
                "server": 0.0,
            }
            for role in roles
        }
        first: dict[str, bytes | None] = {role: None for role in roles}
        samples: dict[str, str | None] = {role: None for role in roles}
        for role in segment_order(segments, roles):
            meter = CpuMeter(server_pids())
            outcome, elapsed, client_cpu = drive(
                senders[role], images, concurrency, duration / segments
            )
            other, server = meter.other_cores(), meter.server_cores()
            part = parts[role]
            part["latencies"] += outcome.latencies_ms
            part["errors"] += outcome.errors
            part["elapsed"] += elapsed
            part["client"] += client_cpu * elapsed
            part["other"] += other * elapsed
            part["server"] += server * elapsed
            first[role] = first[role] or outcome.first_answer
            samples[role] = samples[role] or outcome.error_sample
    finally:
        for sender in senders.values():
            sender.close()
    cell: dict = {}
    for role, part in parts.items():
        summary = summarize(part["latencies"], part["errors"], part["elapsed"])
        summary["client_cpu"] = part["client"] / part["elapsed"]
        summary["other_cpu"] = part["other"] / part["elapsed"]
        summary["server_cpu"] = part["server"] / part["elapsed"]
        summary["cpu_ms_per_request"] = cpu_ms_per_request(summary)
        summary["load_1min"] = load_average()
        summary["check"] = check_answer(first[role], role)
        if samples[role]:
            summary["error_sample"] = samples[role]
        cell[role] = summary
    cell["ratio"] = ratio(cell["gc"]["throughput"], cell["baseline"]["throughput"])
    if "floor" in cell:
        cell["floor_ratio"] = ratio(cell["gc"]["throughput"], cell["floor"]["throughput"])
        # The most the GC could answer if every core of the machine served it (server and
        # client CPU per request as measured), over the floor: GC / floor cannot exceed this.
        cell["gc_cpu_ceiling"] = gc_cpu_ceiling(cell["gc"]["cpu_ms_per_request"])
        cell["cpu_bound_floor_ratio"] = ratio(cell["gc_cpu_ceiling"], cell["floor"]["throughput"])
    return cell


# ------------------------------------------------------------------- CPU accounting (Linux)


def busy_ticks() -> int:
    """Busy clock ticks of all CPUs since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def process_ticks(pid: int) -> int | None:
    """utime + stime of one process (all its threads), None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def frontend_tree(pid: int | None) -> list[int]:
    """TorchServe's java frontend and its children (the Python workers)."""
    if pid is None:
        return []
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                children.append(int(entry.name))
    return [pid, *children]


class CpuMeter:
    """From now on: CPU used by the server processes ``pids`` (``server_cores``) and by
    everything but them and this process (``other_cores``), in cores (CPU s per wall s)."""

    def __init__(self, pids: list[int]) -> None:
        self.servers = list(pids)
        self.pids = [*pids, os.getpid()]
        self.hz = os.sysconf("SC_CLK_TCK")
        self.started = time.perf_counter()
        self.busy = busy_ticks()
        self.own = {pid: process_ticks(pid) for pid in self.pids}

    def _ticks(self, pids: list[int]) -> int:
        used = 0
        for pid in pids:
            before, after = self.own[pid], process_ticks(pid)
            if before is not None and after is not None:
                used += after - before
        return used

    def _cores(self, ticks: int) -> float:
        elapsed = time.perf_counter() - self.started
        return max(0.0, ticks / self.hz / elapsed) if elapsed > 0 else float("nan")

    def other_cores(self) -> float:
        return self._cores(busy_ticks() - self.busy - self._ticks(self.pids))

    def server_cores(self) -> float:
        return self._cores(self._ticks(self.servers))


def gc_cpu_ceiling(ms_per_request: float, cores: int | None = None) -> float:
    """Requests per second that ``cores`` (default: this machine's) give at this CPU cost."""
    cores = os.cpu_count() if cores is None else cores
    if not np.isfinite(ms_per_request) or ms_per_request <= 0:
        return float("nan")
    return cores * 1e3 / ms_per_request


def cpu_ms_per_request(summary: dict) -> float:
    """Server plus client CPU milliseconds per answered request of one role in one cell."""
    if not summary["requests"]:
        return float("nan")
    cores = summary["server_cpu"] + summary["client_cpu"]
    return cores * summary["seconds"] / summary["requests"] * 1e3


def check_answer(body: bytes | None, role: str) -> str:
    """Validate one answer against the response schema; the baseline's trust fields are neutral."""
    from serving.schema import ClassificationResponse

    if body is None:
        return "no successful answer"
    if role == "floor":
        return "ok"
    if body.startswith(b"{") and b'"outputs"' in body[:2000]:  # an OIP REST answer
        outputs = {o["name"]: o for o in json.loads(body)["outputs"]}
        body = outputs["answer"]["data"][0].encode()
    response = ClassificationResponse.model_validate_json(body)
    neutral = response.typicality.statistic == "none" and response.attack.p_value == 1.0
    if neutral != (role == "baseline"):
        return f"{role} answer has {'neutral' if neutral else 'real'} trust fields"
    return "ok"


# ------------------------------------------------------------------- in-process compute


def gc_compute(images: list[bytes], batch_sizes: list[int], rounds: int, seconds: float) -> dict:
    """The served GC's own CPU per image, in this process and before any server starts.

    ``Predictor.score`` at each served batch size with the backend ``auto`` picks, its
    onnxruntime session at 1 and 2 intra-op threads (torch at 1 thread); decoding the PNG bytes
    (``serving.decode``) and building and encoding the answer (``build_response``, JSON) per
    image.  Milliseconds per image, median over ``rounds`` alternating rounds (benchmarks/
    timing.py).  Two cores at the 1-thread cost bound what any runtime can serve.
    """
    import torch
    from timing import time_rounds

    from serving.decode import decode_image
    from serving.responses import build_response
    from trustgc.backend import choose_backend
    from trustgc.trust.predictor import Predictor

    torch.set_num_threads(1)
    backend = choose_backend(GC_DIR).backend
    predictors = {
        t: Predictor.from_artifact(GC_DIR, backend=backend, onnx_threads=t) for t in (1, 2)
    }
    channels, height, width = predictors[1].input_shape
    largest = max(batch_sizes)
    sample = [images[i % len(images)] for i in range(largest)]
    pixels = np.stack([decode_image(data, height, width, channels) for data in sample])
    manifest = predictors[1].manifest
    results = predictors[1].predict(pixels)

    def answers() -> list[str]:
        return [
            build_response(
                r, manifest.name, manifest.version, manifest.class_names, 10
            ).model_dump_json(exclude_none=True)
            for r in results
        ]

    calls: dict[str, Callable[[], object]] = {
        "decode": lambda: [decode_image(data, height, width, channels) for data in sample],
        "answer": answers,
    }
    per_call = {"decode": largest, "answer": largest}
    for batch in batch_sizes:
        for threads, predictor in predictors.items():
            name = f"score batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
            calls[name] = lambda p=predictor, x=pixels[:batch]: p.score(x, batch_size=len(x))
            per_call[name] = batch
    timing = time_rounds(calls, rounds, seconds)
    return {
        "backend": backend,
        "ms_per_image": {name: timing[name] / per_call[name] * 1e3 for name in calls},
        "load_1min": load_average(),
    }


def render_compute(compute: dict) -> str:
    """One line per measured quantity, and what two cores at the 1-thread cost would serve."""
    lines = [f"GC compute in-process ({compute['backend']}, ms per image, load average "
             f"{compute['load_1min']:.2f}):"]  # fmt: skip
    for name, ms in compute["ms_per_image"].items():
        extra = ""
        if name.startswith("score") and name.endswith("1 thread"):
            extra = f" (2 cores: {2e3 / ms:.0f} img/s with nothing else running)"
        lines.append(f"- {name}: {ms:.3f}{extra}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ servers


def build_store(
    store: Path, batch_sizes: list[int], max_batch_delay: int, floor: bool, baseline_dir: Path
) -> dict[str, Path]:
    """The archives in ``store`` (GC, baseline and, with ``floor``, the no-op model per batch
    size); returns served name -> .mar path."""
    import subprocess

    from serving.archive import build_archive

    store.mkdir(parents=True, exist_ok=True)
    base = PRODUCTION_MODEL_CONFIG.read_text()
    archives = {}
    for batch_size in batch_sizes:
        config = store / f"model-config-batch{batch_size}.yaml"
        config.write_text(model_config_text(base, batch_size, max_batch_delay))
        check_model_config(config, batch_size, max_batch_delay)
        for role, directory in (("gc", GC_DIR), ("baseline", baseline_dir)):
            name = model_name(role, batch_size)
            archives[name] = build_archive(
                directory,
                store,
                name=name,
                model_config=config,
                allow_uncalibrated=role == "baseline",
            )
            print(f"built {archives[name]}", flush=True)
        if floor:
            name = model_name("floor", batch_size)
            archiver = Path(sys.executable).with_name("torch-model-archiver")
            subprocess.run(
                [
                    str(archiver),
                    "--model-name",
                    name,
                    "--version",
                    "1",
                    "--handler",
                    str(NOOP_HANDLER),
                    "--config-file",
                    str(config),
                    "--export-path",
                    str(store),
                    "--force",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            archives[name] = store / f"{name}.mar"
            print(f"built {archives[name]}", flush=True)
    return archives


def ensure_untrained_baseline(directory: Path) -> Path:
    """The CNN baseline's architecture with freshly initialised weights, for throughput only
    (its cost does not depend on the weights) when no trained baseline is at hand."""
    from trustgc.artifact import ModelManifest, build_model, load_manifest, save_model
    from trustgc.config import load_model_config

    if not (directory / "model.json").is_file():
        import torch

        torch.manual_seed(0)
        config = load_model_config("fashion_mnist_dc")
        manifest = ModelManifest(
            name="fashion_mnist_dc",
            config=config,
            class_names=load_manifest(GC_DIR).class_names,
            training={"note": "untrained: for serving throughput only"},
        )
        save_model(directory, build_model(config).eval(), manifest)
    return directory


def _cells(
    args: argparse.Namespace,
    runtime: str,
    make_sender: Callable[[str, str, int], Callable],
    images: list[bytes],
    pids: Callable[[], list[int]],
) -> list[dict]:
    """Every protocol x batch size x concurrency cell of one runtime."""
    roles = ("gc", "baseline", "floor") if args.floor else ROLES
    cells = []
    for protocol in args.protocols:
        for batch_size in args.batch_sizes:
            for concurrency in args.concurrency:
                cell = measure_cell(
                    {role: make_sender(protocol, role, batch_size) for role in roles},
                    images,
                    concurrency,
                    args.duration,
                    args.warmup,
                    args.segments,
                    pids,
                )
                checks = {role: cell[role].pop("check") for role in roles}
                cell = {
                    "runtime": runtime,
                    "protocol": protocol,
                    "batch_size": batch_size,
                    "concurrency": concurrency,
                    "checks": checks,
                    **cell,
                }
                cells.append(cell)
                print(json.dumps(cell), flush=True)
    return cells


def run_torchserve(args: argparse.Namespace, images: list[bytes], baseline_dir: Path) -> list:
    from serving.server import ServerSettings, TorchServe

    archives = build_store(
        args.store, args.batch_sizes, args.max_batch_delay, args.floor, baseline_dir
    )
    run_dir = Path(tempfile.mkdtemp(prefix="serve-load-", dir=args.run_root))
    settings = ServerSettings(
        model_store=args.store,
        models=",".join(f"{name}={path.name}" for name, path in archives.items()),
        run_dir=run_dir,
        auth=True,
        ports=free_ports(PORT_NAMES),
    )
    server = TorchServe(settings)
    print(f"starting TorchServe in {run_dir} on {settings.ports}", flush=True)
    server.start()
    try:
        for name in archives:
            server.wait_ready(name, timeout=args.ready_timeout)
        token = server.keys()["inference"]

        def sender(protocol: str, role: str, batch_size: int):
            model = model_name(role, batch_size)
            if protocol == "REST":
                return RestSender(f"{settings.url('inference')}/predictions/{model}", token)
            target = f"{settings.host}:{settings.ports['grpc_inference']}"
            return GrpcSender(target, model, token)

        return _cells(
            args, "torchserve", sender, images, lambda: frontend_tree(server.frontend_pid())
        )
    finally:
        server.stop()
        print(f"TorchServe stopped (logs in {server.log_dir})", flush=True)


class OipRestSender(RestSender):
    """OIP REST: the image as base64 in a JSON BYTES tensor (bodies prepared once per image)."""

    content_type = "application/json"

    def __init__(self, url: str, token: str | None, images: list[bytes]) -> None:
        super().__init__(url, token)
        self.bodies = {image: json.dumps(rest_infer_body([image])).encode() for image in images}

    def body(self, image: bytes) -> bytes:
        return self.bodies[image]


class OipGrpcSender:
    """OIP gRPC ModelInfer with one BYTES element, over one shared channel."""

    def __init__(self, target: str, model: str, token: str | None) -> None:
        import grpc

        self.grpc = grpc
        self.pb = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2")
        pb_grpc = import_kserve("kserve.protocol.grpc.grpc_predict_v2_pb2_grpc")
        self.model = model
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def __call__(self, image: bytes) -> tuple[bool, bytes]:
        pb = self.pb
        request = grpc_infer_request(pb, self.model, [image])
        try:
            reply = self.stub.ModelInfer(request, metadata=self.metadata, timeout=60)
        except self.grpc.RpcError as error:
            return False, str(error.code()).encode()
        if reply.raw_output_contents:  # numpy outputs travel raw: 4-byte length, then bytes
            return True, reply.raw_output_contents[0][4:]
        return True, reply.outputs[0].contents.bytes_contents[0]

    def close(self) -> None:
        self.channel.close()


def run_kserve(args: argparse.Namespace, images: list[bytes], baseline_dir: Path) -> list:
    """One KServe runtime process per model and batch size, all started before measuring."""
    from serving.kserve_control import KServeProcess
    from serving.kserve_runtime import KServeSettings

    roles = ("gc", "baseline", "floor") if args.floor else ROLES
    directories = {"gc": GC_DIR, "baseline": baseline_dir, "floor": GC_DIR}
    servers: dict[tuple[str, int], KServeProcess] = {}
    try:
        for batch_size in args.batch_sizes:
            for role in roles:
                ports = free_ports(("http", "grpc"))
                settings = KServeSettings(
                    model_dir=directories[role],
                    model_name=model_name(role, batch_size),
                    run_dir=Path(tempfile.mkdtemp(prefix=f"kserve-{role}-", dir=args.run_root)),
                    http_port=ports["http"],
                    grpc_port=ports["grpc"],
                    batch_size=batch_size,
                    max_batch_delay_ms=args.max_batch_delay,
                    noop=role == "floor",
                )
                server = servers[(role, batch_size)] = KServeProcess(settings)
                server.start()
        for server in servers.values():
            server.wait_ready(timeout=args.ready_timeout)

        def sender(protocol: str, role: str, batch_size: int):
            server = servers[(role, batch_size)]
            token = server.keys()["inference"]
            if protocol == "REST":
                return OipRestSender(
                    f"{server.settings.url()}/v2/models/{server.settings.model_name}/infer",
                    token,
                    images,
                )
            return OipGrpcSender(server.settings.grpc_target(), server.settings.model_name, token)

        return _cells(
            args,
            "kserve",
            sender,
            images,
            lambda: [pid for server in servers.values() if (pid := server.pid()) is not None],
        )
    finally:
        for server in servers.values():
            server.stop()
        print("KServe runtimes stopped", flush=True)


def run(args: argparse.Namespace) -> dict:
    baseline_dir = args.baseline_dir
    if baseline_dir is None:
        baseline_dir = BASELINE_DIR
        if not (baseline_dir / "model.json").is_file():
            baseline_dir = ensure_untrained_baseline(UNTRAINED_BASELINE_DIR)
            print(f"no trained baseline in {BASELINE_DIR}: using {baseline_dir}", flush=True)
    images, source = fashion_png_images(args.images)
    compute = gc_compute(images, args.batch_sizes, args.compute_rounds, 0.0 if args.quick else 0.2)
    print(render_compute(compute), flush=True)
    load_before = load_average()
    cells: list[dict] = []
    for runtime in args.runtimes:
        runner = run_torchserve if runtime == "torchserve" else run_kserve
        cells += runner(args, images, baseline_dir)
    checks: dict[str, str] = {}
    for cell in cells:
        for role, check in cell.pop("checks").items():
            checks.setdefault(f"{cell['runtime']} {cell['protocol']} {role}", check)
    trained = json.loads((baseline_dir / "model.json").read_text()).get("training", {})
    return {
        "date": datetime.now(UTC).isoformat(timespec="minutes"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{cpu_name()}, {os.cpu_count()} logical CPUs",
        "images": source,
        "baseline": str(baseline_dir)
        + (" (untrained weights)" if "untrained" in str(trained.get("note", "")) else ""),
        "duration": args.duration,
        "warmup": args.warmup,
        "segments": args.segments,
        "workers": "production settings: 2 workers x 1 thread, maxBatchDelay "
        f"{args.max_batch_delay} ms, backend auto (onnxruntime for the GC, torch for the CNN)",
        "load_before": load_before,
        "load_after": load_average(),
        "answer_checks": checks,
        "compute": compute,
        "cells": cells,
    }


def render_runtimes(result: dict) -> str:
    """Markdown for a run with runtimes and floors: one row per runtime, protocol, batching and
    concurrency; GC, baseline and floor side by side with GC / floor and GC / baseline."""
    lines = [
        f"Machine: {result['machine']}; per cell and model {result['duration']:g} s measured "
        f"in {result['segments']} segments alternating the models, after {result['warmup']:g} s "
        f"warm-up; {result['workers']}; baseline {result.get('baseline', '')}; load average "
        f"(1 min) {result['load_before']:.2f} before, {result['load_after']:.2f} after.",
        "",
        "| runtime | protocol | batch | conc. | GC req/s | GC p50 / p99 ms | baseline req/s | "
        "baseline p50 / p99 ms | floor req/s | floor p50 / p99 ms | errors | other CPU | "
        "CPU ms/req GC / floor | GC / floor | CPU bound | GC / baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in result["cells"]:
        gc, base = cell["gc"], cell["baseline"]
        floor = cell.get("floor", {})
        errors = "/".join(str(cell[r]["errors"]) for r in ("gc", "baseline", "floor") if r in cell)
        other = max(cell[r].get("other_cpu", float("nan")) for r in ("gc", "baseline"))
        lines.append(
            f"| {cell['runtime']} | {cell['protocol']} | {cell['batch_size']} | "
            f"{cell['concurrency']} | {gc['throughput']:.1f} | {gc['p50_ms']:.1f} / "
            f"{gc['p99_ms']:.1f} | {base['throughput']:.1f} | {base['p50_ms']:.1f} / "
            f"{base['p99_ms']:.1f} | {floor.get('throughput', float('nan')):.1f} | "
            f"{floor.get('p50_ms', float('nan')):.1f} / {floor.get('p99_ms', float('nan')):.1f} "
            f"| {errors} | {other:.2f} | {gc.get('cpu_ms_per_request', float('nan')):.2f} / "
            f"{floor.get('cpu_ms_per_request', float('nan')):.2f} | "
            f"**{cell.get('floor_ratio', float('nan')):.2f}x** | "
            f"{cell.get('cpu_bound_floor_ratio', float('nan')):.2f}x | **{cell['ratio']:.2f}x** |"
        )
    lines += [
        "",
        "CPU ms/req: server and client CPU per answered request (the client runs on the same "
        "machine, so its share counts). CPU bound: the GC's CPU ceiling (every core of the "
        "machine at the GC's CPU ms/req) over the floor's req/s, the most GC / floor could be; "
        f"below {FLOOR_TARGET:.1f}x no serving setting reaches the target. CPU ms/req grows "
        "when other jobs share the cores (caches, scheduling): on a busy machine the bound is "
        "pessimistic.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per cell")
    parser.add_argument(
        "--segments", type=int, default=3, help="alternating model segments per cell"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--protocols", nargs="+", default=["REST", "gRPC"], choices=["REST", "gRPC"]
    )
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the no-op floor models"
    )
    parser.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[16], help="16: the production config"
    )
    parser.add_argument("--max-batch-delay", type=int, default=5, help="milliseconds")
    parser.add_argument("--images", type=int, default=1000, help="distinct test images sent")
    parser.add_argument(
        "--baseline-dir",
        type=Path,
        help=f"CNN baseline artifact (default {BASELINE_DIR.relative_to(REPO)}, else an "
        "untrained one of the same architecture: throughput does not depend on weights)",
    )
    parser.add_argument("--store", type=Path, default=REPO / "runs" / "bench_store")
    parser.add_argument("--run-root", type=Path, default=None, help="parent of the run dirs")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 s cells")
    parser.add_argument(
        "--compute-rounds", type=int, default=5, help="rounds of the in-process GC compute"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.images, args.segments = 1.0, 0.3, 64, 1
        args.compute_rounds = 1

    def _terminate(signum, frame):  # noqa: ARG001 - turn SIGTERM into an exception: finally runs
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2))
    text = render_runtimes(result) + "\n" + render_compute(result["compute"])
    (args.out / "serve_load.md").write_text(text)
    print(text)
    print(f"answer checks: {result['answer_checks']}")
    bad = [k for k, v in result["answer_checks"].items() if v != "ok"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
