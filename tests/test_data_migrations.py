"""Data and memory migrations: streaming batches, exactly-once writes, rollback to the byte."""

from __future__ import annotations

from typing import Any

import pytest

from brainmigrate import (
    BulkMemoryItem,
    MigrationConfig,
    MigrationValidationError,
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


async def test_failed_items_are_retried_alone(brainmigrate_pool: Any) -> None:
    """After a run with failures, retry_failed() writes only the failed items, once each."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 600)
    broken = {"on": True}

    async def flaky(memory: dict[str, Any]) -> BulkMemoryItem:
        if broken["on"] and memory["metadata"]["n"] % 10 == 0:
            raise RuntimeError("model unavailable")
        return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=flaky)])
    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=100, continue_on_error=True))
    assert (result.status, result.items_processed, result.items_failed) == (MigrationStatus.COMPLETED, 540, 60)
    failed = await migrator.failed_items("tag_memories_001")
    assert len(failed) == 60
    assert {item.error for item in failed} == {"RuntimeError: model unavailable"}

    broken["on"] = False
    retried = await migrator.retry_failed("tag_memories_001")

    assert (retried.items_processed, retried.items_failed) == (60, 0)
    assert await migrator.failed_items("tag_memories_001") == []
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 600}
    progress = await migrator.progress("tag_memories_001")
    assert progress is not None
    assert (progress.processed, progress.failed) == (600, 0)


async def test_precondition_gate_refuses_before_the_first_batch(brainmigrate_pool: Any) -> None:
    """validate_preconditions returning False stops a data migration before anything is written."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
        before = await fingerprint(conn)
    made = memory_migration()

    async def refuse(self: Any, conn: Any) -> bool:
        return False

    made.validate_preconditions = refuse  # type: ignore[method-assign]
    migrator = Migrator(brainmigrate_pool, [made])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    assert "preconditions of migration 'tag_memories_001' failed" in str(caught.value)
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.progress("tag_memories_001") is None


async def test_postcondition_gate_reverses_a_finished_run(brainmigrate_pool: Any) -> None:
    """validate_postconditions returning False after the last batch reverses the run's writes."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)
    made = memory_migration()

    async def refuse(self: Any, conn: Any) -> bool:
        return await conn.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'tagged'") == 0

    made.validate_postconditions = refuse  # type: ignore[method-assign]
    migrator = Migrator(brainmigrate_pool, [made])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=100))

    message = str(caught.value)
    assert "postconditions of migration 'tag_memories_001' failed" in message
    assert "its writes were reversed (300 rows restored)" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status("tag_memories_001") is MigrationStatus.FAILED
    progress = await migrator.progress("tag_memories_001")
    assert progress is not None
    assert progress.status == "rolled_back"
