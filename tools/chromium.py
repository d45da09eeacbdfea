"""The browser of the browser tests: Debian's Chromium, never a browser download.

The tests drive it with Playwright for Python (``executable_path``); Playwright's own
browser builds are never fetched (no ``playwright install``). Where it is looked for:

* ``$CHROMIUM`` when set (a path to a Chromium or Chrome binary);
* ``/usr/bin/chromium``, then ``chromium`` on PATH.

When none is there and this process is root with ``apt-get``, Debian's ``chromium``
package is installed (``apt-get install -y chromium``, after ``apt-get update`` if the
package lists do not know it). Otherwise :class:`InfraError` says what to install.

Command line::

    python -m tools.chromium          # find (or install) it; print its path and version
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools.infra import InfraError, cache_dir

log = logging.getLogger("tools.chromium")

DEBIAN_PATH = Path("/usr/bin/chromium")
PACKAGE = "chromium"


def find_chromium() -> Path | None:
    """The Chromium binary already on this machine, or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise InfraError(f"CHROMIUM={explicit}: not an executable file")
        return path
    if DEBIAN_PATH.is_file():
        return DEBIAN_PATH
    found = shutil.which("chromium")
    return Path(found) if found else None


def _apt_install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", PACKAGE]
    log.warning("Chromium is missing: %s", " ".join(command))
    if subprocess.run(command, env=env, check=False).returncode == 0:
        return
    # A fresh image has no package lists: fetch them once and try again.
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    result = subprocess.run(command, env=env, check=False)
    if result.returncode != 0:
        raise InfraError(f"`{' '.join(command)}` failed (exit {result.returncode})")


def ensure_chromium() -> Path:
    """Chromium's path, installing Debian's package first when missing and allowed."""
    found = find_chromium()
    if found is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise InfraError(
            "the browser tests need Chromium and none was found (/usr/bin/chromium, "
            "`chromium` on PATH, $CHROMIUM); it is installed automatically only as root "
            "with apt-get. Install it with `sudo apt-get install chromium` (Debian/Ubuntu) "
            "or point CHROMIUM at a Chromium or Chrome binary. Playwright's own browser "
            "download (`playwright install`) is not used."
        )
    home = cache_dir()
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".chromium.lock").open("w") as lock:  # parallel test processes: one apt
        fcntl.flock(lock, fcntl.LOCK_EX)
        if find_chromium() is None:
            _apt_install()
    found = find_chromium()
    if found is None:
        raise InfraError(f"apt-get installed {PACKAGE} but no chromium binary was found")
    return found


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = ensure_chromium()
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    version = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"{path}: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
