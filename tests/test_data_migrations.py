"""Data and memory migrations: streaming batches, exactly-once writes, rollback to the byte."""

from __future__ import annotations

from typing import Any

import pytest

from brainmigrate import (
    BulkMemoryItem,
    IrreversibleMigrationError,
    MigrationConfig,
    MigrationStatus,
    MigrationValidationError,
    Migrator,
)
from brainmigrate.testing import fingerprint
from data_support import (
    create_memories,
    memory_migration,
    metadata_by_n,
    server_side_migration,
    stop_counting_writes,
    write_counts,
)
from helpers import snapshot

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
    assert (result.status, result.items_processed, result.items_failed) == (
        MigrationStatus.COMPLETED,
        540,
        60,
    )
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


async def test_a_server_side_run_over_a_multiple_of_the_batch_size_completes(brainmigrate_pool: Any) -> None:
    """400 rows in batches of 100: the range after the last full batch is empty, which ends the run."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 400)
    migrator = Migrator(brainmigrate_pool, [server_side_migration()])

    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=100))

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 400)
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {1: 400}


async def test_a_user_inverse_transform_reverses_without_before_images(brainmigrate_pool: Any) -> None:
    """With reverse_memory overridden no before-images are kept; rollback applies the inverse to every
    memory and the table is as it was."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 400)
        await stop_counting_writes(conn)
        before = await fingerprint(conn)

    class TagWithInverse(memory_migration()):  # type: ignore[misc]
        async def reverse_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            metadata = {k: v for k, v in memory["metadata"].items() if k != "tagged"}
            return BulkMemoryItem(memory_id=memory["id"], metadata=metadata)

    migrator = Migrator(brainmigrate_pool, [TagWithInverse])
    await migrator.run_pending(config=MigrationConfig(batch_size=64))
    async with brainmigrate_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'tagged'") == 400
        images = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'brainmigrate' AND tablename LIKE 'before%'"
        )
        assert images == 0

    [result] = await migrator.rollback("tag_memories_001", config=MigrationConfig(batch_size=64))

    assert (result.status, result.items_processed) == (MigrationStatus.ROLLED_BACK, 400)
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


async def test_a_server_side_statement_is_reversed_from_the_before_images_of_its_writes(
    brainmigrate_pool: Any,
) -> None:
    """A batch statement declaring `writes` keeps those columns' old values; rollback puts them back."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 700)
        await stop_counting_writes(conn)
        before = await fingerprint(conn)
        total = await conn.fetchval("SELECT sum(importance_score) FROM memories")
    migrator = Migrator(brainmigrate_pool, [server_side_migration()])

    [applied] = await migrator.run_pending(config=MigrationConfig(batch_size=64))

    assert (applied.status, applied.items_processed) == (MigrationStatus.COMPLETED, 700)
    assert await brainmigrate_pool.fetchval("SELECT sum(importance_score) FROM memories") == total / 2

    [rolled_back] = await migrator.rollback("score_memories_001")

    assert rolled_back.status is MigrationStatus.ROLLED_BACK
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


async def test_a_rollback_whose_before_images_were_dropped_is_refused(brainmigrate_pool: Any) -> None:
    """Without its before-images a data migration cannot be restored: IrreversibleMigrationError
    says so, and nothing changes, in the table or in the history."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
    migrator = Migrator(brainmigrate_pool, [memory_migration()])
    await migrator.run_pending(config=MigrationConfig(batch_size=64))
    images = await brainmigrate_pool.fetchval(
        "SELECT before_images FROM brainmigrate.data_runs WHERE migration_id = 'tag_memories_001'"
    )
    await brainmigrate_pool.execute(f"DROP TABLE {images}")
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(IrreversibleMigrationError) as caught:
        await migrator.rollback("tag_memories_001")

    assert caught.value.migration_id == "tag_memories_001"
    assert str(caught.value) == (
        "migration 'tag_memories_001' is not reversible (its before-images are gone, so its old values "
        "cannot be restored); write a new forward migration that undoes it"
    )
    assert await snapshot(brainmigrate_pool) == before
    assert await migrator.status("tag_memories_001") is MigrationStatus.COMPLETED


async def test_array_columns_are_written_and_restored(brainmigrate_pool: Any) -> None:
    """An embedding kept as real[] is written from a list of floats and restored by rollback."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 200)
        await conn.execute(
            "UPDATE memories SET embedding = ARRAY[0.5, 0.25]::real[] WHERE content LIKE '%1 %'"
        )
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)

    async def embed(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(memory_id=memory["id"], embedding=[0.1, float(memory["metadata"]["n"]), None])

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=embed)])
    await migrator.run_pending(config=MigrationConfig(batch_size=64))
    async with brainmigrate_pool.acquire() as conn:
        rows = await conn.fetch("SELECT embedding, (metadata->>'n')::int AS n FROM memories")
    assert all(row["embedding"] == [pytest.approx(0.1), float(row["n"]), None] for row in rows)

    await migrator.rollback("tag_memories_001")

    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


async def test_enum_and_numeric_columns_are_written(brainmigrate_pool: Any) -> None:
    """memory_type as an enum and importance_score as numeric take the transform's Python values."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 150)
        await conn.execute(
            "CREATE TYPE kind AS ENUM ('semantic', 'episodic');"
            "ALTER TABLE memories ALTER memory_type DROP DEFAULT,"
            " ALTER memory_type TYPE kind USING memory_type::kind"
        )

    async def classify(memory: dict[str, Any]) -> BulkMemoryItem:
        return BulkMemoryItem(memory_id=memory["id"], memory_type="episodic", importance_score=0.125)

    await Migrator(brainmigrate_pool, [memory_migration(transform=classify)]).run_pending()

    async with brainmigrate_pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT memory_type::text, importance_score::text, count(*) FROM memories GROUP BY 1, 2"
        )
    assert [tuple(row) for row in rows] == [("episodic", "0.1250", 150)]
