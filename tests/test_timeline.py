"""The migration timeline: its snapshot of a real history, its page's escaping, and the CLI verb
writing the static page."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest

from brainmigrate import MigrationConfig, Migrator, Progress
from brainmigrate._timeline import timeline_page, timeline_snapshot
from helpers import snapshot as database_snapshot
from hybrid_support import create_memories, fill_topic, topics_to_column
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

CONFIG = re.compile(r'<script type="application/json" id="timeline-config">(.*?)</script>', re.DOTALL)


def embedded(page: str) -> dict[str, Any]:
    """The configuration (data URL and snapshot) embedded in a page."""
    match = CONFIG.search(page)
    assert match is not None, "the page embeds no configuration"
    config: dict[str, Any] = json.loads(match.group(1))
    return config


def by_id(snapshot: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {group["id"]: group for group in snapshot["migrations"]}


def moves(group: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(a["migration_id"], a["operation"], a["status"]) for a in group["attempts"]]


def is_utc(text: str | None) -> bool:
    return text is not None and text.endswith("Z") and datetime.fromisoformat(text).utcoffset() is not None


# -- the snapshot ----------------------------------------------------------------------------------


async def test_the_snapshot_holds_every_attempt_grouped_by_migration(brainmigrate_pool: Any) -> None:
    """After real runs, each migration is a group with its attempts oldest first: applied, rolled
    back, failed (with the error's class, message and the statement reached), a data run with its
    progress, and a hybrid whose steps' attempts carry their phase, with the hybrid's phases."""
    migrator = Migrator(brainmigrate_pool, timeline_migrations())
    await run_everything(brainmigrate_pool, migrator)
    await migrator.execute(TAG)

    snapshot = await timeline_snapshot(migrator)

    groups = by_id(snapshot)
    assert list(groups) == [NOTES, SCRATCH, BROKEN, HYBRID, TAG]
    assert {mid: group["status"] for mid, group in groups.items()} == {
        NOTES: "completed",
        SCRATCH: "rolled_back",
        BROKEN: "failed",
        HYBRID: "running",
        TAG: "completed",
    }
    assert moves(groups[NOTES]) == [(NOTES, "apply", "completed")]
    assert moves(groups[SCRATCH]) == [(SCRATCH, "apply", "completed"), (SCRATCH, "rollback", "completed")]
    [failed] = groups[BROKEN]["attempts"]
    assert (failed["status"], failed["error_class"], failed["sqlstate"]) == (
        "failed",
        "DivisionByZeroError",
        "22012",
    )
    assert "division by zero" in failed["error_message"]
    assert failed["statement_reached"] == "statement 2 of 3"
    assert groups[BROKEN]["pending"] is True
    hybrid = groups[HYBRID]
    assert [(a["migration_id"], a["hybrid_phase"]) for a in hybrid["attempts"]] == [
        ("add_topic_column_001", "expanding"),
        ("fill_topic_001", "backfilling"),
    ]
    assert (hybrid["kind"], hybrid["hybrid"]["phase"], hybrid["hybrid"]["steps_done"]) == (
        "hybrid",
        "ready_to_contract",
        ["add_topic_column_001", "fill_topic_001"],
    )
    assert hybrid["name"] == "move each memory's topic from its metadata to a column"
    progress = groups[TAG]["progress"]
    assert (progress["status"], progress["processed"], progress["total"], progress["fraction"]) == (
        "completed",
        30,
        30,
        1.0,
    )
    attempts = [a for group in snapshot["migrations"] for a in group["attempts"]]
    assert snapshot["attempt_count"] == len(attempts) == 7
    assert sorted(a["id"] for a in attempts) == [a["id"] for a in attempts]
    assert all(is_utc(a["started_at"]) and is_utc(a["finished_at"]) for a in attempts)
    assert all(a["ran_by"] for a in attempts)
    assert is_utc(snapshot["generated_at"])
    assert snapshot["running"] == []
    assert json.loads(json.dumps(snapshot)) == snapshot


async def test_the_snapshot_shows_a_data_run_in_flight_with_its_progress(brainmigrate_pool: Any) -> None:
    """While a data migration is between batches, its group is running and lists the run with
    processed, total, rate and ETA (its attempt is recorded when it ends); once released it
    completes, with its attempt."""
    release = anyio.Event()
    first_batch = anyio.Event()
    seen = 0

    async def hold_after_first_batch(row: dict[str, Any]) -> None:
        nonlocal seen
        seen += 1
        if seen > 10:
            await release.wait()

    def checkpoint(progress: Progress) -> None:
        if progress.migration_id == TAG and progress.processed == 10:
            first_batch.set()

    migrator = Migrator(
        brainmigrate_pool,
        timeline_migrations(tag=tag_memories(before_row=hold_after_first_batch)),
        config=MigrationConfig(batch_size=10, checkpoint_frequency=10),
        on_progress=checkpoint,
    )
    await run_everything(brainmigrate_pool, migrator)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(migrator.execute, TAG)
        with anyio.fail_after(30):  # a guard against a hang, not a measurement
            await first_batch.wait()
        during = await timeline_snapshot(migrator)
        release.set()

    after = await timeline_snapshot(migrator)
    group = by_id(during)[TAG]
    [run] = group["running"]
    assert (run["status"], run["processed"], run["total"], run["done"]) == ("running", 10, 30, 10)
    assert run["eta_seconds"] is None or run["eta_seconds"] >= 0
    assert during["running"] == [run]
    assert (group["status"], group["attempts"]) == ("running", [])  # recorded once the run ends
    done = by_id(after)[TAG]
    assert (done["status"], done["running"], done["progress"]["processed"]) == ("completed", [], 30)
    assert moves(done) == [(TAG, "apply", "completed")]
    assert after["running"] == []


async def test_a_hybrid_backfilling_shows_its_step_running_in_its_group(brainmigrate_pool: Any) -> None:
    """While a hybrid's backfill step is between batches, the hybrid's group is in the backfilling
    phase and lists the step's run in flight; its expand step's attempt carries its phase."""
    release = anyio.Event()
    first_batch = anyio.Event()

    async def hold_after_first_batch(row: dict[str, Any]) -> None:
        if row["id"] > 10:
            await release.wait()

    def checkpoint(progress: Progress) -> None:
        if progress.migration_id == "fill_topic_001" and progress.processed == 10:
            first_batch.set()

    hybrid = topics_to_column(HYBRID, backfill=(fill_topic(before_row=hold_after_first_batch),))
    migrator = Migrator(
        brainmigrate_pool,
        [hybrid],
        config=MigrationConfig(batch_size=10, checkpoint_frequency=10),
        on_progress=checkpoint,
    )
    await create_memories(brainmigrate_pool, 30)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(migrator.execute, HYBRID)
        with anyio.fail_after(30):  # a guard against a hang, not a measurement
            await first_batch.wait()
        during = await timeline_snapshot(migrator)
        release.set()

    [group] = during["migrations"]
    assert (group["id"], group["status"], group["hybrid"]["phase"]) == (HYBRID, "running", "backfilling")
    assert [(p["migration_id"], p["processed"], p["total"]) for p in group["running"]] == [
        ("fill_topic_001", 10, 30)
    ]
    assert [(a["migration_id"], a["hybrid_phase"]) for a in group["attempts"]] == [
        ("add_topic_column_001", "expanding")
    ]


async def test_the_snapshot_of_a_database_never_migrated_lists_the_pending_and_writes_nothing(
    brainmigrate_pool: Any,
) -> None:
    """With no history table yet, every migration is a pending group with no attempts, in the
    order they would run, and reading the snapshot creates nothing and changes nothing."""
    migrator = Migrator(brainmigrate_pool, timeline_migrations())
    before = await database_snapshot(brainmigrate_pool)

    snapshot = await timeline_snapshot(migrator)

    assert await database_snapshot(brainmigrate_pool) == before
    assert snapshot["attempt_count"] == 0
    assert [(g["id"], g["status"], g["pending"], g["attempts"]) for g in snapshot["migrations"]] == [
        (meta.id, "pending", True, []) for meta in await migrator.pending()
    ]
    assert {group["id"] for group in snapshot["migrations"]} == {NOTES, SCRATCH, BROKEN, TAG, HYBRID}


# -- the page --------------------------------------------------------------------------------------


async def test_a_hostile_migration_name_stays_data_in_the_static_page(brainmigrate_pool: Any) -> None:
    """A name holding ``</script>``, markup, ``&`` and U+2028 is embedded escaped: the page has only
    its own two script elements and no markup from the name, and the embedded JSON decodes to the
    snapshot exactly."""
    migrator = Migrator(brainmigrate_pool, timeline_migrations(tag=tag_memories(name=HOSTILE)))
    await run_everything(brainmigrate_pool, migrator)
    await migrator.execute(TAG)
    snapshot = await timeline_snapshot(migrator)

    page = timeline_page(data_url=None, snapshot=snapshot)

    assert by_id(snapshot)[TAG]["name"] == HOSTILE
    assert page.count("<script") == 2
    assert page.count("</script>") == 2
    assert "<img" not in page
    assert "<b>" not in page
    assert "\u2028" not in page
    assert "innerHTML" not in page
    assert embedded(page) == {"data_url": None, "snapshot": snapshot, "poll_ms": 1000}


def test_the_page_allows_only_its_own_script_and_style() -> None:
    """The Content-Security-Policy names the hashes of the page's inline script and style, so an
    injected element or handler would not run; the page fetches nothing but its data."""
    page = timeline_page(data_url="timeline/data", snapshot=None)

    script = re.search(r"<script>(.*?)</script>", page, re.DOTALL)
    style = re.search(r"<style>(.*?)</style>", page, re.DOTALL)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    assert script is not None and style is not None and policy is not None

    def digest(text: str) -> str:
        return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert f"script-src '{digest(script.group(1))}'" in policy.group(1)
    assert f"style-src '{digest(style.group(1))}'" in policy.group(1)
    assert "default-src 'none'" in policy.group(1)
    assert embedded(page) == {"data_url": "timeline/data", "snapshot": None, "poll_ms": 1000}
    assert "http://" not in page and "https://" not in page  # no CDN, nothing from elsewhere


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"data_url": None, "snapshot": None}, "needs a data_url to read", id="neither"),
        pytest.param({"data_url": " ", "snapshot": None}, "data_url must be a non-empty", id="blank-url"),
        pytest.param({"data_url": None, "snapshot": [1]}, "snapshot must be a dict", id="not-a-dict"),
    ],
)
def test_a_page_without_data_is_refused(kwargs: dict[str, Any], message: str) -> None:
    """A page with neither a data URL nor a snapshot, or with a wrong one, is a ValueError."""
    with pytest.raises(ValueError, match=message):
        timeline_page(**kwargs)


# -- the CLI verb ----------------------------------------------------------------------------------

MIGRATION = f'''
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class CreateNotes(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="{NOTES}", name="create notes", version="1.0.0",
            migration_type=MigrationType.DATABASE_SCHEMA, reversible=True,
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE notes (id int)"]

    async def get_rollback_statements(self):
        return ["DROP TABLE notes"]
'''


@pytest.fixture
def command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, brainmigrate_database: str) -> list[str]:
    """``python -m brainmigrate`` with a DSN and a directory holding one schema migration, run in
    a temporary directory."""
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "m001_create_notes.py").write_text(textwrap.dedent(MIGRATION))
    for name in ("BRAINMIGRATE_DSN", "BRAINMIGRATE_MIGRATIONS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return [
        sys.executable,
        "-m",
        "brainmigrate",
        "--dsn",
        brainmigrate_database,
        "--migrations",
        str(directory),
    ]


def cli(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, env=dict(os.environ), timeout=120, check=False
    )


def test_the_timeline_verb_writes_the_static_page_with_the_snapshot(
    command: list[str], tmp_path: Path
) -> None:
    """``brainmigrate timeline --output FILE`` writes one HTML file embedding the history, which
    needs no server to read; without --output it writes brainmigrate-timeline.html."""
    assert cli(command, "upgrade").returncode == 0

    written = cli(command, "timeline", "--output", "out.html")
    default = cli(command, "--json", "timeline")

    assert written.returncode == 0, written.stderr
    assert written.stdout.strip() == "wrote out.html: 1 attempts of 1 migrations"
    config = embedded((tmp_path / "out.html").read_text())
    assert config["data_url"] is None
    [group] = config["snapshot"]["migrations"]
    assert (group["id"], group["name"], group["status"]) == (NOTES, "create notes", "completed")
    assert moves(group) == [(NOTES, "apply", "completed")]
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout) == {
        "path": "brainmigrate-timeline.html",
        "attempts": 1,
        "migrations": 1,
    }
    assert embedded((tmp_path / "brainmigrate-timeline.html").read_text())["snapshot"]["attempt_count"] == 1


def test_the_timeline_verb_refuses_an_output_in_a_missing_directory(
    command: list[str], tmp_path: Path
) -> None:
    """An --output whose directory does not exist is a configuration error (exit 3) saying what to
    do, with no traceback, and nothing is written."""
    refused = cli(command, "timeline", "--output", "missing/out.html")

    assert refused.returncode == 3
    assert "there is no directory missing" in refused.stderr
    assert "give --output a file in a directory that exists" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "missing").exists()
