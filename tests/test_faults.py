"""Runners killed mid-migration, and DDL that meets an application's open transaction."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import (
    DatabaseSchemaMigration,
    DirtyMigrationError,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
    RetryPolicy,
)
from brainmigrate._runtime.translate import advice
from workers.harness import (
    backends_running,
    end_sessions,
    history_rows,
    migrations_dir,
    public_schema,
    sigkill,
    start_worker,
    stop,
    wait_until,
)

pytestmark = pytest.mark.anyio

SLEEP_STATEMENT = "SELECT pg_sleep(current_setting('bm.sleep')::float)"
KILLED_TX = "killed_tx_001"
KILLED_NONTX = "killed_nontx_001"


@asynccontextmanager
async def _pool_without_sleeps(dsn: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool on which the migrations' ``bm.sleep`` pauses take no time."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=3, server_settings={"bm.sleep": "0"})
    try:
        yield pool
    finally:
        await pool.close()


async def _kill_runner_while_sleeping(dsn: str, pool: asyncpg.Pool[Any], migrations: str) -> list[int]:
    """Run ``migrations`` in a worker process and SIGKILL it during its 30 s sleep statement.

    Returns the pids of the server sessions still running that statement for the dead process.
    """
    worker = await start_worker(dsn, migrations, settings={"bm.sleep": "30"})
    try:
        await wait_until(
            lambda: backends_running(pool, SLEEP_STATEMENT), what="the worker to reach its sleep statement"
        )
        assert await sigkill(worker) == -signal.SIGKILL
    finally:
        await stop(worker)
    return await backends_running(pool, SLEEP_STATEMENT)


# -- SIGKILL during a transactional migration ---------------------------------------------------


async def test_sigkill_mid_transaction_leaves_nothing_and_a_rerun_applies_it_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """A runner killed inside a transactional migration leaves no trace; a re-run applies it once."""
    orphans = await _kill_runner_while_sleeping(
        brainmigrate_database, brainmigrate_pool, "killed_transaction"
    )
    try:
        assert await brainmigrate_pool.fetchval("SELECT to_regclass('public.killed_tx')") is None
        assert await history_rows(brainmigrate_pool) == []
        # The dead client's server session may still be sleeping (see the next test); end it so
        # that this test is about the re-run alone.
        await end_sessions(brainmigrate_pool, orphans)

        async with _pool_without_sleeps(brainmigrate_database) as pool:
            migrator = Migrator(pool, migrations_dir("killed_transaction"))
            with anyio.fail_after(10):
                results = await migrator.run_pending()
            status = await migrator.status(KILLED_TX)
    finally:
        await end_sessions(brainmigrate_pool, await backends_running(brainmigrate_pool, SLEEP_STATEMENT))

    assert [(r.migration_id, r.status, r.attempts) for r in results] == [
        (KILLED_TX, MigrationStatus.COMPLETED, 1)
    ]
    assert status is MigrationStatus.COMPLETED
    assert await history_rows(brainmigrate_pool) == [
        {
            "migration_id": KILLED_TX,
            "operation": "apply",
            "status": "completed",
            "applied_after": True,
            "statement_index": None,
            "statement_count": 2,
            "sqlstate": None,
        }
    ]
    assert await public_schema(brainmigrate_pool) == [
        ("column", "killed_tx", "id"),
        ("index", "killed_tx_pkey", "true"),
    ]


async def test_sigkill_mid_transaction_does_not_block_the_next_runner(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """After a runner is killed mid-transaction, the next run_pending() applies the migration unhindered."""
    await _kill_runner_while_sleeping(brainmigrate_database, brainmigrate_pool, "killed_transaction")
    try:
        async with _pool_without_sleeps(brainmigrate_database) as pool:
            migrator = Migrator(pool, migrations_dir("killed_transaction"))
            with anyio.fail_after(20):
                results = await migrator.run_pending()
    finally:
        await end_sessions(brainmigrate_pool, await backends_running(brainmigrate_pool, SLEEP_STATEMENT))

    assert [(r.migration_id, r.status) for r in results] == [(KILLED_TX, MigrationStatus.COMPLETED)]
    assert [row["status"] for row in await history_rows(brainmigrate_pool)] == ["completed"]


# -- SIGKILL during a non-transactional migration -----------------------------------------------


async def _dirty_after_kill(dsn: str, pool: asyncpg.Pool[Any]) -> None:
    """Kill a runner at statement 3 of 4 of the non-transactional migration, and end its session."""
    orphans = await _kill_runner_while_sleeping(dsn, pool, "killed_statements")
    await end_sessions(pool, orphans)


DIRTY_ROW = {
    "migration_id": KILLED_NONTX,
    "operation": "apply",
    "status": "running",
    "applied_after": None,
    "statement_index": 2,
    "statement_count": 4,
    "sqlstate": None,
}
AFTER_TWO_STATEMENTS = [
    ("column", "notes", "body"),
    ("column", "notes", "id"),
    ("index", "notes_body_idx", "true"),
    ("index", "notes_pkey", "true"),
]
AFTER_ALL_STATEMENTS = sorted([*AFTER_TWO_STATEMENTS, ("column", "notes", "created_at")])


async def test_sigkill_mid_statements_makes_the_next_run_refuse_with_the_remedy(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """Killed at statement 3 of 4, a migration stays dirty: the next run refuses it and changes nothing."""
    await _dirty_after_kill(brainmigrate_database, brainmigrate_pool)
    before = (await history_rows(brainmigrate_pool), await public_schema(brainmigrate_pool))

    async with _pool_without_sleeps(brainmigrate_database) as pool:
        migrator = Migrator(pool, migrations_dir("killed_statements"))
        with pytest.raises(DirtyMigrationError) as raised:
            await migrator.run_pending()
        status = await migrator.status(KILLED_NONTX)

    error = raised.value
    assert (error.migration_id, error.statement_index, error.statement_count, error.statement) == (
        KILLED_NONTX,
        2,
        4,
        SLEEP_STATEMENT,
    )
    message = str(error)
    assert f"migration '{KILLED_NONTX}' is dirty" in message
    assert "statement 3 of 4" in message
    assert f"await migrator.resolve('{KILLED_NONTX}', applied=True)" in message
    assert f"await migrator.resolve('{KILLED_NONTX}', applied=False)" in message
    assert status is MigrationStatus.DIRTY
    assert before == ([DIRTY_ROW], AFTER_TWO_STATEMENTS)
    assert (await history_rows(brainmigrate_pool), await public_schema(brainmigrate_pool)) == before


async def test_dirty_migration_resolved_as_not_applied_runs_again(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """resolve(id, applied=False) after undoing by hand lets run_pending() apply the migration afresh."""
    await _dirty_after_kill(brainmigrate_database, brainmigrate_pool)

    async with _pool_without_sleeps(brainmigrate_database) as pool:
        migrator = Migrator(pool, migrations_dir("killed_statements"))
        record = await migrator.resolve(KILLED_NONTX, applied=False)
        pending_after_resolve = [meta.id for meta in await migrator.pending()]
        await pool.execute("DROP TABLE notes")  # undo statements 1 and 2 by hand
        with anyio.fail_after(10):
            results = await migrator.run_pending()
        status = await migrator.status(KILLED_NONTX)

    assert (record.migration_id, record.operation, record.status, record.applied_after) == (
        KILLED_NONTX,
        "resolve",
        "completed",
        False,
    )
    assert pending_after_resolve == [KILLED_NONTX]
    assert [(r.migration_id, r.status) for r in results] == [(KILLED_NONTX, MigrationStatus.COMPLETED)]
    assert status is MigrationStatus.COMPLETED
    rows = await history_rows(brainmigrate_pool)
    assert [(row["operation"], row["status"], row["applied_after"]) for row in rows] == [
        ("apply", "dirty", None),  # the killed attempt, closed by resolve()
        ("resolve", "completed", False),
        ("apply", "completed", True),
    ]
    assert await public_schema(brainmigrate_pool) == AFTER_ALL_STATEMENTS


async def test_dirty_migration_resolved_as_applied_is_not_run(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """resolve(id, applied=True) after finishing by hand marks the migration applied without running it."""
    await _dirty_after_kill(brainmigrate_database, brainmigrate_pool)
    # Finish statements 3 and 4 by hand; running statement 4 again would now fail.
    await brainmigrate_pool.execute("ALTER TABLE notes ADD COLUMN created_at timestamptz")

    async with _pool_without_sleeps(brainmigrate_database) as pool:
        migrator = Migrator(pool, migrations_dir("killed_statements"))
        record = await migrator.resolve(KILLED_NONTX, applied=True)
        results = await migrator.run_pending()
        status = await migrator.status(KILLED_NONTX)
        pending = await migrator.pending()

    assert (record.operation, record.status, record.applied_after) == ("resolve", "completed", True)
    assert results == []
    assert pending == []
    assert status is MigrationStatus.COMPLETED
    rows = await history_rows(brainmigrate_pool)
    assert [(row["operation"], row["status"], row["applied_after"]) for row in rows] == [
        ("apply", "dirty", None),  # the killed attempt, closed by resolve()
        ("resolve", "completed", True),
    ]
    assert await public_schema(brainmigrate_pool) == AFTER_ALL_STATEMENTS


# -- DDL that meets an application's open transaction -------------------------------------------


def _add_column_migration(calls: list[float]) -> type[DatabaseSchemaMigration]:
    """ALTER TABLE memories ADD COLUMN; each attempt is counted in ``calls`` (its start time)."""

    class AddEmbeddingModel(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="add_embedding_model_001",
                name="add memories.embedding_model",
                version="1.0.0",
                migration_type=MigrationType.DATABASE_SCHEMA,
            )

        async def get_forward_statements(self) -> list[str]:
            return ["ALTER TABLE memories ADD COLUMN embedding_model text"]

        async def validate_preconditions(self, conn: Any) -> bool:
            calls.append(time.monotonic())
            return True

    return AddEmbeddingModel


@asynccontextmanager
async def _application_reading_memories(dsn: str) -> AsyncIterator[asyncpg.transaction.Transaction]:
    """An application session with a transaction open after reading ``memories`` (ACCESS SHARE)."""
    conn = await asyncpg.connect(dsn)
    try:
        transaction = conn.transaction()
        await transaction.start()
        await conn.fetch("SELECT * FROM memories")
        yield transaction
    finally:
        await conn.close()


async def _memories_columns(pool: asyncpg.Pool[Any]) -> list[str]:
    rows = await pool.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'memories' ORDER BY 1"
    )
    return [row["column_name"] for row in rows]


async def test_ddl_behind_an_open_transaction_fails_with_lock_timeout_after_its_retries(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """ALTER TABLE behind an open transaction gives up with SQLSTATE 55P03 after 3 attempts, not hanging."""
    await brainmigrate_pool.execute("CREATE TABLE memories (id int PRIMARY KEY)")
    calls: list[float] = []
    migrator = Migrator(brainmigrate_pool, [_add_column_migration(calls)])
    config = MigrationConfig(
        statement_lock_timeout_ms=100, retry=RetryPolicy(attempts=3, initial_delay=0.01, max_delay=0.05)
    )

    async with _application_reading_memories(brainmigrate_database):
        started = time.monotonic()
        with anyio.fail_after(10), pytest.raises(MigrationExecutionError) as raised:
            await migrator.run_pending(config=config)
        elapsed = time.monotonic() - started

    error = raised.value
    assert (error.migration_id, error.sqlstate, error.statement_index, error.statement) == (
        "add_embedding_model_001",
        "55P03",
        0,
        "ALTER TABLE memories ADD COLUMN embedding_model text",
    )
    assert "[55P03]" in str(error)
    assert str(error).endswith(
        "the database is as it was before it. Another transaction held a lock it needs for longer "
        "than MigrationConfig(statement_lock_timeout_ms=...) allows, on every try: run it again once "
        "that transaction has ended (pg_stat_activity shows it), or raise statement_lock_timeout_ms"
    )
    assert len(calls) == 3
    assert 0.3 <= elapsed < 3  # three 100 ms lock waits plus short back-offs
    rows = await history_rows(brainmigrate_pool)
    assert [(r["migration_id"], r["operation"], r["status"], r["sqlstate"]) for r in rows] == [
        ("add_embedding_model_001", "apply", "failed", "55P03")
    ]
    assert await _memories_columns(brainmigrate_pool) == ["id"]
    assert await migrator.status("add_embedding_model_001") is MigrationStatus.FAILED


async def test_ddl_behind_an_open_transaction_succeeds_once_it_commits_during_retries(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """ALTER TABLE retried on lock timeouts succeeds once the blocking transaction commits."""
    await brainmigrate_pool.execute("CREATE TABLE memories (id int PRIMARY KEY)")
    calls: list[float] = []
    migrator = Migrator(brainmigrate_pool, [_add_column_migration(calls)])
    config = MigrationConfig(
        statement_lock_timeout_ms=100, retry=RetryPolicy(attempts=10, initial_delay=0.01, max_delay=0.05)
    )

    async with _application_reading_memories(brainmigrate_database) as blocker:

        async def commit_soon() -> None:
            # 150 ms after the first attempt started, whenever that is: its 100 ms lock wait
            # times out before the commit.
            async def attempted() -> bool:
                return bool(calls)

            await wait_until(attempted, interval=0.005, what="the first attempt")
            await anyio.sleep(0.15)
            await blocker.commit()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(commit_soon)
            with anyio.fail_after(10):
                results = await migrator.run_pending(config=config)

    [result] = results
    assert (result.migration_id, result.status) == ("add_embedding_model_001", MigrationStatus.COMPLETED)
    assert result.attempts == len(calls)
    assert 2 <= result.attempts <= 10
    rows = await history_rows(brainmigrate_pool)
    assert [(r["operation"], r["status"], r["applied_after"]) for r in rows] == [("apply", "completed", True)]
    assert await _memories_columns(brainmigrate_pool) == ["embedding_model", "id"]


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (asyncpg.DeadlockDetectedError("deadlock detected"), "It deadlocked with another transaction"),
        (asyncpg.SerializationError("could not serialize"), "It conflicted with a concurrent transaction"),
        (asyncpg.LockNotAvailableError("lock timeout"), "Another transaction held a lock it needs"),
        (asyncpg.UndefinedTableError('relation "x" does not exist'), "Fix the migration and run it again"),
        (ValueError("a bug in the migration"), "Fix the migration and run it again"),
    ],
)
def test_a_failed_run_advises_running_it_again_after_a_conflict_and_fixing_it_otherwise(
    error: BaseException, says: str
) -> None:
    assert advice(error).startswith(says)
