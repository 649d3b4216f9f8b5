"""Rolling back a large before-image table in parallel key ranges, and a rollback stopped midway.

The memories are enough batches (``batch_size`` of 100) for the restore to run in key ranges, on
two connections. A rollback SIGKILLed between its ranges' commits leaves the committed ranges
restored, the rest still migrated, the run saying it is rolling back and the migration still
applied; a second rollback restores exactly the rest. Run as a script, this file is the rollback
process the test kills.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import asyncpg
import pytest

from brainmigrate import BrainMigrateError, MigrationConfig, MigrationStatus, Migrator
from data_support import create_memories, memory_migration
from workers.harness import sigkill, stop, wait_until

pytestmark = pytest.mark.anyio

MEMORIES = 20_000
TAG = "tag_memories_001"
#: 200 batches of before-images: above the 100 from which the restore runs in key ranges.
CONFIG = MigrationConfig(batch_size=100, checkpoint_frequency=1000, max_workers=2)
KILLED = "killed rollback"
TagMemories = memory_migration(TAG)

#: The rows as the migration found them: every column but the trigger's count of writes.
FINGERPRINT = """
SELECT count(*), sum(hashtextextended(id::text || content || metadata::text, 0))
  FROM memories
"""
TAGGED = """SELECT count(*) FROM memories WHERE metadata @> '{"tagged": true}'"""


async def _migrated(pool: asyncpg.Pool[Any]) -> tuple[Any, ...]:
    """Memories tagged by a reversible run; their fingerprint from before it."""
    async with pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
    original = tuple(await pool.fetchrow(FINGERPRINT))
    results = await Migrator(pool, [TagMemories], config=CONFIG).run_pending()
    assert [r.status for r in results] == [MigrationStatus.COMPLETED]
    assert await pool.fetchval(TAGGED) == MEMORIES
    return original


async def _images_table(pool: asyncpg.Pool[Any]) -> str | None:
    table: str | None = await pool.fetchval(
        "SELECT before_images FROM brainmigrate.data_runs WHERE migration_id = $1", TAG
    )
    return table


async def _run_error(pool: asyncpg.Pool[Any]) -> str | None:
    error: str | None = await pool.fetchval(
        "SELECT error FROM brainmigrate.data_runs WHERE migration_id = $1 ORDER BY run_id DESC LIMIT 1", TAG
    )
    return error


async def _rollbacks(pool: asyncpg.Pool[Any]) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT operation, status FROM brainmigrate.migration_history WHERE migration_id = $1 "
        "ORDER BY attempt_id",
        TAG,
    )
    return [(row[0], row[1]) for row in rows]


async def test_a_large_rollback_restores_every_row_exactly_in_key_ranges_and_records_it_once(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """Restored on two connections, every column of every row is as before; the before-images are
    dropped, the run is rolled back with no note left, and the history has one rollback."""
    original = await _migrated(brainmigrate_pool)
    images = await _images_table(brainmigrate_pool)
    assert images is not None

    results = await Migrator(brainmigrate_pool, [TagMemories], config=CONFIG).rollback(TAG)

    assert [(r.status, r.items_processed) for r in results] == [(MigrationStatus.ROLLED_BACK, MEMORIES)]
    assert tuple(await brainmigrate_pool.fetchrow(FINGERPRINT)) == original
    assert await brainmigrate_pool.fetchval(TAGGED) == 0
    assert await brainmigrate_pool.fetchval("SELECT to_regclass($1)", images) is None
    assert await _run_error(brainmigrate_pool) is None
    assert await _rollbacks(brainmigrate_pool) == [("apply", "completed"), ("rollback", "completed")]


async def test_a_rollback_killed_between_its_ranges_commits_is_finished_exactly_by_a_second_one(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """SIGKILLed once one key range committed and the other waits, the rollback leaves the committed
    range restored and its before-images gone, the other range migrated with its images kept, the
    run saying it is rolling back and the migration applied. A second rollback restores exactly
    the rest: every row as before, the note gone, one rollback in the history."""
    original = await _migrated(brainmigrate_pool)
    images = await _images_table(brainmigrate_pool)
    assert images is not None
    count_images = f"SELECT count(*) FROM {images}"
    blocker = await asyncpg.connect(brainmigrate_database)
    rollback: asyncio.subprocess.Process | None = None
    try:
        # The row of the greatest key is in the last range, never in the first: its restore waits.
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute(
            "SELECT 1 FROM memories WHERE id = (SELECT id FROM memories ORDER BY id DESC LIMIT 1) FOR UPDATE"
        )
        rollback = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            brainmigrate_database,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def one_range_committed_and_one_waiting() -> bool:
            left = await brainmigrate_pool.fetchval(count_images)
            waiting = await brainmigrate_pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND wait_event_type = 'Lock'",
                KILLED,
            )
            return bool(0 < left < MEMORIES and waiting)

        await wait_until(
            one_range_committed_and_one_waiting, within=60, what="one range restored, one waiting"
        )
        assert await sigkill(rollback) == -signal.SIGKILL
        await blocking.rollback()
    finally:
        if rollback is not None:
            await stop(rollback)
        await blocker.close()

    async def sessions_ended() -> bool:
        return not await brainmigrate_pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", KILLED
        )

    await wait_until(sessions_ended, within=30, what="the killed rollback's sessions to end")
    left = await brainmigrate_pool.fetchval(count_images)
    migrator = Migrator(brainmigrate_pool, [TagMemories], config=CONFIG)

    assert 0 < left < MEMORIES
    assert await brainmigrate_pool.fetchval(TAGGED) == left  # exactly the rows whose images are kept
    note = await _run_error(brainmigrate_pool)
    assert note is not None and note.startswith("rolling back: its before-images are being restored")
    assert await migrator.status(TAG) is MigrationStatus.COMPLETED
    assert await _rollbacks(brainmigrate_pool) == [("apply", "completed")]

    results = await migrator.rollback(TAG)

    assert [(r.status, r.items_processed) for r in results] == [(MigrationStatus.ROLLED_BACK, left)]
    assert tuple(await brainmigrate_pool.fetchrow(FINGERPRINT)) == original
    assert await brainmigrate_pool.fetchval(TAGGED) == 0
    assert await _run_error(brainmigrate_pool) is None
    assert await migrator.status(TAG) is MigrationStatus.ROLLED_BACK
    assert await _rollbacks(brainmigrate_pool) == [("apply", "completed"), ("rollback", "completed")]


#: Refuses any write of the memory with the greatest key, which is in the last key range.
REFUSE_LAST_MEMORY = """
CREATE FUNCTION refuse_last_memory() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'memory % may not be written now', OLD.id; END $$;
CREATE TRIGGER memories_refuse_last BEFORE UPDATE ON memories FOR EACH ROW
    WHEN (OLD.id = '{key}'::uuid) EXECUTE FUNCTION refuse_last_memory();
"""


async def test_a_rollback_whose_range_fails_keeps_each_row_and_its_image_together_and_finishes_later(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """When one key range's restore fails, the rollback raises; every range that committed has its
    images gone and its rows restored, every other row is still migrated with its image kept, and
    the run says it is rolling back. Once the cause is gone, rolling back again finishes exactly."""
    original = await _migrated(brainmigrate_pool)
    images = await _images_table(brainmigrate_pool)
    last = await brainmigrate_pool.fetchval("SELECT id FROM memories ORDER BY id DESC LIMIT 1")
    await brainmigrate_pool.execute(REFUSE_LAST_MEMORY.format(key=last))
    migrator = Migrator(brainmigrate_pool, [TagMemories], config=CONFIG)

    with pytest.raises(BrainMigrateError, match=f"memory {last} may not be written now") as refused:
        await migrator.rollback(TAG)

    assert isinstance(refused.value.__cause__, asyncpg.RaiseError)
    left = await brainmigrate_pool.fetchval(f"SELECT count(*) FROM {images}")
    assert 0 < left <= MEMORIES
    assert await brainmigrate_pool.fetchval(TAGGED) == left
    note = await _run_error(brainmigrate_pool)
    assert note is not None and note.startswith("rolling back: ")
    assert await migrator.status(TAG) is MigrationStatus.COMPLETED

    await brainmigrate_pool.execute("DROP TRIGGER memories_refuse_last ON memories")
    results = await migrator.rollback(TAG)

    assert [(r.status, r.items_processed) for r in results] == [(MigrationStatus.ROLLED_BACK, left)]
    assert tuple(await brainmigrate_pool.fetchrow(FINGERPRINT)) == original
    assert await _run_error(brainmigrate_pool) is None
    assert await _rollbacks(brainmigrate_pool) == [("apply", "completed"), ("rollback", "completed")]


async def _rollback_process(dsn: str) -> None:
    """The rollback the test kills: on a pool of its own, with a connection for each range."""
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=4, server_settings={"application_name": KILLED}
    )
    try:
        await Migrator(pool, [TagMemories], config=CONFIG).rollback(TAG)
    finally:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(_rollback_process(sys.argv[1]))
