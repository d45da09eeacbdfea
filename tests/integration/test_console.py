"""The operator console's sign-in and the API's cookie authentication: an HttpOnly
SameSite=Strict cookie naming a server-side session, the CSRF token unsafe methods need with it,
sign-out, and the pages rendering (in-process API on the real PostgreSQL and Kafka)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest
from httpx import ASGITransport, AsyncClient

from shared.auth import SESSION_COOKIE, Principal, Role
from tests.support.api_helpers import phone

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.api_helpers import ApiClient

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
PAGES = ["/console/mailings", "/console/mailings/new", "/console/clients", "/console/reports"]


@pytest.fixture
async def browser(api: ApiClient) -> AsyncIterator[AsyncClient]:
    """A client without the bearer header: only what sign-in gives it."""
    async with AsyncClient(
        transport=ASGITransport(app=api.app), base_url="http://testserver"
    ) as client:
        yield client


async def sign_in(client: AsyncClient, token: str = "test-token") -> str:  # noqa: S107
    """Sign in through the form; return the session's CSRF token (from a page)."""
    form = await client.get("/console/sign-in")
    csrf = CSRF_FIELD.search(form.text)
    assert csrf, form.text
    response = await client.post(
        "/console/sign-in", data={"csrf": csrf[1], "token": token}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    page = await client.get("/console/mailings")
    meta = CSRF_META.search(page.text)
    assert meta, page.text
    return meta[1]


async def test_pages_need_a_session_and_send_to_sign_in(browser: AsyncClient) -> None:
    for path in [*PAGES, "/console/", "/console/mailings/1"]:
        response = await browser.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/console/sign-in"
    assert (await browser.get("/api/v1/clients/")).status_code == 401


async def test_sign_in_sets_an_httponly_strict_cookie_that_the_api_accepts(
    browser: AsyncClient,
) -> None:
    form = await browser.get("/console/sign-in")
    assert form.status_code == 200
    assert '<label for="token">API token</label>' in form.text
    csrf = CSRF_FIELD.search(form.text)
    assert csrf
    response = await browser.post(
        "/console/sign-in", data={"csrf": csrf[1], "token": "test-token"}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console/mailings"
    cookie = next(
        value
        for value in response.headers.get_list("set-cookie")
        if value.startswith(SESSION_COOKIE + "=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "test-token" not in cookie
    listed = await browser.get("/api/v1/clients/?limit=1")
    assert listed.status_code == 200, listed.text


async def test_a_wrong_token_or_a_missing_form_csrf_signs_nobody_in(browser: AsyncClient) -> None:
    form = await browser.get("/console/sign-in")
    csrf = CSRF_FIELD.search(form.text)
    assert csrf
    wrong = await browser.post("/console/sign-in", data={"csrf": csrf[1], "token": "nope"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    forged = await browser.post("/console/sign-in", data={"csrf": "forged", "token": "test-token"})
    assert forged.status_code == 403
    assert SESSION_COOKIE not in forged.headers.get("set-cookie", "")
    assert (await browser.get("/api/v1/clients/")).status_code == 401


async def test_unsafe_methods_by_cookie_need_the_csrf_header(
    browser: AsyncClient, api: ApiClient
) -> None:
    csrf = await sign_in(browser)
    body = {"telephone": phone(), "tag": ["console"], "timezone": "UTC"}
    before = await api.table_counts()
    refused = await browser.post("/api/v1/clients/", json=body)
    assert refused.status_code == 403
    assert "X-CSRF-Token" in refused.json()["detail"]
    wrong = await browser.post("/api/v1/clients/", json=body, headers={"X-CSRF-Token": "x" * 32})
    assert wrong.status_code == 403
    assert await api.table_counts() == before
    created = await browser.post("/api/v1/clients/", json=body, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    client_id = created.json()["id"]
    gone = await browser.delete(f"/api/v1/clients/{client_id}/")
    assert gone.status_code == 403
    deleted = await browser.delete(f"/api/v1/clients/{client_id}/", headers={"X-CSRF-Token": csrf})
    assert deleted.status_code == 204


async def test_bearer_tokens_work_as_before(api: ApiClient) -> None:
    assert (await api.http.get("/api/v1/clients/?limit=1")).status_code == 200
    body = {"telephone": phone()}
    assert (await api.http.post("/api/v1/clients/", json=body)).status_code == 201
    bad = await api.http.get("/api/v1/clients/", headers={"Authorization": "Bearer wrong"})
    assert bad.status_code == 401


async def test_a_tampered_cookie_is_refused(browser: AsyncClient) -> None:
    await sign_in(browser)
    value = browser.cookies[SESSION_COOKIE]
    browser.cookies.clear()
    tampered = ("B" if value[0] == "A" else "A") + value[1:]
    response = await browser.get(
        "/api/v1/clients/", headers={"Cookie": f"{SESSION_COOKIE}={tampered}"}
    )
    assert response.status_code == 401
    assert "sign in again" in response.json()["detail"]


async def test_sign_out_needs_its_csrf_and_then_ends_the_session(browser: AsyncClient) -> None:
    csrf = await sign_in(browser)
    refused = await browser.post("/console/sign-out", data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert (await browser.get("/api/v1/clients/?limit=1")).status_code == 200
    kept = browser.cookies[SESSION_COOKIE]
    response = await browser.post("/console/sign-out", data={"csrf": csrf}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/sign-in"
    assert SESSION_COOKIE not in browser.cookies
    assert (await browser.get("/api/v1/clients/")).status_code == 401
    assert (await browser.get("/console/mailings", follow_redirects=False)).status_code == 303
    # A copy of the cookie kept elsewhere ends with the session: it is server-side.
    copied = await browser.get("/api/v1/clients/", headers={"Cookie": f"{SESSION_COOKIE}={kept}"})
    assert copied.status_code == 401


async def test_pages_render_with_labelled_fields_and_local_assets(browser: AsyncClient) -> None:
    await sign_in(browser)
    for path in [*PAGES, "/console/mailings/1", "/console/mailings/1/edit"]:
        page = await browser.get(path)
        assert page.status_code == 200, path
        assert "default-src 'self'" in page.headers["content-security-policy"]
        html = page.text
        # Every src/href is this service's own.
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith(("/", "#")), (path, url)
        # Every visible input, select and textarea has a <label for=...>.
        labels = set(re.findall(r'<label for="([^"]+)"', html))
        for tag in re.findall(r"<(?:input|select|textarea)\b[^>]*>", html):
            if 'type="hidden"' in tag:
                continue
            ident = re.search(r'id="([^"]+)"', tag)
            assert ident, (path, tag)
            assert ident[1] in labels, (path, tag)
        # Buttons have visible names.
        for name in re.findall(r"<button\b[^>]*>([^<]*)</button>", html):
            assert name.strip(), path
    form = (await browser.get("/console/mailings/new")).text
    for field in ("text", "date_time_start", "date_time_stop", "tag", "mobile_code"):
        assert f'name="{field}"' in form
    assert 'name="time_interval_start"' in form
    assert 'name="time_interval_end"' in form
    script = await browser.get("/console/static/console.js")
    assert script.status_code == 200
    assert "X-CSRF-Token" in script.text
    assert (await browser.get("/console/static/console.css")).status_code == 200


async def _cookie_for(api: ApiClient, role: Role) -> dict[str, str]:
    store = api.app.state.console_sessions
    principal = Principal(actor=f"{role}-user", role=role, via="oidc", subject=f"s-{role}")
    cookie, session = await store.open(principal, "unused-credential")
    return {"Cookie": f"{SESSION_COOKIE}={cookie}", "X-CSRF-Token": session.csrf}


async def test_pages_show_only_what_the_role_may_do(api: ApiClient, browser: AsyncClient) -> None:
    mailing = await api.http.post(
        "/api/v1/notifications/",
        json={
            "date_time_start": "2031-01-01 00:00:00",
            "date_time_stop": "2031-01-02 00:00:00",
            "text": "roles",
        },
    )
    assert mailing.status_code == 201, mailing.text
    page = f"/console/mailings/{mailing.json()['id']}"
    viewer, operator, admin = [await _cookie_for(api, role) for role in Role]

    shown = (await browser.get(page, headers=viewer)).text
    assert 'data-role="viewer"' in shown
    assert "viewer-user · viewer" in shown
    assert 'data-action="pause"' not in shown
    assert 'id="replay-form"' not in shown
    assert "Read-only: changing a mailing needs the operator role" in shown
    assert (
        "/console/mailings/new" not in (await browser.get("/console/mailings", headers=viewer)).text
    )
    assert 'id="client-form"' not in (await browser.get("/console/clients", headers=viewer)).text
    refused = await browser.get("/console/mailings/new", headers=viewer)
    assert refused.status_code == 403
    assert "needs the operator role; you are viewer" in refused.text
    # The API behind the page refuses the same, whatever the page shows.
    write = await browser.post("/api/v1/clients/", json={"telephone": phone()}, headers=viewer)
    assert write.status_code == 403
    assert write.json()["detail"] == "this needs the operator role; the caller has viewer"

    shown = (await browser.get(page, headers=operator)).text
    assert 'data-action="pause"' in shown
    assert 'id="replay-form"' in shown
    assert 'data-action="delete"' not in shown
    assert (await browser.get("/console/mailings/new", headers=operator)).status_code == 200
    assert 'id="client-form"' in (await browser.get("/console/clients", headers=operator)).text

    shown = (await browser.get(page, headers=admin)).text
    assert 'data-action="delete"' in shown
