"""The operator console in Chromium (Playwright) on the whole stack: API, scheduler,
dispatcher and the gateway sandbox as processes. Every page runs in `offline_page`:
a request to any host but this machine fails the test.

The API's counts come from the reporter's counters, so the reporter runs too.
`test_screenshots_of_each_page` takes a screenshot of every page; `make screenshots`
runs it with CONSOLE_SCREENSHOTS_DIR=docs/console to refresh the ones the docs show
(otherwise they go to the test's temporary directory, and the tree stays clean).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.async_api import Dialog, Page, expect

from tests.support.pipeline import TOKEN, Pipeline, fmt, running_now
from tests.support.polling import eventually

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tests.support.infra import Infra
    from tests.support.report_helpers import SmtpServer

# Ceiling for a mailing's messages to reach the sandbox on this machine (not a measure).
FINISH_MS = 90_000


@pytest.fixture
async def pipeline(infra: Infra, tmp_path: Path) -> AsyncIterator[Pipeline]:
    pipe = Pipeline(infra, tmp_path)
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.stop()


@pytest.fixture
async def slow_pipeline(infra: Infra, tmp_path: Path) -> AsyncIterator[Pipeline]:
    """A gateway answering in 300 ms, two requests at a time: a mailing of a hundred
    messages runs for about fifteen seconds, long enough to act on it mid-run."""
    pipe = Pipeline(
        infra,
        tmp_path,
        faults={"latency_ms": 300},
        env={"PROVIDER_CONCURRENCY": "2"},
    )
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.stop()


def base(pipe: Pipeline) -> str:
    return f"http://127.0.0.1:{pipe.ports['api']}"


async def sign_in(page: Page, pipe: Pipeline) -> None:
    """By keyboard: the token field has the focus; Enter submits."""
    await page.goto(f"{base(pipe)}/console/")
    await expect(page.get_by_label("API token")).to_be_focused()
    await page.keyboard.type(TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Mailings")).to_be_visible()


def accept_dialogs(page: Page, seen: list[str]) -> None:
    async def accept(dialog: Dialog) -> None:
        seen.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)


async def open_mailing(page: Page, pipe: Pipeline, mailing_id: int) -> None:
    await page.goto(f"{base(pipe)}/console/mailings/{mailing_id}")
    await expect(page.locator("#mailing-state")).not_to_have_text("")


async def test_sign_in_add_a_client_create_a_mailing_and_watch_it_finish(
    offline_page: Page, pipeline: Pipeline
) -> None:
    page, pipe = offline_page, pipeline
    tag = f"console-{uuid.uuid4().hex[:8]}"
    telephone = f"7999{uuid.uuid4().int % 10**7:07d}"
    await sign_in(page, pipe)

    await page.get_by_role("link", name="Clients").click()
    await page.get_by_label("Telephone", exact=True).fill(telephone)
    await page.get_by_label("Tags (comma-separated)").fill(tag)
    await page.locator("#client-form").get_by_label("Time zone").fill("Europe/Moscow")
    await page.get_by_role("button", name="Add client").click()
    await expect(page.locator("#notice")).to_contain_text(f"Client {telephone} added")
    await page.get_by_label("Telephone starts with").fill(telephone[:8])
    await page.get_by_role("button", name="Search").click()
    await expect(page.locator("#clients-table tbody")).to_contain_text(telephone)
    rows = await asyncio.to_thread(
        pipe.query, "SELECT timezone FROM client WHERE phone = %s", telephone
    )
    assert rows == [("Europe/Moscow",)]

    await page.get_by_role("link", name="Mailings").click()
    await page.get_by_role("link", name="New mailing").click()
    text = page.get_by_label("Text")
    await text.fill("Ж" * 71)
    await expect(page.locator("#text-stats")).to_have_text("71 characters · UCS-2 · 2 SMS segments")
    await text.fill("x" * 161)
    await expect(page.locator("#text-stats")).to_have_text(
        "161 characters · GSM-7 · 2 SMS segments"
    )
    await text.fill("Console says hello {}")
    await expect(page.locator("#text-stats")).to_have_text("21 characters · GSM-7 · 1 SMS segment")
    await page.get_by_label("Tags (comma-separated; any of them)").fill(tag)
    await page.get_by_label("Show times also in").select_option("Asia/Tokyo")
    await expect(page.locator("#start-local")).to_contain_text("in Asia/Tokyo")
    await page.get_by_role("button", name="Create mailing").click()
    await expect(page).to_have_url(re.compile(r"/console/mailings/\d+$"))
    mailing_id = int(page.url.rsplit("/", 1)[1])

    await page.get_by_role("link", name="Mailings").click()
    progress = page.locator(f'tr[data-mailing="{mailing_id}"] progress')
    await expect(progress).to_have_attribute("value", "100", timeout=FINISH_MS)
    await expect(page.locator(f'tr[data-mailing="{mailing_id}"]')).to_contain_text("100.0%")
    [(message_id,)] = await asyncio.to_thread(
        pipe.query, "SELECT id FROM message WHERE mailing_id = %s", mailing_id
    )
    accepted = [msg for msg, _ in await pipe.control.accepted()]
    assert accepted.count(message_id) == 1


async def test_import_clients_from_csv_names_the_bad_rows(
    offline_page: Page, pipeline: Pipeline, tmp_path: Path
) -> None:
    page, pipe = offline_page, pipeline
    tag = f"imp-{uuid.uuid4().hex[:8]}"
    prefix = 7_950_000_0000 + uuid.uuid4().int % 900 * 10_000
    lines = ["telephone,tag,timezone"]
    lines += [f"{prefix + n},{tag}|csv,UTC" for n in range(997)]
    bad = {len(lines) + 1: "12345", len(lines) + 2: "7911abc0000"}
    lines += [f"{value},{tag},UTC" for value in bad.values()]
    bad_zone_line = len(lines) + 1
    lines.append(f"{prefix + 999},{tag},Mars/Olympus")
    csv = tmp_path / "clients.csv"
    csv.write_text("\n".join(lines) + "\n")
    await sign_in(page, pipe)
    await page.get_by_role("link", name="Clients").click()
    await page.get_by_label("CSV file").set_input_files(csv)
    await page.get_by_role("button", name="Import").click()
    await expect(page.locator("#import-summary")).to_have_text(
        "Created 997, updated 0, unchanged 0, rejected 3.", timeout=60_000
    )
    await expect(page.locator("#import-progress")).to_have_attribute("value", "100")
    rejected = page.locator("#import-rejected tbody tr")
    await expect(rejected).to_have_count(3)
    cells = [await row.locator("td").all_inner_texts() for row in await rejected.all()]
    assert {(int(line), field) for line, field, _ in cells} == {
        *((line, "telephone") for line in bad),
        (bad_zone_line, "timezone"),
    }
    count = await asyncio.to_thread(
        pipe.query,
        "SELECT count(*) FROM client_tag JOIN tag ON tag.id = tag_id WHERE tag.name = %s",
        tag,
    )
    assert count == [(997,)]


async def underway(page: Page, pipe: Pipeline, text: str, sent: int) -> dict[str, Any]:
    """A mailing of a hundred clients running on the slow gateway, at least `sent` of
    them delivered, open in the console."""
    tag = f"run-{uuid.uuid4().hex[:8]}"
    await pipe.bulk_clients(100, tag)
    mailing: dict[str, Any] = await pipe.mailing(text=text, tag=[tag], **running_now())
    await sign_in(page, pipe)
    await open_mailing(page, pipe, mailing["id"])
    await eventually(
        lambda: pipe.statuses(mailing["id"]),
        lambda counts: counts.get("sent", 0) >= sent,
        timeout=60,
        what="some messages sent",
    )
    return mailing


async def test_pause_sends_nothing_until_resumed(
    offline_page: Page, slow_pipeline: Pipeline
) -> None:
    page, pipe = offline_page, slow_pipeline
    mailing = await underway(page, pipe, "Paused midway", sent=5)
    await page.get_by_role("button", name="Pause").click()
    await expect(page.locator("#mailing-state")).to_have_text("paused")
    # Requests in flight finish; then nothing is sending.
    await eventually(
        lambda: pipe.statuses(mailing["id"]),
        lambda counts: "sending" not in counts,
        timeout=30,
        what="requests in flight finished",
    )
    quiet_since = time.time()
    sent_then = (await pipe.statuses(mailing["id"])).get("sent", 0)
    assert sent_then < 100
    # Three more refreshes of the page (every 2 s: about 6 s, more than expect's default
    # 5 s), paused all along.
    refreshes = int(await page.locator("#mailing-progress").get_attribute("data-refreshes") or 0)
    await expect(page.locator("#mailing-progress")).to_have_attribute(
        "data-refreshes", str(refreshes + 3), timeout=20_000
    )
    await expect(page.locator("#mailing-state")).to_have_text("paused")
    resumed_at = time.time()
    await page.get_by_role("button", name="Resume").click()
    await expect(page.locator("#mailing-state")).not_to_have_text("paused")
    await expect(page.locator("#mailing-progress")).to_have_attribute(
        "value", "100", timeout=FINISH_MS
    )
    arrivals = await pipe.control.accepted()
    assert not [at for _, at in arrivals if quiet_since < at < resumed_at]
    assert (await pipe.statuses(mailing["id"])) == {"sent": 100}
    assert (await pipe.control.summary())["duplicates"] == []


async def test_cancel_asks_first_and_keeps_the_history(
    offline_page: Page, slow_pipeline: Pipeline
) -> None:
    page, pipe = offline_page, slow_pipeline
    mailing = await underway(page, pipe, "Cancelled midway", sent=3)
    asked: list[str] = []
    accept_dialogs(page, asked)
    await page.get_by_role("button", name="Cancel").click()
    await expect(page.locator("#mailing-state")).to_have_text("cancelled")
    assert asked
    assert "Cancel this mailing?" in asked[0]
    counts = await eventually(
        lambda: pipe.statuses(mailing["id"]),
        lambda counts: not {"scheduled", "queued", "sending", "retrying"} & set(counts),
        timeout=30,
        what="no message pending",
    )
    assert counts.get("sent", 0) >= 3
    assert counts.get("cancelled", 0) > 0
    assert sum(counts.values()) == 100
    await expect(page.locator("#status-counts")).to_contain_text("cancelled")
    await page.get_by_role("link", name="Mailings").click()
    await expect(page.locator(f'tr[data-mailing="{mailing["id"]}"]')).to_contain_text("cancelled")


async def test_replay_sends_a_failed_message_again(offline_page: Page, pipeline: Pipeline) -> None:
    page, pipe = offline_page, pipeline
    tag = f"replay-{uuid.uuid4().hex[:8]}"
    await pipe.clients(2, tag=[tag])
    mailing = await pipe.mailing(text="Try again", tag=[tag], **running_now())
    await pipe.settled(mailing["id"])
    failed = await asyncio.to_thread(pipe.fail_sent, mailing["id"])
    assert len(failed) == 2
    await sign_in(page, pipe)
    await open_mailing(page, pipe, mailing["id"])
    await expect(page.locator("#failure-reasons")).to_contain_text("rejected (400)")
    await expect(page.get_by_label("Replay", exact=True)).to_contain_text("rejected (400)")
    asked: list[str] = []
    accept_dialogs(page, asked)
    await page.get_by_role("button", name="Replay failed").click()
    await expect(page.locator("#notice")).to_have_text("Replayed 2 messages.")
    await eventually(
        lambda: pipe.statuses(mailing["id"]),
        lambda counts: counts == {"sent": 2},
        timeout=60,
        what="the replayed messages sent",
    )
    accepted = [msg for msg, _ in await pipe.control.accepted()]
    assert all(accepted.count(message) == 2 for message in failed)


@pytest.fixture
async def reporting_pipeline(
    infra: Infra, tmp_path: Path, smtp: SmtpServer
) -> AsyncIterator[Pipeline]:
    """The stack with the reporter mailing a real SMTP server (aiosmtpd, in the test)."""
    pipe = Pipeline(
        infra,
        tmp_path,
        env={
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "SMTP_TLS": "none",
            "REPORT_FROM": "reports@example.com",
        },
    )
    await pipe.start()
    try:
        yield pipe
    finally:
        await pipe.stop()


async def test_reports_page_previews_the_report_and_sends_it_now(
    offline_page: Page, reporting_pipeline: Pipeline, smtp: SmtpServer
) -> None:
    page, pipe = offline_page, reporting_pipeline
    tag = f"report-{uuid.uuid4().hex[:8]}"
    marker = f"Report marker {tag}"
    await pipe.clients(2, tag=[tag])
    mailing = await pipe.mailing(text=marker, tag=[tag], **running_now())
    await pipe.settled(mailing["id"])
    await sign_in(page, pipe)
    await page.goto(f"{base(pipe)}/console/reports")
    # The reporter's own HTML, framed: the mailing with its text and counts.
    report = page.frame_locator("iframe[title='Daily report preview']")
    await expect(report.get_by_role("heading", name=re.compile(marker))).to_be_visible()
    await expect(report.get_by_role("heading", name=re.compile(marker))).to_contain_text(
        f"Mailing {mailing['id']}"
    )
    assert smtp.inbox.received == []  # looking sends nothing

    await page.get_by_label(re.compile("^Recipients")).fill("ops@example.com, lead@example.org")
    await page.get_by_role("button", name="Send the report now").click()
    await expect(page.locator("#report-sent")).to_contain_text(
        "to ops@example.com, lead@example.org"
    )
    assert len(smtp.inbox.received) == 1
    received = smtp.inbox.received[0]
    assert received.recipients == ["ops@example.com", "lead@example.org"]
    assert marker in received.part("html")

    # A bad address: the reporter's answer, naming it, and nothing sent.
    await page.get_by_label(re.compile("^Recipients")).fill("not-an-address")
    await page.get_by_role("button", name="Send the report now").click()
    await expect(page.locator("#report-error")).to_contain_text("not-an-address")
    assert len(smtp.inbox.received) == 1


async def test_screenshots_of_each_page(
    offline_page: Page, pipeline: Pipeline, tmp_path: Path
) -> None:
    """Real Chromium screenshots of every page, for docs/console.md and the README."""
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS_DIR") or tmp_path)
    page, pipe = offline_page, pipeline
    await page.set_viewport_size({"width": 1280, "height": 900})
    tag = "newsletter"
    vips = await pipe.clients(6, tag=[tag, "vip"], timezone="Europe/Moscow")
    await pipe.clients(4, tag=[tag], timezone="Asia/Tokyo")
    done = await pipe.mailing(text="Spring sale starts today", tag=[tag], **running_now())
    await pipe.settled(done["id"])
    await asyncio.to_thread(pipe.fail_sent, done["id"], vips[0]["id"])
    later = datetime.now(UTC) + timedelta(days=1)
    await pipe.mailing(
        text="Tomorrow: the store opens at nine",
        tag=["vip"],
        date_time_start=fmt(later),
        date_time_stop=fmt(later + timedelta(hours=12)),
        time_interval_start="09:00",
        time_interval_end="21:00",
    )
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)

    await page.goto(f"{base(pipe)}/console/sign-in")
    await page.screenshot(path=shots / "sign-in.png", full_page=True)
    await sign_in(page, pipe)
    await expect(page.locator(f'tr[data-mailing="{done["id"]}"] progress')).to_have_attribute(
        "value", "100"
    )
    await page.screenshot(path=shots / "mailings.png", full_page=True)

    await open_mailing(page, pipe, done["id"])
    await expect(page.locator("#messages-table tbody tr")).not_to_have_count(0)
    await expect(page.locator("#mailing-progress")).to_have_attribute(
        "data-refreshes", "3", timeout=20_000
    )
    await page.screenshot(path=shots / "mailing.png", full_page=True)

    await page.goto(f"{base(pipe)}/console/mailings/new")
    await page.get_by_label("Text").fill("Spring sale: 20% off everything until Sunday")
    await page.get_by_label("Tags (comma-separated; any of them)").fill(tag)
    await page.get_by_label("Show times also in").select_option("Europe/Moscow")
    # The preview's answer (or, where the API has no preview yet, the page saying so).
    await expect(page.locator("#preview-status")).to_have_text(
        re.compile(r"^Reaches .* clients\.$|not available")
    )
    await page.screenshot(path=shots / "new-mailing.png", full_page=True)

    await page.goto(f"{base(pipe)}/console/clients")
    await expect(page.locator("#clients-table tbody tr")).not_to_have_count(0)
    await page.screenshot(path=shots / "clients.png", full_page=True)

    await page.goto(f"{base(pipe)}/console/reports")
    await expect(page.locator("#report-summary")).not_to_have_text("Loading…")
    report = page.frame_locator("iframe[title='Daily report preview']")
    await expect(report.get_by_role("heading", name=re.compile("Spring sale"))).to_be_visible()
    await page.screenshot(path=shots / "reports.png", full_page=True)

    await pipe.api.post("/api/v1/api-keys/", json={"name": "billing-sync", "role": "operator"})
    await page.goto(f"{base(pipe)}/console/api-keys")
    await expect(page.get_by_text("billing-sync")).to_be_visible()
    await page.screenshot(path=shots / "api-keys.png", full_page=True)

    await page.goto(f"{base(pipe)}/console/audit")
    await expect(page.locator("#audit-table tbody tr")).not_to_have_count(0)
    await page.screenshot(path=shots / "audit.png", full_page=True)
    for name in (
        "sign-in",
        "mailings",
        "mailing",
        "new-mailing",
        "clients",
        "reports",
        "api-keys",
        "audit",
    ):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
