"""Outside development mode without an identity provider: the API and the reporter
refuse to start until an API key exists; `notifications-api-key` creates the first one
straight in the database; the reporter's send-now takes an admin key."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from services.api.main import create_app as api_app
from services.reporter.main import create_app as reporter_app
from shared.api_keys import StartRefused
from tests.support.databases import scratch_database
from tests.support.infra import REPO, make_settings
from tests.support.keys import bearer, create_key, served
from tests.support.report_helpers import DAY, Clock, SmtpServer, local
from tools.infra import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.support.api_helpers import ApiClient
    from tests.support.infra import Infra


@pytest.fixture
def empty_database(infra: Infra) -> Iterator[str]:
    """A database of its own, migrated, with no API key."""
    with scratch_database(infra.database_url, "bootstrap") as url:
        yield url


def _key_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.api.keys", *args],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": database_url, "LOG_FILE": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_no_credential_no_start_until_a_key_exists(
    infra: Infra, empty_database: str, smtp: SmtpServer
) -> None:
    production = {
        "database_url": empty_database,
        "dev_mode": False,
        "console_session_secret": "s" * 32,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_tls": "none",
    }
    settings = make_settings(infra, **production)
    for app in (api_app(settings), reporter_app(settings, clock=Clock(local(DAY, 9)))):
        with pytest.raises(StartRefused) as refused:
            async with served(app):
                pass
        message = str(refused.value)
        assert "OIDC_ISSUER" in message
        assert "notifications-api-key create --name ops --role admin" in message

    # With an identity provider configured, they start (its tokens are the way in).
    with_issuer = make_settings(infra, **production, oidc_issuer="https://login.example.com/")
    async with served(api_app(with_issuer)) as http:
        assert (await http.get("/health")).status_code == 200

    # The bootstrap command: the key on stdout alone, once.
    made = _key_command(empty_database, "create", "--name", "ops", "--role", "admin")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("nk_")
    assert "shown this once" in made.stderr
    assert key not in made.stderr
    taken = _key_command(empty_database, "create", "--name", "ops", "--role", "viewer")
    assert taken.returncode == 1
    assert "name" in taken.stderr
    bad = _key_command(empty_database, "create", "--name", "ops", "--role", "root")
    assert bad.returncode == 2

    async with served(api_app(settings)) as http:
        assert (await http.get("/api/v1/clients/", params={"limit": 1})).status_code == 401
        listed = await http.get("/api/v1/api-keys/", headers=bearer(key))
        assert listed.status_code == 200
        (entry,) = listed.json()["results"]
        assert (entry["name"], entry["role"]) == ("ops", "admin")
        assert entry["created_by"].startswith("cli:")
        trail = (await http.get("/api/v1/audit/", headers=bearer(key))).json()["results"]
        assert [(e["action"], e["via"], e["details"]) for e in trail] == [
            ("api_key.create", "cli", {"name": "ops", "role": "admin"})
        ]
        # Static tokens are no way in outside development mode.
        assert (await http.get("/api/v1/clients/", headers=bearer("test-token"))).status_code == 401

    # The reporter starts too, and its send-now takes the admin key (not a viewer's).
    reporter = reporter_app(settings, clock=Clock(local(DAY, 9)))
    async with served(reporter, "http://reporter") as http:
        sent = await http.post(
            "/reports/send", params={"to": "ops@example.com"}, headers=bearer(key)
        )
        assert sent.status_code == 200, sent.text

    listing = _key_command(empty_database, "list")
    assert listing.returncode == 0
    assert "\tops\tadmin\tin use\t" in listing.stdout
    key_id = listing.stdout.split("\t", 1)[0]
    revoked = _key_command(empty_database, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert _key_command(empty_database, "revoke", "999999").returncode == 1
    # The only key revoked: no start again.
    with pytest.raises(StartRefused):
        async with served(api_app(settings)):
            pass


async def test_the_reporter_send_now_takes_an_admin_key_and_is_audited(
    api: ApiClient, infra: Infra, smtp: SmtpServer, no_report_days: None
) -> None:
    admin = await create_key(api.http, "admin")
    operator = await create_key(api.http, "operator")
    settings = make_settings(
        infra,
        api_tokens="test-token",
        report_from="reports@example.com",
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        smtp_tls="none",
        smtp_timeout_s=5,
    )
    async with served(reporter_app(settings, clock=Clock(local(DAY, 9))), "http://r") as http:
        to = {"to": "a@example.com,b@example.com"}
        refused = await http.post("/reports/send", params=to, headers=bearer(operator["key"]))
        assert refused.status_code == 403
        assert refused.json() == {"detail": "this needs the admin role; the caller has operator"}
        sent = await http.post("/reports/send", params=to, headers=bearer(admin["key"]))
        assert sent.status_code == 200, sent.text
    trail = await api.http.get(
        "/api/v1/audit/", params={"actor": f"key:{admin['name']}", "action": "report.send"}
    )
    (entry,) = trail.json()["results"]
    assert (entry["object_type"], entry["object_id"], entry["via"]) == ("report", None, "api_key")
    assert entry["details"] == {"recipients": 2, "outcome": "sent", "accepted": 2, "refused": 0}


def test_the_api_process_exits_non_zero_saying_why(infra: Infra, empty_database: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.api"],
        cwd=REPO,
        env={
            **os.environ,
            "DATABASE_URL": empty_database,
            "KAFKA_BOOTSTRAP": infra.kafka_bootstrap,
            "API_PORT": str(free_port()),
            "LOG_FILE": "",
            "LOG_FORMAT": "json",
            "DEV_MODE": "false",
            "API_TOKENS": "",
            "CONSOLE_SESSION_SECRET": "s" * 32,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "refusing to start outside development mode: no way to authenticate" in output
    assert "service_started" not in output
