"""Start, wait for and stop a TorchServe instance serving trustgc models on loopback.

``trustgc serve`` (and ``make serve``) run TorchServe in the foreground and stop it cleanly,
java included, on Ctrl-C or SIGTERM; ``trustgc start``/``stop`` do the same in the background.
The runtime config is ``deploy/torchserve/config.properties`` with paths made absolute, written
to the run directory, which is also where TorchServe writes ``key_file.json`` (token auth).

Any trained artifacts can be served, one or several, by name: ``--model DIR[=NAME]`` archives
each directory into the run directory's model store when its archive is missing or older than
the artifact (:func:`prepare_models`).  Starting is safe to retry: a second start while this run
directory's server runs is refused before anything is touched (its key file stays valid), a
model that cannot load fails the start within seconds with the line of TorchServe's log that
says why, and every failure path stops java again.

Certificates get their own registration.  Next to each served model NAME (batched: its
archive's batchSize, 16 in production) TorchServe also serves ``NAME_certify``
(:func:`serving.certificates.certify_registration`): the same archive with batch size 1 and one
worker, where requests with the ``certify`` option go (the batched registration refuses them,
because a certificate, ~1 s at n = 1,000, holds every request of its batch).  TorchServe 0.12
gives an archive's own ``model-config.yaml`` precedence over the ``models=`` JSON of
config.properties for batchSize, maxBatchDelay and workers (``ModelManager.createModel``,
``ModelServer.initModelStore``), so per-registration settings cannot come from the config file:
the archive is unpacked into ``RUN_DIR/certify/NAME_certify/`` with only its yaml changed
(:func:`prepare_certify_registrations`), and TorchServe loads that directory by its absolute
path.  ``ServerSettings.certify_registration = False`` (``--no-certify-registration``) leaves it
out; an archive whose ``max_certify_samples`` is 0 never gets one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from serving import paths
from serving.certificates import (
    DEFAULT_MAX_CERTIFY_SAMPLES,
    certify_registration,
)
from serving.keys import KEY_FILE, read_keys
from serving.processes import alive as _alive

__all__ = [
    "AlreadyRunning",
    "ModelSpec",
    "StartFailed",
    "ServerSettings",
    "TorchServe",
    "certify_registrations",
    "model_names",
    "parse_model_spec",
    "prepare_certify_registrations",
    "prepare_models",
    "read_keys",
    "served_names",
]

#: TorchServe model names (they appear in URLs and metric labels).
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: How long a model may take to become READY once TorchServe runs (the shipped model: ~10 s).
READY_TIMEOUT = 180.0
#: Where the certify registrations' unpacked archives go, under the run directory.
CERTIFY_DIR = "certify"
#: What a certify registration changes in its archive's model-config.yaml (TorchServe's keys).
CERTIFY_REGISTRATION_CONFIG = {"batchSize": 1, "minWorkers": 1, "maxWorkers": 1}
#: Log lines that mean a model will never load: fail the start on the first one.
_LOAD_FAILURES = (
    "Load model failed",
    "ModelNotFoundException",
    "Failed to load model",
    "Failed register model",
    "Model file not found",
)


class AlreadyRunning(RuntimeError):
    """A TorchServe started from this run directory is still running."""


class StartFailed(RuntimeError):
    """TorchServe exited, or a model cannot load (the message quotes the log)."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: an artifact directory and the name it is served under."""

    directory: Path
    name: str


def parse_model_spec(text: str) -> ModelSpec:
    """``DIR`` or ``DIR=NAME``; the name defaults to the directory's name."""
    directory, _, name = text.partition("=")
    directory_path = Path(directory)
    name = name or re.sub(r"[^A-Za-z0-9_-]+", "_", directory_path.resolve().name).strip("_")
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(
            f"--model {text}: model name {name!r} must be letters, digits, '_' or '-' "
            "(at most 64), starting with a letter or digit"
        )
    if not directory_path.is_dir():
        raise ValueError(f"--model {text}: {directory} is not a model artifact directory")
    return ModelSpec(directory_path, name)


def _archive_is_current(archive: Path, spec: ModelSpec, model_config: Path) -> bool:
    if not archive.is_file():
        return False
    sources = [p for p in spec.directory.iterdir() if p.is_file()] + [Path(model_config)]
    return archive.stat().st_mtime >= max(p.stat().st_mtime for p in sources)


def prepare_models(specs: list[ModelSpec], store: Path, model_config: Path | None = None) -> str:
    """Archive each spec into ``store`` when needed; TorchServe's ``--models`` value.

    A stale or uncalibrated artifact is refused here (:func:`serving.archive.build_archive`),
    before TorchServe starts, with the command that fixes it.
    """
    from serving.archive import build_archive

    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two models are named {duplicates}: give one DIR=NAME")
    model_config = Path(model_config or paths.model_config())
    store.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        archive = store / f"{spec.name}.mar"
        if not _archive_is_current(archive, spec, model_config):
            print(f"archiving {spec.directory} as {archive}", flush=True)
            build_archive(spec.directory, store, spec.name, model_config)
    return ",".join(f"{spec.name}={spec.name}.mar" for spec in specs)


def model_names(settings: ServerSettings) -> list[str]:
    """The names in ``settings.models`` (TorchServe's NAME=FILE.mar,... format)."""
    return [item.split("=", 1)[0] for item in settings.models.split(",") if item]


def _archive_model_config(archive: Path) -> tuple[str, dict]:
    """The archive's model-config file name and its settings (TorchServe reads the same)."""
    with zipfile.ZipFile(archive) as packed:
        manifest = json.loads(packed.read("MAR-INF/MANIFEST.json"))
        name = manifest.get("model", {}).get("configFile")
        if not name:
            return "", {}
        return name, yaml.safe_load(packed.read(name)) or {}


def certify_registrations(settings: ServerSettings) -> list[tuple[str, Path]]:
    """(NAME_certify, its archive) for every served model that gets a certify registration.

    None when ``settings.certify_registration`` is off; none for an archive that is missing
    (:meth:`TorchServe.check_archives` says so), is not a .mar, or turns certificates off
    (``max_certify_samples: 0``).  Two registrations may not share a name.
    """
    if not settings.certify_registration:
        return []
    store = Path(settings.model_store)
    served = model_names(settings)
    found = []
    for item in settings.models.split(","):
        name, _, file = item.partition("=")
        archive = store / file
        if not file.endswith(".mar") or not archive.is_file():
            continue
        _, config = _archive_model_config(archive)
        trustgc = config.get("trustgc") or {}
        if int(trustgc.get("max_certify_samples", DEFAULT_MAX_CERTIFY_SAMPLES)) <= 0:
            continue
        certify_name = certify_registration(name)
        if certify_name in served or not _MODEL_NAME.fullmatch(certify_name):
            raise ValueError(
                f"model {name!r}: its certify registration {certify_name!r} clashes with a "
                "served model or is not a valid name (at most 64 characters); rename the model "
                "or start with --no-certify-registration"
            )
        found.append((certify_name, archive))
    return found


def prepare_certify_registrations(settings: ServerSettings) -> str:
    """Unpack each certify registration's archive into the run directory with its yaml changed
    (:data:`CERTIFY_REGISTRATION_CONFIG`); the ``NAME=DIR,...`` items TorchServe loads."""
    items = []
    for name, archive in certify_registrations(settings):
        target = (Path(settings.run_dir) / CERTIFY_DIR / name).resolve()
        building = target.with_name(f"{name}.partial")
        shutil.rmtree(building, ignore_errors=True)
        with zipfile.ZipFile(archive) as packed:
            packed.extractall(building)
        config_name, config = _archive_model_config(archive)
        config.update(CERTIFY_REGISTRATION_CONFIG)
        (building / config_name).write_text(
            f"# Written by trustgc serve for the certify registration {name}: the settings of\n"
            f"# {archive} with batchSize 1 and one worker (serving/server.py).\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        shutil.rmtree(target, ignore_errors=True)
        building.rename(target)
        items.append(f"{name}={target}")
    return ",".join(items)


def served_names(settings: ServerSettings) -> list[str]:
    """Every registration a start serves: the models and their certify registrations."""
    return model_names(settings) + [name for name, _ in certify_registrations(settings)]


@dataclass
class ServerSettings:
    """Where and how to run; defaults are the production config's, with the files and folders
    in the project directory (:func:`serving.paths.project_dir`: ``$TRUSTGC_HOME``, the source
    checkout, or the working directory)."""

    model_store: Path = field(default_factory=lambda: paths.project_dir() / "model_store")
    models: str = "fashion_mnist=fashion_mnist.mar"
    run_dir: Path = field(default_factory=lambda: paths.project_dir() / ".run" / "torchserve")
    auth: bool = True
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(
        default_factory=lambda: {
            "inference": 8080,
            "management": 8081,
            "metrics": 8082,
            "grpc_inference": 7070,
            "grpc_management": 7071,
        }
    )
    overrides: dict[str, str] = field(default_factory=dict)
    #: Serve NAME_certify (batch size 1, one worker) beside each model NAME (module docstring).
    certify_registration: bool = True
    config_template: Path = field(default_factory=paths.config_template)
    metrics_config: Path = field(default_factory=paths.metrics_config)

    def url(self, api: str) -> str:
        return f"http://{self.host}:{self.ports[api]}"

    def serve(self, specs: list[ModelSpec]) -> None:
        """Serve these artifacts (archived into the run directory's store) instead."""
        self.model_store = Path(self.run_dir) / "model_store"
        self.models = prepare_models(specs, self.model_store)


def _read_properties(path: Path) -> dict[str, str]:
    properties: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def runtime_properties(settings: ServerSettings) -> dict[str, str]:
    """The template's properties with this run's paths, ports and auth setting."""
    properties = _read_properties(settings.config_template)
    host = settings.host
    properties.update(
        {
            "inference_address": f"http://{host}:{settings.ports['inference']}",
            "management_address": f"http://{host}:{settings.ports['management']}",
            "metrics_address": f"http://{host}:{settings.ports['metrics']}",
            "grpc_inference_address": host,
            "grpc_management_address": host,
            "grpc_inference_port": str(settings.ports["grpc_inference"]),
            "grpc_management_port": str(settings.ports["grpc_management"]),
            "model_store": str(Path(settings.model_store).resolve()),
            "load_models": settings.models,
            "metrics_config": str(Path(settings.metrics_config).resolve()),
            "disable_token_authorization": "false" if settings.auth else "true",
            "python": sys.executable,
            # worker sockets and unpacked archives go to java's temp dir: one per instance
            "vmargs": f"{properties.get('vmargs', '')} "
            f"-Djava.io.tmpdir={Path(settings.run_dir).resolve() / 'tmp'}".strip(),
            **settings.overrides,
        }
    )
    return properties


class TorchServe:
    """One TorchServe process tree (TorchServe allows one per machine)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self._log_offsets: dict[str, int] = {}  # log sizes at start: older lines are not ours

    @property
    def log_dir(self) -> Path:
        return self.settings.run_dir / "logs"

    @property
    def temp_dir(self) -> Path:
        return self.settings.run_dir / "tmp"

    def frontend_pid(self) -> int | None:
        """The java frontend's pid, from this instance's pid file."""
        try:
            return int((self.temp_dir / ".model_server.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def running_pid(self) -> int | None:
        """The frontend's pid if it is alive (a stale pid file counts as not running)."""
        pid = self.frontend_pid()
        return pid if pid is not None and _alive(pid) else None

    def check_not_running(self) -> None:
        """Refuse a second start from this run directory (before its key file is touched)."""
        pid = self.running_pid()
        if pid is not None:
            raise AlreadyRunning(
                f"TorchServe is already running from {self.settings.run_dir} (java pid {pid}); "
                "stop it first with `trustgc stop` (its keys are unchanged)"
            )

    def check_ports(self) -> None:
        """Refuse ports another process listens on (a server from another run directory):
        TorchServe would fail to bind, and the other server would answer our readiness polls."""
        busy = []
        for api, port in self.settings.ports.items():
            with socket.socket() as probe:
                probe.settimeout(0.5)
                if probe.connect_ex((self.settings.host, port)) == 0:
                    busy.append(f"{api} {port}")
        if busy:
            raise AlreadyRunning(
                f"ports in use on {self.settings.host}: {', '.join(busy)}; another server runs "
                "there (stop it, e.g. `trustgc stop --run-dir DIR` with the directory it was "
                "started from)"
            )

    def check_archives(self) -> None:
        """Every archive named in ``settings.models`` must exist before java starts."""
        store = Path(self.settings.model_store)
        missing = [
            item.split("=", 1)[1]
            for item in self.settings.models.split(",")
            if "=" in item and not (store / item.split("=", 1)[1]).is_file()
        ]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(missing)} not in the model store {store}: build it with "
                "`trustgc archive --model DIR`, or serve an artifact with `--model DIR`"
            )

    def _log_lines(self, name: str) -> list[str]:
        """The lines ``name`` gained since :meth:`start`."""
        path = self.log_dir / name
        if not path.is_file():
            return []
        with path.open("rb") as handle:
            handle.seek(self._log_offsets.get(name, 0))
            return handle.read().decode(errors="replace").splitlines()

    def load_failure(self) -> str | None:
        """The first log line saying a model cannot load, with the worker's last error."""
        found = None
        for name in ("ts_log.log", "torchserve.out"):
            for line in self._log_lines(name):
                if any(marker in line for marker in _LOAD_FAILURES):
                    found = line.strip()
                    break
            if found:
                break
        if found is None:
            return None
        cause = self._worker_error()
        return f"{found}" + (f"; the model's log says: {cause}" if cause else "")

    def _worker_error(self) -> str | None:
        """The last exception line of the Python worker's log (e.g. a refused artifact)."""
        errors = [
            line.split(" - ", 1)[-1].strip()
            for line in self._log_lines("model_log.log")
            if re.search(r"\b\w*(Error|Exception)\b: ", line)
        ]
        return errors[-1] if errors else None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "LOG_LOCATION": str(self.log_dir),
                "METRICS_LOCATION": str(self.log_dir),
                # TorchServe keeps its pid file in the temp directory: one per run_dir lets
                # separate instances (on separate ports) coexist and be stopped one by one.
                "TMPDIR": str(self.temp_dir),
            }
        )
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def _command(self, foreground: bool) -> list[str]:
        run_dir = self.settings.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        self.temp_dir.mkdir(exist_ok=True)
        (run_dir / KEY_FILE).unlink(missing_ok=True)
        certify = prepare_certify_registrations(self.settings)
        load_models = ",".join(item for item in (self.settings.models, certify) if item)
        # The config keeps production's load_models (the served archives); the certify
        # registrations, directories in this run directory, are added by --models below,
        # which TorchServe reads instead of load_models.
        note = (
            f"# load_models: TorchServe is started with --models {load_models}\n" if certify else ""
        )
        config = run_dir / "config.properties"
        config.write_text(
            note + "".join(f"{k}={v}\n" for k, v in runtime_properties(self.settings).items())
        )
        torchserve = (
            shutil.which("torchserve", path=str(Path(sys.executable).parent)) or "torchserve"
        )
        command = [
            torchserve,
            "--start",
            "--ncs",
            "--ts-config",
            str(config),
            "--model-store",
            str(Path(self.settings.model_store).resolve()),
            "--models",
            load_models,
        ]
        if not self.settings.auth:
            command.append("--disable-token-auth")
        if foreground:
            command.append("--foreground")
        return command

    def start(self, foreground: bool = False, output=None) -> subprocess.Popen:
        """Launch TorchServe; output goes to a file (never a pipe: java would hold it open)."""
        command = self._command(foreground)
        self._log_offsets = {
            path.name: path.stat().st_size for path in self.log_dir.glob("*") if path.is_file()
        }
        if output is None:
            output = open(self.log_dir / "torchserve.out", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            command,
            cwd=self.settings.run_dir,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            # its own session even in the foreground: a terminal's Ctrl-C (or make's) reaches
            # only the launcher, which stops TorchServe; in the same process group the
            # torchserve script and every worker printed a KeyboardInterrupt traceback
            start_new_session=True,
        )
        return self.process

    def keys(self) -> dict[str, str] | None:
        return read_keys(self.settings.run_dir) if self.settings.auth else None

    def headers(self, api: str = "inference") -> dict[str, str]:
        keys = self.keys()
        return {"Authorization": f"Bearer {keys[api]}"} if keys else {}

    def wait_ready(self, model: str, timeout: float = 120.0, cancelled=lambda: False) -> None:
        """Poll the management API until every worker of ``model`` is READY.

        Fails as soon as TorchServe's log says the model cannot load (a missing or refused
        artifact), instead of waiting out ``timeout``; stops waiting when ``cancelled()``.
        """
        deadline = time.monotonic() + timeout
        url = f"{self.settings.url('management')}/models/{model}"
        last = "no answer"
        while time.monotonic() < deadline and not cancelled():
            if self.process is not None and self.process.poll() not in (None, 0):
                raise StartFailed(
                    f"torchserve exited with {self.process.returncode}; see {self.log_dir}"
                )
            failure = self.load_failure()
            if failure is not None:
                raise StartFailed(f"model {model} cannot load: {failure} (logs in {self.log_dir})")
            try:
                answer = requests.get(url, headers=self.headers("management"), timeout=2)
                if answer.ok:
                    workers = answer.json()[0].get("workers", [])
                    if workers and all(w.get("status") == "READY" for w in workers):
                        return
                    last = f"workers {[w.get('status') for w in workers]}"
                else:
                    last = f"HTTP {answer.status_code}"
            except (requests.RequestException, TimeoutError, ValueError) as error:
                last = str(error)
            time.sleep(0.5)
        if cancelled():
            return
        raise TimeoutError(
            f"model {model} not ready after {timeout:.0f} s ({last}); logs in {self.log_dir}"
        )

    def stop(self, timeout: float = 30.0) -> None:
        """``torchserve --stop``, then wait until the java process has exited."""
        pid = self.frontend_pid()
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        torchserve = Path(sys.executable).with_name("torchserve")
        subprocess.run(
            [str(torchserve), "--stop"],
            cwd=self.settings.run_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=self._environment(),
            check=False,
            timeout=timeout,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid is not None and _alive(pid):
            time.sleep(0.3)
        if pid is not None and _alive(pid):  # --stop did not end it: never leave java behind
            os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            try:
                self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def _announce(settings: ServerSettings) -> None:
    key_file = settings.run_dir / KEY_FILE
    auth = ""
    if settings.auth:
        auth = (
            f"-H \"Authorization: Bearer $(python3 -c 'import json; print(json.load(open("
            f'"{key_file}"))["inference"]["key"])\')" '
        )
        print(f"token auth is on: keys are in {key_file}")
    urls = "".join(
        f"\n  curl {auth}-H 'Content-Type: application/octet-stream' --data-binary @IMAGE.png "
        f"{settings.url('inference')}/predictions/{name}"
        for name in model_names(settings)
    )
    certify = [name for name, _ in certify_registrations(settings)]
    certify_line = (
        f"\ncertificates (option certify=N): {', '.join(certify)}, one request at a time "
        "(`trustgc classify --certify N` goes there itself)"
        if certify
        else ""
    )
    print(
        f"serving {', '.join(model_names(settings))}; classify an image with:{urls}{certify_line}\n"
        f"metrics: {settings.url('metrics')}/metrics",
        flush=True,
    )


def _wait_all(server: TorchServe, cancelled=lambda: False) -> None:
    for name in served_names(server.settings):
        server.wait_ready(name, timeout=READY_TIMEOUT, cancelled=cancelled)


def run_foreground(settings: ServerSettings) -> int:
    """Serve until Ctrl-C or SIGTERM, then stop TorchServe and its java process."""
    server = TorchServe(settings)
    server.check_not_running()
    server.check_ports()
    server.check_archives()
    stopping = False

    def _stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    # SIGHUP too: java is in its own session, so a closed terminal must stop it through us
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, _stop) for sig in signals}
    failed = False
    try:
        process = server.start(foreground=True, output=sys.stdout)
        _wait_all(server, cancelled=lambda: stopping)
        if not stopping:
            _announce(settings)
        while not stopping and process.poll() is None:
            time.sleep(0.3)
    except (TimeoutError, RuntimeError) as error:
        print(f"trustgc serve: {error}", file=sys.stderr)
        failed = True
    finally:
        print("stopping TorchServe ...", flush=True)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 1 if failed or not stopping else 0


def start_background(settings: ServerSettings) -> int:
    """Start detached and wait until every model is READY; on any failure stop java again."""
    server = TorchServe(settings)
    server.check_not_running()
    server.check_ports()
    server.check_archives()
    try:
        server.start(foreground=False)
        _wait_all(server)
    except BaseException:
        server.stop()
        raise
    _announce(settings)
    print(f"logs in {server.log_dir}; stop with `trustgc stop` or `make stop`")
    return 0


def stop_server(settings: ServerSettings) -> int:
    """Stop this run directory's TorchServe; says so when none is running."""
    server = TorchServe(settings)
    pid = server.running_pid()
    if pid is None:
        print(f"no TorchServe is running from {settings.run_dir}: nothing to stop")
        return 0
    server.stop()
    print(f"TorchServe stopped (java pid {pid})")
    return 0
