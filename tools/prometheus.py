"""A real Prometheus for tests: Debian's ``prometheus`` package, fetched once and cached.

The package is downloaded with ``apt-get download prometheus`` (no root needed: nothing
is installed) and unpacked with ``dpkg-deb -x``; its two binaries (``prometheus``,
``promtool``) are kept in ``cache_dir()/prometheus/bin`` (``$NOTIFICATIONS_CACHE``,
default ``~/.cache/notifications``), like the Kafka jars. Later runs reuse them.
``PROMETHEUS_BIN`` points at another binary instead (then ``promtool`` is looked for
next to it).

Library use::

    server = PrometheusServer(tmp / "prom", {"api": "127.0.0.1:8000"}, scrape_interval_s=1)
    server.start(); server.query("up"); server.stop()

Command line::

    python -m tools.prometheus fetch      # only download and cache the binaries
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

# The harness's process handling: own process group, a watchdog against orphans.
from tools.infra import (
    LOCALHOST,
    InfraError,
    Managed,
    ServerProcess,
    cache_dir,
    fetch_once,
    free_port,
    log_tail,
    wait_until,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

log = logging.getLogger("tools.prometheus")

PACKAGE = "prometheus"


def _home() -> Path:
    return cache_dir() / "prometheus"


def fetch_prometheus() -> Path:
    """The ``prometheus`` binary: PROMETHEUS_BIN, the cached one, or Debian's, fetched now.

    Safe to call from parallel processes (a file lock); a download is marked complete
    only once both binaries are in place, so an interrupted one is retried.
    """
    explicit = os.environ.get("PROMETHEUS_BIN")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise InfraError(f"PROMETHEUS_BIN={explicit}: no such file")
        return path
    home = _home()
    binary = home / "bin" / "prometheus"

    def download() -> str:
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise InfraError(
                    f"`{tool}` is needed once to fetch Debian's prometheus package; or set "
                    "PROMETHEUS_BIN to a Prometheus 2.x binary"
                )
        log.info("fetching Debian's %s package into %s (first run only)", PACKAGE, home)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=home, prefix="download-") as staging_dir:
            staging = Path(staging_dir)
            # apt warns that its sandbox user cannot write here: harmless, the file lands.
            _run(["apt-get", "download", PACKAGE], cwd=staging, what="apt-get download")
            debs = sorted(staging.glob(f"{PACKAGE}_*.deb"))
            if not debs:
                raise InfraError(f"apt-get download {PACKAGE} left no .deb in {staging}")
            _run(["dpkg-deb", "-x", str(debs[-1]), "root"], cwd=staging, what="dpkg-deb -x")
            bin_dir = home / "bin"
            shutil.rmtree(bin_dir, ignore_errors=True)
            bin_dir.mkdir()
            for name in ("prometheus", "promtool"):
                shutil.copy2(staging / "root" / "usr" / "bin" / name, bin_dir / name)
        log.info("%s cached (%.1fs)", version(binary) or debs[-1].name, time.monotonic() - started)
        return debs[-1].name + "\n"

    return fetch_once(home, binary, home / "bin.complete", download)


def promtool() -> Path:
    """``promtool`` from the same place as the ``prometheus`` binary."""
    path = fetch_prometheus().with_name("promtool")
    if not path.is_file():
        raise InfraError(f"no promtool next to {path.with_name('prometheus')}")
    return path


def _run(argv: Sequence[str], *, cwd: Path, what: str) -> None:
    result = subprocess.run(
        list(argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        hint = " (an `apt-get update` may be needed first)" if "apt-get" in argv[0] else ""
        raise InfraError(
            f"{what} failed (exit {result.returncode}){hint}:\n"
            f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )


def version(binary: Path) -> str | None:
    """'Prometheus 2.42.0+ds' from ``prometheus --version``, or None."""
    try:
        result = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (result.stdout or result.stderr).splitlines()[:1]
    if not first or "version" not in first[0]:
        return None
    return "Prometheus " + first[0].split("version", 1)[1].split()[0]


class PrometheusServer(Managed):
    """Prometheus scraping ``targets`` (job name -> host:port, path /metrics).

    Data and logs live in ``workdir``; the HTTP API listens on 127.0.0.1 on a free port.
    """

    def __init__(
        self,
        workdir: Path,
        targets: Mapping[str, str],
        *,
        scrape_interval_s: float = 1.0,
        port: int | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.targets = dict(targets)
        self.scrape_interval_s = scrape_interval_s
        self.port = port if port is not None else free_port()
        self._process: ServerProcess | None = None
        self._cancel = threading.Event()
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": job,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": [address]}],
                }
                for job, address in self.targets.items()
            ],
        }

    def start(self, timeout: float = 60.0) -> None:
        binary = fetch_prometheus()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=2) + "\n")  # JSON is YAML
        self._cancel.clear()
        self._process = ServerProcess(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={LOCALHOST}:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
            log_path=self.log_path,
            cwd=self.workdir,
        )
        self._process.launch()
        try:
            wait_until(
                "Prometheus",
                self._ready,
                self._process,
                time.monotonic() + timeout,
                self._cancel,
            )
        except InfraError as exc:
            self.stop()
            raise InfraError(
                f"Prometheus ({binary}) did not start on {self.url}: {exc}\n"
                f"--- {self.log_path} (tail)\n{log_tail(self.log_path)}"
            ) from None

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        self._cancel.set()
        http, self._http = self._http, None
        if http is not None:
            http.close()
        process, self._process = self._process, None
        if process is not None:
            process.stop(timeout)

    # --- the HTTP API ------------------------------------------------------------------

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        if self._http is None:
            self._http = httpx.Client(base_url=self.url, timeout=30)
        response = self._http.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise InfraError(f"Prometheus {path} {params}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query; the result vector (or [matrix]) as Prometheus returns it."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        result = data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": result}]
        return list(result)

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self._get(f"/api/v1/label/{label}/values", {"match[]": match}))

    def active_targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets")["activeTargets"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.prometheus", description="Debian's Prometheus for the tests."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="only download and cache the binaries")
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="prometheus: %(message)s", stream=sys.stderr)
    try:
        binary = fetch_prometheus()
    except InfraError as exc:
        log.error("error: %s", exc)
        return 69
    log.info("%s at %s", version(binary) or "Prometheus", binary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
