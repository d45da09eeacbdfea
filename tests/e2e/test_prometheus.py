"""Metrics and dashboards against a real Prometheus.

The whole pipeline runs a mailing through a faulty gateway (a refused-connection outage
that opens the breaker, 5xx answers that go to the DLQ, 429s that are retried) while
Debian's Prometheus scrapes every service each second. Then every query of every panel
of every dashboard in deploy/grafana/dashboards must return data, and the main counters
must agree with what happened to the messages.

The cheaper checks without infrastructure (well-formed dashboards querying only metrics
that exist; docs/operations.md documents every metric): tests/unit/test_dashboards.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from tests.support.dashboards import GRAFANA_VARIABLES, substitute, targets
from tests.support.pipeline import Pipeline
from tests.support.polling import eventually
from tools.prometheus import PrometheusServer, promtool

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.infra import Infra


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def lint(exposition: str) -> tuple[int, str]:
    """`promtool check metrics`: exit status and complaints."""
    result = subprocess.run(
        [str(promtool()), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def value(result: list[dict[str, Any]]) -> float:
    return sum(float(sample["value"][1]) for sample in result)


async def test_every_dashboard_panel_has_data_from_the_live_pipeline(
    infra: Infra, tmp_path: Path
) -> None:
    pipe = Pipeline(
        infra,
        tmp_path,
        faults={"error_5xx": 0.1, "error_429": 0.2, "seed": 5},
        # 5xx answers are ambiguous: without de-duplication they fail (and go to the DLQ).
        env={"PROVIDER_DEDUPLICATES": "false", "CONSUMER_LAG_INTERVAL_S": "1"},
    )
    await pipe.start()
    prometheus: PrometheusServer | None = None
    try:
        prometheus = PrometheusServer(
            tmp_path / "prometheus",
            {name: f"127.0.0.1:{port}" for name, port in pipe.ports.items()},
            scrape_interval_s=1,
        )
        await asyncio.to_thread(prometheus.start)
        server = prometheus

        async def query(expr: str) -> list[dict[str, Any]]:
            return await asyncio.to_thread(server.query, expr)

        await eventually(
            lambda: asyncio.to_thread(server.active_targets),
            lambda found: len(found) == 4 and all(t["health"] == "up" for t in found),
            timeout=30,
            what="every service scraped",
        )

        tag = f"p{uuid.uuid4().hex[:6]}"
        await pipe.bulk_clients(200, tag)
        await pipe.control.outage("refuse", 5)  # opens the breaker
        now = datetime.now(UTC)
        mailing = await pipe.mailing(
            date_time_start=_stamp(now - timedelta(minutes=1)),
            date_time_stop=_stamp(now + timedelta(minutes=10)),
            text="Watched by Prometheus",
            tag=[tag],
        )
        counts = await pipe.settled(mailing["id"], timeout=180)
        assert set(counts) == {"sent", "failed"}
        assert counts["sent"] + counts["failed"] == 200

        # Prometheus has scraped the end of the run.
        await eventually(
            lambda: query('sum(notifications_message_transitions_total{status="sent"})'),
            lambda result: value(result) == counts["sent"],
            timeout=30,
            what="the sent count scraped",
        )

        # Scheduler: mailing and client events; dispatcher: message.send and 3 retry
        # tiers; 3 partitions each. All caught up once the mailing has settled.
        def caught_up(result: list[dict[str, Any]]) -> bool:
            pipeline = [s for s in result if s["metric"]["service"] in {"scheduler", "dispatcher"}]
            return len(pipeline) == (2 + 1 + 3) * 3 and value(result) == 0

        lag = await eventually(
            lambda: query("notifications_consumer_lag_messages"),
            caught_up,
            timeout=30,
            what="every consumer caught up",
        )
        async with httpx.AsyncClient(timeout=10) as client:
            exposition = {
                name: (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                for name, port in pipe.ports.items()
            }

        # The counters agree with what happened to the messages.
        ok = await query('sum(notifications_gateway_requests_total{outcome="ok"})')
        dead = await query("sum(notifications_dispatcher_dlq_records_total)")
        openings = await query("sum(notifications_dispatcher_breaker_openings_total)")
        first_tier = await query('sum(notifications_dispatcher_retries_total{tier="1"})')
        refused = await query('sum(notifications_gateway_requests_total{status="none"})')
        backlog = await query("notifications_outbox_backlog_events")
        assert value(ok) == counts["sent"]
        assert value(dead) == counts["failed"]
        assert value(openings) >= 1
        assert value(first_tier) > 0
        assert value(refused) > 0
        assert {s["metric"]["service"] for s in backlog} == {"api", "scheduler", "dispatcher"}
        assert value(backlog) == 0
        assert {(s["metric"]["service"], s["metric"]["topic"]) for s in lag} >= {
            ("scheduler", f"{pipe.name}.mailing.events"),
            ("dispatcher", f"{pipe.name}.message.send.retry.3"),
        }

        # Every panel of every dashboard shows something (the reporter's gauges may
        # follow the last status events by a moment: ask again for a while).
        variables = {**GRAFANA_VARIABLES, "mailing_id": str(mailing["id"])}

        async def empty_panels() -> list[str]:
            empty: list[str] = []
            mailings = await asyncio.to_thread(
                server.label_values, "mailing_id", "notifications_mailing_status_messages"
            )
            if str(mailing["id"]) not in mailings:
                empty.append(f"Delivery funnel / variable mailing_id: {mailings}")
            for board, panel, expr in targets():
                concrete = substitute(expr, variables)
                assert "$" not in concrete, f"{board} / {panel}: unknown variable in {expr}"
                if not await query(concrete):
                    empty.append(f"{board} / {panel}: {concrete}")
            return empty

        for _ in range(15):
            if not (empty := await empty_panels()):
                break
            await asyncio.sleep(1)
    finally:
        if prometheus is not None:
            await asyncio.to_thread(prometheus.stop)
        await pipe.stop()

    # Every service's exposition passes Prometheus' own lint.
    for name, text in exposition.items():
        assert await asyncio.to_thread(lint, text) == (0, ""), name

    assert not empty, "panels without data:\n" + "\n".join(empty)
