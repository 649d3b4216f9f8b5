"""Bad input and failures: a typed error with a clear message, and a database left as it was."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from brainmigrate import (
    ConfigError,
    CyclicDependencyError,
    DatabaseSchemaMigration,
    DependencyError,
    DirtyMigrationError,
    DuplicateMigrationError,
    MigrationConfig,
    MigrationExecutionError,
    MigrationLoadError,
    MigrationNotFoundError,
    MigrationStateError,
    MigrationStatus,
    MigrationValidationError,
    Migrator,
    MissingDependencyError,
    PoolExhaustedError,
)
from helpers import PythonMigration, create_table, history_rows, schema_migration, snapshot, table_exists

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("migrations", "error", "message"),
    [
        pytest.param(
            [
                create_table("a", "a", dependencies=["c"]),
                create_table("b", "b", dependencies=["a"]),
                create_table("c", "c", dependencies=["b"]),
            ],
            CyclicDependencyError,
            "cyclic dependency: a -> c -> b -> a",
            id="cycle",
        ),
        pytest.param(
            [create_table("a", "a", dependencies=["ghost"])],
            MissingDependencyError,
            "'a' depends on 'ghost', which is not a known migration",
            id="missing-dependency",
        ),
        pytest.param(
            [create_table("a", "a"), create_table("a", "b")],
            DuplicateMigrationError,
            "duplicate migration id 'a'",
            id="duplicate-id",
        ),
    ],
)
async def test_a_broken_graph_is_refused_before_the_database_is_touched(
    brainmigrate_pool: Any, migrations: list[Any], error: type[Exception], message: str
) -> None:
    """Cycles, missing dependencies and duplicate ids raise before any table, even history, exists."""
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(error, match=message):
        await Migrator(brainmigrate_pool, migrations).run_pending()

    assert await snapshot(brainmigrate_pool) == before
    assert not await table_exists(brainmigrate_pool, "brainmigrate.migration_history")


async def test_an_sql_error_in_statement_two_of_three_undoes_statement_one(brainmigrate_pool: Any) -> None:
    """The failing statement is named; the first statement's table is gone; a failed row is kept."""
    migration = schema_migration(
        "broken",
        [
            "CREATE TABLE made (id int)",
            "ALTER TABLE missing_table ADD COLUMN x int",
            "CREATE TABLE never (id int)",
        ],
    )
    migrator = Migrator(brainmigrate_pool, [migration])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    error = caught.value
    assert (error.migration_id, error.statement_index, error.sqlstate) == ("broken", 1, "42P01")
    assert error.statement == "ALTER TABLE missing_table ADD COLUMN x int"
    assert "could not apply migration 'broken' at statement 2 of 3" in str(error)
    assert 'relation "missing_table" does not exist' in str(error)
    assert "the database is as it was before it" in str(error)
    assert isinstance(error.__cause__, asyncpg.UndefinedTableError)
    assert not await table_exists(brainmigrate_pool, "made")
    [row] = await history_rows(brainmigrate_pool)
    assert (row["status"], row["statement_index"], row["sqlstate"]) == ("failed", 1, "42P01")
    assert [m.id for m in await migrator.pending()] == ["broken"]


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        pytest.param("returns_false", "validate_postconditions returned False", id="returns-false"),
        pytest.param("raises", "postconditions of migration 'gated' raised ZeroDivisionError", id="raises"),
    ],
)
async def test_a_failed_postcondition_rolls_the_migration_back(
    brainmigrate_pool: Any, hook: str, message: str
) -> None:
    """The verify gate runs in the migration's transaction: failing it leaves nothing behind."""

    async def postconditions(conn: Any) -> bool:
        assert await conn.fetchval("SELECT to_regclass('gated') IS NOT NULL")  # visible inside
        if hook == "raises":
            raise ZeroDivisionError("no rows")
        return False

    migration = create_table("gated", "gated", postconditions=postconditions)

    with pytest.raises(MigrationValidationError, match=message):
        await Migrator(brainmigrate_pool, [migration]).run_pending()

    assert not await table_exists(brainmigrate_pool, "gated")
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["failed"]


async def test_a_refused_precondition_runs_nothing(brainmigrate_pool: Any) -> None:
    """validate_preconditions returning False refuses the migration before its statements."""

    async def never(conn: Any) -> bool:
        return False

    with pytest.raises(MigrationValidationError, match="preconditions of migration 'pre' failed"):
        await Migrator(brainmigrate_pool, [create_table("pre", "pre", preconditions=never)]).run_pending()

    assert not await table_exists(brainmigrate_pool, "pre")


async def test_skipping_the_gates_is_allowed(brainmigrate_pool: Any) -> None:
    """validate_before/validate_after False skip the hooks."""

    async def never(conn: Any) -> bool:
        return False

    migration = create_table("free", "free", preconditions=never, postconditions=never)
    config = MigrationConfig(validate_before=False, validate_after=False)

    [result] = await Migrator(brainmigrate_pool, [migration], config=config).run_pending()

    assert (result.status, result.postconditions_passed) == (MigrationStatus.COMPLETED, None)


async def test_executing_a_migration_whose_dependency_is_not_applied_is_refused(
    brainmigrate_pool: Any,
) -> None:
    """execute(id) checks dependencies against what is applied, and writes nothing when refusing."""
    migrator = Migrator(
        brainmigrate_pool, [create_table("a", "a"), create_table("b", "b", dependencies=["a"])]
    )
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(DependencyError, match="migration 'b' depends on 'a', not applied yet"):
        await migrator.execute("b")

    assert (await snapshot(brainmigrate_pool))[0] == before[0]
    assert await history_rows(brainmigrate_pool) == []


@pytest.mark.parametrize("operation", ["execute", "rollback", "status", "validate"])
async def test_an_unknown_id_is_not_found(brainmigrate_pool: Any, operation: str) -> None:
    """Every call taking an id raises MigrationNotFoundError for an unknown one."""
    migrator = Migrator(brainmigrate_pool, [create_table("a", "a")])
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationNotFoundError, match="no migration with id 'nope'"):
        await getattr(migrator, operation)("nope")

    assert await snapshot(brainmigrate_pool) == before


async def test_executing_an_applied_migration_is_refused(brainmigrate_pool: Any) -> None:
    """A migration cannot be applied twice by id."""
    migrator = Migrator(brainmigrate_pool, [create_table("a", "a")])
    await migrator.run_pending()

    with pytest.raises(MigrationStateError, match="'a' is already applied"):
        await migrator.execute("a")

    assert len(await history_rows(brainmigrate_pool)) == 1


class WrongMetadata(DatabaseSchemaMigration):
    def _get_metadata(self) -> Any:
        return {"id": "dict_metadata"}

    async def get_forward_statements(self) -> list[str]:
        return ["CREATE TABLE never (id int)"]


async def test_metadata_of_the_wrong_type_is_refused(brainmigrate_pool: Any) -> None:
    """_get_metadata() returning anything but MigrationMetadata names the class and the type."""
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [WrongMetadata]).run_pending()

    assert "test_failures.WrongMetadata._get_metadata() must return MigrationMetadata, got dict" in str(
        caught.value
    )
    assert await snapshot(brainmigrate_pool) == before


async def test_continue_on_error_skips_dependents_and_runs_the_rest(brainmigrate_pool: Any) -> None:
    """With continue_on_error a failure is reported, its dependents are skipped, others run."""
    migrations = [
        schema_migration("bad", ["SELECT 1/0"], version="1"),
        create_table("child", "child", version="2", dependencies=["bad"]),
        create_table("other", "other", version="3"),
    ]

    results = await Migrator(
        brainmigrate_pool, migrations, config=MigrationConfig(continue_on_error=True)
    ).run_pending()

    assert [(r.migration_id, r.status) for r in results] == [
        ("bad", MigrationStatus.FAILED),
        ("child", MigrationStatus.SKIPPED),
        ("other", MigrationStatus.COMPLETED),
    ]
    assert "division by zero" in (results[0].error or "")
    assert await table_exists(brainmigrate_pool, "other")
    assert not await table_exists(brainmigrate_pool, "child")


async def test_a_migration_over_its_time_limit_is_stopped_and_undone(brainmigrate_pool: Any) -> None:
    """timeout_seconds bounds one migration; when it expires nothing of it remains."""
    migration = schema_migration("slow", ["CREATE TABLE slow (id int)", "SELECT pg_sleep(5)"])
    config = MigrationConfig(timeout_seconds=0.3)

    with pytest.raises(MigrationExecutionError, match=r"timeout_seconds=0\.3"):
        await Migrator(brainmigrate_pool, [migration], config=config).run_pending()

    assert not await table_exists(brainmigrate_pool, "slow")
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["failed"]


async def test_a_pool_of_one_connection_is_refused(brainmigrate_database: str) -> None:
    """The lock and the work need two connections; a smaller pool is a ConfigError."""
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=1)
    try:
        with pytest.raises(ConfigError, match="max_size is 1; brainmigrate needs at least 2"):
            Migrator(pool, [create_table("a", "a")])
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"config": {"dry_run": True}}, "config must be a MigrationConfig", id="config-dict"),
        pytest.param({"schema": ""}, "schema must be a PostgreSQL identifier", id="empty-schema"),
        pytest.param({"schema": "x" * 64}, "schema must be a PostgreSQL identifier", id="long-schema"),
    ],
)
async def test_invalid_migrator_arguments_are_config_errors(
    brainmigrate_pool: Any, kwargs: dict[str, Any], message: str
) -> None:
    """Bad constructor arguments raise ConfigError at once."""
    with pytest.raises(ConfigError, match=message):
        Migrator(brainmigrate_pool, [create_table("a", "a")], **kwargs)


async def test_a_non_transactional_failure_is_reversed_when_reversible(brainmigrate_pool: Any) -> None:
    """Statements already run are undone by the rollback statements; the attempt is recorded as failed."""
    migration = schema_migration(
        "nontx",
        ["CREATE TABLE nt (id int)", "CREATE INDEX CONCURRENTLY nt_idx ON nt (id)", "SELECT 1/0"],
        ["DROP INDEX CONCURRENTLY IF EXISTS nt_idx", "DROP TABLE IF EXISTS nt"],
        transactional=False,
    )
    migrator = Migrator(brainmigrate_pool, [migration])

    with pytest.raises(MigrationExecutionError, match="at statement 3 of 3"):
        await migrator.run_pending()

    assert not await table_exists(brainmigrate_pool, "nt")
    [row] = await history_rows(brainmigrate_pool)
    assert (row["status"], row["statement_index"]) == ("failed", 2)
    assert "reversed with the rollback statements" in row["error"]
    assert await migrator.status("nontx") == MigrationStatus.FAILED


async def test_an_irreversible_non_transactional_failure_leaves_a_dirty_mark(brainmigrate_pool: Any) -> None:
    """When completed statements cannot be undone, the next run stops and says what to do."""
    migration = schema_migration(
        "nontx", ["CREATE TABLE nt (id int)", "SELECT 1/0"], transactional=False, reversible=False
    )
    later = create_table("later", "later", dependencies=["nontx"])
    migrator = Migrator(brainmigrate_pool, [migration, later])

    with pytest.raises(MigrationExecutionError):
        await migrator.run_pending()
    with pytest.raises(DirtyMigrationError) as caught:
        await migrator.run_pending()

    assert caught.value.migration_id == "nontx"
    assert "interrupted at statement 2 of 2 ('SELECT 1/0')" in str(caught.value)
    assert "resolve('nontx', applied=True)" in str(caught.value)
    assert await migrator.status("nontx") == MigrationStatus.DIRTY
    assert not await table_exists(brainmigrate_pool, "later")

    await brainmigrate_pool.execute("DROP TABLE nt")
    await migrator.resolve("nontx", applied=False)
    assert [m.id for m in await migrator.pending()] == ["nontx", "later"]


async def test_a_migrations_package_that_fails_to_import_writes_nothing(
    brainmigrate_pool: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import error in the migrations source names the module and leaves the database untouched."""
    package = tmp_path / "failing_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "m001.py").write_text("import not_a_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationLoadError) as caught:
        await Migrator(brainmigrate_pool, "failing_migrations").run_pending()

    assert caught.value.module == "failing_migrations.m001"
    assert "No module named 'not_a_module_anywhere'" in str(caught.value)
    assert await snapshot(brainmigrate_pool) == before
    assert not await table_exists(brainmigrate_pool, "brainmigrate.migration_history")


async def test_an_invalid_config_for_one_call_writes_nothing(brainmigrate_pool: Any) -> None:
    """A config that is not a MigrationConfig is refused before the lock or the history is touched."""
    migrator = Migrator(brainmigrate_pool, [create_table("a", "a")])
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(ConfigError, match="config must be a MigrationConfig, got"):
        await migrator.run_pending(config={"dry_run": True})  # type: ignore[arg-type]

    assert await snapshot(brainmigrate_pool) == before
    assert not await table_exists(brainmigrate_pool, "brainmigrate.migration_history")


async def test_a_gate_error_is_raised_as_it_is(brainmigrate_pool: Any) -> None:
    """A brainmigrate error from a gate propagates unchanged, not chained to itself."""

    async def never(conn: Any) -> bool:
        return False

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [create_table("pre", "pre", preconditions=never)]).run_pending()

    assert caught.value.__cause__ is not caught.value


async def test_a_pool_without_a_free_connection_fails_in_time_and_writes_nothing(
    brainmigrate_database: str,
) -> None:
    """When the application holds the connections the work needs, the run stops within lock_wait_seconds."""
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=2, max_size=2)
    try:
        migrator = Migrator(pool, [create_table("a", "a")], config=MigrationConfig(lock_wait_seconds=0.3))
        async with pool.acquire():  # the application's connection; the lock takes the other one
            with pytest.raises(
                PoolExhaustedError, match=r"no connection of the pool became free within 0\.3 s"
            ):
                await migrator.run_pending()
        assert not await table_exists(pool, "brainmigrate.migration_history")
        assert not await table_exists(pool, "a")
    finally:
        await pool.close()


class HalfDonePythonMigration(PythonMigration):
    """A non-transactional Python migration whose up() fails after doing part of its work."""

    transactional = False

    async def up(self, conn: Any) -> None:
        await conn.execute("CREATE TABLE settings (key text PRIMARY KEY, value text)")
        raise RuntimeError("model API unavailable")


async def test_a_failed_non_transactional_python_migration_is_reversed_with_down(
    brainmigrate_pool: Any,
) -> None:
    """down() undoes what up() did before failing; the attempt is failed, not dirty, and can run again."""
    migrator = Migrator(brainmigrate_pool, [HalfDonePythonMigration])

    with pytest.raises(MigrationExecutionError, match="RuntimeError: model API unavailable"):
        await migrator.run_pending()

    assert not await table_exists(brainmigrate_pool, "settings")
    [row] = await history_rows(brainmigrate_pool)
    assert row["status"] == "failed"
    assert "its work was reversed with down()" in row["error"]
    assert await migrator.status("python_001") == MigrationStatus.FAILED
