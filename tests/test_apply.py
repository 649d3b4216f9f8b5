"""Applying migrations: order, history, idempotence, drift, type filters and Python migrations."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from brainmigrate import (
    ChecksumMismatchError,
    MigrationConfig,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from helpers import PythonMigration, create_table, history_rows, schema_migration, snapshot, table_exists

pytestmark = pytest.mark.anyio


#: The seed's example migration, with only its imports changed.
AddUserPreferencesTable = (
    Path(__file__).resolve().parents[1]
    / "examples"
    / "second_brain"
    / "migrations"
    / "005_add_user_preferences.py"
)


async def test_the_seed_example_applies_and_is_recorded(brainmigrate_pool: Any) -> None:
    """The seed's migration runs as written and leaves one completed history row with its facts."""
    migrator = Migrator(brainmigrate_pool, AddUserPreferencesTable)

    results = await migrator.run_pending()

    assert [(r.migration_id, r.status) for r in results] == [
        ("add_user_preferences_001", MigrationStatus.COMPLETED)
    ]
    assert len(results[0].statements) == 2
    assert await table_exists(brainmigrate_pool, "user_preferences")
    [record] = await migrator.history()
    assert (record.migration_id, record.name, record.migration_type, record.version) == (
        "add_user_preferences_001",
        "Add user preferences table",
        MigrationType.DATABASE_SCHEMA,
        "2.6.0",
    )
    assert (record.operation, record.status, record.applied_after) == ("apply", "completed", True)
    assert (record.hostname, record.pid) == (socket.gethostname(), os.getpid())
    assert len(record.checksum) == 64 and record.checksum != "abc123"
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert record.duration_ms is not None and record.duration_ms >= 0


async def test_a_second_run_applies_nothing(brainmigrate_pool: Any) -> None:
    """run_pending() is idempotent: applied migrations are never applied again."""
    migrator = Migrator(brainmigrate_pool, AddUserPreferencesTable)
    await migrator.run_pending()

    again = await Migrator(brainmigrate_pool, AddUserPreferencesTable).run_pending()

    assert again == []
    assert len(await history_rows(brainmigrate_pool)) == 1


async def test_migrations_run_in_dependency_then_version_order(brainmigrate_pool: Any) -> None:
    """Dependencies first; otherwise by version as a version, then by id."""
    migrations = [
        create_table("c", "c", version="2.10.0"),
        create_table("b", "b", version="2.9.0", dependencies=["d"]),
        create_table("a", "a", version="2.9.0"),
        create_table("d", "d", version="3.0.0"),
    ]
    migrator = Migrator(brainmigrate_pool, migrations)

    assert [m.id for m in await migrator.pending()] == ["a", "c", "d", "b"]
    results = await migrator.run_pending()

    assert [r.migration_id for r in results] == ["a", "c", "d", "b"]
    assert [row["migration_id"] for row in await history_rows(brainmigrate_pool)] == ["a", "c", "d", "b"]


async def test_changed_created_at_is_not_drift(brainmigrate_pool: Any) -> None:
    """The seed's created_at=datetime.now() changes on every import and must not count as drift."""
    await Migrator(brainmigrate_pool, AddUserPreferencesTable).run_pending()
    assert await Migrator(brainmigrate_pool, AddUserPreferencesTable).run_pending() == []


async def test_reformatting_a_statement_is_not_drift(brainmigrate_pool: Any) -> None:
    """Indentation and blank lines do not change what a statement does."""
    migration = schema_migration("fmt", ["CREATE TABLE fmt (id int)"])
    await Migrator(brainmigrate_pool, [migration]).run_pending()
    migration.statements = ["\n    CREATE TABLE fmt (id int)\n\n"]  # type: ignore[attr-defined]

    assert await Migrator(brainmigrate_pool, [migration]).run_pending() == []


async def test_an_edited_applied_migration_stops_everything(brainmigrate_pool: Any) -> None:
    """Checksum drift raises ChecksumMismatchError before anything runs, and writes nothing."""
    first = create_table("first", "first_table")
    await Migrator(brainmigrate_pool, [first]).run_pending()
    first.statements = ["CREATE TABLE first_table (id bigint PRIMARY KEY)"]  # type: ignore[attr-defined]
    second = create_table("second", "second_table")
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(ChecksumMismatchError) as caught:
        await Migrator(brainmigrate_pool, [first, second]).run_pending()

    assert caught.value.migration_id == "first"
    assert caught.value.expected != caught.value.actual
    assert "migration 'first' was changed after it was applied" in str(caught.value)
    assert "allow_checksum_drift=True" in str(caught.value)
    assert await snapshot(brainmigrate_pool) == before
    assert not await table_exists(brainmigrate_pool, "second_table")


async def test_drift_can_be_allowed_explicitly(brainmigrate_pool: Any) -> None:
    """allow_checksum_drift=True lets the run go on with the edited migration left as applied."""
    first = create_table("first", "first_table")
    await Migrator(brainmigrate_pool, [first]).run_pending()
    first.statements = ["CREATE TABLE first_table (id bigint PRIMARY KEY)"]  # type: ignore[attr-defined]
    second = create_table("second", "second_table")

    results = await Migrator(
        brainmigrate_pool, [first, second], config=MigrationConfig(allow_checksum_drift=True)
    ).run_pending()

    assert [r.migration_id for r in results] == ["second"]


async def test_a_type_filter_never_runs_a_migration_before_its_dependencies(brainmigrate_pool: Any) -> None:
    """A schema migration waiting on an unapplied data migration is skipped, not run, by a filtered run."""
    data = schema_migration(
        "data_1", ["CREATE TABLE data_marker (id int)"], migration_type=MigrationType.DATABASE_DATA
    )
    independent = create_table("schema_1", "independent")
    dependent = create_table("schema_2", "dependent", dependencies=["data_1"])
    migrator = Migrator(brainmigrate_pool, [data, independent, dependent])

    results = await migrator.run_pending(migration_type="DATABASE_SCHEMA")

    assert [(r.migration_id, r.status) for r in results] == [
        ("schema_1", MigrationStatus.COMPLETED),
        ("schema_2", MigrationStatus.SKIPPED),
    ]
    assert results[1].error == "waiting for data_1"
    assert not await table_exists(brainmigrate_pool, "dependent")
    assert not await table_exists(brainmigrate_pool, "data_marker")
    assert [m.id for m in await migrator.pending()] == ["data_1", "schema_2"]
    assert [m.id for m in await migrator.pending(MigrationType.DATABASE_DATA)] == ["data_1"]


async def test_a_python_migration_runs_up_and_down_in_a_transaction(brainmigrate_pool: Any) -> None:
    """Subclassing Migration with up()/down() gives a reversible Python migration."""
    migrator = Migrator(brainmigrate_pool, [PythonMigration])

    await migrator.run_pending()
    assert await brainmigrate_pool.fetchval("SELECT count(*) FROM settings") == 2
    await migrator.rollback("python_001")

    assert not await table_exists(brainmigrate_pool, "settings")
    assert await migrator.status("python_001") == MigrationStatus.ROLLED_BACK


async def test_history_lives_in_the_configured_schema(brainmigrate_pool: Any) -> None:
    """The history table is created in the schema the Migrator is given."""
    await Migrator(brainmigrate_pool, [create_table("a", "a")], schema="ops history").run_pending()

    assert await table_exists(brainmigrate_pool, '"ops history".migration_history')
    assert not await table_exists(brainmigrate_pool, "brainmigrate.migration_history")


async def test_status_follows_the_migration_through_its_life(brainmigrate_pool: Any) -> None:
    """status() says pending, completed, rolled back, then failed after a failed attempt."""
    migration = create_table("life", "life")
    migrator = Migrator(brainmigrate_pool, [migration])
    assert await migrator.status("life") == MigrationStatus.PENDING

    await migrator.run_pending()
    assert await migrator.status("life") == MigrationStatus.COMPLETED

    await migrator.rollback("life")
    assert await migrator.status("life") == MigrationStatus.ROLLED_BACK

    await brainmigrate_pool.execute("CREATE TABLE life (x int)")
    with pytest.raises(Exception, match="already exists"):
        await migrator.execute("life")
    assert await migrator.status("life") == MigrationStatus.FAILED


async def test_every_attempt_is_kept_in_history(brainmigrate_pool: Any) -> None:
    """Apply, roll back and apply again leave three rows; none is overwritten."""
    migrator = Migrator(brainmigrate_pool, [create_table("a", "a")])

    await migrator.run_pending()
    await migrator.rollback("a")
    await migrator.run_pending()

    assert [(r.operation, r.status, r.applied_after) for r in await migrator.history()] == [
        ("apply", "completed", True),
        ("rollback", "completed", False),
        ("apply", "completed", True),
    ]


async def test_validate_reports_without_changing_anything(brainmigrate_pool: Any) -> None:
    """validate() lists what stands in the way, and runs the precondition gate read-only."""

    async def needs_table(conn: Any) -> bool:
        return bool(await conn.fetchval("SELECT to_regclass('base') IS NOT NULL"))

    base = create_table("base", "base")
    child = create_table("child", "child", dependencies=["base"], preconditions=needs_table)
    migrator = Migrator(brainmigrate_pool, [base, child])

    report = await migrator.validate("child")
    assert (report.valid, report.problems) == (
        False,
        ("dependencies not applied: base", "validate_preconditions returned False"),
    )
    await migrator.execute("base")

    assert (await migrator.validate("child")).valid is True
    assert not await table_exists(brainmigrate_pool, "child")
