"""The Grafana dashboards in deploy/grafana/dashboards and the project's metrics: every
panel query, the names the metrics expose and the names they are documented under."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from shared import metrics
from tests.support.infra import REPO

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
# What Grafana puts in place of its own variables, wide enough to span the whole run.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__interval": "1m", "__range": "15m"}
METRIC_NAME = re.compile(r"\bnotifications_[a-z0-9_]+")


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def targets() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) of every panel query."""
    return [
        (board["title"], panel["title"], target["expr"])
        for board in dashboards().values()
        for panel in panels(board)
        for target in panel["targets"]
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    for name, value in sorted(values.items(), key=lambda item: -len(item[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def exposed_names() -> set[str]:
    """Every sample name the project's metrics expose."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram):
            names.update(value._name + suffix for suffix in ("_bucket", "_count", "_sum"))
        elif isinstance(value, Gauge):
            names.add(value._name)
    return names


def documented_names() -> set[str]:
    """The metric names each metric is documented under (histograms by their base name)."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names.add(value._name + "_total")
        elif isinstance(value, Histogram | Gauge):
            names.add(value._name)
    return names
