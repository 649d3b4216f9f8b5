"""EnrichMemoriesWithSentiment, the memory migration of the Unified Migration System guide, runs
as published on a real memories table.

The class below is the guide's, token for token; only its imports were written for it. It reads
memories with its own query (``get_memories_to_migrate``, LIMIT 10000, no ORDER BY), gets JSONB as
``dict`` although the pool has no JSON codec, and depends on ``classify_memory_types_001``.
"""

# The guide's class is kept exactly as published: typing.List/Dict/Optional and blank lines holding
# spaces are part of it.
# ruff: noqa: UP006, UP035, UP045, W293

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional

import pytest

from brainmigrate import (
    BulkMemoryItem,
    DatabaseDataMigration,
    DataSource,
    MemoryDataMigration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
    Progress,
)
from brainmigrate.testing import fingerprint
from data_support import create_memories, stop_counting_writes, write_counts
from helpers import history_rows

pytestmark = pytest.mark.anyio


class Sentiment(NamedTuple):
    score: float
    magnitude: float


def analyze_sentiment(text: str) -> Sentiment:
    """A stand-in for a sentiment model: deterministic, and unable to read texts marked unreadable."""
    if text.startswith("unreadable"):
        raise ValueError(f"cannot analyse {text[:20]!r}")
    return Sentiment(score=(len(text) % 21 - 10) / 10, magnitude=len(text.split()) / 10)


class ClassifyMemoryTypes(DatabaseDataMigration):
    """The migration the guide's depends on: sets memory_type on the server, one key range at a time."""

    source: ClassVar[DataSource | None] = DataSource(table="memories", key="id")
    writes: ClassVar[tuple[str, ...]] = ("memory_type",)

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="classify_memory_types_001",
            name="Classify memory types",
            version="2.5.0",
            migration_type=MigrationType.DATABASE_DATA,
        )

    async def get_batch_statement(self) -> str | None:
        return (
            "UPDATE memories SET memory_type = CASE WHEN content LIKE '%xxxxx%' THEN 'episodic' "
            "ELSE 'semantic' END WHERE id BETWEEN $1 AND $2"
        )


# fmt: off
class EnrichMemoriesWithSentiment(MemoryDataMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="enrich_sentiment_001",
            name="Add sentiment analysis to memories",
            description="Analyzes and adds sentiment scores to existing memories",
            version="2.6.0",
            migration_type=MigrationType.MEMORY_DATA,
            author="system",
            created_at=datetime.now(),
            dependencies=["classify_memory_types_001"],
            reversible=True,
            checksum="def456"
        )
    
    async def get_memories_to_migrate(self) -> List[Dict[str, Any]]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("""
                SELECT id, content, metadata
                FROM memories
                WHERE metadata->>'sentiment' IS NULL
                LIMIT 10000
            """)
            return [dict(row) for row in rows]
    
    async def transform_memory(self, memory: Dict[str, Any]) -> Optional[BulkMemoryItem]:
        # Analyze sentiment
        sentiment = analyze_sentiment(memory['content'])
        
        # Update metadata
        metadata = memory.get('metadata', {})
        metadata['sentiment'] = {
            'score': sentiment.score,
            'magnitude': sentiment.magnitude,
            'analyzed_at': datetime.now().isoformat()
        }
        
        return BulkMemoryItem(
            memory_id=memory['id'],
            content=memory['content'],
            metadata=metadata
        )
# fmt: on


class EnrichInSlicesOf40(EnrichMemoriesWithSentiment):
    """The guide's migration with a LIMIT of 40, so a small table takes several slices."""

    async def get_memories_to_migrate(self) -> List[Dict[str, Any]]:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("""
                SELECT id, content, metadata
                FROM memories
                WHERE metadata->>'sentiment' IS NULL
                LIMIT 40
            """)
            return [dict(row) for row in rows]


class EnrichWithoutExcludingMigrated(EnrichMemoriesWithSentiment):
    """A broken variant whose query does not leave out memories it already enriched."""

    async def get_memories_to_migrate(self) -> List[Dict[str, Any]]:
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT id, content, metadata FROM memories ORDER BY id LIMIT 50")
            return [dict(row) for row in rows]


async def sentiments(pool: Any) -> list[dict[str, Any]]:
    """Every memory's metadata, decoded by the database (no codec involved)."""
    rows = await pool.fetch(
        "SELECT jsonb_typeof(metadata) AS kind, metadata->'sentiment' IS NOT NULL AS enriched,"
        " (metadata->'sentiment'->>'score')::float AS score,"
        " (metadata->'sentiment'->>'magnitude')::float AS magnitude,"
        " metadata->'sentiment'->>'analyzed_at' AS analyzed_at,"
        " (metadata->>'n')::int AS n, metadata->'tags' AS tags, content FROM memories"
    )
    return [dict(row) for row in rows]


async def test_the_published_migration_runs_verbatim_over_more_memories_than_its_limit(
    brainmigrate_pool: Any,
) -> None:
    """25,000 memories, LIMIT 10000: its query is asked again until it returns none, and every
    memory is enriched exactly once, after the migration it depends on."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 25_000)
        # The user's pool has no JSON codec: JSONB reaches asyncpg users as text.
        assert isinstance(await conn.fetchval("SELECT metadata FROM memories LIMIT 1"), str)
    migrator = Migrator(brainmigrate_pool, [EnrichMemoriesWithSentiment, ClassifyMemoryTypes])

    classify, enrich = await migrator.run_pending(config=MigrationConfig(batch_size=3000))

    assert (classify.migration_id, classify.status) == (
        "classify_memory_types_001",
        MigrationStatus.COMPLETED,
    )
    assert (enrich.migration_id, enrich.status) == ("enrich_sentiment_001", MigrationStatus.COMPLETED)
    assert (enrich.items_processed, enrich.items_failed, enrich.items_skipped) == (25_000, 0, 0)
    rows = await sentiments(brainmigrate_pool)
    assert len(rows) == 25_000
    for row in rows:
        # Written back as a JSON object holding the old keys and the new one, not as a JSON string.
        assert row["kind"] == "object"
        assert row["enriched"]
        expected = analyze_sentiment(row["content"])
        assert (row["score"], row["magnitude"]) == (expected.score, expected.magnitude)
        assert datetime.fromisoformat(row["analyzed_at"])
        assert row["n"] is not None and row["tags"] is not None
    async with brainmigrate_pool.acquire() as conn:
        # One write by the classification, one by the enrichment, for every memory.
        assert await write_counts(conn) == {2: 25_000}
    assert [(r["migration_id"], r["status"]) for r in await history_rows(brainmigrate_pool)] == [
        ("classify_memory_types_001", "completed"),
        ("enrich_sentiment_001", "completed"),
    ]
    assert await migrator.status("enrich_sentiment_001") is MigrationStatus.COMPLETED


async def test_the_query_is_called_slice_after_slice_until_it_returns_none(brainmigrate_pool: Any) -> None:
    """With LIMIT 40 over 130 memories: slices of 40, 40, 40 and 10, each committed before the next
    call, then an empty one that ends the run; on_progress sees one checkpoint per slice."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 130)
    seen: list[Progress] = []
    migrator = Migrator(brainmigrate_pool, [EnrichInSlicesOf40, ClassifyMemoryTypes], on_progress=seen.append)

    results = await migrator.run_pending(config=MigrationConfig(batch_size=16))

    assert [r.status for r in results] == [MigrationStatus.COMPLETED, MigrationStatus.COMPLETED]
    assert results[1].items_processed == 130
    enrich = [p.processed for p in seen if p.migration_id == "enrich_sentiment_001"]
    # One checkpoint per slice (the empty slice closes the run without new items).
    assert list(dict.fromkeys(enrich)) == [40, 80, 120, 130]
    assert enrich == sorted(enrich)
    # A query-driven run does not know its total in advance.
    assert all(p.total is None for p in seen if p.migration_id == "enrich_sentiment_001")
    assert all(row["enriched"] for row in await sentiments(brainmigrate_pool))


async def test_a_slice_of_only_failed_memories_ends_the_run(brainmigrate_pool: Any) -> None:
    """With continue_on_error, memories the model cannot read are recorded and stay unenriched; their
    query keeps returning them, and a slice holding nothing else ends the run instead of looping."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
        await conn.execute(
            "UPDATE memories SET content = 'unreadable ' || content WHERE (metadata->>'n')::int % 10 = 0"
        )
        unreadable = {
            str(r[0]) for r in await conn.fetch("SELECT id FROM memories WHERE content LIKE 'unr%'")
        }
    assert len(unreadable) == 30
    migrator = Migrator(brainmigrate_pool, [EnrichMemoriesWithSentiment, ClassifyMemoryTypes])

    _, enrich = await migrator.run_pending(config=MigrationConfig(continue_on_error=True, batch_size=64))

    assert enrich.status is MigrationStatus.COMPLETED
    assert (enrich.items_processed, enrich.items_failed) == (270, 30)
    failed = await migrator.failed_items("enrich_sentiment_001")
    assert {item.key for item in failed} == unreadable
    assert all(item.error.startswith("ValueError: cannot analyse 'unreadable") for item in failed)
    assert all(item.attempts == 1 for item in failed)
    rows = await sentiments(brainmigrate_pool)
    assert sum(row["enriched"] for row in rows) == 270
    assert not any(row["enriched"] for row in rows if row["content"].startswith("unreadable"))


async def test_a_query_that_returns_migrated_memories_again_stops_with_a_clear_error(
    brainmigrate_pool: Any,
) -> None:
    """A query not leaving out enriched memories would loop forever: the run stops on the second
    slice, says why and how to fix the query, and its writes are reversed."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 200)
        await stop_counting_writes(conn)
    migrator = Migrator(brainmigrate_pool, [EnrichWithoutExcludingMigrated, ClassifyMemoryTypes])
    await migrator.execute("classify_memory_types_001")
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.execute("enrich_sentiment_001")

    message = str(caught.value)
    assert caught.value.migration_id == "enrich_sentiment_001"
    assert (
        "'enrich_sentiment_001' made no progress: get_memories_to_migrate() returned 50 memories" in message
    )
    assert "its query must leave out migrated memories" in message
    assert "its writes were reversed (50 rows restored)" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert [(r["migration_id"], r["status"]) for r in await history_rows(brainmigrate_pool)] == [
        ("classify_memory_types_001", "completed"),
        ("enrich_sentiment_001", "failed"),
    ]
    assert await migrator.status("enrich_sentiment_001") is MigrationStatus.FAILED
