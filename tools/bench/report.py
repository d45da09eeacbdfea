"""The bench's results and the table `make bench` prints."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

from tools.bench.figures import cpu_ms_per_message, figures
from tools.bench.sampling import OTHER

LABEL = 30  # width of the report's first column


@dataclasses.dataclass
class Progress:
    elapsed_s: float
    accepted: int
    rate_per_s: float
    statuses: dict[str, int]
    outbox_unpublished: int
    cpu_percent: dict[str, float]


@dataclasses.dataclass
class Results:
    clients: int
    dispatchers: int
    log_level: str
    postgres: str | None = None  # "durable (fsync=on, ...)": the live settings
    postgres_settings: dict[str, str] = dataclasses.field(default_factory=dict)
    load_s: float | None = None
    mailing_id: int | None = None
    messages_created: int | None = None
    expansion_s: float | None = None
    expansion_scheduler_s: float | None = None
    expansion_activated_s: float | None = None  # mailing.activated_at - t0
    completed: bool = False
    unique_accepted: int = 0
    requests: int = 0
    accepted: int = 0
    duplicate_count: int = 0
    duplicate_deliveries: int = 0
    end_to_end_s: float | None = None
    throughput_per_s: float | None = None
    wall_s: float | None = None
    first_message_s: float | None = None  # t0 to the first arrival at the gateway
    first_10s_per_s: float | None = None
    first_window_s: float | None = None  # 10, or the whole run when it was shorter
    first_10s_ratio: float | None = None  # first_10s_per_s / throughput_per_s
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    latency_max_s: float | None = None
    latency_samples: int = 0
    timeline_bucket_s: float | None = None
    timeline_per_s: list[float] = dataclasses.field(default_factory=list)
    final_statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    peak_rss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    peak_pss_mb: dict[str, float] = dataclasses.field(default_factory=dict)
    cpu_s: dict[str, float] = dataclasses.field(default_factory=dict)
    wal_per_message: dict[str, float] = dataclasses.field(default_factory=dict)
    busy_cores: float | None = None  # the machine's average, all processes
    cores: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    ceiling: dict[str, Any] | None = None
    ceiling_share: float | None = None
    progress: list[Progress] = dataclasses.field(default_factory=list)
    failure: str | None = None


def percentile(ordered: list[float], share: float) -> float:
    index = min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))
    return ordered[index]


def _seconds(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} s"


def _row(label: str, value: str) -> str:
    return f"{label:<{LABEL}}{value}"


def per_process(values: dict[str, float], digits: int = 0) -> str:
    return "  ".join(f"{name} {value:.{digits}f}" for name, value in values.items()) or "n/a"


def render(results: Results) -> str:
    r = results
    lines = ["", "=" * 78]
    dispatchers = f"{r.dispatchers} dispatcher" + ("s" if r.dispatchers != 1 else "")
    lines.append(_row("clients", f"{r.clients}   ({dispatchers}, LOG_LEVEL {r.log_level})"))
    lines.append(_row("PostgreSQL", r.postgres or "n/a"))
    lines.append(_row("client load (not a target)", _seconds(r.load_s, 1)))
    expansion = f"{_seconds(r.expansion_s)} (scheduler: {_seconds(r.expansion_scheduler_s)}"
    if r.expansion_activated_s is not None:
        expansion += f"; activated_at: t0 + {r.expansion_activated_s:.2f} s"
    if r.messages_created is not None and r.messages_created != r.clients:
        expansion += f"; {r.messages_created} messages"
    lines.append(_row("audience expansion", expansion + ")"))
    if r.end_to_end_s is not None and r.throughput_per_s is not None:
        wall = _seconds(r.wall_s, 1)
        end_to_end = f"{r.end_to_end_s:.1f} s  -> {r.throughput_per_s:.0f} msg/s  (wall {wall})"
    else:
        end_to_end = "n/a"
    if not r.completed:
        end_to_end += f"  INCOMPLETE: {r.unique_accepted}/{r.clients} accepted"
    lines.append(_row("end to end", end_to_end))
    if r.first_10s_per_s is not None:
        window = f"{r.first_window_s or 0:.0f} s"
        ratio = f"{r.first_10s_ratio:.2f}" if r.first_10s_ratio is not None else "n/a"
        whole = f"{r.throughput_per_s:.0f}" if r.throughput_per_s is not None else "n/a"
        lines.append(
            _row(
                f"msg/s first {window} / whole run",
                f"{r.first_10s_per_s:.0f} / {whole}  (ratio {ratio})",
            )
        )
    lines.append(_row("first message at the gateway", "t0 + " + _seconds(r.first_message_s)))
    if r.timeline_per_s:
        width = r.timeline_bucket_s or 0
        rates = " ".join(f"{rate:.0f}" for rate in r.timeline_per_s)
        lines.append(_row(f"msg/s per {width:.0f} s from t0", rates))
    if r.latency_p50_s is not None:
        latency = (
            f"p50 {r.latency_p50_s:.1f} s  p99 {r.latency_p99_s or 0:.1f} s  "
            f"max {r.latency_max_s or 0:.1f} s  ({r.latency_samples} messages)"
        )
    else:
        latency = "n/a"
    lines.append(_row("due -> gateway latency", latency))
    duplicates = f"{r.duplicate_count}   (requests {r.requests}, accepted {r.accepted})"
    if r.duplicate_count:
        duplicates += f"  DUPLICATES: {r.duplicate_deliveries} extra deliveries"
    lines.append(_row("duplicates", duplicates))
    if r.final_statuses:
        statuses = "  ".join(f"{name} {count}" for name, count in r.final_statuses.items())
        lines.append(_row("messages by status (end)", statuses))
    lines.append(_row("peak RSS (MB)", per_process(r.peak_rss_mb)))
    if r.peak_pss_mb:
        lines.append(_row("peak PSS (MB, shared split)", per_process(r.peak_pss_mb)))
    lines.append(_row("CPU seconds (from t0)", per_process(r.cpu_s, 1)))
    # robust against a busy machine, unlike msg/s: what each message costs in CPU
    per_message = cpu_ms_per_message(r.cpu_s, r.unique_accepted)
    if per_message:
        total = sum(per_message.values())
        lines.append(
            _row("CPU ms per message", f"{total:.2f} in all:  {per_process(per_message, 2)}")
        )
    if r.wal_per_message:
        wal = r.wal_per_message
        lines.append(
            _row(
                "PostgreSQL WAL per message",
                f"{wal.get('bytes', 0):.0f} bytes, {wal.get('records', 0):.1f} records, "
                f"{wal.get('full_page_images', 0):.2f} full-page images",
            )
        )
    if r.busy_cores is not None:
        other = r.cpu_s.get(OTHER, 0.0)
        outside = other / max(sum(r.cpu_s.values()), 1e-9)
        lines.append(
            _row(
                "machine CPU busy",
                f"{r.busy_cores:.2f} of {r.cores} cores on average "
                f"({outside:.0%} of it outside the pipeline: '{OTHER}')",
            )
        )
    if r.ceiling is not None:
        share = f"{r.ceiling_share:.1%}" if r.ceiling_share is not None else "n/a"
        lines.append(
            _row(
                "sandbox ceiling (alone)",
                f"{r.ceiling['requests_per_s']:.0f} req/s  -> pipeline uses {share} of it",
            )
        )
    else:
        lines.append(_row("sandbox ceiling (alone)", "not measured"))
    if r.failure:
        lines.append(_row("FAILED", r.failure))
    lines.append("=" * 78)
    return "\n".join(lines)


def as_dict(results: Results) -> dict[str, Any]:
    """The results, and their headline figures under "figures" (see `figures`)."""
    data = dataclasses.asdict(results)
    data["figures"] = figures(data)
    return data


def write_json(path: str, results: Results) -> None:
    Path(path).write_text(json.dumps(as_dict(results), indent=2) + "\n")
