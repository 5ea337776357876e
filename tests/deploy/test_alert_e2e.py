"""End to end without Docker: real TorchServe, real Prometheus, the project's own alert rules.

The rules are the real files with only the time constants shortened, programmatically: every
range ``[5m]`` becomes ``[20s]`` and every ``for:`` becomes ``5s`` (the logic, the binomial
bound and the traffic floor are untouched).  Prometheus scrapes and evaluates every second.
Traffic: Fashion-MNIST test images (in distribution: the OoD rejection alert must stay
inactive), then MNIST digits (out of distribution: it must go pending, then firing), then
Fashion-MNIST again (it must clear).  About 1-2 minutes once TorchServe is up.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yml"))
ALERT = "TrustGCOODRejectionRateHigh"
WINDOW = "20s"  # replaces every [5m]
FOR = "5s"  # replaces every `for:`
WINDOW_SECONDS = 20


def shortened_rules(directory: Path) -> list[Path]:
    """Copies of the real rule files with shorter windows and `for:` durations."""
    directory.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in RULE_FILES:
        text = path.read_text()
        text, ranges = re.subn(r"\[5m\]", f"[{WINDOW}]", text)
        text, fors = re.subn(r"(?m)^(\s+for:) \S+$", rf"\1 {FOR}", text)
        if path.name == "trustgc.rules.yml":
            assert ranges >= 10 and fors >= 8, (ranges, fors)
            assert not re.search(r"\[\d+[smhd]\]", text.replace(f"[{WINDOW}]", "")), "other range"
        copy = directory / path.name
        copy.write_text(text)
        copies.append(copy)
    return copies


class Traffic:
    """Worker threads sending the current image set in order, as fast as the server answers."""

    def __init__(self, client, workers: int = 3) -> None:
        self.client = client
        self.lock = threading.Lock()
        self.images: list[bytes] = []
        self.phase = ""
        self.index = 0
        self.counts: Counter = Counter()
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def use(self, phase: str, images: list[bytes]) -> None:
        with self.lock:
            self.phase, self.images, self.index = phase, images, 0

    def _run(self) -> None:
        while not self.stopping.is_set():
            with self.lock:
                if not self.images:
                    phase = image = None
                else:
                    phase, image = self.phase, self.images[self.index % len(self.images)]
                    self.index += 1
            if image is None:  # no phase yet
                time.sleep(0.1)
                continue
            try:
                decision = self.client.classify(image, top_k=1).decision
            except Exception as error:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(error))
                time.sleep(0.1)
                continue
            with self.lock:
                self.counts[(phase, decision)] += 1

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=35)

    def answered(self, phase: str) -> int:
        with self.lock:
            return self.answered_locked(phase)

    def answered_locked(self, phase: str) -> int:
        return sum(n for (p, _), n in self.counts.items() if p == phase)


def _state(alerts: list[dict], name: str) -> str:
    states = {a["state"] for a in alerts if a["labels"].get("alertname") == name}
    return "firing" if "firing" in states else "pending" if "pending" in states else "inactive"


@pytest.mark.integration
def test_ood_rejection_alert_fires_on_mnist_and_clears(
    served_model, start_prometheus, tmp_path, data_set_dir
) -> None:
    mnist_dir = data_set_dir("mnist")
    from training.data import load_dataset

    fashion = served_model.fashion_images(600)
    mnist = served_model.png(load_dataset("mnist", "test", mnist_dir).images[:600])
    rules = shortened_rules(tmp_path / "rules")
    began = time.monotonic()
    report: dict[str, object] = {}
    with (
        start_prometheus(tmp_path / "prometheus", served_model.metrics_target, rules) as prom,
        Traffic(served_model.client()) as traffic,
    ):
        prom.wait_for('up{job="trustgc-torchserve"} == 1', 30, "first scrape")

        # 1. in distribution for longer than the window: the alert must never become active
        traffic.use("fashion", fashion)
        phase_start = time.monotonic()
        seen_in_distribution: set[str] = set()
        while time.monotonic() - phase_start < WINDOW_SECONDS + 6:
            alerts = prom.alerts()
            assert _state(alerts, ALERT) == "inactive", f"{ALERT} active on Fashion-MNIST"
            seen_in_distribution |= {a["labels"]["alertname"] for a in alerts}
            time.sleep(0.5)
        classified = prom.value('trustgc:classified:increase5m{ModelName="fashion_mnist"}')
        ratio = prom.value('trustgc:ood_rejection_ratio:ratio5m{ModelName="fashion_mnist"}')
        assert classified is not None and classified >= 50, "traffic floor not reached: no test"
        report["in-distribution answers per window"] = round(classified)
        report["in-distribution rejection ratio"] = round(ratio, 4)
        report["alerts active on in-distribution traffic"] = sorted(seen_in_distribution)

        # 2. out of distribution: pending, then firing after `for:`
        traffic.use("mnist", mnist)
        shift = time.monotonic()
        pending_after = firing_after = None
        while firing_after is None:
            with traffic.lock:
                answered = traffic.answered_locked("mnist")
                rejected = traffic.counts[("mnist", "rejected_ood")]
            assert answered < 100 or rejected >= 0.5 * answered, (
                f"the served model rejected only {rejected} of {answered} MNIST digits: the "
                "model or its archive is broken (a .mar older than calibration.json?), not "
                "the alert"
            )
            assert time.monotonic() - shift < 60, f"{ALERT} not firing 60 s after the shift"
            state = _state(prom.alerts(), ALERT)
            if state in ("pending", "firing") and pending_after is None:
                pending_after = time.monotonic() - shift
            if state == "firing":
                firing_after = time.monotonic() - shift
            time.sleep(0.25)
        report["MNIST answers until firing"] = traffic.answered("mnist")
        report["seconds to pending"] = round(pending_after, 1)
        report["seconds to firing"] = round(firing_after, 1)
        report["OoD rejection ratio when firing"] = round(
            prom.value('trustgc:ood_rejection_ratio:ratio5m{ModelName="fashion_mnist"}'), 3
        )

        # 3. back to normal: the alert clears once the window holds only in-distribution answers
        traffic.use("fashion-again", fashion)
        recovery = time.monotonic()
        while _state(prom.alerts(), ALERT) != "inactive":
            assert time.monotonic() - recovery < 60, f"{ALERT} still active 60 s after recovery"
            time.sleep(0.25)
        report["seconds to clear"] = round(time.monotonic() - recovery, 1)
    report["requests/s"] = round(sum(traffic.counts.values()) / (time.monotonic() - began), 1)
    report["decisions"] = dict(sorted(traffic.counts.items()))
    report["test seconds"] = round(time.monotonic() - began, 1)
    print("\n" + "\n".join(f"  {key}: {value}" for key, value in report.items()))
    assert not traffic.errors, traffic.errors[:5]
    assert pending_after <= firing_after
    assert time.monotonic() - began < 180
