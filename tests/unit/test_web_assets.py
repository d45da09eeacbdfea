"""tools.web_assets: the AsyncAPI renderer unpacked from the pinned, checked npm tarball."""

from __future__ import annotations

import io
import tarfile
from typing import TYPE_CHECKING

import httpx
import pytest

from shared import docs_pages
from tools import web_assets
from tools.infra import InfraError

if TYPE_CHECKING:
    from pathlib import Path


def tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NOTIFICATIONS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_this_checkout_has_the_pinned_renderer() -> None:
    """`make venv` unpacked it (the pages need it; tests/unit/test_docs_pages.py)."""
    hint = "not installed: `make venv` or `python -m tools.web_assets`"
    assert web_assets.is_installed(docs_pages.ASYNCAPI_ASSETS), hint
    assert not docs_pages.asyncapi_assets_missing()


def test_the_tarball_url_is_the_registry_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NPM_REGISTRY", "http://mirror.test/npm/")
    assert web_assets.tarball_url() == (
        "http://mirror.test/npm/@asyncapi/react-component/-/react-component-3.2.1.tgz"
    )


def test_unpacks_the_cached_tarball_once(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tarball({member: member.encode() for member in web_assets.MEMBERS})
    monkeypatch.setattr(web_assets, "INTEGRITY", web_assets.integrity_of(data))
    (cache / "npm").mkdir(parents=True)
    (cache / "npm" / f"asyncapi-react-component-{web_assets.VERSION}.tgz").write_bytes(data)
    target = tmp_path / "static" / "asyncapi"

    assert web_assets.install(target) == target
    assert web_assets.is_installed(target)
    bundle = target / docs_pages.ASYNCAPI_FILES["js"]
    assert bundle.read_bytes() == b"package/browser/standalone/index.js"
    # Installed: nothing is read again (the cached tarball may even be gone).
    (cache / "npm" / f"asyncapi-react-component-{web_assets.VERSION}.tgz").unlink()
    bundle.write_bytes(b"kept")
    web_assets.install(target)
    assert bundle.read_bytes() == b"kept"


def test_a_tarball_that_fails_its_integrity_check_is_not_installed(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tarball({member: b"tampered" for member in web_assets.MEMBERS})

    class Answer:
        content = data

        def raise_for_status(self) -> None:
            return None

    monkeypatch.setattr(httpx, "get", lambda *_, **__: Answer())
    target = tmp_path / "static" / "asyncapi"
    with pytest.raises(InfraError, match="integrity"):
        web_assets.install(target)
    assert not target.exists()
    assert not list((cache / "npm").glob("*.tgz"))
