"""A migration's transaction and session are brainmigrate's: statements that end the transaction,
session settings that would leak into the next migration or back into the pool, and a history table
that cannot record a failure never break atomicity or hide what happened."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import (
    DirtyMigrationError,
    Migration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from data_support import create_memories, server_side_migration
from helpers import create_table, history_rows, schema_migration, snapshot, table_exists

pytestmark = pytest.mark.anyio
DRY = MigrationConfig(dry_run=True)

#: Who the session is and what it has set: what a migration must find as the pool gave it.
OBSERVE = """
SELECT current_user::text, session_user::text, current_setting('search_path'),
       coalesce(nullif(current_setting('myapp.flag', true), ''), 'unset'),
       current_setting('enable_hashjoin')
"""


@asynccontextmanager
async def temporary_role(pool: asyncpg.Pool[Any], *, login: bool = False) -> AsyncIterator[str]:
    """A role with a unique name (roles are cluster-wide), dropped with what it owns afterwards."""
    role = f"bm_test_{uuid.uuid4().hex[:12]}"
    await pool.execute(f'CREATE ROLE "{role}"{" LOGIN" if login else ""}')
    try:
        yield role
    finally:
        await pool.execute(f'DROP OWNED BY "{role}"')
        await pool.execute(f'DROP ROLE "{role}"')


def python_migration(
    migration_id: str,
    body: Sequence[str],
    *,
    fail_after: bool = False,
    dependencies: Sequence[str] = (),
    version: str = "1",
) -> type[Migration]:
    """A Python migration whose up() runs ``body`` statement by statement (then raises, if asked)."""

    class Scripted(Migration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name=f"migration {migration_id}",
                version=version,
                migration_type=MigrationType.DATABASE_SCHEMA,
                dependencies=list(dependencies),
            )

        async def up(self, conn: Any) -> None:
            for statement in body:
                await conn.execute(statement)
            if fail_after:
                raise RuntimeError("up() failed after that")

        async def down(self, conn: Any) -> None:
            pass

    Scripted.__name__ = Scripted.__qualname__ = f"Scripted_{migration_id}"
    return Scripted


def observer(seen: list[tuple[str, Any]], *, dependencies: Sequence[str] = ()) -> type[Migration]:
    """A migration whose preconditions and up() record what session they find."""

    class Observer(Migration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="observer",
                name="observe the session",
                version="9",
                migration_type=MigrationType.DATABASE_SCHEMA,
                dependencies=list(dependencies),
            )

        async def validate_preconditions(self, conn: Any) -> bool:
            seen.append(("preconditions", await observe(conn)))
            return True

        async def up(self, conn: Any) -> None:
            seen.append(("up", await observe(conn)))

    return Observer


async def observe(conn: Any) -> tuple[Any, ...]:
    """What :data:`OBSERVE` finds on ``conn`` (a connection or a pool)."""
    row = await conn.fetchrow(OBSERVE)
    assert row is not None
    return tuple(row)


async def pooled_sessions(pool: asyncpg.Pool[Any]) -> list[tuple[Any, ...]]:
    """What every connection of the pool (all taken at once) observes."""
    conns = [await pool.acquire() for _ in range(pool.get_max_size())]
    try:
        return [await observe(conn) for conn in conns]
    finally:
        for conn in conns:
            await pool.release(conn)


# -- 1. transaction control inside a transactional migration --------------------------------------

TRANSACTION_CONTROL = [
    pytest.param("COMMIT", "COMMIT", id="commit"),
    pytest.param("commit work", "commit work", id="commit-lowercase"),
    pytest.param("END", "END", id="end"),
    pytest.param("ROLLBACK", "ROLLBACK", id="rollback"),
    pytest.param("ABORT", "ABORT", id="abort"),
    pytest.param("COMMIT AND CHAIN", "COMMIT AND CHAIN", id="commit-and-chain"),
    pytest.param("BEGIN", "BEGIN", id="begin"),
    pytest.param("START TRANSACTION", "START TRANSACTION", id="start-transaction"),
    pytest.param("PREPARE TRANSACTION 'bm'", "PREPARE TRANSACTION 'bm'", id="prepare-transaction"),
    pytest.param("ROLLBACK TO SAVEPOINT s", "ROLLBACK TO SAVEPOINT s", id="rollback-to-savepoint"),
    pytest.param("RELEASE SAVEPOINT s", "RELEASE SAVEPOINT s", id="release-savepoint"),
    pytest.param("/* done */ -- now\n  COMMIT;", "COMMIT", id="after-comments"),
    pytest.param("CREATE TABLE sneaky (id int); COMMIT", "COMMIT", id="second-of-a-string"),
    pytest.param(
        "CREATE FUNCTION one() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; COMMIT",
        "COMMIT",
        id="after-a-begin-atomic-body",
    ),
    pytest.param("SELECT ';'; SELECT $$;$$; END", "END", id="after-quoted-semicolons"),
]


@pytest.mark.parametrize(("statement", "control"), TRANSACTION_CONTROL)
async def test_a_transaction_control_statement_is_refused_before_anything_runs(
    brainmigrate_pool: Any, statement: str, control: str
) -> None:
    """A transactional schema migration's SQL that would end or replace its transaction is refused,
    naming the migration and the statement, before any of its statements runs."""
    migration = schema_migration(
        "controls", ["CREATE TABLE made (id int)", statement, "CREATE TABLE later (id int)"]
    )
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [migration]).run_pending()

    message = str(caught.value)
    assert caught.value.migration_id == "controls"
    assert "migration 'controls'" in message
    assert "forward statement 2 of 3" in message
    assert f"controls the transaction ({control!r})" in message
    assert "Nothing of it was run" in message
    assert "transactional = False" in message
    assert await snapshot(brainmigrate_pool) == before


async def test_a_migration_that_controls_the_transaction_stops_the_run_before_any_migration(
    brainmigrate_pool: Any,
) -> None:
    """The check is made when the migrations are loaded: a COMMIT in the second migration stops
    the run before the first one is applied."""
    migrations = [
        create_table("first", "first", version="1"),
        schema_migration("commits", ["CREATE TABLE second (id int)", "COMMIT"], version="2"),
    ]
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError, match=r"migration 'commits' runs in one transaction"):
        await Migrator(brainmigrate_pool, migrations).run_pending()

    assert await snapshot(brainmigrate_pool) == before


async def test_rollback_statements_that_control_the_transaction_are_refused(brainmigrate_pool: Any) -> None:
    """Rolling back runs the rollback statements in one transaction too: a COMMIT there is refused
    when the migrations are loaded, before the rollback starts."""
    migration = schema_migration("undo", ["CREATE TABLE undo (id int)"], ["DROP TABLE undo"])
    await Migrator(brainmigrate_pool, [migration]).run_pending()
    migration.undo = ["DROP TABLE undo", "COMMIT"]  # type: ignore[attr-defined]  # edited afterwards
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError, match=r"rollback statement 2 of 2 \('COMMIT'\)"):
        await Migrator(brainmigrate_pool, [migration]).rollback("undo")

    assert await snapshot(brainmigrate_pool) == before


async def test_words_of_transaction_control_inside_literals_and_bodies_are_not_refused(
    brainmigrate_pool: Any,
) -> None:
    """Only a statement's leading keywords count: strings, dollar quotes, comments, identifiers,
    function bodies and savepoints that mention COMMIT or END run as usual."""
    migration = schema_migration(
        "mentions",
        [
            'CREATE TABLE notes (body text, "commit" int)  -- COMMIT in a comment',
            "INSERT INTO notes VALUES ('COMMIT; ROLLBACK', 1), (E'\\'; END', 2), ($tag$;COMMIT$tag$, 3)",
            "DO $$ BEGIN PERFORM 1; END $$",
            "CREATE FUNCTION one() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END",
            "SELECT CASE WHEN true THEN 1 END; SAVEPOINT mine; /* ; COMMIT */ SELECT 2",
            "COMMENT ON TABLE notes IS 'end; begin; abort'",
        ],
    )

    [result] = await Migrator(brainmigrate_pool, [migration]).run_pending()

    assert result.status == MigrationStatus.COMPLETED
    assert await brainmigrate_pool.fetchval("SELECT count(*) FROM notes") == 3


ENDING_THE_TRANSACTION = [
    pytest.param(["COMMIT"], False, id="commit"),
    pytest.param(["END"], False, id="end"),
    pytest.param(["ROLLBACK"], False, id="rollback"),
    pytest.param(["COMMIT AND CHAIN"], False, id="commit-and-chain"),
    pytest.param(["COMMIT", "BEGIN"], False, id="commit-then-begin"),
    pytest.param(["ROLLBACK; BEGIN"], False, id="rollback-then-begin"),
    pytest.param(["COMMIT"], True, id="commit-then-fail"),
    pytest.param(["COMMIT AND CHAIN"], True, id="commit-and-chain-then-fail"),
]


@pytest.mark.parametrize(("control", "fail_after"), ENDING_THE_TRANSACTION)
async def test_a_python_migration_that_ends_its_transaction_is_recorded_dirty(
    brainmigrate_pool: Any, control: list[str], fail_after: bool
) -> None:
    """up() running COMMIT or ROLLBACK is found before anything is recorded: a typed error says what
    happened, the attempt is marked dirty (never completed), and the next run stops and asks."""
    migration = python_migration(
        "escapes",
        ["CREATE TABLE before_control (id int)", *control, "CREATE TABLE after_control (id int)"],
        fail_after=fail_after,
    )
    migrator = Migrator(brainmigrate_pool, [migration])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    message = str(caught.value)
    assert caught.value.migration_id == "escapes"
    assert "migration 'escapes' ended the transaction brainmigrate ran it in" in message
    assert "marked dirty" in message
    assert "migrator.resolve('escapes'" in message
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["dirty"]
    assert await migrator.status("escapes") == MigrationStatus.DIRTY
    with pytest.raises(DirtyMigrationError) as dirty:
        await migrator.run_pending()
    assert "migration 'escapes' is dirty: it was interrupted in its Python code" in str(dirty.value)
    assert "statement 1 of 0" not in str(dirty.value)


async def test_a_python_migration_keeping_to_savepoints_is_applied(brainmigrate_pool: Any) -> None:
    """conn.transaction() inside up() is a savepoint in brainmigrate's transaction: nothing is wrong."""

    class Savepoints(Migration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="savepoints", name="savepoints", version="1", migration_type=MigrationType.DATABASE_SCHEMA
            )

        async def up(self, conn: Any) -> None:
            await conn.execute("CREATE TABLE kept (id int)")
            with pytest.raises(LookupError):
                await self.undone(conn)

        async def undone(self, conn: Any) -> None:
            async with conn.transaction():
                await conn.execute("CREATE TABLE undone (id int)")
                raise LookupError("undo the savepoint")

    [result] = await Migrator(brainmigrate_pool, [Savepoints]).run_pending()

    assert result.status == MigrationStatus.COMPLETED
    assert (
        await table_exists(brainmigrate_pool, "kept"),
        await table_exists(brainmigrate_pool, "undone"),
    ) == (True, False)


async def test_a_migration_that_ends_its_transaction_then_times_out_is_recorded_dirty(
    brainmigrate_pool: Any,
) -> None:
    """Running out of time after a COMMIT is no reason to believe the database is as it was: the
    attempt is marked dirty and the error says the transaction was ended."""

    class SlowAfterCommit(Migration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="slow", name="slow", version="1", migration_type=MigrationType.DATABASE_SCHEMA
            )

        async def up(self, conn: Any) -> None:
            await conn.execute("CREATE TABLE committed_early (id int)")
            await conn.execute("COMMIT")
            await anyio.sleep(30)

    migrator = Migrator(brainmigrate_pool, [SlowAfterCommit], config=MigrationConfig(timeout_seconds=0.5))

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    assert "migration 'slow' ended the transaction brainmigrate ran it in" in str(caught.value)
    assert "did not finish within timeout_seconds=0.5" in str(caught.value)
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["dirty"]


async def test_preconditions_that_leave_a_transaction_open_refuse_the_migration(
    brainmigrate_pool: Any,
) -> None:
    """validate_preconditions running BEGIN would have the migration (and its history row) run in
    a transaction nobody commits: it is rolled back and the migration refused, saying why."""

    async def begins(conn: Any) -> bool:
        await conn.execute("BEGIN")
        return True

    migrator = Migrator(brainmigrate_pool, [create_table("gated", "gated", preconditions=begins)])

    with pytest.raises(
        MigrationValidationError, match="preconditions of migration 'gated' left a transaction"
    ):
        await migrator.run_pending()

    assert not await table_exists(brainmigrate_pool, "gated")
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["failed"]


async def test_a_dry_run_refuses_transaction_control_statements(brainmigrate_pool: Any) -> None:
    """In a dry run, a COMMIT would keep what the dry run did: such a migration is refused when the
    migrations are loaded, so neither it nor the migrations before it run at all."""
    migrations = [
        create_table("first", "first", version="1"),
        schema_migration("commits", ["CREATE TABLE second (id int)", "COMMIT"], version="2"),
    ]
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError, match=r"controls the transaction \('COMMIT'\)"):
        await Migrator(brainmigrate_pool, migrations, config=DRY).run_pending()

    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.parametrize(
    "control",
    [
        pytest.param("COMMIT", id="commit"),
        pytest.param("ROLLBACK", id="rollback"),
        pytest.param("COMMIT AND CHAIN", id="commit-and-chain"),
    ],
)
async def test_a_dry_run_whose_python_migration_ends_the_transaction_raises(
    brainmigrate_pool: Any, control: str
) -> None:
    """A dry run cannot stop up() from running COMMIT, but it never reports such a dry run as
    harmless: a typed error says the dry-run transaction was ended."""
    migrations = [
        create_table("first", "first", version="1"),
        python_migration("escapes", ["CREATE TABLE second (id int)", control], version="2"),
    ]

    with pytest.raises(MigrationExecutionError) as caught:
        await Migrator(brainmigrate_pool, migrations, config=DRY).run_pending()

    assert caught.value.migration_id == "escapes"
    assert "dry run of migration 'escapes' ended the dry-run transaction" in str(caught.value)
    assert await history_rows(brainmigrate_pool) == []


async def test_a_failure_at_commit_is_reported_with_its_cause(brainmigrate_pool: Any) -> None:
    """A deferred constraint failing at COMMIT is the error reported, and the migration is undone."""
    migration = schema_migration(
        "deferred",
        [
            "CREATE TABLE parent (id int PRIMARY KEY)",
            "CREATE TABLE child (parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
            "INSERT INTO child VALUES (1)",
        ],
    )

    with pytest.raises(MigrationExecutionError) as caught:
        await Migrator(brainmigrate_pool, [migration]).run_pending()

    assert caught.value.sqlstate == "23503"
    assert 'violates foreign key constraint "child_parent_fkey"' in str(caught.value)
    assert isinstance(caught.value.__cause__, asyncpg.ForeignKeyViolationError)
    assert not await table_exists(brainmigrate_pool, "parent")
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["failed"]


# -- 2. session state does not leak -------------------------------------------------------------

SESSION_CHANGES = [
    pytest.param("SET search_path = elsewhere, public", id="search-path"),
    pytest.param('SET ROLE "{role}"', id="role"),
    pytest.param('SET SESSION AUTHORIZATION "{role}"', id="session-authorization"),
    pytest.param("SET myapp.flag = 'x'", id="custom-setting"),
    pytest.param("SET enable_hashjoin = off", id="planner-setting"),
]


@pytest.mark.parametrize("transactional", [pytest.param(True, id="tx"), pytest.param(False, id="no-tx")])
@pytest.mark.parametrize("change", SESSION_CHANGES)
async def test_what_a_migration_sets_does_not_reach_the_next_one(
    brainmigrate_pool: Any, change: str, transactional: bool
) -> None:
    """The next migration's preconditions and up() find the session as the pool gave it, and
    brainmigrate writes history as the pool's user, not as a role the migration switched to."""
    seen: list[tuple[str, Any]] = []
    clean = await observe(brainmigrate_pool)
    async with temporary_role(brainmigrate_pool) as role:
        setter = schema_migration(
            "setter", [change.format(role=role), "SELECT 1"], transactional=transactional, version="1"
        )
        migrator = Migrator(brainmigrate_pool, [setter, observer(seen, dependencies=["setter"])])

        await migrator.run_pending()

        assert [("preconditions", clean), ("up", clean)] == seen
        assert [clean[0]] * 2 == [row["db_user"] for row in await history_rows(brainmigrate_pool)]
        assert [clean] * brainmigrate_pool.get_max_size() == await pooled_sessions(brainmigrate_pool)


@pytest.mark.parametrize("transactional", [pytest.param(True, id="tx"), pytest.param(False, id="no-tx")])
async def test_every_connection_goes_back_to_the_pool_clean(
    brainmigrate_pool: Any, transactional: bool
) -> None:
    """After the last migration switched role, search_path and settings, every pooled connection
    runs as the pool's user with default settings."""
    clean = await observe(brainmigrate_pool)
    async with temporary_role(brainmigrate_pool) as role:
        last = python_migration(
            "last",
            [
                f'SET SESSION AUTHORIZATION "{role}"',
                f'SET ROLE "{role}"',
                "SET search_path = elsewhere",
                "SET myapp.flag = 'x'",
                "SET enable_hashjoin = off",
            ],
        )
        last.transactional = transactional

        await Migrator(brainmigrate_pool, [last]).run_pending()

        assert [clean] * brainmigrate_pool.get_max_size() == await pooled_sessions(brainmigrate_pool)


async def test_a_failed_migration_leaves_the_pool_clean(brainmigrate_pool: Any) -> None:
    """A non-transactional migration that switched role and then failed gives its connection back
    clean too, and its failure is recorded as the pool's user."""
    clean = await observe(brainmigrate_pool)
    async with temporary_role(brainmigrate_pool) as role:
        migration = schema_migration(
            "fails", [f'SET ROLE "{role}"', "SELECT 1/0"], transactional=False, reversible=False
        )

        with pytest.raises(MigrationExecutionError, match="division by zero"):
            await Migrator(brainmigrate_pool, [migration]).run_pending()

        assert [("dirty", clean[0])] == [
            (row["status"], row["db_user"]) for row in await history_rows(brainmigrate_pool)
        ]
        assert [clean] * brainmigrate_pool.get_max_size() == await pooled_sessions(brainmigrate_pool)


async def test_what_a_migration_sets_does_not_reach_the_next_one_in_a_dry_run(brainmigrate_pool: Any) -> None:
    """Dry-run migrations start from the pool's session too, and the dry run leaves the pool clean."""
    seen: list[tuple[str, Any]] = []
    clean = await observe(brainmigrate_pool)
    async with temporary_role(brainmigrate_pool) as role:
        setter = schema_migration(
            "setter", [f'SET ROLE "{role}"', "SET search_path = elsewhere"], version="1"
        )
        migrator = Migrator(brainmigrate_pool, [setter, observer(seen, dependencies=["setter"])], config=DRY)

        results = await migrator.run_pending()

        assert [r.status for r in results] == [MigrationStatus.COMPLETED] * 2
        assert [("preconditions", clean), ("up", clean)] == seen
        assert [clean] * brainmigrate_pool.get_max_size() == await pooled_sessions(brainmigrate_pool)


async def test_the_session_the_pool_sets_up_is_kept_for_every_migration(brainmigrate_database: str) -> None:
    """What the pool's setup gives every connection (here a search_path) is what each migration
    starts from: resetting between migrations restores it rather than PostgreSQL's defaults."""

    async def setup(conn: Any) -> None:
        await conn.execute("SET search_path = app, public")

    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=3, setup=setup)
    try:
        await pool.execute("CREATE SCHEMA app")
        migrations = [
            create_table("one", "one", version="1"),
            schema_migration("two", ["SET search_path = public", "CREATE TABLE two (id int)"], version="2"),
            create_table("three", "three", version="3"),
        ]

        await Migrator(pool, migrations).run_pending()

        tables = await pool.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_name IN ('one', 'two', 'three') ORDER BY 2"
        )
        assert [tuple(t) for t in tables] == [("app", "one"), ("app", "three"), ("public", "two")]
    finally:
        await pool.close()


async def test_a_parallel_data_migration_leaves_the_pool_clean(brainmigrate_pool: Any) -> None:
    """Data workers' planner settings and what the preconditions SET on the work connection do not
    stay with the connections the pool gets back."""
    clean = await observe(brainmigrate_pool)
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 1000)

    class Scored(server_side_migration()):  # type: ignore[misc]
        async def validate_preconditions(self, conn: Any) -> bool:
            await conn.execute("SET search_path = elsewhere, public; SET myapp.flag = 'x'")
            return True

    [result] = await Migrator(brainmigrate_pool, [Scored]).run_pending(
        config=MigrationConfig(batch_size=100, parallel_execution=True, max_workers=3)
    )

    assert result.status is MigrationStatus.COMPLETED
    assert [clean] * brainmigrate_pool.get_max_size() == await pooled_sessions(brainmigrate_pool)


# -- 3. recording a failure that history cannot record -------------------------------------------

BROKEN_HISTORY = [
    pytest.param(
        "ALTER TABLE brainmigrate.migration_history ADD CONSTRAINT refuse_all CHECK (false) NOT VALID",
        'violates check constraint "refuse_all"',
        asyncpg.CheckViolationError,
        id="check-false",
    ),
    pytest.param(
        "ALTER TABLE brainmigrate.migration_history DROP COLUMN sqlstate",
        'column "sqlstate" of relation "migration_history" does not exist',
        asyncpg.UndefinedColumnError,
        id="dropped-column",
    ),
]


@pytest.mark.parametrize(("alteration", "reason", "recording_error"), BROKEN_HISTORY)
async def test_a_failure_is_reported_even_when_history_cannot_record_it(
    brainmigrate_pool: Any, alteration: str, reason: str, recording_error: type[Exception]
) -> None:
    """The migration's own error is raised, typed, saying the failure could not be recorded and
    why; the recording error is attached; the migration is undone."""
    migrator = Migrator(
        brainmigrate_pool,
        [
            create_table("ok", "ok", version="1"),
            schema_migration("broken", ["CREATE TABLE made (id int)", "SELECT * FROM missing"], version="2"),
        ],
    )
    await migrator.execute("ok")
    await brainmigrate_pool.execute(alteration)
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    error = caught.value
    assert (error.migration_id, error.statement_index, error.sqlstate) == ("broken", 1, "42P01")
    assert isinstance(error.__cause__, asyncpg.UndefinedTableError)
    assert isinstance(getattr(error, "recording_error", None), recording_error)
    message = str(error)
    assert 'relation "missing" does not exist' in message
    assert "could not be recorded in the history table brainmigrate.migration_history" in message
    assert reason in message
    assert "was it altered by hand?" in message
    assert await snapshot(brainmigrate_pool) == before


async def test_a_completed_row_that_cannot_be_written_undoes_the_migration(brainmigrate_pool: Any) -> None:
    """When history refuses the completed row, the migration is rolled back and the error says it
    was the history write that failed."""
    migrator = Migrator(brainmigrate_pool, [create_table("ok", "ok", version="1"), create_table("b", "b")])
    await migrator.execute("ok")
    await brainmigrate_pool.execute(
        "ALTER TABLE brainmigrate.migration_history"
        " ADD CONSTRAINT no_completed CHECK (status <> 'completed') NOT VALID"
    )

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    message = str(caught.value)
    assert "writing its completed row to the history table brainmigrate.migration_history failed" in message
    assert 'violates check constraint "no_completed"' in message
    assert "the migration was rolled back" in message
    assert caught.value.statement is None
    assert not await table_exists(brainmigrate_pool, "b")
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["completed", "failed"]


async def test_a_non_transactional_migration_does_not_start_without_its_running_row(
    brainmigrate_pool: Any,
) -> None:
    """A non-transactional migration runs nothing when its running row cannot be written."""
    migrator = Migrator(
        brainmigrate_pool,
        [
            create_table("ok", "ok", version="1"),
            schema_migration("no_tx", ["CREATE TABLE no_tx (id int)"], transactional=False, version="2"),
        ],
    )
    await migrator.execute("ok")
    await brainmigrate_pool.execute(BROKEN_HISTORY[0].values[0])
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    message = str(caught.value)
    assert "writing its running row to the history table brainmigrate.migration_history failed" in message
    assert "nothing of it ran" in message
    assert isinstance(caught.value.__cause__, asyncpg.CheckViolationError)
    assert await snapshot(brainmigrate_pool) == before


async def test_a_non_transactional_failure_that_cannot_be_recorded_is_still_reported(
    brainmigrate_pool: Any,
) -> None:
    """When history takes the running row but not the progress or the outcome, the typed error
    says so and which write failed; the row stays 'running', so the next run reports it dirty."""
    migrator = Migrator(
        brainmigrate_pool,
        [
            create_table("ok", "ok", version="1"),
            schema_migration(
                "no_tx",
                ["CREATE TABLE first_step (id int)", "CREATE TABLE second_step (id int)"],
                ["DROP TABLE second_step", "DROP TABLE first_step"],
                transactional=False,
                version="2",
            ),
        ],
    )
    await migrator.execute("ok")
    await brainmigrate_pool.execute(
        "ALTER TABLE brainmigrate.migration_history"
        " ADD CONSTRAINT first_only CHECK (coalesce(statement_index, 0) = 0) NOT VALID"
    )

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending()

    message = str(caught.value)
    assert "writing its progress (statement 2 of 2)" in message
    assert 'violates check constraint "first_only"' in message
    assert "could not be recorded in the history table brainmigrate.migration_history" in message
    assert isinstance(getattr(caught.value, "recording_error", None), asyncpg.CheckViolationError)
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["completed", "running"]
    with pytest.raises(DirtyMigrationError):
        await migrator.run_pending()


async def test_a_user_who_cannot_write_history_gets_typed_errors(
    brainmigrate_pool: Any, brainmigrate_database: str
) -> None:
    """Run as a role without INSERT on the history table, a failing migration raises its own typed
    error saying it could not be recorded, and a good one says its completed row was refused."""
    await Migrator(brainmigrate_pool, [create_table("ok", "ok", version="1")]).run_pending()
    async with temporary_role(brainmigrate_pool, login=True) as role:
        await brainmigrate_pool.execute(
            f'GRANT USAGE ON SCHEMA brainmigrate TO "{role}";'
            f' GRANT SELECT ON brainmigrate.migration_history TO "{role}";'
            f' GRANT CREATE ON SCHEMA public TO "{role}"'
        )
        limited = await asyncpg.create_pool(brainmigrate_database, user=role, min_size=1, max_size=3)
        try:
            before = await snapshot(brainmigrate_pool)
            failing = schema_migration("fails", ["SELECT * FROM missing"], version="2")

            with pytest.raises(MigrationExecutionError) as failed:
                await Migrator(limited, [create_table("ok", "ok", version="1"), failing]).run_pending()

            assert 'relation "missing" does not exist' in str(failed.value)
            assert "could not be recorded in the history table" in str(failed.value)
            assert "permission denied for table migration_history" in str(failed.value)
            assert isinstance(
                getattr(failed.value, "recording_error", None), asyncpg.InsufficientPrivilegeError
            )
            assert await snapshot(brainmigrate_pool) == before

            with pytest.raises(MigrationExecutionError) as refused:
                await Migrator(
                    limited, [create_table("ok", "ok", version="1"), create_table("b", "b")]
                ).run_pending()

            assert "writing its completed row to the history table" in str(refused.value)
            assert "permission denied for table migration_history" in str(refused.value)
            assert await snapshot(brainmigrate_pool) == before
        finally:
            await limited.close()
