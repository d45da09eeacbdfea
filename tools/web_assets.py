"""The AsyncAPI renderer's browser files, fetched once from npm and kept in the package.

Every service's ``/asyncapi`` page renders its document with the standalone bundle of
``@asyncapi/react-component`` (the renderer FastStream's page uses), served by the
service itself (``shared/docs_pages.py``) rather than from a public CDN. No PyPI package
ships that bundle, so it is taken from the npm package's tarball, at install and build
time, never at run time:

* the tarball (pinned version, checked against the registry's sha512 integrity) is
  downloaded once into ``cache_dir()/npm`` (``$NOTIFICATIONS_CACHE``, default
  ``~/.cache/notifications``), like the Kafka jars; ``$NPM_REGISTRY`` names a mirror;
* the bundle, its stylesheet and their licences are unpacked into
  ``shared/static/asyncapi/`` (not in git; package data of ``shared``), with a
  ``VERSION`` file; a run that finds that version there does nothing.

``make venv`` runs it (so ``make dev``, ``make test`` and CI have the files) and so does
the Dockerfile, before ``pip install .``. Swagger UI and ReDoc come from the PyPI package
``fastapi-offline`` instead (a dependency), nothing to fetch.

Command line::

    python -m tools.web_assets            # fetch (once) and unpack; print where
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tarfile
from typing import TYPE_CHECKING

import httpx

from shared.docs_pages import ASYNCAPI_ASSETS, ASYNCAPI_FILES
from tools.infra import InfraError, cache_dir

if TYPE_CHECKING:
    from pathlib import Path

log = logging.getLogger("tools.web_assets")

PACKAGE = "@asyncapi/react-component"
VERSION = "3.2.1"
# The registry's `dist.integrity` of that version's tarball.
INTEGRITY = (
    "sha512-"
    "k5ZqJd6+oxYaQ2o6F3rGWJ1MTIjXdpsUYB3NKQbVqr4yzrN0Ovj5c7eZx8NGd3wfKPhbOrLREtYl9K2OPfnSsA=="
)
DEFAULT_REGISTRY = "https://registry.npmjs.org"
# Member of the tarball -> file name under shared/static/asyncapi/.
MEMBERS = {
    "package/browser/standalone/index.js": ASYNCAPI_FILES["js"],
    "package/browser/standalone/index.js.LICENSE.txt": ASYNCAPI_FILES["js"] + ".LICENSE.txt",
    "package/styles/default.min.css": ASYNCAPI_FILES["css"],
    "package/LICENSE": "LICENSE",
}


def tarball_url(registry: str | None = None) -> str:
    base = (registry or os.environ.get("NPM_REGISTRY") or DEFAULT_REGISTRY).rstrip("/")
    name = PACKAGE.split("/")[-1]
    return f"{base}/{PACKAGE}/-/{name}-{VERSION}.tgz"


def integrity_of(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _stamp() -> str:
    return f"{PACKAGE}@{VERSION} {INTEGRITY}\n"


def is_installed(target: Path = ASYNCAPI_ASSETS) -> bool:
    stamp = target / "VERSION"
    return (
        stamp.is_file()
        and stamp.read_text() == _stamp()
        and all((target / name).is_file() for name in MEMBERS.values())
    )


def fetch_tarball() -> Path:
    """The pinned tarball from the cache, downloaded first when missing or damaged."""
    home = cache_dir() / "npm"
    home.mkdir(parents=True, exist_ok=True)
    tarball = home / f"asyncapi-react-component-{VERSION}.tgz"
    if tarball.is_file() and integrity_of(tarball.read_bytes()) == INTEGRITY:
        return tarball
    url = tarball_url()
    log.info("fetching %s@%s from the npm registry (first run only)", PACKAGE, VERSION)
    try:
        response = httpx.get(url, follow_redirects=True, timeout=120)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise InfraError(
            f"could not download {PACKAGE}@{VERSION} ({url}): {exc}. Set NPM_REGISTRY to a "
            f"reachable npm registry, or put that tarball at {tarball}"
        ) from exc
    found = integrity_of(response.content)
    if found != INTEGRITY:
        raise InfraError(f"{url}: integrity {found}, expected {INTEGRITY}: not installed")
    partial = tarball.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(response.content)
    partial.replace(tarball)
    return tarball


def install(target: Path = ASYNCAPI_ASSETS) -> Path:
    """Unpack the renderer's files into `target` unless that version is there already."""
    if is_installed(target):
        return target
    home = cache_dir() / "npm"
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:  # parallel `make venv`: one download
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(target):
            return target
        tarball = fetch_tarball()
        staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with tarfile.open(tarball, "r:gz") as archive:
            for member, name in MEMBERS.items():
                source = archive.extractfile(member)
                if source is None:
                    raise InfraError(f"{tarball}: no file {member}")
                (staging / name).write_bytes(source.read())
        (staging / "VERSION").write_text(_stamp())
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    log.info("%s@%s unpacked into %s", PACKAGE, VERSION, target)
    return target


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        target = install()
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{PACKAGE}@{VERSION}: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
