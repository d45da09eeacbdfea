"""The bench's report and its process sampler, without the pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tools.bench.report import Results, percentile, render
from tools.bench.sampling import OTHER, Sampler


def test_percentile_takes_the_nearest_rank() -> None:
    ordered = [float(value) for value in range(1, 101)]
    assert percentile(ordered, 0.50) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_render_prints_every_figure() -> None:
    results = Results(
        clients=2000,
        dispatchers=1,
        log_level="INFO",
        load_s=0.2,
        expansion_s=0.65,
        expansion_scheduler_s=0.12,
        completed=True,
        unique_accepted=2000,
        requests=2000,
        accepted=2000,
        end_to_end_s=7.1,
        throughput_per_s=282.0,
        wall_s=7.4,
        latency_p50_s=4.2,
        latency_p99_s=6.8,
        latency_max_s=6.8,
        latency_samples=2000,
        peak_rss_mb={"api": 104.0, "postgres": 341.0},
        peak_pss_mb={"postgres": 65.0},
        cpu_s={"api": 0.2, "postgres": 0.9, "bench": 0.2, OTHER: 7.4},
        busy_cores=2.0,
        cores=2,
    )
    text = render(results)
    assert "end to end                    7.1 s  -> 282 msg/s  (wall 7.4 s)" in text
    assert "peak RSS (MB)                 api 104  postgres 341" in text
    assert "CPU ms per message            0.55 in all:  api 0.10  postgres 0.45" in text
    assert "sandbox ceiling (alone)       not measured" in text
    assert "FAILED" not in text


def test_sampler_measures_its_own_process() -> None:
    sampler = Sampler()
    sampler.watch("bench", os.getpid())
    sampler.sample()
    sum(value * value for value in range(200_000))  # some CPU between the samples
    sampler.sample()
    assert sampler.peaks_mb()["bench"] > 1
    assert set(sampler.cpu_seconds()) == {"bench", OTHER}
    assert sampler.cpu_totals()["bench"] > 0
    load = sampler.machine_load()
    assert load is not None
    assert load[1] > 0


def test_a_watched_child_is_counted_under_its_own_name_not_its_parents() -> None:
    """The bench's own PostgreSQL backend (`bench-sql`) is a child of the postmaster:
    watched on its own, its CPU leaves the `postgres` figure."""
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    child = subprocess.Popen([sys.executable, "-c", busy + "time.sleep(30)"])
    try:
        time.sleep(1.5)  # the child's 0.3 s of CPU are spent
        alone = Sampler()
        alone.watch("parent", os.getpid())
        alone.sample()
        apart = Sampler()
        apart.watch("parent", os.getpid())
        apart.watch("child", child.pid)
        apart.sample()
        assert alone.cpu_totals()["parent"] >= 0.25  # the child's CPU, in its parent's tree
        assert apart.cpu_totals()["child"] >= 0.25
        assert apart.cpu_totals()["parent"] <= alone.cpu_totals()["parent"] - 0.25
    finally:
        child.kill()
        child.wait()
