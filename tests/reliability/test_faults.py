"""Fault tests: a model worker killed under load, and a restart of the whole server.

The worker is killed with SIGKILL (an OOM kill looks the same) while two groups of clients
load the server: plain requests without retry, and the client SDK (``ClassifierClient``, which
retries 503 and TorchServe's "Worker died." answers).  TorchServe starts a new worker; the
test measures how long until every worker is READY again and how many requests each group
lost: without retry, the requests of the killed worker's batch fail ("Worker died.", HTTP 507
or 500); with retry, none may.  The restart test stops and starts the whole server and expects
bit-identical answers (same bytes) to the same sequential requests before and after.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests
from reliability_inputs import extreme_aspect_png, garment_png
from reliability_support import load_benchmark

pytestmark = pytest.mark.integration

KILL_AFTER_S = 3.0
LOAD_S = 12.0


def wait_until_busy(pid: int, timeout: float = 3.0) -> bool:
    """Poll the worker until it is running (computing a batch), so the kill hits a batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "R":
                    return True
        except OSError:
            return False
        time.sleep(0.001)
    return False


def retry_sender(client):
    """The SDK's classify() as a load-test sender: (status, outcome)."""
    from serving.client import ClientError
    from serving.schema import ErrorResponse

    def send(session, body):  # noqa: ARG001 - the SDK opens its own connections
        try:
            answer = client.classify(body)
        except ClientError as error:
            return (error.status if isinstance(error.status, int) else None), "client_error"
        except requests.Timeout:
            return None, "timeout"
        except requests.ConnectionError:
            return None, "connection_error"
        if isinstance(answer, ErrorResponse):
            return 400, answer.error.code
        return 200, answer.decision

    return send


def test_worker_killed_under_load(rel_server) -> None:
    lt = load_benchmark()
    assert rel_server.wait_workers_ready(timeout=180) >= 0
    workers = rel_server.worker_pids()
    assert len(workers) == 2
    java = rel_server.java_pid()
    victim = workers[0]
    # the worker is this instance's: a child of its java, its run dir in the command line
    assert victim in rel_server.run_dir_pids()
    with open(f"/proc/{victim}/stat") as stat:
        assert int(stat.read().rsplit(")", 1)[1].split()[1]) == java

    bodies = lt.fashion_bodies(64)
    target = lt.Target(rel_server.inference_url, rel_server.metrics_url, rel_server.token)
    plain = lt.raw_sender(target, timeout=60)
    sdk = retry_sender(rel_server.client(timeout=60, retries=6, backoff=0.25))
    results: dict[str, list] = {}
    killed_at: list[float] = []

    def group(name, send, clients):
        results[name] = lt.run_load(bodies, send, clients, LOAD_S)

    threads = [
        threading.Thread(target=group, args=("no_retry", plain, 4)),
        threading.Thread(target=group, args=("sdk_retry", sdk, 4)),
    ]
    for thread in threads:
        thread.start()
    time.sleep(KILL_AFTER_S)
    busy = wait_until_busy(victim)
    rel_server.kill_worker(victim)
    killed_at.append(time.monotonic())
    recovery = rel_server.wait_workers_ready(timeout=180, gone=(victim,))
    for thread in threads:
        thread.join()

    summary = {}
    for name, records in results.items():
        failed = [r for r in records if r.status != 200]
        during = [r for r in records if r.started >= killed_at[0] and r.status == 200]
        summary[name] = {
            "requests": len(records),
            "failed": len(failed),
            "failures": dict(Counter(f"{r.status} {r.outcome}" for r in failed)),
            "answered_during_recovery": len(during),
            "max_latency_s": round(max(r.latency for r in records), 2),
        }
    print(
        f"\nworker {victim} killed ({'busy' if busy else 'maybe idle'}); "
        f"all workers READY again after {recovery:.1f} s"
    )
    print(f"no retry: {summary['no_retry']}\nSDK retry: {summary['sdk_retry']}")
    assert summary["sdk_retry"]["failed"] == 0, summary["sdk_retry"]
    # without retry only the killed worker's batch fails, with TorchServe's "Worker died."
    assert all(r.status in (500, 507) for r in results["no_retry"] if r.status != 200)
    # the surviving worker kept answering while the other one restarted
    assert summary["no_retry"]["answered_during_recovery"] > 0
    new_workers = rel_server.worker_pids()
    assert victim not in new_workers and len(new_workers) == 2
    follow_up = rel_server.post(garment_png())
    assert follow_up.status_code == 200, follow_up.text


def test_server_restart_gives_bit_identical_answers(rel_server) -> None:
    requests_to_repeat = [
        (garment_png(), {}),
        (garment_png(), {"X-Trustgc-Explain": "true", "X-Trustgc-Top-K": "3"}),
        (garment_png(), {"X-Trustgc-Format": "protobuf"}),
        (extreme_aspect_png(), {}),
        (b"not an image", {}),
    ]

    def answers() -> list[tuple[int, bytes]]:
        out = []
        for body, headers in requests_to_repeat:  # sequential: a batch of one each
            answer = rel_server.post(body, headers)
            out.append((answer.status_code, answer.content))
        return out

    before = answers()
    workers_before, java_before = rel_server.worker_pids(), rel_server.java_pid()
    keys_before = dict(rel_server.keys)
    seconds = rel_server.restart()
    print(f"\nwhole server restarted (stop + start + READY) in {seconds:.1f} s")
    after = answers()
    assert rel_server.java_pid() != java_before
    assert not set(rel_server.worker_pids()) & set(workers_before)
    assert rel_server.keys != keys_before  # TorchServe issues new keys on every start
    assert [status for status, _ in before] == [200, 200, 200, 200, 415]
    assert after == before  # byte for byte
