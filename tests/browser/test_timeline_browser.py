"""The migration timeline in a real browser: headless Chromium, driven by Playwright, loading the
page from the HTTP router served by uvicorn on localhost, against a real database.

What a person sees is asserted: the attempts by their labels, their statuses' colours, a hybrid's
phases, the details panel after a click, and a running data migration's progress advancing as the
test lets its batches through. A screenshot is kept in ``tests/browser/artifacts/timeline.png``
(or in ``$BRAINMIGRATE_BROWSER_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
import uvicorn
from playwright.async_api import Browser, Page, async_playwright, expect
from starlette.applications import Starlette
from starlette.routing import Mount

from brainmigrate import MigrationConfig, Migrator
from brainmigrate._timeline import timeline_page, timeline_snapshot
from brainmigrate.http import BearerAuth, migrations_router
from timeline_support import (
    BROKEN,
    HOSTILE,
    HYBRID,
    NOTES,
    SCRATCH,
    TAG,
    run_everything,
    tag_memories,
    timeline_migrations,
)

pytestmark = pytest.mark.anyio

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("BRAINMIGRATE_BROWSER_ARTIFACTS") or Path(__file__).parent / "artifacts")
#: The data migration's memories, and the batches the test lets through one at a time.
MEMORIES = 30
BATCH = 10

#: Colours of the statuses, as the page's stylesheet draws a bar.
GREEN = "rgb(46, 125, 50)"
RED = "rgb(198, 40, 40)"
PURPLE = "rgb(106, 27, 154)"


@pytest.fixture
def artifacts() -> Path:
    """The directory kept after the run for people to look at (screenshots)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[str]:
    """``app`` on a real uvicorn server on a free localhost port, in this event loop; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # connections queue here until the server accepts them
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(server.serve, [sock])
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}"
        finally:
            server.should_exit = True
    sock.close()


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, under Playwright (no browser of Playwright's own)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


def group(page: Page, migration_id: str) -> Any:
    return page.locator(f'section.group[data-migration-id="{migration_id}"]')


def watch_for_scripts(page: Page, dialogs: list[str]) -> None:
    """Record any dialog a page opens: an injected script would open one."""

    async def dismiss(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)


async def test_the_timeline_shows_every_attempt_and_a_run_advancing_live(
    brainmigrate_pool: Any, brainmigrate_database: str, artifacts: Path
) -> None:
    """Served by the router, the timeline reads its data with the token from the address's
    fragment: one group per migration with its attempts labelled and coloured by status, the
    hybrid's phases, the details of a failed attempt after a click (error class, statement reached,
    who ran it), and the running data migration's progress advancing batch by batch."""
    gates = [anyio.Event() for _ in range(MEMORIES // BATCH)]

    async def gate(row: dict[str, Any]) -> None:
        await gates[(row["id"] - 1) // BATCH].wait()

    migrations = timeline_migrations(tag=tag_memories(name=HOSTILE, before_row=gate))
    runner = Migrator(
        brainmigrate_pool, migrations, config=MigrationConfig(batch_size=BATCH, checkpoint_frequency=BATCH)
    )
    await run_everything(brainmigrate_pool, runner, memories=MEMORIES)
    reader_token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    reading = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=3)
    router = migrations_router(
        Migrator(reading, migrations), auth=BearerAuth(admin_token=admin_token, read_token=reader_token)
    )
    app = Starlette(routes=[Mount("/migrations", app=router)])
    dialogs: list[str] = []
    try:
        async with served(app) as base, chromium() as browser, anyio.create_task_group() as tasks:
            gates[0].set()
            tasks.start_soon(runner.execute, TAG)
            page = await browser.new_page(viewport={"width": 1500, "height": 1050})
            watch_for_scripts(page, dialogs)

            await page.goto(f"{base}/migrations/timeline#token={reader_token}")

            progress = group(page, TAG).locator(".progress.running")
            await expect(progress.locator(".items")).to_have_text(f"10 / {MEMORIES} items (33%)")
            await expect(progress.locator(".rate")).to_have_text(re.compile(r"^rate \d[\d.,]* items/s$"))
            await expect(progress.locator(".eta")).to_have_text(re.compile(r"^ETA \d"))
            await expect(page.locator(".live")).to_have_text("live")
            assert "#token" not in page.url  # the token is kept in the tab, not in the address
            await expect(page.locator("section.group h2 .mid")).to_have_text(
                [NOTES, SCRATCH, BROKEN, HYBRID, TAG]
            )
            await expect(group(page, TAG).locator("h2 .name")).to_have_text(HOSTILE)
            await expect(group(page, TAG).locator("h2 .status")).to_have_text("running")
            await expect(group(page, NOTES).locator(".lane .label")).to_have_text(["#1 apply"])
            await expect(group(page, SCRATCH).locator(".lane .label")).to_have_text(
                ["#2 apply", "#3 rollback"]
            )
            await expect(group(page, SCRATCH).locator("button.attempt")).to_have_text(
                ["completed", "rolled back"]
            )
            await expect(group(page, NOTES).locator("button.attempt")).to_have_css("background-color", GREEN)
            await expect(group(page, SCRATCH).locator("button.attempt").nth(1)).to_have_css(
                "background-color", PURPLE
            )
            failed = group(page, BROKEN).locator("button.attempt")
            await expect(failed).to_have_class(re.compile(r"\bstatus-failed\b"))
            await expect(failed).to_have_css("background-color", RED)
            hybrid = group(page, HYBRID)
            await expect(hybrid.locator(".lane .label")).to_have_text(
                ["#5 add_topic_column_001 apply", "#6 fill_topic_001 apply"]
            )
            await expect(hybrid.locator(".phases li.done")).to_have_text(
                ["expanding", "backfilling", "validating", "cutting over"]
            )
            await expect(hybrid.locator(".phases li.current")).to_have_text("ready to contract")

            await failed.click()

            details = page.locator("#details")
            await expect(details.locator("h2")).to_have_text("Attempt #4")
            await expect(details.locator('[data-field="Error class"]')).to_have_text("DivisionByZeroError")
            await expect(details.locator('[data-field="Statement reached"]')).to_have_text("statement 2 of 3")
            await expect(details.locator('[data-field="Error"]')).to_contain_text("division by zero")
            await expect(details.locator('[data-field="Ran by"]')).to_contain_text("@")
            await page.screenshot(path=str(artifacts / "timeline.png"), full_page=True)

            gates[1].set()
            await expect(progress.locator(".items")).to_have_text(f"20 / {MEMORIES} items (66%)")
            await expect(details.locator("h2")).to_have_text("Attempt #4")  # kept across refreshes
            gates[2].set()
            await expect(group(page, TAG).locator("h2 .status")).to_have_text("completed")
            await expect(group(page, TAG).locator(".lane .label")).to_have_text(["#7 apply"])
            await expect(group(page, TAG).locator(".progress.settled .items")).to_have_text(
                f"{MEMORIES} / {MEMORIES} items (100%)"
            )
            await expect(page.locator("img")).to_have_count(0)
    finally:
        for released in gates:
            released.set()
        await reading.close()
    assert dialogs == []


async def test_without_a_token_the_page_asks_for_one(brainmigrate_pool: Any) -> None:
    """Opened without a token, the page shows a token input; a wrong token is refused with a
    message and the input again; the read token shows the timeline."""
    migrator = Migrator(brainmigrate_pool, timeline_migrations())
    await migrator.execute(NOTES)
    reader_token, admin_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    router = migrations_router(migrator, auth=BearerAuth(admin_token=admin_token, read_token=reader_token))
    app = Starlette(routes=[Mount("/migrations", app=router)])
    async with served(app) as base, chromium() as browser:
        page = await browser.new_page()

        await page.goto(f"{base}/migrations/timeline")

        token = page.locator("#token-input")
        await expect(token).to_be_visible()
        await expect(page.locator("section.group")).to_have_count(0)
        await token.fill("not-the-token")
        await page.locator("#token-form button").click()
        await expect(page.locator(".banner.error")).to_contain_text("refused the token (HTTP 401)")
        await page.locator("#token-input").fill(reader_token)
        await page.locator("#token-form button").click()
        await expect(group(page, NOTES).locator(".lane .label")).to_have_text(["#1 apply"])
        await expect(page.locator("#token-input")).to_have_count(0)


async def test_the_static_page_draws_its_embedded_snapshot_without_any_request(
    brainmigrate_pool: Any, tmp_path: Path
) -> None:
    """The page written with a snapshot (as ``brainmigrate timeline`` writes it), opened from a
    file, draws every group from the snapshot and makes no request but for the file itself."""
    migrator = Migrator(brainmigrate_pool, timeline_migrations(tag=tag_memories(name=HOSTILE)))
    await run_everything(brainmigrate_pool, migrator)
    await migrator.execute(TAG)
    file = tmp_path / "timeline.html"
    file.write_text(timeline_page(data_url=None, snapshot=await timeline_snapshot(migrator)))
    async with chromium() as browser:
        page = await browser.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        dialogs: list[str] = []
        watch_for_scripts(page, dialogs)

        await page.goto(file.as_uri())

        await expect(page.locator("section.group h2 .mid")).to_have_text(
            [NOTES, SCRATCH, BROKEN, HYBRID, TAG]
        )
        await expect(page.locator(".live")).to_have_text("snapshot")
        await expect(group(page, TAG).locator("h2 .name")).to_have_text(HOSTILE)
        await group(page, SCRATCH).locator("button.attempt").nth(1).click()
        await expect(page.locator('#details [data-field="Status"]')).to_have_text("rolled back")
        assert requests == [file.as_uri()]
        assert dialogs == []
