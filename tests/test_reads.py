"""Reads have no side effects: status, pending, history, progress, failed_items, running and validate
take no lock and write nothing, and answer while a runner holds the lock. running() lists the data
runs in flight."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import BulkMemoryItem, MigrationConfig, MigrationStatus, Migrator
from brainmigrate._ledger.lock import key_parts, lock_key
from data_support import create_memories, memory_migration, tag
from helpers import schema_migration

pytestmark = pytest.mark.anyio

WRITES = ("insert ", "update ", "delete ", "create ", "alter ", "drop ", "truncate ", "lock ")


async def _running_mark(pool: Any, migration_id: str) -> None:
    """An attempt row as a runner writes it when it starts (still running)."""
    await pool.execute(
        """INSERT INTO brainmigrate.migration_history
               (migration_id, name, migration_type, version, checksum, operation, status, started_at,
                hostname, pid)
           VALUES ($1, 'x', 'database_schema', '1.0.0', 'c', 'apply', 'running', now(), 'h', 1)""",
        migration_id,
    )


async def _lock_requests(pool: Any, pids: set[int]) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        "SELECT pid, granted FROM pg_locks WHERE locktype = 'advisory' AND pid = ANY($1::int[])", list(pids)
    )
    return rows


async def test_status_reads_the_lock_from_pg_locks_without_taking_it(
    brainmigrate_pool: Any, brainmigrate_database: str
) -> None:
    """With another session holding the runner lock, status() of a running mark answers RUNNING at
    once; its session never asks for the lock. Once the holder is gone, the mark is DIRTY."""
    migrations = [
        schema_migration("first_001", ["CREATE TABLE first (id int)"]),
        schema_migration("second_002", ["CREATE TABLE second (id int)"], transactional=False),
    ]
    migrator = Migrator(brainmigrate_pool, migrations)
    await migrator.execute("first_001")
    await _running_mark(brainmigrate_pool, "second_002")

    queries: list[str] = []
    pids: set[int] = set()

    async def log(conn: Any) -> None:
        pids.add(conn.get_server_pid())
        conn.add_query_logger(lambda record: queries.append(record.query))

    reading = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=2, init=log)
    holder = await asyncpg.connect(brainmigrate_database)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", lock_key("brainmigrate"))
        reader = Migrator(reading, migrations)
        with anyio.fail_after(2):
            assert await reader.status("second_002") is MigrationStatus.RUNNING
            assert await reader.status("first_001") is MigrationStatus.COMPLETED
            assert [m.id for m in await reader.pending()] == ["second_002"]
            assert len(await reader.history()) == 2
            assert await reader.running() == []
            assert (await reader.validate("second_002")).valid is False  # its mark is dirty
        assert await _lock_requests(brainmigrate_pool, pids) == []
        await holder.execute("SELECT pg_advisory_unlock($1)", lock_key("brainmigrate"))

        assert await reader.status("second_002") is MigrationStatus.DIRTY  # its runner died
    finally:
        await holder.close()
        await reading.close()

    queries = [q for q in queries if "UNLISTEN *" not in q]  # the pool's reset on release
    assert queries
    assert not [q for q in queries if "advisory_lock" in q or "advisory_unlock" in q]
    assert not [q for q in queries if q.lstrip().lower().startswith(WRITES)]


async def test_the_lock_seen_held_in_another_database_does_not_count(
    brainmigrate_pool: Any, brainmigrate_dsn: str
) -> None:
    """pg_locks lists every database's locks: a runner of another database (same schema name, same
    key) holding its lock leaves this database's dead running mark DIRTY."""
    migrations = [schema_migration("second_002", ["CREATE TABLE second (id int)"], transactional=False)]
    migrator = Migrator(brainmigrate_pool, migrations)
    await migrator.run_pending()
    await brainmigrate_pool.execute("DELETE FROM brainmigrate.migration_history")
    await _running_mark(brainmigrate_pool, "second_002")
    other = await asyncpg.connect(brainmigrate_dsn)  # the server's own database
    try:
        await other.execute("SELECT pg_advisory_lock($1)", lock_key("brainmigrate"))
        held = await other.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1::bigint::oid "
            "AND objid = $2::bigint::oid",
            *key_parts(lock_key("brainmigrate")),
        )
        assert held == 1

        assert await migrator.status("second_002") is MigrationStatus.DIRTY
    finally:
        await other.close()


async def test_running_lists_a_parallel_run_in_flight_with_its_workers(brainmigrate_pool: Any) -> None:
    """running() shows a data run while its workers hold parts of it, with its progress; after the
    run completes, nothing is in flight."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 400)
    gate = anyio.Event()

    async def slow(memory: dict[str, Any]) -> BulkMemoryItem | None:
        await gate.wait()
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=slow)])
    config = MigrationConfig(parallel_execution=True, max_workers=2, batch_size=50)
    assert await migrator.running() == []
    results: list[Any] = []

    async def run() -> None:
        results.extend(await migrator.run_pending(config=config))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        with anyio.fail_after(20):
            while True:
                in_flight = await migrator.running()
                if in_flight and in_flight[0].workers >= 1:
                    break
                await anyio.sleep(0.02)
        [progress] = in_flight
        assert (progress.migration_id, progress.status) == ("tag_memories_001", "running")
        assert progress.total == 400
        assert progress.processed < 400 and progress.error is None
        gate.set()

    assert [(r.migration_id, r.status) for r in results] == [("tag_memories_001", MigrationStatus.COMPLETED)]
    assert await migrator.running() == []
    done = await migrator.progress("tag_memories_001")
    assert done is not None and (done.status, done.processed, done.workers) == ("completed", 400, 0)


async def test_status_of_a_dead_runners_running_mark_is_dirty(brainmigrate_pool: Any) -> None:
    migrations = [schema_migration("second_002", ["CREATE TABLE second (id int)"], transactional=False)]
    migrator = Migrator(brainmigrate_pool, migrations)
    await migrator.run_pending()
    await brainmigrate_pool.execute("DELETE FROM brainmigrate.migration_history")
    await _running_mark(brainmigrate_pool, "second_002")

    assert await migrator.status("second_002") is MigrationStatus.DIRTY
    assert await migrator.running() == []
