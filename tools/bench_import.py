"""`make bench-import`: bulk import time and the API process's peak RSS at two sizes.

Writes CSV files of N/10 and N clients (unique telephones, two tags, a few zones),
starts the API as its own process for each (a fresh process: its peak RSS is that
import's), uploads the file streamed as the CLI does, and prints rows, seconds, rows
per second and the API's peak RSS, and that peak as it stood when the answer came (after
it, the outbox relay publishes the import's `clients.imported` events, a batch of up to
500 rows at a time). The RSS should be flat in the file size: the import streams the
body into PostgreSQL with COPY and merges it there. Asserts nothing.

Needs DATABASE_URL and KAFKA_BOOTSTRAP (run it under `python -m tools.infra run`).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from tools.api_process import api_process
from tools.bench.sampling import Sampler

if TYPE_CHECKING:
    from collections.abc import Iterator

ZONES = ["Europe/Moscow", "UTC", "Asia/Yekaterinburg", "Asia/Vladivostok"]


def write_file(path: Path, rows: int, base: int) -> int:
    with path.open("w", encoding="utf-8") as file:
        file.write("telephone,tag,timezone\n")
        for i in range(rows):
            tags = "bench|bench-even" if i % 2 == 0 else "bench"
            file.write(f"7{base + i:010d},{tags},{ZONES[i % len(ZONES)]}\n")
    return path.stat().st_size


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(256 * 1024):
            yield chunk


def run_one(path: Path, rows: int) -> tuple[float, float, dict[str, object]]:
    """(seconds, API peak RSS MB, the answer) of importing `path` into a fresh API."""
    sampler = Sampler(interval_s=0.1)
    try:
        with api_process(timeout=httpx.Timeout(30.0, read=1800.0)) as (client, api):
            sampler.watch("api", api.pid)
            sampler.start()
            time.sleep(0.3)
            idle_mb = sampler.peaks_mb().get("api", 0.0)
            started = time.perf_counter()
            response = client.post(
                "/api/v1/clients/import/",
                content=_chunks(path),
                headers={"Content-Type": "text/csv", "Content-Length": str(path.stat().st_size)},
            )
            seconds = time.perf_counter() - started
            answered_mb = sampler.peaks_mb().get("api", 0.0)
            response.raise_for_status()
            time.sleep(0.3)  # the outbox relay publishes the import's events meanwhile
            answer = dict(response.json())
            answer["idle_mb"] = idle_mb
            answer["answered_mb"] = answered_mb
            answer.pop("rejected", None)
    finally:
        sampler.stop()
    return seconds, sampler.peaks_mb().get("api", 0.0), answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="the larger file's rows")
    args = parser.parse_args()
    sizes = sorted({max(1, args.rows // 10), args.rows})
    base = random.randrange(0, 10**10 - 2 * sum(sizes))
    print(f"{'rows':>9} {'file MB':>8} {'seconds':>8} {'rows/s':>9} {'API RSS MB':>11} result")
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        for rows in sizes:
            path = Path(folder) / f"clients-{rows}.csv"
            size = write_file(path, rows, base)
            base += rows
            seconds, peak_mb, answer = run_one(path, rows)
            idle = answer.pop("idle_mb")
            answered = answer.pop("answered_mb")
            print(
                f"{rows:>9} {size / 2**20:>8.1f} {seconds:>8.1f} {rows / seconds:>9.0f} "
                f"{peak_mb:>11.0f} {answer} (idle API {idle:.0f} MB, "
                f"{answered:.0f} MB until the answer)",
                flush=True,
            )
            path.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
