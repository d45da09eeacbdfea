"""tools/helm.py: which Helm the chart's tests use, without building one."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import pytest

from tools import helm as helm_tool

if TYPE_CHECKING:
    from pathlib import Path


def fake_helm(directory: Path, answer: str, code: int = 0) -> Path:
    script = directory / "helm"
    script.write_text(f"#!/bin/sh\necho '{answer}'\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize(
    ("answer", "found"),
    [("v3.22.0", True), ("v3.18.4", True), ("v4.3.1", False), ("v2.17.0", False)],
)
def test_a_helm_3_on_path_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, found: bool
) -> None:
    script = fake_helm(tmp_path, answer)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert helm_tool.on_path() == (script if found else None)


def test_a_helm_that_fails_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_helm(tmp_path, "v3.22.0", code=1)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert helm_tool.on_path() is None


def test_without_one_on_path_the_cached_build_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("NOTIFICATIONS_CACHE", str(tmp_path / "cache"))
    home = helm_tool.helm_home()
    (home / "bin").mkdir(parents=True)
    cached = fake_helm(home / "bin", helm_tool.HELM_VERSION)
    (home / "helm.complete").write_text(helm_tool.HELM_VERSION)
    assert helm_tool.find_helm() == cached
