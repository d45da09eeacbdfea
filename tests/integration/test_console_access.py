"""The console's API keys and Audit pages by role: the navigation shows a page only to
the roles that may use it, the page says which role it needs, and the keys page's REST
calls (session cookie + X-CSRF-Token) create, list and revoke keys, audited."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from httpx import ASGITransport, AsyncClient

from shared.auth import CSRF_HEADER, SESSION_COOKIE, Principal, Role
from tests.support.keys import unique

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from tests.support.api_helpers import ApiClient

NAV = re.compile(r'<nav aria-label="Sections">(.*?)</nav>', re.S)


@pytest.fixture
async def signed_in(
    api: ApiClient,
) -> AsyncIterator[Callable[[Role], Awaitable[AsyncClient]]]:
    """Browsers (no bearer header) holding a console session of the role asked for."""
    opened: list[AsyncClient] = []

    async def browser(role: Role) -> AsyncClient:
        principal = Principal(actor=f"{role}-person", role=role, via="oidc", subject="s")
        cookie, session = await api.app.state.console_sessions.open(principal, "unused")
        client = AsyncClient(
            transport=ASGITransport(app=api.app),
            base_url="http://testserver",
            cookies={SESSION_COOKIE: cookie},
            headers={CSRF_HEADER: session.csrf},
        )
        opened.append(client)
        return client

    yield browser
    for client in opened:
        await client.aclose()


async def _nav(client: AsyncClient) -> str:
    page = await client.get("/console/mailings")
    assert page.status_code == 200
    found = NAV.search(page.text)
    assert found, page.text
    return found[1]


async def test_each_role_sees_the_pages_it_may_use(
    signed_in: Callable[[Role], Awaitable[AsyncClient]],
) -> None:
    viewer, operator, admin = [await signed_in(role) for role in Role]

    nav = await _nav(viewer)
    assert 'href="/console/audit"' not in nav
    assert 'href="/console/api-keys"' not in nav
    for path, needed in [("/console/audit", "operator"), ("/console/api-keys", "admin")]:
        page = await viewer.get(path)
        assert page.status_code == 403
        assert f"This page needs the {needed} role; you are signed in as viewer-person" in page.text

    nav = await _nav(operator)
    assert 'href="/console/audit"' in nav
    assert 'href="/console/api-keys"' not in nav
    assert (await operator.get("/console/audit")).status_code == 200
    page = await operator.get("/console/api-keys")
    assert page.status_code == 403
    assert "needs the admin role" in page.text

    nav = await _nav(admin)
    assert 'href="/console/audit"' in nav
    assert 'href="/console/api-keys"' in nav
    keys = await admin.get("/console/api-keys")
    assert keys.status_code == 200
    assert '<label for="k-name">Name</label>' in keys.text
    assert '<script src="/console/static/access.js" defer></script>' in keys.text
    audit = await admin.get("/console/audit")
    assert audit.status_code == 200
    assert '<label for="a-actor">Actor</label>' in audit.text
    script = await admin.get("/console/static/access.js")
    assert script.status_code == 200
    assert "/api/v1/api-keys/" in script.text


async def test_the_keys_page_calls_work_with_the_session_and_its_csrf_token(
    signed_in: Callable[[Role], Awaitable[AsyncClient]], api: ApiClient
) -> None:
    admin = await signed_in(Role.ADMIN)
    name = unique("console")
    created = await admin.post("/api/v1/api-keys/", json={"name": name, "role": "viewer"})
    assert created.status_code == 201, created.text
    key_id = created.json()["id"]
    # Without the CSRF header the cookie is not enough for an unsafe method.
    no_csrf = await admin.delete(f"/api/v1/api-keys/{key_id}/", headers={CSRF_HEADER: ""})
    assert no_csrf.status_code == 403
    assert (await admin.delete(f"/api/v1/api-keys/{key_id}/")).status_code == 204
    operator = await signed_in(Role.OPERATOR)
    assert (await operator.get("/api/v1/api-keys/")).status_code == 403

    trail = await api.http.get(
        "/api/v1/audit/", params={"object_type": "api_key", "object_id": str(key_id)}
    )
    assert [(e["action"], e["actor"], e["via"]) for e in trail.json()["results"]] == [
        ("api_key.revoke", "admin-person", "oidc"),
        ("api_key.create", "admin-person", "oidc"),
    ]
