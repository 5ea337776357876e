"""The Grafana dashboard and provisioning: static checks, then every panel query against a real
Prometheus that scraped a real TorchServe (and evaluated the project's real rules).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
GRAFANA_DIR = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "trustgc.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "trustgc.yml"
COMPOSE = REPO_ROOT / "docker-compose.yml"
RULE_FILES = sorted((REPO_ROOT / "deploy" / "prometheus" / "rules").glob("*.rules.yml"))
MODEL = "fashion_mnist"
# Grafana's variables, as Grafana would fill them in for a 5-minute view
SUBSTITUTIONS = {
    "$__rate_interval": "30s",
    "$__interval": "15s",
    "$__range": "5m",
    "${model}": MODEL,
    "$model": MODEL,
}
# series that exist only after the first 5xx answer: their queries may be empty here
MAY_BE_EMPTY = re.compile(r"Requests5XX")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    return [panel for panel in _dashboard()["panels"] if panel["type"] != "row"]


def _queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr with Grafana's variables substituted)."""
    queries = []
    for panel in _panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in SUBSTITUTIONS.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], target["refId"], expr))
    return queries


# ---------------------------------------------------------------------------- static checks
def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "trustgc-overview"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels():
        assert panel["targets"], f"{panel['title']}: no query"
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
            assert "$" not in _substitute(target["expr"]), f"unknown variable in {target['expr']}"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "model"}
    assert "gc_decisions_total" in variables["model"]["definition"]


def _substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return expr


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_dashboard_covers_the_service() -> None:
    exprs = " ".join(expr for _, _, expr in _queries())
    for needle in (
        "gc_decisions_total",
        "gc_predictions_total",
        "gc_p_value_bucket",
        "gc_handler_latency_seconds_bucket",
        "ts_inference_requests_total",
        "Requests5XX",
        'up{job="trustgc-torchserve"}',
        "trustgc:ood_alpha",
        "trustgc:attack_alpha",
        "trustgc:ood_rejections:bound5m",
    ):
        assert needle in exprs, f"no panel queries {needle}"
    kinds = {panel["type"] for panel in _panels()}
    assert {"heatmap", "timeseries", "stat"} <= kinds
    heatmaps = [p for p in _panels() if p["type"] == "heatmap"]
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


def test_provisioning_matches_dashboard_and_compose() -> None:
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    default = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert default["current"]["value"] == datasource["uid"]
    provider = yaml.safe_load(PROVIDERS.read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


# ------------------------------------------------------- real TorchServe + real Prometheus
@pytest.fixture(scope="module")
def prometheus(served_model, start_prometheus, tmp_path_factory, data_set_dir):
    """Prometheus that scraped TorchServe while it answered in- and out-of-distribution
    images and one invalid request, with the project's recording and alert rules loaded."""
    mnist_dir = data_set_dir("mnist")
    from training.data import load_dataset

    directory = tmp_path_factory.mktemp("prometheus-dashboard")
    with start_prometheus(directory, served_model.metrics_target, RULE_FILES) as server:
        server.wait_for('up{job="trustgc-torchserve"} == 1', 30, "first scrape")
        mnist = load_dataset("mnist", "test", mnist_dir).images[:20]
        served_model.classify_all(served_model.fashion_images(60))
        served_model.classify_all(served_model.png(mnist))
        assert served_model.client().classify(b"not an image").error.code
        # two scrapes and rule evaluations after the traffic, so rates over 30s are defined
        time.sleep(3)
        server.wait_for("trustgc:classified:increase5m > 0", 30, "recording rules")
        yield server


@pytest.mark.integration
def test_every_panel_query_runs_on_real_metrics(prometheus) -> None:
    failures, empty = [], []
    started = time.monotonic()
    for title, ref, expr in _queries():
        answer = prometheus.query(expr)
        if answer.get("status") != "success":
            failures.append(f"{title} [{ref}]: {answer.get('error')}\n    {expr}")
        elif not answer["data"]["result"] and not MAY_BE_EMPTY.search(expr):
            empty.append(f"{title} [{ref}]: {expr}")
    print(f"\n{len(_queries())} panel queries in {time.monotonic() - started:.1f} s")
    assert not failures, "queries Prometheus rejected:\n" + "\n".join(failures)
    assert not empty, "queries without data (wrong metric or label?):\n" + "\n".join(empty)


@pytest.mark.integration
def test_rules_evaluate_without_errors_on_real_metrics(prometheus) -> None:
    groups = prometheus.rules()
    names = {group["name"] for group in groups}
    assert {"trustgc-alphas", "trustgc-recording", "trustgc-alerts"} <= names
    errors = [
        f"{rule.get('name')}: {rule.get('lastError')}"
        for group in groups
        for rule in group["rules"]
        if rule.get("health") != "ok"
    ]
    assert not errors, errors
    # the recorded series the alerts and panels rely on are there, with the real labels
    assert prometheus.value('trustgc:ood_alpha{ModelName="fashion_mnist"}') == 0.01
    assert prometheus.value('trustgc:classified:increase5m{ModelName="fashion_mnist"}') >= 50
    assert prometheus.value('trustgc:ood_rejections:increase5m{ModelName="fashion_mnist"}') > 0
    assert prometheus.value("trustgc:error_ratio:ratio5m") > 0
    assert prometheus.value('count(gc_p_value_bucket{statistic="ood", le="0.5"})') == 1
