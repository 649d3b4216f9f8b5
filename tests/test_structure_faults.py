"""A structure migration under faults: its worker SIGKILLed between checkpoints, and the
application writing to the memories while they are reshaped."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import asyncpg
import pytest

from brainmigrate import MigrationConfig, MigrationStatus, Migrator
from data_support import create_memories, write_counts
from workers.harness import finish, history_rows, migrations_dir, sigkill, start_data_worker, stop, wait_until

pytestmark = pytest.mark.anyio

MEMORIES = 20_000
BATCH = 500
MIGRATIONS = "reshape_memories"
RESHAPE = "nest_memory_tags_001"


def reshaped(n: int, tags: list[str]) -> dict[str, Any]:
    return {"number": n, "labels": {"all": tags, "version": 2}}


async def committed(pool: asyncpg.Pool[Any]) -> int:
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"):
        return 0
    done: int = await pool.fetchval(
        "SELECT coalesce(sum(processed), 0) FROM brainmigrate.data_chunks WHERE migration_id = $1", RESHAPE
    )
    return done


async def sessions_named(pool: asyncpg.Pool[Any], name: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name
    )
    return count


async def test_a_reshaping_killed_between_checkpoints_resumes_and_reshapes_each_memory_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """SIGKILL after some checkpoints: those memories stay reshaped, the rerun does only the rest,
    and every memory ends reshaped exactly once, the migration recorded applied once."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
    worker = await start_data_worker(
        brainmigrate_database,
        MIGRATIONS,
        f"--batch-size={BATCH}",
        f"--checkpoint-frequency={BATCH}",
        "--batch-delay=0.2",
        "--application-name=killed reshaper",
    )
    try:
        await wait_until(lambda: committed(brainmigrate_pool), within=30, what="a checkpoint to commit")
        assert await sigkill(worker) == -signal.SIGKILL
    finally:
        await stop(worker)

    async def gone() -> bool:
        return not await sessions_named(brainmigrate_pool, "killed reshaper")

    await wait_until(gone, within=30, what="the killed worker's sessions to end")
    at_kill = await committed(brainmigrate_pool)
    assert 0 < at_kill < MEMORIES
    assert await write_counts(brainmigrate_pool) == {0: MEMORIES - at_kill, 1: at_kill}
    migrator = Migrator(
        brainmigrate_pool, migrations_dir(MIGRATIONS), config=MigrationConfig(batch_size=BATCH)
    )
    assert await migrator.status(RESHAPE) is MigrationStatus.FAILED

    [result] = await migrator.run_pending()

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, MEMORIES - at_kill)
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    rows = await brainmigrate_pool.fetch("SELECT metadata::text FROM memories")
    for row in rows:
        document = json.loads(row[0])
        assert document == reshaped(document["number"], document["labels"]["all"])
    applied = [
        (row["migration_id"], row["operation"], row["status"])
        for row in await history_rows(brainmigrate_pool)
    ]
    assert applied == [(RESHAPE, "apply", "completed")]


async def test_memories_written_by_the_application_during_a_reshaping_are_reshaped_from_their_new_value(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """While the worker reshapes, the application keeps updating memories' tags: no update is lost
    (each memory ends with the tags it was last given, nested), none is reshaped twice."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
    worker = await start_data_worker(
        brainmigrate_database,
        MIGRATIONS,
        f"--batch-size={BATCH}",
        f"--checkpoint-frequency={BATCH}",
        "--batch-delay=0.02",
        "--application-name=busy reshaper",
    )
    written: dict[int, str] = {}
    try:
        await wait_until(lambda: committed(brainmigrate_pool), within=30, what="a checkpoint to commit")
        round_ = 0
        while worker.returncode is None and round_ < 200:
            round_ += 1
            n = (round_ * 97) % MEMORIES + 1
            tag = f"app{round_}"
            # The application writes whichever shape it finds: old or already reshaped.
            await brainmigrate_pool.execute(
                """
                UPDATE memories SET metadata = CASE
                    WHEN metadata ? 'labels'
                    THEN jsonb_set(metadata, '{labels,all}', jsonb_build_array($2::text))
                    ELSE jsonb_set(metadata, '{tags}', jsonb_build_array($2::text)) END
                 WHERE coalesce(metadata->>'n', metadata->>'number')::int = $1
                """,
                n,
                tag,
            )
            written[n] = tag
            await asyncio.sleep(0.005)
        outcome = await finish(worker, within=60)
    finally:
        await stop(worker)

    assert outcome.returncode == 0, (outcome.report, outcome.stderr)
    assert outcome.results == [(RESHAPE, "completed")]
    assert written
    rows = await brainmigrate_pool.fetch("SELECT metadata::text FROM memories")
    documents = {json.loads(row[0])["number"]: json.loads(row[0]) for row in rows}
    assert len(documents) == MEMORIES
    for n, document in documents.items():
        tags = [written[n]] if n in written else [f"t{n % 3}"]
        assert document == reshaped(n, tags), n
