"""training.fetch_data against a local HTTP server: right and wrong hashes, retries, --from,
--check, the CIFAR-10 conversion, and the command line's message without a network."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import training.fetch_data as fd
from training.data import load_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", www
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files(base: str, good: bytes, other: bytes) -> dict[str, tuple[fd.FileSource, ...]]:
    return {
        "mnist": (
            fd.FileSource(
                path="mnist/a.gz", sha256=_sha(good), urls=(base + "missing.gz", base + "a.gz")
            ),
            fd.FileSource(path="mnist/b.gz", sha256=_sha(other), urls=(base + "b.gz",)),
        )
    }


def test_fetch_verifies_and_falls_back_to_the_next_mirror(server, tmp_path) -> None:
    base, www = server
    (www / "a.gz").write_bytes(b"good bytes")
    (www / "b.gz").write_bytes(b"other bytes")
    root = tmp_path / "root"
    files = _files(base, b"good bytes", b"other bytes")
    report = fd.fetch(root, ["mnist"], files=files)
    assert report.ok and [s.status for s in report.sets] == ["fetched"]
    assert (root / "mnist" / "a.gz").read_bytes() == b"good bytes"  # the 404 mirror skipped
    assert not list(root.rglob("*.part"))
    (www / "a.gz").unlink()  # present and verified: nothing is downloaded again
    again = fd.fetch(root, ["mnist"], files=files)
    assert [s.status for s in again.sets] == ["present"]


def test_a_wrong_hash_is_refused_and_not_kept(server, tmp_path) -> None:
    base, www = server
    (www / "a.gz").write_bytes(b"tampered bytes")
    (www / "b.gz").write_bytes(b"other bytes")
    root = tmp_path / "root"
    report = fd.fetch(root, ["mnist"], files=_files(base, b"good bytes", b"other bytes"))
    (result,) = report.sets
    assert not report.ok and result.status == "bad_checksum"
    assert _sha(b"tampered bytes") in result.detail and _sha(b"good bytes") in result.detail
    assert not (root / "mnist" / "a.gz").exists() and not list(root.rglob("*.part"))


def test_an_unreachable_source_is_reported_not_raised(tmp_path) -> None:
    files = {
        "mnist": (
            fd.FileSource(path="mnist/a.gz", sha256="0" * 64, urls=("http://127.0.0.1:9/a.gz",)),
        )
    }
    report = fd.fetch(tmp_path, ["mnist"], files=files, timeout=5)
    assert report.sets[0].status == "unreachable" and "127.0.0.1:9" in report.sets[0].detail


def test_check_finds_missing_present_and_corrupted_files(tmp_path) -> None:
    root = tmp_path / "root"
    (root / "mnist").mkdir(parents=True)
    report = fd.check(root, ["mnist", "notmnist"])
    assert [s.status for s in report.sets] == ["missing", "missing"]
    for item in fd.FILES["mnist"]:
        (root / item.path).write_bytes(b"not the real file")
    report = fd.check(root, ["mnist"])
    assert report.sets[0].status == "bad_checksum" and not report.ok


def test_from_a_folder_with_the_real_files(tmp_path, data_set_dir) -> None:
    """The shipped sha256 list matches the real files; --from copies a laid-out root."""
    source = data_set_dir("mnist").parent
    data_set_dir("notmnist")
    report = fd.fetch(tmp_path, ["mnist", "notmnist"], source_dir=source)
    assert [s.status for s in report.sets] == ["fetched", "fetched"], report.lines()
    assert fd.check(tmp_path, ["mnist", "notmnist"]).ok
    assert len(load_dataset("notmnist", "test", tmp_path / "notmnist")) == 10_000


def test_notmnist_without_from_says_there_is_no_official_source(tmp_path) -> None:
    (result,) = fd.fetch(tmp_path, ["notmnist"]).sets
    assert result.status == "missing" and "--from DIR" in result.detail


def _cifar_archive(per_class: int) -> tuple[bytes, np.ndarray, list[int]]:
    """A miniature cifar-10-python.tar.gz in the official layout (pickled batches)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    images_all, labels_all = [], []
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            labels = [k for k in range(10) for _ in range(per_class)]
            data = rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
            images_all.append(data)
            labels_all.extend(labels)
            payload = pickle.dumps({b"data": data, b"labels": labels}, protocol=4)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue(), np.concatenate(images_all), labels_all


def test_cifar10_official_archive_becomes_png_folders(server, tmp_path, monkeypatch) -> None:
    base, www = server
    archive, images, labels = _cifar_archive(per_class=2)
    (www / "cifar.tgz").write_bytes(archive)
    monkeypatch.setattr(
        fd,
        "CIFAR10_ARCHIVE",
        fd.FileSource(
            path="cifar10/cifar-10-python.tar.gz", sha256=_sha(archive), urls=(base + "cifar.tgz",)
        ),
    )
    monkeypatch.setattr(fd, "CIFAR10_SPLIT_SIZES", {"train": 100, "test": 20})
    (result,) = fd.fetch(tmp_path, ["cifar10"]).sets
    assert result.status == "fetched", result.detail
    assert not (tmp_path / "cifar10" / "cifar-10-python.tar.gz").exists()
    test = load_dataset("cifar10", "test", tmp_path / "cifar10")
    assert test.class_names == fd.CIFAR10_CLASSES
    expected = images[100:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # test_batch, lossless
    np.testing.assert_array_equal(test.images, expected[np.argsort(labels[100:], kind="stable")])
    assert fd.check(tmp_path, ["cifar10"]).sets[0].status == "present"


def test_cifar10_batches_may_hold_only_arrays(tmp_path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    payload = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=4)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        fd._ArrayUnpickler(io.BytesIO(payload), encoding="bytes").load()


def test_command_line_reports_a_missing_set_without_a_traceback(tmp_path) -> None:
    """Exit 1, one line per set, the hint on stderr (notMNIST: no download, so no network)."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.fetch_data",
            "--root",
            str(tmp_path),
            "--sets",
            "notmnist",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert f"data root: {tmp_path}" in result.stdout
    assert "--from DIR" in result.stdout + result.stderr
    check = subprocess.run(
        [sys.executable, "-m", "training.fetch_data", "--check", "--root", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 1 and check.stdout.count("missing") == 3
