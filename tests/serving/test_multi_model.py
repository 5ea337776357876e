"""Bring your own model, end to end on a real TorchServe.

Four MNIST digit classes written as grayscale PNG folders -> ``trustgc train --data-dir``
(tiny preset, a few seconds) -> ``trustgc calibrate`` (no data flags: the artifact knows where
its data is) -> served by name beside the shipped ``fashion_mnist`` model -> the same files
scored offline (``trustgc score``) give identical answers.  And the start-up safety: a second
start is refused with the keys untouched, a model that cannot load fails the start within
seconds and leaves no java behind, ``stop`` with nothing running says so.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from serving.processes import alive as _alive
from serving.processes import children as _workers

pytestmark = pytest.mark.integration

MODEL_DIR = Path(__file__).resolve().parents[2] / "model_store" / "fashion_mnist"
PORTS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")


def free_ports() -> dict[str, int]:
    """Five distinct free loopback ports (other TorchServe instances run beside this one)."""
    sockets = [socket.socket() for _ in PORTS]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return {api: sock.getsockname()[1] for api, sock in zip(PORTS, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


DIGITS = (0, 1, 7, 8)
PER_CLASS = 200
SCORED = 12  # files per model sent to the server and scored offline


def _digit_folder(root: Path) -> Path:
    from training.data import DataError, load_dataset

    try:
        mnist = load_dataset("mnist", "test")
    except DataError as error:
        pytest.skip(f"MNIST test set needed for the digit folders: {error}")
    for digit in DIGITS:
        folder = root / str(digit)
        folder.mkdir(parents=True)
        for index in np.flatnonzero(mnist.labels == digit)[:PER_CLASS]:
            Image.fromarray(mnist.images[index, :, :, 0]).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """A 4-class grayscale model trained and calibrated through the CLI, as a user would."""
    if shutil.which("java") is None:
        pytest.skip("TorchServe needs java (Java 17) on PATH")
    import torch

    from trustgc_cli.main import main

    root = tmp_path_factory.mktemp("byo")
    data = _digit_folder(root / "digits_png")
    out = root / "runs" / "digits"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.monotonic()
    try:
        argv = ["train", "--data-dir", str(data), "--out", str(out), "--preset", "tiny"]
        assert main([*argv, "--time-budget-minutes", "0.5", "--no-progress"]) == 0
        trained = time.monotonic() - started
        assert main(["calibrate", "--model", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    print(f"\ndigits: trained in {trained:.0f} s, test accuracy {metrics['accuracy']:.3f}")
    assert metrics["accuracy"] > 0.8  # four well-separated digits, even after seconds
    return out


@pytest.fixture(scope="module")
def two_models(digits_model, tmp_path_factory):
    """TorchServe serving the shipped model and the digits model, started in the background."""
    from serving.server import ModelSpec, ServerSettings, TorchServe, read_keys, start_background

    settings = ServerSettings(run_dir=tmp_path_factory.mktemp("ts_byo"), ports=free_ports())
    settings.serve([ModelSpec(MODEL_DIR, "fashion_mnist"), ModelSpec(digits_model, "digits")])
    assert settings.models == "fashion_mnist=fashion_mnist.mar,digits=digits.mar"
    server = TorchServe(settings)
    assert start_background(settings) == 0
    try:
        yield settings, server, read_keys(settings.run_dir)
    finally:
        frontend = server.frontend_pid()
        workers = _workers(frontend) if frontend else []
        server.stop()
        left = [pid for pid in [frontend, *workers] if pid and _alive(pid)]
        assert not left, f"TorchServe processes {left} left after stop"


def _files(digits_model: Path, tmp_path: Path) -> dict[str, list[Path]]:
    """A few digit PNGs from the model's own test split, and Fashion-MNIST test PNGs."""
    from training.data import load_dataset, load_recorded
    from trustgc.artifact import load_manifest

    chosen = {"digits": [], "fashion_mnist": []}
    digit_test = load_recorded(load_manifest(digits_model).training, "test")
    fashion = load_dataset("fashion_mnist", "test")
    for name, images in (("digits", digit_test.images), ("fashion_mnist", fashion.images)):
        folder = tmp_path / name
        folder.mkdir()
        for i in range(SCORED):
            path = folder / f"{i:02d}.png"
            Image.fromarray(images[i * 7, :, :, 0]).save(path)
            chosen[name].append(path)
    return chosen


def test_both_models_answer_by_name_and_offline_scores_match(
    two_models, digits_model, tmp_path
) -> None:
    from serving.offline import score_files

    settings, _, keys = two_models
    headers = {
        "Authorization": f"Bearer {keys['inference']}",
        "Content-Type": "application/octet-stream",
    }
    files = _files(digits_model, tmp_path)
    for name, model_dir in (("digits", digits_model), ("fashion_mnist", MODEL_DIR)):
        served = []
        for path in files[name]:
            answer = requests.post(
                f"{settings.url('inference')}/predictions/{name}",
                data=path.read_bytes(),
                headers=headers,
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            served.append({"file": str(path), **answer.json()})
        out = tmp_path / f"{name}.jsonl"
        counts = score_files(files[name], model_dir, out, name=name, progress=False)
        assert counts == {"rows": SCORED, "errors": 0}
        offline = [json.loads(line) for line in out.read_text().splitlines()]
        assert offline == served  # identical answers, every field, every digit
        manifest = json.loads((model_dir / "model.json").read_text())
        assert {row["model"]["version"] for row in served} == {manifest["version"]}
        labels = {row["prediction"]["label"] for row in served}
        assert labels <= set(manifest["class_names"])  # each model answers with its classes
        assert {row["model"]["name"] for row in served} == {name}


def test_second_start_is_refused_and_keeps_the_keys(two_models) -> None:
    from serving.server import AlreadyRunning, start_background

    settings, _, keys = two_models
    key_file = settings.run_dir / "key_file.json"
    before = key_file.read_text()
    with pytest.raises(AlreadyRunning, match="already running"):
        start_background(settings)
    assert key_file.read_text() == before
    ping = requests.get(
        f"{settings.url('inference')}/ping",
        headers={"Authorization": f"Bearer {keys['inference']}"},
        timeout=10,
    )
    assert ping.status_code == 200


def test_a_model_that_cannot_load_fails_fast_without_java_left(digits_model, tmp_path) -> None:
    """A .mar whose calibration names other weights: the worker refuses it at load."""
    from serving.archive import build_archive
    from serving.server import ServerSettings, StartFailed, TorchServe, start_background

    store = tmp_path / "store"
    archive = build_archive(digits_model, store, "broken")
    tampered = store / "tampered.zip"
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(tampered, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "calibration.json":
                calibration = json.loads(data)
                calibration["weights_sha256"] = "0" * 64
                data = json.dumps(calibration).encode()
            target.writestr(item, data)
    shutil.move(tampered, archive)
    settings = ServerSettings(
        run_dir=tmp_path / "run", ports=free_ports(), model_store=store, models="broken=broken.mar"
    )
    server = TorchServe(settings)
    started = time.monotonic()
    with pytest.raises(StartFailed, match="broken cannot load") as failed:
        start_background(settings)
    elapsed = time.monotonic() - started
    print(f"\nrefused after {elapsed:.1f} s: {failed.value}")
    assert elapsed < 90  # TorchServe's own wait was 180 s and then a 404
    assert "other weights" in str(failed.value)  # what the worker's log says
    frontend = server.frontend_pid()
    assert frontend is None or not _alive(frontend), "java left running after a failed start"


def test_missing_archive_fails_before_java_and_stop_says_nothing_runs(tmp_path, capsys) -> None:
    from serving.server import ServerSettings, TorchServe, start_background, stop_server

    settings = ServerSettings(
        run_dir=tmp_path / "run",
        ports=free_ports(),
        model_store=tmp_path / "empty",
        models="ghost=ghost.mar",
    )
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match="ghost.mar not in the model store"):
        start_background(settings)
    assert time.monotonic() - started < 5
    assert TorchServe(settings).frontend_pid() is None  # java never started
    assert stop_server(settings) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_classify_by_name_from_the_cli(two_models, digits_model, tmp_path, capsys) -> None:
    from trustgc_cli.main import main

    settings, _, _ = two_models
    image = _files(digits_model, tmp_path)["digits"][0]
    argv = ["classify", "--model", "digits", "--url", settings.url("inference")]
    argv += ["--key-file", str(settings.run_dir / "key_file.json")]
    assert main([*argv, str(image), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["model"]["name"] == "digits"
    assert answer["prediction"]["label"] in {str(d) for d in DIGITS}
    # a directory, a bad image in it and a missing file: one line each, then exit status 1
    folder = image.parent
    (folder / "zz_broken.png").write_bytes(b"not a png")
    assert main([*argv, str(folder), str(tmp_path / "missing.png")]) == 1
    captured = capsys.readouterr()
    table = captured.out.splitlines()[1:]
    assert len(table) == SCORED + 1  # every digit, then the broken file's error line
    assert "zz_broken.png" in table[-1] and "undecodable_image" in table[-1]
    assert "missing.png" in captured.err and "No such file" in captured.err


def test_serve_flags_build_the_settings(digits_model, tmp_path) -> None:
    from serving.commands import server_settings
    from serving.server import parse_model_spec
    from trustgc_cli.main import build_parser

    run_dir = tmp_path / "run"
    args = build_parser().parse_args(
        ["start", "--model", f"{digits_model}=mnist4", "--model", str(MODEL_DIR)]
        + ["--run-dir", str(run_dir)]
    )
    settings = server_settings(args)
    assert settings.models == "mnist4=mnist4.mar,fashion_mnist=fashion_mnist.mar"
    assert settings.model_store == run_dir / "model_store"
    archive = run_dir / "model_store" / "mnist4.mar"
    built = archive.stat().st_mtime
    server_settings(args)  # archived as needed: current archives are kept
    assert archive.stat().st_mtime == built
    assert parse_model_spec(str(digits_model)).name == "digits"
    with pytest.raises(ValueError, match="model name"):
        parse_model_spec(f"{digits_model}=no spaces")
    with pytest.raises(ValueError, match="not a model artifact directory"):
        parse_model_spec(str(tmp_path / "missing"))


def test_ports_taken_by_another_server_are_refused_before_java(tmp_path) -> None:
    from serving.server import AlreadyRunning, ServerSettings, TorchServe, start_background

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        ports = {**free_ports(), "inference": other.getsockname()[1]}
        settings = ServerSettings(run_dir=tmp_path / "run", ports=ports)
        with pytest.raises(
            AlreadyRunning, match=f"ports in use on 127.0.0.1: inference {ports['inference']}"
        ):
            start_background(settings)
    assert TorchServe(settings).frontend_pid() is None  # java never started
