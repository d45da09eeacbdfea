"""The alerting rules under Debian's promtool (tools/prometheus.py fetches and caches it;
no PostgreSQL or Kafka): the compose Prometheus's configuration and rules are valid, and
the unit tests of deploy/prometheus/alerts.test.yml pass, so each alert fires on its
series and stays quiet on a healthy stack. The checks that need no promtool are in
tests/unit/test_alert_rules.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.unit.test_alert_rules import PROMETHEUS, RULE_TESTS, RULES, alerts
from tools.prometheus import promtool


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> tuple[int, str]:
    result = subprocess.run(
        [str(promtool()), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_configuration_and_rules_are_valid() -> None:
    status, output = run_promtool("check", "config", "prometheus.yml")
    assert status == 0, output
    assert f"SUCCESS: {len(alerts())} rules found" in output


def test_rules_pass_their_unit_tests() -> None:
    status, output = run_promtool("test", "rules", RULE_TESTS.name)
    assert status == 0, output
    assert "SUCCESS" in output


def test_unit_tests_catch_an_alert_that_never_fires(tmp_path: Path) -> None:
    """The series tests fail when an alert goes quiet: they test something."""
    broken = RULES.read_text().replace(
        "expr: notifications_consumer_failing_info == 1",
        "expr: notifications_consumer_failing_info == 2",
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    status, output = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert status == 1, output
    assert "alertname: ConsumerFailing" in output
