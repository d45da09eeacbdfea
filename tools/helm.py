"""Helm for the chart's tests: `helm` on PATH, else built once from its Go module.

The build is `go install helm.sh/helm/v3/cmd/helm@<HELM_VERSION>` into
``cache_dir()/helm-<version>/bin`` (a few minutes on two cores the first time; the Go
toolchain must be installed). Like the Kafka jars, it is kept between runs and marked
complete only after a full build. `python -m tools.helm` prints the path (building it
if need be).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tools.infra.base import InfraError, cache_dir, fetch_once, log

#: The Helm release the chart is checked with (override: env HELM_VERSION).
HELM_VERSION = os.environ.get("HELM_VERSION", "v3.22.0")
HELM_PACKAGE = "helm.sh/helm/v3/cmd/helm"


def helm_home(version: str = HELM_VERSION) -> Path:
    return cache_dir() / f"helm-{version}"


def helm_version(helm: str | Path) -> str | None:
    """`helm version`'s semantic version (v3.22.0), or None when it does not answer."""
    try:
        result = subprocess.run(
            [str(helm), "version", "--template", "{{.Version}}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.fullmatch(r"\s*(v\d+\.\d+\S*)\s*", result.stdout)
    return match.group(1) if result.returncode == 0 and match else None


def on_path() -> Path | None:
    """A Helm 3 on PATH (the chart is `apiVersion: v2`, linted by Helm 3)."""
    found = shutil.which("helm")
    if found is None:
        return None
    version = helm_version(found)
    return Path(found) if version is not None and version.startswith("v3.") else None


def build_helm(version: str = HELM_VERSION) -> Path:
    """The cached Helm `version`, built with `go install` the first time."""
    home = helm_home(version)
    binary = home / "bin" / "helm"

    def build() -> str:
        go = shutil.which("go") or (
            "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
        )
        if go is None:
            raise InfraError(
                f"helm is not on PATH and Go is not installed to build it: install Go, or "
                f"put a Helm 3 on PATH, or its binary at {binary} and create {home}/helm.complete"
            )
        staging = home / f"bin.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        env = {**os.environ, "GOBIN": str(staging), "GOFLAGS": "-mod=mod"}
        log.info("building helm %s with `go install` into %s (first run only)", version, binary)
        started = time.monotonic()
        # `go install` leaves Helm's version at its minor (v3.22): stamp the full one, as
        # Helm's own release build does.
        stamp = f"-X helm.sh/helm/v3/internal/version.version={version}"
        result = subprocess.run(
            [go, "install", "-ldflags", stamp, f"{HELM_PACKAGE}@{version}"],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if result.returncode != 0 or not (staging / "helm").exists():
            shutil.rmtree(staging, ignore_errors=True)
            raise InfraError(
                f"go install {HELM_PACKAGE}@{version} failed:\n{result.stderr[-3000:]}"
            )
        shutil.rmtree(binary.parent, ignore_errors=True)
        staging.rename(binary.parent)
        built = helm_version(binary)
        if built != version:
            raise InfraError(f"{binary} says it is {built!r}, expected {version}")
        log.info("helm %s built in %.0f s", version, time.monotonic() - started)
        return f"{version}\n"

    return fetch_once(home, binary, home / "helm.complete", build)


def find_helm() -> Path:
    """Helm 3 from PATH, else the cached build of HELM_VERSION."""
    return on_path() or build_helm()


def main() -> int:
    try:
        helm = find_helm()
    except InfraError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{helm} ({helm_version(helm)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
