"""The run's headline figures as one flat mapping, and their comparison with a baseline.

Pure functions over the results as a dict (`dataclasses.asdict(Results)` or a previous
run's `--json` file), so a baseline written by an older version of the bench, which
lacks some figures, still compares on the ones it has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

EARLY_WINDOW_S = 10.0
PROBE = "bench-sql"  # the PostgreSQL backend of the bench's own queries
NOT_PIPELINE = ("bench", PROBE, "other")  # CPU the pipeline's figures leave out
LABEL = 34


def early_rate(
    arrivals: Iterable[float], t0: float, window_s: float = EARLY_WINDOW_S
) -> tuple[float, float] | None:
    """(messages per second, window) over the first `window_s` after `t0`.

    `arrivals` are epoch seconds of each message's first arrival at the gateway. A run
    that ended sooner is measured over its whole span (t0 to its last arrival), so a
    short run is not reported as a slow start. None without arrivals after t0.
    """
    times = [at for at in arrivals if at >= t0]
    if not times:
        return None
    window = min(window_s, max(times) - t0)
    if window <= 0:
        return None
    count = sum(1 for at in times if at - t0 <= window)
    return count / window, window


def timeline(arrivals: Iterable[float], t0: float, last: float) -> tuple[float, list[float]]:
    """(bucket width, messages per second in each bucket from `t0` to `last`): about 20
    buckets of a multiple of 5 s. A last bucket shorter than half the width is merged
    into the one before it, so a run's few final messages do not read as a slowdown."""
    span = max(last - t0, 1e-6)
    width = max(5.0, math.ceil(span / 20 / 5) * 5)
    counts = [0] * (int(span // width) + 1)
    for at in arrivals:
        counts[min(len(counts) - 1, max(0, int((at - t0) // width)))] += 1
    widths = [width] * (len(counts) - 1) + [span - width * (len(counts) - 1)]
    if len(counts) > 1 and widths[-1] < width / 2:
        counts[-2] += counts.pop()
        widths[-2] += widths.pop()
    return width, [round(count / max(w, 1.0), 1) for count, w in zip(counts, widths, strict=True)]


def cpu_ms_per_message(cpu_s: Mapping[str, float], delivered: int) -> dict[str, float]:
    """CPU milliseconds per delivered message of each pipeline process ({} if none)."""
    if delivered <= 0:
        return {}
    return {
        name: 1000.0 * seconds / delivered
        for name, seconds in cpu_s.items()
        if name not in NOT_PIPELINE
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def figures(data: Mapping[str, Any]) -> dict[str, float]:
    """The figures worth comparing between runs, by name; missing ones are left out."""
    out: dict[str, float] = {}
    scalars = (
        ("msg/s (whole run)", "throughput_per_s"),
        ("msg/s (first 10 s)", "first_10s_per_s"),
        ("first 10 s / whole run", "first_10s_ratio"),
        ("first message at gateway (s)", "first_message_s"),
        ("end to end (s)", "end_to_end_s"),
        ("audience expansion (s)", "expansion_s"),
        ("latency p50 (s)", "latency_p50_s"),
        ("latency p99 (s)", "latency_p99_s"),
    )
    for name, key in scalars:
        value = _number(data.get(key))
        if value is not None:
            out[name] = value
    cpu = {k: v for k, v in (data.get("cpu_s") or {}).items() if _number(v) is not None}
    per_message = cpu_ms_per_message(cpu, int(data.get("unique_accepted") or 0))
    if per_message:
        out["CPU ms/msg (all)"] = sum(per_message.values())
        for process, value in per_message.items():
            out[f"CPU ms/msg {process}"] = value
    wal = data.get("wal_per_message") or {}
    for name, key in (("WAL bytes/msg", "bytes"), ("WAL full-page images/msg", "full_page_images")):
        value = _number(wal.get(key))
        if value is not None:
            out[name] = value
    for process, value in (data.get("peak_rss_mb") or {}).items():
        if _number(value) is not None:
            out[f"peak RSS MB {process}"] = float(value)
    return out


def compare(
    current: Mapping[str, float], baseline: Mapping[str, float]
) -> list[tuple[str, float | None, float | None, float | None]]:
    """(name, this run, baseline, this / baseline) for every figure either has, this
    run's order first; the ratio is None when a side is missing or the baseline is 0."""
    names = list(current) + [name for name in baseline if name not in current]
    rows = []
    for name in names:
        now, before = current.get(name), baseline.get(name)
        ratio = now / before if now is not None and before else None
        rows.append((name, now, before, ratio))
    return rows


def _cell(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.2f}"


def render_comparison(
    rows: Iterable[tuple[str, float | None, float | None, float | None]],
    baseline_label: str,
) -> str:
    lines = [f"against the baseline {baseline_label}", ""]
    lines.append(f"{'figure':<{LABEL}}{'this run':>10}{'baseline':>10}{'ratio':>8}")
    for name, now, before, ratio in rows:
        shown = "n/a" if ratio is None else f"{ratio:.2f}"
        lines.append(f"{name:<{LABEL}}{_cell(now):>10}{_cell(before):>10}{shown:>8}")
    return "\n".join(lines)


def load(path: str) -> dict[str, Any]:
    """A previous run's `--json` file."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a bench results object")
    return data
