"""The alerting rules hold together without a Prometheus: deploy/prometheus/alerts.yml is
loaded by prometheus.yml and mounted by compose, each alert has a `for:`, a severity, a
summary, a description and a runbook section named after it, queries only metrics the
services export (with labels they have), and is covered by alerts.test.yml both firing
and quiet. Running those tests takes promtool: tests/integration/test_alert_rules.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from ruamel.yaml import YAML

from shared import metrics
from shared.models import MessageStatus
from tests.unit.test_docs import anchors

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts.test.yml"
RUNBOOK = REPO / "docs" / "runbook.md"
SEVERITIES = {"critical", "warning"}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus makes itself rather than scrapes.
PROMETHEUS_SERIES = {"up"}
METRIC = re.compile(r"\b((?:notifications|process|python)_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b([a-z_][a-z0-9_]*)\{([^}]*)\}")
MATCHER = re.compile(r'([a-z_][a-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING = re.compile(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)")
# Metrics whose `status` label is a message status (the gateway's is an HTTP status).
MESSAGE_STATUS_METRICS = {
    "notifications_reporter_status_messages",
    "notifications_message_transitions_total",
    "notifications_scheduler_redriven_messages_total",
}


def load_yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def exported() -> dict[str, set[str]]:
    """Every sample name a service's /metrics shows, with the labels it carries: the
    project's metrics (shared.metrics) and prometheus_client's own collectors."""
    names: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
        for suffix in suffixes.get(family.type, ("",)):
            names[family.name + suffix] = {key for s in family.samples for key in s.labels}
    for value in vars(metrics).values():
        if isinstance(value, Counter | Gauge | Histogram):
            labels = set(value._labelnames)
            for name in names:
                if name == value._name or name.startswith(value._name + "_"):
                    names[name] |= labels | ({"le"} if name.endswith("_bucket") else set())
    return names


def ids(rule: dict[str, Any]) -> str:
    return str(rule["alert"])


def test_prometheus_loads_the_rules_that_compose_mounts() -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    compose = load_yaml(REPO / "deploy" / "docker-compose.yml")
    volumes = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in volumes
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in volumes


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert names
    assert len(names) == len(set(names))
    assert all("record" not in rule for rule in alerts())


@pytest.mark.parametrize("rule", alerts(), ids=ids)
def test_alert_has_a_delay_a_severity_and_words_for_the_operator(rule: dict[str, Any]) -> None:
    assert re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) == {"summary", "description", "runbook_url"}
    assert all(text.strip() for text in annotations.values())


@pytest.mark.parametrize("rule", alerts(), ids=ids)
def test_runbook_url_is_the_alerts_own_section(rule: dict[str, Any]) -> None:
    """`docs/runbook.md#<alert name, lower case>`: a `### <AlertName>` heading."""
    document, _, anchor = rule["annotations"]["runbook_url"].partition("#")
    assert document == "docs/runbook.md"
    assert anchor == rule["alert"].lower()
    assert anchor in anchors(RUNBOOK)
    assert f"\n### {rule['alert']}\n" in RUNBOOK.read_text()


@pytest.mark.parametrize("rule", alerts(), ids=ids)
def test_alert_queries_only_metrics_the_services_export(rule: dict[str, Any]) -> None:
    known = exported()
    expr = rule["expr"]
    names = set(METRIC.findall(expr)) | (PROMETHEUS_SERIES & set(re.findall(r"\w+", expr)))
    assert names, expr
    assert names - PROMETHEUS_SERIES <= set(known), expr
    labels_of_expr = set(TARGET_LABELS)
    for name in names - PROMETHEUS_SERIES:
        labels_of_expr |= known[name]
    for name, matchers in SELECTOR.findall(expr):
        allowed = TARGET_LABELS | known.get(name, set())
        for label, _operator, value in MATCHER.findall(matchers):
            assert label in allowed, f"{name} has no label {label}"
            if label == "status" and name in MESSAGE_STATUS_METRICS:
                assert set(value.split("|")) <= {status.value for status in MessageStatus}
    for grouping in GROUPING.findall(expr):
        used = {label.strip() for label in grouping.split(",") if label.strip()}
        assert used <= labels_of_expr, f"{used - labels_of_expr} on no metric of {expr}"


def test_the_metrics_are_known_with_their_labels() -> None:
    """The check above reads what it should: a few names and labels it must know."""
    known = exported()
    assert known["notifications_consumer_lag_messages"] >= {"service", "topic", "partition"}
    assert known["notifications_gateway_requests_total"] >= {"outcome", "status"}
    assert "process_start_time_seconds" in known
    assert "notifications_no_such_metric" not in known


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    spec = load_yaml(RULE_TESTS)
    assert spec["rule_files"] == ["alerts.yml"]
    for test in spec["tests"]:
        for case in test["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
            for expected in case.get("exp_alerts") or []:
                assert expected["exp_annotations"]["runbook_url"].endswith(
                    "#" + case["alertname"].lower()
                )
    names = {rule["alert"] for rule in alerts()}
    assert fired == names
    assert quiet == names
