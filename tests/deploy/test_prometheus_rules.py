"""The Prometheus config, recording and alert rules, their promtool unit tests and Alertmanager.

promtool (Debian's ``prometheus`` package) checks the config and rules and runs the unit tests
in deploy/prometheus/tests/; these tests skip with the reason when it is missing.  The rest
checks what promtool cannot: every alert is documented with a runbook anchor that exists, has a
firing and a silent unit-test case, the alphas are the served ones (the handler's gc_alpha; see
tests/serving/test_served_metrics.py), and the binomial bound keeps its promised false-alarm
rate.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "trustgc.rules.yml"
UNIT_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
ALERTMANAGER = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DOCS = REPO_ROOT / "docs" / "observability.md"
MODEL_DIR = REPO_ROOT / "model_store" / "fashion_mnist"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is missing (apt-get install prometheus)",
)


def _alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def _promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


# ------------------------------------------------------------------------------- promtool
@needs_promtool
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = _promtool("test", "rules", *[str(p.relative_to(PROMETHEUS_DIR)) for p in UNIT_TESTS])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(UNIT_TESTS), result.stdout


# ------------------------------------------------------------------ rules: coverage and docs
def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts without a unit test where they fire"
    assert alerts - silent == set(), "alerts without a unit test where they must not fire"
    assert (firing | silent) - alerts == set(), "unit tests name alerts that do not exist"


def test_every_alert_has_summary_runbook_and_severity() -> None:
    headings = {
        github_anchor(line.lstrip("#"))
        for line in DOCS.read_text().splitlines()
        if line.startswith("#")
    }
    alerts = _alerts()
    assert len(alerts) >= 8
    for name, rule in alerts.items():
        annotations, labels = rule.get("annotations", {}), rule.get("labels", {})
        assert annotations.get("summary"), f"{name}: no summary"
        assert annotations.get("description"), f"{name}: no description"
        runbook = annotations.get("runbook", "")
        assert runbook.startswith("docs/observability.md#"), f"{name}: runbook {runbook!r}"
        anchor = runbook.split("#", 1)[1]
        assert anchor in headings, f"{name}: {DOCS.name} has no heading with anchor #{anchor}"
        assert labels.get("severity") in {"warning", "critical"}, name
        assert rule.get("for"), f"{name}: no `for:` (a single bad scrape would page)"


def test_statistical_alerts_use_alpha_and_a_traffic_floor() -> None:
    alerts = _alerts()
    recording = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    assert "trustgc:ood_alpha" in recording["trustgc:ood_rejections:bound5m"]
    assert "trustgc:attack_alpha" in recording["trustgc:attack_flags:bound5m"]
    for name in ("TrustGCOODRejectionRateHigh", "TrustGCAttackFlagRateHigh", "TrustGCPValueDrift"):
        assert re.search(r">= 50\b", alerts[name]["expr"]), f"{name}: no traffic floor"


# ------------------------------------------------------------------------ served alphas
def test_alphas_are_read_from_the_served_metric_not_a_copy() -> None:
    groups = {g["name"]: g["rules"] for g in yaml.safe_load(RULES.read_text())["groups"]}
    records = {rule["record"]: rule["expr"] for rule in groups["trustgc-alphas"]}
    assert records == {
        "trustgc:ood_alpha": 'max by (ModelName) (gc_alpha{test="ood"})',
        "trustgc:attack_alpha": 'max by (ModelName) (gc_alpha{test="attack"})',
    }
    assert sorted(p.name for p in (PROMETHEUS_DIR / "rules").glob("*.yml")) == [RULES.name]


# -------------------------------------------------------------------- the binomial bound
def _rule_bound(n, alpha, z):
    """The bound of trustgc:ood_rejections:bound5m, as written in the rule."""
    import numpy as np

    n = np.asarray(n, dtype=float)
    return n * alpha + z * np.sqrt(n * alpha * (1 - alpha)) + (z**2 - 1) * (1 - 2 * alpha) / 6


def test_binomial_bound_keeps_the_false_alarm_rate_near_one_in_a_thousand() -> None:
    from scipy.stats import binom

    groups = yaml.safe_load(RULES.read_text())["groups"]
    bound_expr = next(
        r["expr"]
        for group in groups
        for r in group["rules"]
        if r.get("record") == "trustgc:ood_rejections:bound5m"
    )
    z = float(re.search(r"\+ ([0-9.]+) \* sqrt", bound_expr)[1])
    assert z == pytest.approx(3.09)
    # the formula mirrored here is the one promtool evaluates (pinned in the unit tests)
    assert _rule_bound(2000, 0.01, z) == pytest.approx(35.145821661742026)
    for alpha in (0.01, 0.05):
        for n in (50, 100, 200, 500, 1000, 5000, 50000):
            bound = _rule_bound(n, alpha, z)
            false_alarm = binom.sf(int(bound), n, alpha)  # P(k > bound) under H0
            assert false_alarm < 0.002, (alpha, n, false_alarm)
    # and it still detects a real shift: 20 % rejections at the 50-answer floor, 10 % at 200
    # (per evaluation; `for:` then needs the shift to last)
    assert binom.sf(int(_rule_bound(50, 0.01, z)), 50, 0.20) > 0.95
    assert binom.sf(int(_rule_bound(200, 0.01, z)), 200, 0.10) > 0.999


# ---------------------------------------------------------------------------- Alertmanager
def test_alertmanager_config() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    webhook = receivers[config["route"]["receiver"]]["webhook_configs"][0]
    assert webhook["url"].startswith("http") and ".invalid" in webhook["url"], "placeholder"
    assert webhook.get("send_resolved") is True
    for rule in config.get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            name = re.fullmatch(r'alertname="(\w+)"', matcher)
            assert name is None or name[1] in _alerts(), matcher
    if shutil.which("amtool") is None:
        pytest.skip(
            "amtool is missing (apt-get install prometheus-alertmanager): YAML checked only"
        )
    result = subprocess.run(
        ["amtool", "check-config", str(ALERTMANAGER)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
