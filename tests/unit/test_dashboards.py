"""The dashboards, without infrastructure: well-formed Grafana JSON on the `prometheus`
datasource, querying only metrics that exist; docs/operations.md documents every metric.

Every panel with data from the live pipeline on a real Prometheus:
tests/e2e/test_prometheus.py."""

from __future__ import annotations

import re

from tests.support.dashboards import (
    METRIC_NAME,
    dashboards,
    documented_names,
    exposed_names,
    panels,
    targets,
)
from tests.support.infra import REPO


def test_three_dashboards_on_the_prometheus_datasource() -> None:
    boards = dashboards()
    assert {board["title"] for board in boards.values()} == {
        "Delivery funnel",
        "Gateway health",
        "Backlog and lag",
    }
    assert len({board["uid"] for board in boards.values()}) == 3
    for name, board in boards.items():
        nested = [inner for panel in board["panels"] for inner in panel.get("panels", [])]
        ids = [panel["id"] for panel in board["panels"] + nested]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        for panel in panels(board):
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, name
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus"
                assert target["expr"].strip()
    funnel = next(board for board in boards.values() if board["title"] == "Delivery funnel")
    [variable] = funnel["templating"]["list"]
    assert variable["name"] == "mailing_id"
    assert variable["definition"] == (
        "label_values(notifications_mailing_status_messages, mailing_id)"
    )


def test_dashboards_query_only_metrics_that_exist() -> None:
    known = exposed_names()
    unknown = {
        (panel, name)
        for _, panel, expr in targets()
        for name in METRIC_NAME.findall(expr)
        if name not in known
    }
    assert not unknown


def test_the_operations_page_documents_every_metric() -> None:
    readme = (REPO / "docs" / "operations.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = {
        match.group(1)
        for match in re.finditer(r"^\| `(notifications_[a-z0-9_]+)`", section, re.MULTILINE)
    }
    assert rows == documented_names()
