"""Data and memory migrations: streaming batches, exactly-once writes, rollback to the byte."""

from __future__ import annotations

from typing import Any

import pytest

from brainmigrate import (
    BulkMemoryItem,
    MigrationConfig,
    MigrationStatus,
    Migrator,
)
from brainmigrate.testing import fingerprint
from data_support import create_memories, memory_migration, metadata_by_n, server_side_migration, write_counts

pytestmark = pytest.mark.anyio


async def test_memory_migration_writes_every_memory_once(brainmigrate_pool: Any) -> None:
    """Each memory is updated in place exactly once and the run is recorded as applied."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 2500)
    migrator = Migrator(brainmigrate_pool, [memory_migration()])

    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=300, checkpoint_frequency=700))

    assert result.status is MigrationStatus.COMPLETED
    assert (result.items_processed, result.items_failed, result.items_skipped) == (2500, 0, 0)
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 2500}
        assert all(m["tagged"] is True for m in (await metadata_by_n(conn)).values())
        assert await conn.fetchval("SELECT count(*) FROM memories") == 2500
    progress = await migrator.progress("tag_memories_001")
    assert progress is not None
    assert (progress.status, progress.processed, progress.total) == ("completed", 2500, 2500)
    assert await migrator.status("tag_memories_001") is MigrationStatus.COMPLETED


async def test_rollback_restores_the_table_to_the_byte(brainmigrate_pool: Any) -> None:
    """The before-images put back every changed value exactly."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 1200)
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)

    async def rescore(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(
            memory_id=memory["id"], metadata={"replaced": True}, importance_score=0.25, content="new"
        )

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=rescore)])
    await migrator.run_pending(config=MigrationConfig(batch_size=500))
    async with brainmigrate_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM memories WHERE content = 'new'") == 1200

    [result] = await migrator.rollback("tag_memories_001")

    assert result.status is MigrationStatus.ROLLED_BACK
    async with brainmigrate_pool.acquire() as conn:
        after = await fingerprint(conn)
    assert before.diff(after) == []
    assert await migrator.status("tag_memories_001") is MigrationStatus.ROLLED_BACK


async def test_parallel_server_side_batches(brainmigrate_pool: Any) -> None:
    """A server-side statement per key range, over several workers, touches each row once."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 3000)
    migrator = Migrator(brainmigrate_pool, [server_side_migration()])

    [result] = await migrator.run_pending(
        config=MigrationConfig(batch_size=200, parallel_execution=True, max_workers=3)
    )

    assert result.status is MigrationStatus.COMPLETED
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 3000}
