"""The bench's headline figures: the early rate, CPU per message, the JSON file and the
comparison with a baseline; and the PostgreSQL durability it reports."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from tools.bench.cli import baseline_report, parse_args
from tools.bench.figures import (
    compare,
    cpu_ms_per_message,
    early_rate,
    figures,
    load,
    render_comparison,
    timeline,
)
from tools.bench.report import Results, as_dict, render, write_json
from tools.infra.postgres import PostgresServer, durability_label

if TYPE_CHECKING:
    from pathlib import Path

T0 = 1_000_000.0


def test_early_rate_of_a_steady_run_matches_the_whole_run() -> None:
    arrivals = [T0 + 0.5 + i * 0.01 for i in range(3000)]  # 100 msg/s for 30 s
    rate, window = early_rate(arrivals, T0) or (0.0, 0.0)
    assert window == 10.0
    assert rate == pytest.approx(95.0, abs=1.0)  # the first 0.5 s sent nothing


def test_early_rate_shows_a_slow_start() -> None:
    slow = [T0 + 1 + i * 0.1 for i in range(90)]  # 10 msg/s until t0 + 10
    fast = [T0 + 10 + i * 0.001 for i in range(10_000)]  # then 1000 msg/s
    rate, window = early_rate(slow + fast, T0) or (0.0, 0.0)
    assert window == 10.0
    assert rate == pytest.approx(9.1, abs=0.2)  # 90 messages, and the one at t0 + 10


def test_early_rate_of_a_run_shorter_than_the_window_uses_its_span() -> None:
    rate, window = early_rate([T0 + 1, T0 + 2, T0 + 4], T0) or (0.0, 0.0)
    assert window == 4.0
    assert rate == 0.75


def test_early_rate_ignores_arrivals_before_t0_and_needs_some() -> None:
    assert early_rate([], T0) is None
    assert early_rate([T0 - 5], T0) is None
    assert early_rate([T0 - 5, T0 + 2], T0) == (0.5, 2.0)


def test_cpu_per_message_leaves_out_the_bench_its_queries_and_other_processes() -> None:
    cpu = {"dispatcher": 2.0, "postgres": 1.0, "bench": 5.0, "bench-sql": 0.5, "other": 9.0}
    assert cpu_ms_per_message(cpu, 1000) == {"dispatcher": 2.0, "postgres": 1.0}
    assert cpu_ms_per_message(cpu, 0) == {}


def _results(**changes: object) -> Results:
    base = Results(
        clients=1000,
        dispatchers=1,
        log_level="INFO",
        postgres="durable (fsync=on, synchronous_commit=on, full_page_writes=on)",
        postgres_settings={"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"},
        completed=True,
        unique_accepted=1000,
        end_to_end_s=4.0,
        throughput_per_s=250.0,
        first_message_s=0.4,
        first_10s_per_s=250.0,
        first_window_s=4.0,
        first_10s_ratio=1.0,
        expansion_s=0.3,
        cpu_s={"dispatcher": 1.0, "postgres": 0.5, "bench": 0.1, "other": 3.0},
        peak_rss_mb={"dispatcher": 80.0},
        wal_per_message={"bytes": 2500.0, "records": 12.0, "full_page_images": 0.25},
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_figures_name_the_headline_numbers() -> None:
    found = figures(dataclasses.asdict(_results()))
    assert found["msg/s (whole run)"] == 250.0
    assert found["msg/s (first 10 s)"] == 250.0
    assert found["first 10 s / whole run"] == 1.0
    assert found["first message at gateway (s)"] == 0.4
    assert found["CPU ms/msg (all)"] == pytest.approx(1.5)
    assert found["CPU ms/msg dispatcher"] == pytest.approx(1.0)
    assert found["peak RSS MB dispatcher"] == 80.0
    assert found["WAL bytes/msg"] == 2500.0
    assert found["WAL full-page images/msg"] == 0.25
    assert "CPU ms/msg bench" not in found


def test_figures_of_an_older_file_keep_what_it_has() -> None:
    old = {"throughput_per_s": 800, "unique_accepted": 0, "first_10s_per_s": None}
    assert figures(old) == {"msg/s (whole run)": 800.0}


def test_compare_gives_this_over_baseline_and_keeps_one_sided_figures() -> None:
    rows = compare({"a": 2.0, "b": 1.0, "z": 3.0}, {"a": 4.0, "b": 0.0, "c": 5.0})
    assert rows == [
        ("a", 2.0, 4.0, 0.5),
        ("b", 1.0, 0.0, None),
        ("z", 3.0, None, None),
        ("c", None, 5.0, None),
    ]
    text = render_comparison(rows, "old.json")
    assert text.splitlines()[0] == "against the baseline old.json"
    assert _cells(text, "a") == ["2.00", "4.00", "0.50"]
    assert _cells(text, "c") == ["n/a", "5.00", "n/a"]


def _cells(text: str, name: str) -> list[str]:
    """This run, baseline and ratio of the comparison's row `name`."""
    row = next(line for line in text.splitlines() if line.startswith(name + " "))
    return row[len(name) :].split()


def test_the_json_file_round_trips_as_a_baseline(tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    write_json(str(path), _results())
    data = load(str(path))
    assert data["postgres_settings"]["fsync"] == "on"
    assert data["figures"] == figures(data)
    faster = as_dict(_results(throughput_per_s=500.0, first_10s_per_s=400.0))
    report = baseline_report(str(path), faster)
    assert "(PostgreSQL durable (fsync=on" in report.splitlines()[0]
    assert _cells(report, "msg/s (whole run)") == ["500", "250", "2.00"]
    assert _cells(report, "msg/s (first 10 s)") == ["400", "250", "1.60"]


def test_a_missing_baseline_is_refused_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--baseline", str(tmp_path / "nope.json")])
    assert parse_args([]).fast_postgres is False
    assert parse_args(["--fast-postgres"]).fast_postgres is True


def test_render_prints_the_postgres_settings_and_the_start() -> None:
    text = render(_results())
    assert (
        "PostgreSQL                    durable (fsync=on, synchronous_commit=on, "
        "full_page_writes=on)" in text
    )
    assert "msg/s first 4 s / whole run   250 / 250  (ratio 1.00)" in text
    assert "first message at the gateway  t0 + 0.40 s" in text
    assert "PostgreSQL WAL per message    2500 bytes, 12.0 records, 0.25 full-page images" in text


def test_durability_label_names_the_mode_and_the_values() -> None:
    on = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    off = dict.fromkeys(on, "off")
    assert durability_label(on) == (
        "durable (fsync=on, synchronous_commit=on, full_page_writes=on)"
    )
    assert durability_label(off).startswith("fast (fsync=off, ")
    assert durability_label({**on, "synchronous_commit": "off"}).startswith("mixed (")


def test_postgres_is_fast_for_the_tests_and_durable_when_asked(tmp_path: Path) -> None:
    fast = PostgresServer(tmp_path / "a")._durability_args()
    assert fast == [
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
    ]
    assert PostgresServer(tmp_path / "b", durable=True)._durability_args() == []


def test_timeline_counts_every_arrival_in_buckets_of_five_seconds() -> None:
    arrivals = [T0 + 0.5 * i for i in range(40)]  # 2 per second for 20 s
    width, rates = timeline(arrivals, T0, max(arrivals))
    assert width == 5.0
    assert rates == [2.0, 2.0, 2.0, 2.2]  # the last bucket: 10 over 4.5 s (15 to 19.5)


def test_a_short_last_bucket_joins_the_one_before_it() -> None:
    arrivals = [T0 + 0.1 * i for i in range(101)]  # 10 per second, the last at t0 + 10 s
    arrivals.append(T0 + 10.2)
    width, rates = timeline(arrivals, T0, max(arrivals))
    assert width == 5.0
    # 0-5 s: 50; 5-10.2 s: 52 over 5.2 s, not a last bucket of 2 over 0.2 s read as 2/s
    assert rates == [10.0, 10.0]
