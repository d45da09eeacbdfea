"""The command line: `python -m tools.bench`, its options, its exit code."""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import TYPE_CHECKING, Any

import tools.bench
from tools.bench import figures
from tools.bench.pipeline import Bench, BenchError, say
from tools.bench.report import as_dict, render, write_json

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable


def baseline_report(path: str, current: dict[str, Any]) -> str:
    """This run's figures next to those of the `--json` file at `path`."""
    try:
        baseline = figures.load(path)
    except (OSError, ValueError) as exc:
        return f"bench: baseline {path} not read: {exc}"
    label = f"{path} (PostgreSQL {baseline.get('postgres') or 'settings not recorded'})"
    rows = figures.compare(figures.figures(current), figures.figures(baseline))
    return figures.render_comparison(rows, label)


async def amain(args: argparse.Namespace) -> int:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    bench = Bench(args)
    code = 1
    try:
        code = await bench.run()
    except BenchError as exc:
        bench.results.failure = str(exc).splitlines()[0]
        say(f"bench: error: {exc}")
    except asyncio.CancelledError:
        bench.results.failure = "interrupted"
        raise
    finally:
        failed = code != 0
        bench.cleanup(keep_workdir=failed)
        say(render(bench.results))
        if args.baseline:
            say(baseline_report(args.baseline, as_dict(bench.results)))
        if args.json:
            write_json(args.json, bench.results)
            say(f"bench: results written to {args.json}")
    return code


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench", description=(tools.bench.__doc__ or "").splitlines()[0]
    )
    parser.add_argument("--clients", type=int, default=100_000, help="audience size (100000)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds from the POST until all sent (600)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    parser.add_argument(
        "--baseline",
        metavar="PATH",
        help="a previous run's --json: print each figure next to it, with the ratio",
    )
    parser.add_argument(
        "--fast-postgres",
        action="store_true",
        help="PostgreSQL with fsync, synchronous_commit and full_page_writes off, as the "
        "tests run it (default: PostgreSQL's durable defaults)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and the logs")
    parser.add_argument("--dispatchers", type=int, default=1, help="dispatcher processes (1)")
    args = parser.parse_args(None if argv is None else list(argv))
    if args.clients < 1 or args.clients > 999_999_999:
        parser.error("--clients must be between 1 and 999999999")
    if args.dispatchers < 1:
        parser.error("--dispatchers must be at least 1")
    if args.baseline:
        try:  # before a long run, not after it
            figures.load(args.baseline)
        except (OSError, ValueError) as exc:
            parser.error(f"--baseline {args.baseline}: {exc}")
    return args


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(amain(args))
    except KeyboardInterrupt:
        say("bench: interrupted")
        return 130
    except asyncio.CancelledError:
        say("bench: stopped by SIGTERM")
        return 143
