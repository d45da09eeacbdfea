"""The console's API keys and Audit pages in Chromium: an admin creates a key (shown
once, with the copy hint), the key works, revoking asks first and then the key is
refused; the Audit page lists both writes and filters them. The API is served by
uvicorn in-process on the real PostgreSQL and Kafka; no other host is reachable."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from playwright.async_api import Dialog, Page, expect

from services.api.main import create_app
from tests.support.browser import serving
from tests.support.infra import make_settings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.infra import Infra


@pytest.fixture
async def api_url(infra: Infra) -> AsyncIterator[str]:
    async with serving(create_app(make_settings(infra, api_tokens="test-token"))) as base:
        yield base


async def test_an_admin_creates_uses_and_revokes_a_key(offline_page: Page, api_url: str) -> None:
    page = offline_page
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    await page.goto(f"{api_url}/console/")
    await page.get_by_label("API token").fill("test-token")
    await page.keyboard.press("Enter")
    await page.get_by_role("link", name="API keys").click()
    await expect(page.get_by_role("heading", name="API keys", exact=True)).to_be_visible()

    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Role").select_option("operator")
    await page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key-value")
    await expect(shown).to_have_value(re.compile(r"^nk_[0-9a-f]{16}_[A-Za-z0-9_-]{43}$"))
    await expect(page.locator("#new-key")).to_contain_text("it is shown this once")
    key = await shown.input_value()
    row = page.locator("#keys-table tbody tr", has_text=name)
    await expect(row).to_contain_text("operator")
    await expect(row).to_contain_text("in use")

    async with httpx.AsyncClient(base_url=api_url) as http:
        auth = {"Authorization": f"Bearer {key}"}
        assert (await http.get("/api/v1/clients/?limit=1", headers=auth)).status_code == 200

        await page.get_by_role("button", name="I have stored it").click()
        await expect(page.locator("#new-key")).to_be_hidden()
        assert await shown.input_value() == ""

        asked: list[str] = []

        async def dismiss_then_accept(dialog: Dialog) -> None:
            asked.append(dialog.message)
            await (dialog.dismiss() if len(asked) == 1 else dialog.accept())

        page.on("dialog", dismiss_then_accept)
        revoke = page.get_by_role("button", name=f"Revoke key {name}")
        await revoke.click()  # dismissed: nothing happens
        await expect(row).to_contain_text("in use")
        assert (await http.get("/api/v1/clients/?limit=1", headers=auth)).status_code == 200
        await revoke.click()  # accepted
        await expect(page.locator("#notice")).to_have_text(f"Key {name} revoked.")
        await expect(row).to_contain_text("revoked")
        assert asked[0].startswith(f"Revoke the key {name} (operator)?")
        refused = await http.get("/api/v1/clients/?limit=1", headers=auth)
        assert refused.status_code == 401

    await page.get_by_role("link", name="Audit").click()
    await page.get_by_label("Object type").select_option("api_key")
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("#audit-table tbody tr", has_text=f"name: {name}")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("api_key.revoke")
    await expect(rows.nth(1)).to_contain_text("api_key.create")
    await expect(rows.nth(1)).to_contain_text("role: operator")
