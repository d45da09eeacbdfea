"""tools/infra/keycloak.py without a JVM: the workdir a server gets, the seed it starts
from, the AOT cache flags. Keycloak itself runs in tests/integration/test_oidc_tokens.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.infra.keycloak import REALM_FILE, KeycloakServer
from tools.infra.keycloak_dist import keycloak_home

JAVA_25 = ("/opt/java/bin/java", 25, "25.0.2")
JAVA_21 = ("/opt/java/bin/java", 21, "21.0.8")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("NOTIFICATIONS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NOTIFICATIONS_KEYCLOAK_AOT", raising=False)
    built = keycloak_home() / "built-test"
    for name in ("bin", "lib", "providers", "themes"):
        (built / name).mkdir(parents=True)
    return built


def test_the_issuer_is_known_before_the_start(tmp_path: Path) -> None:
    server = KeycloakServer(tmp_path / "kc")
    assert server.port != server.management_port
    assert server.issuer == f"http://127.0.0.1:{server.port}/realms/notifications"
    assert not server.is_running


def test_a_workdir_links_the_build_and_starts_from_the_seed_once(
    tmp_path: Path, cache: Path
) -> None:
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "keycloakdb.mv.db").write_bytes(b"seed")
    server = KeycloakServer(tmp_path / "kc")
    server._prepare_home(cache, seed)
    home = tmp_path / "kc" / "home"
    assert (home / "lib").resolve() == (cache / "lib").resolve()
    assert (home / "data" / "h2" / "keycloakdb.mv.db").read_bytes() == b"seed"
    imported = json.loads((home / "data" / "import" / REALM_FILE.name).read_text())
    assert imported["realm"] == "notifications"
    # a reused workdir keeps its own database (the local stack's users and sessions)
    (home / "data" / "h2" / "keycloakdb.mv.db").write_bytes(b"changed")
    server._prepare_home(cache, seed)
    assert (home / "data" / "h2" / "keycloakdb.mv.db").read_bytes() == b"changed"


def test_the_aot_cache_is_written_by_the_first_run_and_mapped_later(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = KeycloakServer(tmp_path / "kc")
    assert server._aot_flags(JAVA_21, cache, training=True) == []
    assert server._aot_flags(JAVA_25, cache, training=False) == []
    (flag,) = server._aot_flags(JAVA_25, cache, training=True)
    assert flag.startswith("-XX:AOTCacheOutput=")
    partial = Path(flag.split("=", 1)[1])
    partial.write_bytes(b"aot")
    server._finish_aot(0)
    final = keycloak_home() / "built-test.aot"
    assert final.read_bytes() == b"aot"
    assert server._aot_flags(JAVA_25, cache, training=False) == [f"-XX:AOTCache={final}"]
    monkeypatch.setenv("NOTIFICATIONS_KEYCLOAK_AOT", "0")
    assert server._aot_flags(JAVA_25, cache, training=False) == []


def test_a_killed_first_run_leaves_no_aot_cache(tmp_path: Path, cache: Path) -> None:
    server = KeycloakServer(tmp_path / "kc")
    (flag,) = server._aot_flags(JAVA_25, cache, training=True)
    partial = Path(flag.split("=", 1)[1])
    partial.write_bytes(b"half")
    server._finish_aot(-9)
    assert not partial.exists()
    assert not (keycloak_home() / "built-test.aot").exists()
