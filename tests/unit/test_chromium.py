"""tools.chromium: which Chromium the browser tests use, and what happens without one."""

from __future__ import annotations

import os
import shutil
import stat
from typing import TYPE_CHECKING

import pytest

from tools import chromium
from tools.infra import InfraError

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def no_chromium(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHROMIUM", raising=False)
    monkeypatch.setattr(chromium, "DEBIAN_PATH", tmp_path / "absent" / "chromium")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))


def test_chromium_env_names_the_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "chrome"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CHROMIUM", str(binary))
    assert chromium.ensure_chromium() == binary


def test_a_chromium_env_that_is_not_a_binary_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "nothing"))
    with pytest.raises(InfraError, match=r"CHROMIUM=.*not an executable file"):
        chromium.ensure_chromium()


@pytest.mark.usefixtures("no_chromium")
def test_without_root_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    installs: list[object] = []
    monkeypatch.setattr(chromium, "_apt_install", lambda: installs.append(1))
    with pytest.raises(InfraError) as error:
        chromium.ensure_chromium()
    message = str(error.value)
    assert "apt-get install chromium" in message
    assert "CHROMIUM" in message
    assert "playwright install" in message  # ... is not used
    assert installs == []


@pytest.mark.usefixtures("no_chromium")
def test_as_root_it_installs_debians_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(
        shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None
    )
    monkeypatch.setenv("NOTIFICATIONS_CACHE", str(tmp_path / "cache"))
    installed = tmp_path / "installed" / "chromium"

    def apt_install() -> None:  # what apt-get does: the binary appears at Debian's path
        installed.parent.mkdir()
        installed.write_text("")

    monkeypatch.setattr(chromium, "_apt_install", apt_install)
    monkeypatch.setattr(chromium, "DEBIAN_PATH", installed)
    assert chromium.ensure_chromium() == installed
