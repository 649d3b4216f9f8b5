"""Runners competing for the migration lock: real processes and sessions on a real server."""

from __future__ import annotations

import os
import time
from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import (
    DatabaseSchemaMigration,
    MigrationConfig,
    MigrationLockTimeout,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate._ledger.lock import lock_key
from workers.harness import (
    Outcome,
    advisory_holders,
    advisory_waiters,
    backends_running,
    end_sessions,
    finish,
    history_rows,
    migrations_dir,
    public_schema,
    sessions_that_ran,
    start_worker,
    stop,
    wait_until,
)

pytestmark = pytest.mark.anyio

RUNNER_KEY = lock_key("brainmigrate")
SECOND_RUNNER = "second runner"
RACE_IDS = [f"race_{n:02d}" for n in range(1, 11)]
SLOW_IDS = [f"slow_{n:02d}" for n in range(1, 7)]
GATE_KEY = 4242


def _migration(
    migration_id: str,
    forward: list[str],
    *,
    transactional: bool = True,
    dependencies: tuple[str, ...] = (),
    postconditions: Any = None,
) -> type[DatabaseSchemaMigration]:
    class Made(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name=migration_id,
                version="1.0.0",
                migration_type=MigrationType.DATABASE_SCHEMA,
                dependencies=dependencies,
            )

        async def get_forward_statements(self) -> list[str]:
            return list(forward)

        async def validate_postconditions(self, conn: Any) -> bool:
            return True if postconditions is None else await postconditions(conn)

    Made.transactional = transactional
    Made.__name__ = Made.__qualname__ = f"Migration_{migration_id}"
    return Made


def _completed_apply_rows(ids: list[str]) -> list[dict[str, Any]]:
    return [
        {
            "migration_id": mid,
            "operation": "apply",
            "status": "completed",
            "applied_after": True,
            "statement_index": None,
            "statement_count": 2 if mid in ("race_05", *SLOW_IDS) else 1,
            "sqlstate": None,
        }
        for mid in ids
    ]


async def _tables_like(pool: asyncpg.Pool[Any], prefix: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' "
        "AND starts_with(table_name, $1) ORDER BY table_name",
        prefix,
    )
    return [row["table_name"] for row in rows]


async def test_eight_processes_racing_apply_each_migration_exactly_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Any
) -> None:
    """Eight processes released at once into run_pending() apply each of ten migrations exactly once."""
    start_file = tmp_path / "start"
    ready_files = [tmp_path / f"ready-{n}" for n in range(8)]
    processes = [
        await start_worker(brainmigrate_database, "race", ready_file=ready, start_file=start_file)
        for ready in ready_files
    ]
    try:

        async def all_ready() -> bool:
            return all(ready.exists() for ready in ready_files)

        await wait_until(all_ready, within=30, what="eight workers to open their pools")
        start_file.touch()
        outcomes = [await finish(process, within=30) for process in processes]
    finally:
        for process in processes:
            await stop(process)

    assert [outcome.returncode for outcome in outcomes] == [0] * 8, [o.report for o in outcomes]
    applied = sorted(mid for outcome in outcomes for mid, status in outcome.results if status == "completed")
    assert applied == RACE_IDS
    assert sorted(len(outcome.results) for outcome in outcomes) == [0] * 7 + [10]
    rows = await history_rows(brainmigrate_pool)
    assert sorted(rows, key=lambda row: row["migration_id"]) == _completed_apply_rows(RACE_IDS)
    assert await _tables_like(brainmigrate_pool, "race_") == RACE_IDS


async def test_runner_whose_lock_session_is_terminated_leaves_the_waiting_runner_a_clean_run(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """When a runner's lock session is terminated, the waiting runner takes over and nothing runs twice."""
    first = await start_worker(brainmigrate_database, "lock_loss")
    second_pool = await asyncpg.create_pool(
        brainmigrate_database, min_size=2, max_size=3, server_settings={"application_name": SECOND_RUNNER}
    )
    second_results: list[tuple[str, str]] = []
    second_error: list[BaseException] = []

    async def second_runner() -> None:
        try:
            results = await Migrator(second_pool, migrations_dir("lock_loss")).run_pending()
            second_results.extend((r.migration_id, r.status.value) for r in results)
        except Exception as exc:
            second_error.append(exc)

    try:
        await wait_until(
            lambda: backends_running(brainmigrate_pool, "SELECT pg_sleep(0.25)"),
            what="the first runner to start applying",
        )
        [first_lock_session] = await advisory_holders(brainmigrate_pool, RUNNER_KEY)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(second_runner)
                await wait_until(
                    lambda: sessions_that_ran(brainmigrate_pool, SECOND_RUNNER, "advisory"),
                    what="the second runner to wait for the lock",
                )
                await end_sessions(brainmigrate_pool, [first_lock_session])
                first_outcome: Outcome = await finish(first, within=30)
    finally:
        await stop(first)
        await second_pool.close()

    rows = await history_rows(brainmigrate_pool)
    completed = sorted(row["migration_id"] for row in rows if row["status"] == "completed")
    report = {"first": first_outcome.report, "second": second_results, "error": second_error, "rows": rows}
    assert second_error == [], report
    assert completed == SLOW_IDS, report
    completed_by = await brainmigrate_pool.fetch(
        "SELECT migration_id, pid FROM brainmigrate.migration_history WHERE status = 'completed'"
    )
    second_applied = sorted(row["migration_id"] for row in completed_by if row["pid"] == os.getpid())
    assert sorted(m for m, s in second_results if s == "completed") == second_applied, report
    assert await _tables_like(brainmigrate_pool, "slow_") == SLOW_IDS
    # The runner that lost its lock must not go on as if nothing happened.
    assert first_outcome.returncode == 1, report
    assert first_outcome.error is not None
    assert first_outcome.error["type"] == "MigrationLockLost", report


async def test_lock_timeout_before_first_run_writes_nothing(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """With the runner lock held elsewhere, run_pending() stops after lock_wait_seconds, writing nothing."""
    migrator = Migrator(brainmigrate_pool, [_migration("lonely_001", ["CREATE TABLE lonely (id int)"])])
    holder = await asyncpg.connect(brainmigrate_database)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", RUNNER_KEY)
        started = time.monotonic()
        with pytest.raises(MigrationLockTimeout) as raised:
            await migrator.run_pending(config=MigrationConfig(lock_wait_seconds=0.2))
        waited = time.monotonic() - started
        assert await holder.fetchval("SELECT pg_advisory_unlock($1)", RUNNER_KEY) is True
    finally:
        await holder.close()

    assert isinstance(raised.value, TimeoutError)
    assert raised.value.seconds == 0.2
    message = str(raised.value)
    assert "could not take the migration lock within 0.2 s" in message
    assert "MigrationConfig(lock_wait_seconds=...)" in message
    assert 0.2 <= waited < 2
    assert await brainmigrate_pool.fetchval("SELECT to_regnamespace('brainmigrate') IS NULL") is True
    assert await public_schema(brainmigrate_pool) == []


async def test_lock_timeout_leaves_existing_history_unchanged(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """A runner that times out waiting for the lock applies nothing and adds no history."""
    first = _migration("first_001", ["CREATE TABLE first_table (id int)"])
    second = _migration("second_001", ["CREATE TABLE second_table (id int)"])
    await Migrator(brainmigrate_pool, [first]).run_pending()
    before = (await history_rows(brainmigrate_pool), await public_schema(brainmigrate_pool))
    holder = await asyncpg.connect(brainmigrate_database)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", RUNNER_KEY)
        with pytest.raises(MigrationLockTimeout, match=r"within 0\.2 s"):
            await Migrator(brainmigrate_pool, [first, second]).run_pending(
                config=MigrationConfig(lock_wait_seconds=0.2)
            )
    finally:
        await holder.close()

    assert (await history_rows(brainmigrate_pool), await public_schema(brainmigrate_pool)) == before
    assert [row["migration_id"] for row in before[0]] == ["first_001"]


def _concurrent_index_migration(
    seen_lock_holders: list[list[int]], dependencies: tuple[str, ...] = ()
) -> type[DatabaseSchemaMigration]:
    async def note_lock_holders(conn: Any) -> bool:
        seen_lock_holders.append(
            [
                row["pid"]
                for row in await conn.fetch(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ]
        )
        return True

    return _migration(
        "concurrent_index_002",
        ["CREATE INDEX CONCURRENTLY memories_topic_idx ON memories (topic)"],
        transactional=False,
        dependencies=dependencies,
        postconditions=note_lock_holders,
    )


async def _memories_table(pool: asyncpg.Pool[Any]) -> None:
    await pool.execute("CREATE TABLE memories (id int PRIMARY KEY, topic text)")
    await pool.execute("INSERT INTO memories SELECT n, 'topic ' || n % 7 FROM generate_series(1, 1000) n")


async def _index_is_valid(pool: asyncpg.Pool[Any]) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('public.memories_topic_idx')"
        )
    )


async def test_create_index_concurrently_completes_while_the_runner_holds_its_lock(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """CREATE INDEX CONCURRENTLY finishes promptly although the runner's own session holds the lock."""
    await _memories_table(brainmigrate_pool)
    seen_lock_holders: list[list[int]] = []
    migrator = Migrator(brainmigrate_pool, [_concurrent_index_migration(seen_lock_holders)])

    with anyio.fail_after(10):
        results = await migrator.run_pending()

    assert [(r.migration_id, r.status) for r in results] == [
        ("concurrent_index_002", MigrationStatus.COMPLETED)
    ]
    assert len(seen_lock_holders) == 1
    assert len(seen_lock_holders[0]) == 1  # the runner lock was held while the index was built
    assert await _index_is_valid(brainmigrate_pool) is True
    assert await advisory_holders(brainmigrate_pool, RUNNER_KEY) == []


async def test_create_index_concurrently_completes_while_a_second_runner_waits(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """CREATE INDEX CONCURRENTLY is not held up by a second runner waiting for the runner lock."""
    await _memories_table(brainmigrate_pool)
    seen_lock_holders: list[list[int]] = []
    migrations = [
        _migration("gate_001", [f"SELECT pg_advisory_xact_lock({GATE_KEY})"]),
        _concurrent_index_migration(seen_lock_holders, dependencies=("gate_001",)),
    ]
    config = MigrationConfig(statement_lock_timeout_ms=20_000, lock_wait_seconds=30)
    first_pool = await asyncpg.create_pool(brainmigrate_database, min_size=2, max_size=2)
    second_pool = await asyncpg.create_pool(
        brainmigrate_database, min_size=2, max_size=2, server_settings={"application_name": SECOND_RUNNER}
    )
    gate = await asyncpg.connect(brainmigrate_database)
    first_results: list[Any] = []
    second_results: list[Any] = []
    first_done = anyio.Event()

    async def first_runner() -> None:
        first_results.extend(await Migrator(first_pool, migrations, config=config).run_pending())
        first_done.set()

    async def second_runner() -> None:
        second_results.extend(await Migrator(second_pool, migrations, config=config).run_pending())

    try:
        await gate.execute("SELECT pg_advisory_lock($1)", GATE_KEY)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first_runner)
            await wait_until(
                lambda: advisory_waiters(brainmigrate_pool, "SELECT pg_advisory_xact_lock"),
                what="the first runner to reach its gate",
            )
            tasks.start_soon(second_runner)
            await wait_until(
                lambda: sessions_that_ran(brainmigrate_pool, SECOND_RUNNER, "advisory"),
                what="the second runner to wait for the runner lock",
            )
            await gate.execute("SELECT pg_advisory_unlock($1)", GATE_KEY)
            with anyio.move_on_after(5) as guard:
                await first_done.wait()
            index_built_in_time = not guard.cancelled_caught
            if not index_built_in_time:
                tasks.cancel_scope.cancel()
    finally:
        await gate.close()
        await first_pool.close()
        await second_pool.close()

    assert index_built_in_time, "CREATE INDEX CONCURRENTLY did not finish within 5 s"
    assert [(r.migration_id, r.status) for r in first_results] == [
        ("gate_001", MigrationStatus.COMPLETED),
        ("concurrent_index_002", MigrationStatus.COMPLETED),
    ]
    assert second_results == []
    assert await _index_is_valid(brainmigrate_pool) is True
