"""Prometheus metrics, defined once. Names: `notifications_<noun>_<unit>`.

Labels stay low-cardinality (service, method, route, status, outcome, topic, partition,
tier): ids go in logs, never in labels. One deliberate exception:
`notifications_mailing_status_messages` carries `mailing_id`, only for mailings active
in the last 24 hours, so its series are bounded by the number of recent mailings.

Every metric here is listed in docs/operations.md#metrics (a test keeps them in step).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

PREFIX = "notifications"
# Probes and scrapes would drown the request log.
_QUIET_ROUTES = frozenset({"/health", "/ready", "/metrics"})
_log = structlog.stdlib.get_logger("http")

HTTP_REQUEST_DURATION = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "HTTP request latency by route and status code.",
    ["service", "method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DEPENDENCY_UP = Gauge(
    f"{PREFIX}_dependency_up_info",
    "1 when the last readiness check reached the dependency, else 0.",
    ["service", "dependency"],
)
BROKER_CONNECTED = Gauge(
    f"{PREFIX}_kafka_consumers_started_info",
    "1 once the service's Kafka consumers and producer are started.",
    ["service"],
)
EVENTS_CONSUMED = Counter(
    f"{PREFIX}_events_consumed_total",
    "Kafka records handled, by topic and outcome.",
    ["service", "topic", "outcome"],
)


def render_latest() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST


class HttpMetricsMiddleware:
    """Pure ASGI middleware: a fresh log context per request, one `http_request` log line
    (with the entity ids the handler bound), and latency by route template (not path)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        structlog.contextvars.clear_contextvars()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "<unmatched>"
            HTTP_REQUEST_DURATION.labels(
                self.service, scope["method"], template, str(status)
            ).observe(elapsed)
            if template not in _QUIET_ROUTES:
                _log.info(
                    "http_request",
                    method=scope["method"],
                    path=scope["path"],
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
            structlog.contextvars.clear_contextvars()


OUTBOX_BACKLOG = Gauge(
    f"{PREFIX}_outbox_backlog_events",
    "Outbox rows committed but not yet published to Kafka.",
    ["service"],
)
OUTBOX_PUBLISHED = Counter(
    f"{PREFIX}_outbox_published_events_total",
    "Outbox rows published to Kafka.",
    ["service"],
)
MESSAGES_FIRED = Counter(
    f"{PREFIX}_scheduler_fired_messages_total",
    "Due messages the scheduler queued and published as send commands.",
)
SCHEDULER_BACKLOG = Gauge(
    f"{PREFIX}_scheduler_due_backlog_messages",
    "Messages due now or earlier that are not yet queued (due-but-unsent backlog).",
)
SCHEDULER_REDRIVEN = Counter(
    f"{PREFIX}_scheduler_redriven_messages_total",
    "Queued or retrying messages whose send command was gone from Kafka: re-published.",
    ["status"],
)
GATEWAY_LATENCY = Histogram(
    f"{PREFIX}_gateway_request_duration_seconds",
    "Gateway call latency by outcome (ok, transient, permanent, auth).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GATEWAY_OUTCOMES = Counter(
    f"{PREFIX}_gateway_requests_total",
    "Gateway calls by outcome and HTTP status ('none' for no answer).",
    ["outcome", "status"],
)
MESSAGE_TRANSITIONS = Counter(
    f"{PREFIX}_message_transitions_total",
    "Message status changes made by this process, by new status.",
    ["service", "status"],
)
RETRIES = Counter(
    f"{PREFIX}_dispatcher_retries_total",
    "Messages sent to a retry tier, by tier.",
    ["tier"],
)
DLQ_RECORDS = Counter(
    f"{PREFIX}_dispatcher_dlq_records_total",
    "Messages that failed permanently and went to the dead-letter topic.",
)
LEASE_GIVEN_BACK = Counter(
    f"{PREFIX}_dispatcher_lease_given_back_total",
    "Messages given back unsent because their sending lease was nearly spent.",
)
OUTCOMES_HELD = Gauge(
    f"{PREFIX}_dispatcher_outcomes_held",
    "Outcomes of requests already made, waiting to be written while PostgreSQL is down.",
)
BREAKER_STATE = Gauge(
    f"{PREFIX}_dispatcher_breaker_state_info",
    "Gateway circuit breaker: 0 closed, 1 half-open, 2 open.",
)
BREAKER_OPENINGS = Counter(
    f"{PREFIX}_dispatcher_breaker_openings_total",
    "Times the gateway circuit breaker opened.",
)
CONSUMER_LAG = Gauge(
    f"{PREFIX}_consumer_lag_messages",
    "Records not yet processed in each partition assigned to this process's consumers: "
    "end offset minus the group's committed offset.",
    ["service", "topic", "partition"],
)
REPORTER_STATUS = Gauge(
    f"{PREFIX}_reporter_status_messages",
    "Messages currently in each status, all mailings (the reporter's counters).",
    ["status"],
)
MAILING_STATUS = Gauge(
    f"{PREFIX}_mailing_status_messages",
    "Messages of one mailing in each status, for mailings active in the last 24 hours "
    "(the one id label: bounded by the number of recent mailings).",
    ["mailing_id", "status"],
)
MAILINGS = Gauge(
    f"{PREFIX}_mailings",
    "Mailings in each state (scheduled, running, paused, cancelled, finished).",
    ["state"],
)
REPORTER_COUNTER_DRIFT = Gauge(
    f"{PREFIX}_reporter_counter_drift_messages",
    "Drift the last reconciliation found, summed over active mailings: COUNT(*) minus "
    "events in flight minus the counter (0 when the counters are exact).",
    ["status"],
)
REPORTER_COUNTER_CORRECTIONS = Counter(
    f"{PREFIX}_reporter_counter_corrections_total",
    "Per-mailing counters the reconciliation corrected, by status.",
    ["status"],
)
REPORTS = Counter(
    f"{PREFIX}_reporter_reports_total",
    "Report emails the SMTP server accepted or did not take, by kind (daily, on_request).",
    ["kind", "outcome"],
)
CONSUMER_HANDLER_FAILURES = Counter(
    f"{PREFIX}_consumer_handler_failures_total",
    "Kafka handler attempts that failed; their records were not committed and are retried.",
    ["service", "topic"],
)
CONSUMER_FAILING = Gauge(
    f"{PREFIX}_consumer_failing_info",
    "1 while a Kafka consumer's handler keeps failing (retrying with backoff), else 0.",
    ["service", "topic"],
)
