"""Rolling back (with and without cascade) and dry runs that leave the database exactly as it was."""

from __future__ import annotations

from typing import Any

import pytest

from brainmigrate import (
    DependencyError,
    IrreversibleMigrationError,
    MigrationConfig,
    MigrationStateError,
    MigrationStatus,
    Migrator,
)
from helpers import create_table, history_rows, schema_migration, snapshot, table_exists

pytestmark = pytest.mark.anyio
DRY = MigrationConfig(dry_run=True)


def chain() -> list[Any]:
    """base <- middle <- top, plus an unrelated migration."""
    return [
        create_table("base", "base", version="1"),
        create_table("middle", "middle", version="2", dependencies=["base"]),
        create_table("top", "top", version="3", dependencies=["middle"]),
        create_table("other", "other", version="4"),
    ]


async def test_rollback_reverses_one_migration(brainmigrate_pool: Any) -> None:
    """Rolling back the last migration drops what it made and makes it pending again."""
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.run_pending()

    [result] = await migrator.rollback("top")

    assert (result.migration_id, result.operation, result.status) == (
        "top",
        "rollback",
        MigrationStatus.ROLLED_BACK,
    )
    assert result.statements == ("DROP TABLE top",)
    assert not await table_exists(brainmigrate_pool, "top")
    assert [m.id for m in await migrator.pending()] == ["top"]


async def test_rollback_with_applied_dependents_is_refused(brainmigrate_pool: Any) -> None:
    """Without cascade, rolling back a migration others depend on raises and changes nothing."""
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(DependencyError) as caught:
        await migrator.rollback("base")

    assert "cannot roll back 'base': applied migrations depend on it (top, middle)" in str(caught.value)
    assert "cascade=True" in str(caught.value)
    assert await snapshot(brainmigrate_pool) == before


async def test_cascade_rolls_back_dependents_first_in_reverse_order(brainmigrate_pool: Any) -> None:
    """cascade=True reverses top, then middle, then base; unrelated migrations stay."""
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.run_pending()

    results = await migrator.rollback("base", cascade=True)

    assert [r.migration_id for r in results] == ["top", "middle", "base"]
    assert [m.id for m in await migrator.pending()] == ["base", "middle", "top"]
    assert await table_exists(brainmigrate_pool, "other")


async def test_an_irreversible_migration_cannot_be_rolled_back(brainmigrate_pool: Any) -> None:
    """reversible=False raises IrreversibleMigrationError, also when reached by cascade, before any change."""
    migrations = [
        create_table("base", "base"),
        schema_migration(
            "drop_data", ["CREATE TABLE gone (id int)"], reversible=False, dependencies=["base"]
        ),
    ]
    migrator = Migrator(brainmigrate_pool, migrations)
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(
        IrreversibleMigrationError, match=r"'drop_data' is not reversible \(it declares reversible=False\)"
    ):
        await migrator.rollback("drop_data")
    with pytest.raises(
        IrreversibleMigrationError, match=r"'drop_data' is not reversible \(it declares reversible=False\)"
    ):
        await migrator.rollback("base", cascade=True)

    assert await snapshot(brainmigrate_pool) == before


async def test_rolling_back_a_migration_that_is_not_applied_is_refused(brainmigrate_pool: Any) -> None:
    """Only applied migrations can be rolled back."""
    migrator = Migrator(brainmigrate_pool, chain())
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationStateError, match="'base' is not applied, so there is nothing to roll back"):
        await migrator.rollback("base")

    assert await snapshot(brainmigrate_pool) == before


async def test_a_failing_rollback_leaves_the_migration_applied(brainmigrate_pool: Any) -> None:
    """A rollback statement that fails undoes the whole rollback and records the failure."""
    migration = schema_migration("a", ["CREATE TABLE a (id int)"], ["DROP TABLE a", "DROP TABLE not_there"])
    migrator = Migrator(brainmigrate_pool, [migration])
    await migrator.run_pending()

    with pytest.raises(Exception, match="could not roll back migration 'a' at statement 2 of 2"):
        await migrator.rollback("a")

    assert await table_exists(brainmigrate_pool, "a")
    assert await migrator.status("a") == MigrationStatus.COMPLETED
    assert [(r["operation"], r["status"]) for r in await history_rows(brainmigrate_pool)] == [
        ("apply", "completed"),
        ("rollback", "failed"),
    ]


async def test_a_dry_run_reports_and_leaves_no_trace(brainmigrate_pool: Any) -> None:
    """A dry run runs the chain in a rolled-back transaction: statements and postconditions are reported,
    nothing is kept, not even the history table."""

    async def middle_sees_base(conn: Any) -> bool:
        return bool(await conn.fetchval("SELECT to_regclass('base') IS NOT NULL"))

    migrations = chain()
    migrations[1] = create_table(
        "middle", "middle", version="2", dependencies=["base"], postconditions=middle_sees_base
    )
    before = await snapshot(brainmigrate_pool)

    results = await Migrator(brainmigrate_pool, migrations, config=DRY).run_pending()

    assert [(r.migration_id, r.status, r.dry_run, r.postconditions_passed) for r in results] == [
        ("base", MigrationStatus.COMPLETED, True, True),
        ("middle", MigrationStatus.COMPLETED, True, True),
        ("top", MigrationStatus.COMPLETED, True, True),
        ("other", MigrationStatus.COMPLETED, True, True),
    ]
    assert results[0].statements == ("CREATE TABLE base (id int PRIMARY KEY, note text)",)
    assert await snapshot(brainmigrate_pool) == before
    assert not await table_exists(brainmigrate_pool, "brainmigrate.migration_history")


async def test_a_dry_run_reports_a_failure_instead_of_raising(brainmigrate_pool: Any) -> None:
    """A failing statement in a dry run is reported in its result; the run stops there."""
    migrations = [
        create_table("a", "a", version="1"),
        schema_migration("b", ["SELECT 1/0"], version="2"),
        create_table("c", "c", version="3"),
    ]

    results = await Migrator(brainmigrate_pool, migrations).run_pending(config=DRY)

    assert [(r.migration_id, r.status) for r in results] == [
        ("a", MigrationStatus.COMPLETED),
        ("b", MigrationStatus.FAILED),
    ]
    assert "division by zero" in (results[1].error or "")
    assert not await table_exists(brainmigrate_pool, "a")


async def test_a_dry_run_rollback_changes_nothing(brainmigrate_pool: Any) -> None:
    """rollback() with dry_run reports the rollback statements and keeps the migration applied."""
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    results = await migrator.rollback("middle", config=DRY, cascade=True)

    assert [(r.migration_id, r.statements) for r in results] == [
        ("top", ("DROP TABLE top",)),
        ("middle", ("DROP TABLE middle",)),
    ]
    assert await snapshot(brainmigrate_pool) == before


async def test_a_dry_run_of_one_migration_by_id(brainmigrate_pool: Any) -> None:
    """execute(id) with dry_run returns the would-be result and applies nothing."""
    migrator = Migrator(brainmigrate_pool, chain())

    result = await migrator.execute("base", config=DRY)

    assert (result.dry_run, result.status) == (True, MigrationStatus.COMPLETED)
    assert await migrator.status("base") == MigrationStatus.PENDING


async def test_a_dry_run_does_not_execute_non_transactional_statements(brainmigrate_pool: Any) -> None:
    """Statements that cannot run in a transaction are listed, not run, and marked skipped."""
    migration = schema_migration(
        "concurrent", ["CREATE INDEX CONCURRENTLY x_idx ON x (id)"], transactional=False
    )

    [result] = await Migrator(brainmigrate_pool, [migration], config=DRY).run_pending()

    assert (result.status, result.statements) == (
        MigrationStatus.SKIPPED,
        ("CREATE INDEX CONCURRENTLY x_idx ON x (id)",),
    )
    assert "non-transactional" in (result.error or "")


async def test_a_reversible_migration_without_rollback_statements_is_refused(brainmigrate_pool: Any) -> None:
    """reversible=True with nothing to run on rollback would silently do nothing: it is refused."""
    migrator = Migrator(brainmigrate_pool, [schema_migration("no_undo", ["CREATE TABLE no_undo (id int)"])])
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(
        IrreversibleMigrationError, match="declares reversible=True but has no rollback statements"
    ):
        await migrator.rollback("no_undo")

    assert await snapshot(brainmigrate_pool) == before
