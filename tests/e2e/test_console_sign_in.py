"""The console's sign-in through the real identity provider (Keycloak) in Chromium:
authorization code with PKCE on the provider's own login page, the role from the
provider, an access token refreshed when it expires, and sign-out here and at the
provider. The API runs in this process (real PostgreSQL, Kafka and Keycloak)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import psycopg
import pytest
from playwright.async_api import Page, expect

from services.api.main import create_app
from tests.support.browser import serving
from tests.support.databases import libpq
from tests.support.infra import make_settings
from tools.infra.keycloak import PRESET_USERS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.infra import Infra
    from tests.support.keycloak import Keycloak

PASSWORDS = {name: secret for name, secret, _ in PRESET_USERS}


@pytest.fixture
async def console(infra: Infra, keycloak: Keycloak) -> AsyncIterator[str]:
    """The API outside development mode, signing in through Keycloak only."""
    settings = make_settings(
        infra,
        dev_mode=False,
        oidc_issuer=keycloak.issuer,
        console_session_secret="e2e-session-key",
    )
    async with serving(create_app(settings)) as base:
        yield base


async def sign_in_at_provider(page: Page, base: str, keycloak: Keycloak, user: str) -> None:
    await page.goto(f"{base}/console/")
    await page.get_by_role("link", name="Sign in with the identity provider").click()
    await expect(page).to_have_url(re.compile(f"^{re.escape(keycloak.url)}/"))
    await page.locator("#username").fill(user)
    await page.locator("#password").fill(PASSWORDS[user])
    await page.locator("#kc-login").click()
    await expect(page.get_by_role("heading", name="Mailings")).to_be_visible()
    await expect(page.locator("#signed-in-as")).to_have_text(f"{user} · {user}")


def session_row(infra: Infra, actor: str) -> tuple[str, str]:
    with psycopg.connect(libpq(infra.database_url)) as conn:
        row = conn.execute(
            "SELECT id_hash, credential FROM console_session WHERE actor = %s "
            "ORDER BY created_at DESC LIMIT 1",
            (actor,),
        ).fetchone()
    assert row is not None, f"no session of {actor}"
    return row[0], row[1]


async def test_sign_in_refresh_and_sign_out_through_the_provider(
    offline_page: Page, console: str, keycloak: Keycloak, infra: Infra
) -> None:
    page = offline_page
    await sign_in_at_provider(page, console, keycloak, "operator")
    await expect(page.get_by_role("link", name="New mailing")).to_be_visible()
    # The browser holds a session id, never a token.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    id_hash, access = session_row(infra, "operator")
    assert access not in cookies.values()

    # The access token runs out: the next page refreshes it with the refresh token.
    with psycopg.connect(libpq(infra.database_url)) as conn:
        conn.execute(
            "UPDATE console_session SET credential_expires_at = now() - interval '1 minute' "
            "WHERE id_hash = %s",
            (id_hash,),
        )
    await page.goto(f"{console}/console/clients")
    await expect(page.get_by_role("heading", name="Clients")).to_be_visible()
    _, renewed = session_row(infra, "operator")
    assert renewed != access

    # Sign-out ends the session here and at the provider: the next sign-in asks again.
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.url.startswith(f"{console}/console/sign-in")
    with psycopg.connect(libpq(infra.database_url)) as conn:
        left = conn.execute(
            "SELECT count(*) FROM console_session WHERE id_hash = %s", (id_hash,)
        ).fetchone()
    assert left == (0,)
    await page.get_by_role("link", name="Sign in with the identity provider").click()
    await expect(page.locator("#username")).to_be_visible()


async def test_the_role_comes_from_the_provider(
    offline_page: Page, console: str, keycloak: Keycloak
) -> None:
    page = offline_page
    await sign_in_at_provider(page, console, keycloak, "viewer")
    await expect(page.get_by_role("link", name="New mailing")).to_have_count(0)
    await page.goto(f"{console}/console/clients")
    await expect(page.locator("#read-only")).to_contain_text("needs the operator role")
    # A wrong password stays on the provider's page; nothing is signed in here.
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("link", name="Sign in with the identity provider").click()
    await page.locator("#username").fill("admin")
    await page.locator("#password").fill("wrong")
    await page.locator("#kc-login").click()
    await expect(page.locator("#password")).to_be_visible()
    await expect(page).to_have_url(re.compile(f"^{re.escape(keycloak.url)}/"))
    assert "console_session" not in {c["name"] for c in await page.context.cookies()}
