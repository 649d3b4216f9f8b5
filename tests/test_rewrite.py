"""Online table rewrite: a memory, data or structure migration run by building a transformed copy
of its table beside it and swapping it in (``strategy = "rewrite"``), or chosen by ``"auto"``."""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import anyio
import asyncpg
import pytest

from brainmigrate import (
    BulkMemoryItem,
    DatabaseDataMigration,
    DataSource,
    HybridPhase,
    MemoryStructureMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationStateError,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate import structure as s
from rewrite_support import enrichment, sentiment

pytestmark = pytest.mark.anyio

STORE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id         bigserial PRIMARY KEY,
    content    text NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    embedding  vector(3),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT content_not_empty CHECK (content <> '')
);
CREATE INDEX memories_metadata_idx ON memories USING gin (metadata);
CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops);
CREATE INDEX memories_created_idx ON memories (created_at);
COMMENT ON TABLE memories IS 'what the assistant remembers';
INSERT INTO memories (content, metadata, embedding)
SELECT CASE WHEN i % 3 = 0 THEN 'a sad memory ' ELSE 'a happy memory ' END || i,
       jsonb_build_object('n', i), ARRAY[i % 7, 1, i % 5 + 1]::real[]::vector
  FROM generate_series(1, $1::int) AS i;
"""


async def create_store(pool: asyncpg.Pool[Any], count: int) -> None:
    head, insert = STORE.split(";\nINSERT")
    await pool.execute(head)
    await pool.execute("INSERT" + insert, count)


async def rows(pool: asyncpg.Pool[Any]) -> dict[int, tuple[str, dict[str, Any], str | None]]:
    records = await pool.fetch("SELECT id, content, metadata::text AS m, embedding::text AS e FROM memories")
    import json

    return {r["id"]: (r["content"], json.loads(r["m"]), r["e"]) for r in records}


async def index_definitions(pool: asyncpg.Pool[Any], table: str = "memories") -> list[str]:
    return [
        r[0]
        for r in await pool.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1 "
            "ORDER BY indexname",
            table,
        )
    ]


async def tables(pool: asyncpg.Pool[Any]) -> list[str]:
    return [
        r[0]
        for r in await pool.fetch(
            "SELECT relname::text FROM pg_class "
            "WHERE relkind = 'r' AND relnamespace = current_schema()::regnamespace ORDER BY 1"
        )
    ]


async def test_a_rewrite_swaps_in_a_transformed_copy_and_keeps_the_original_until_contract(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 500)
    before = await rows(brainmigrate_pool)
    indexes = await index_definitions(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [enrichment()])

    results = await migrator.run_pending()

    assert [r.status for r in results] == [MigrationStatus.RUNNING]  # swapped, waiting for contract
    assert await migrator.hybrid_phase("enrich_001") is HybridPhase.READY_TO_CONTRACT
    after = await rows(brainmigrate_pool)
    assert after.keys() == before.keys()
    for key, (content, metadata, embedding) in after.items():
        assert metadata == {**before[key][1], "sentiment": sentiment(content)}
        assert (content, embedding) == (before[key][0], before[key][2])
    assert await index_definitions(brainmigrate_pool) == indexes
    assert await brainmigrate_pool.fetchval("SELECT obj_description('memories'::regclass)") == (
        "what the assistant remembers"
    )
    # The sequence goes on after the swap: a new memory gets the next id.
    new_id = await brainmigrate_pool.fetchval("INSERT INTO memories (content) VALUES ('new') RETURNING id")
    assert new_id == 501
    old = [t for t in await tables(brainmigrate_pool) if t.startswith("bm_old_")]
    assert len(old) == 1

    await migrator.contract("enrich_001")

    assert await migrator.status("enrich_001") is MigrationStatus.COMPLETED
    assert [t for t in await tables(brainmigrate_pool) if t.startswith("bm_")] == []
    assert (
        await brainmigrate_pool.fetchval("INSERT INTO memories (content) VALUES ('newer') RETURNING id")
        == 502
    )


async def test_rolling_back_before_contract_swaps_the_original_back_with_what_was_written_since(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 200)
    before = await rows(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [enrichment()])
    await migrator.run_pending()
    # The application writes to the rewritten table before the rollback.
    await brainmigrate_pool.execute("UPDATE memories SET content = 'edited after' WHERE id = 7")
    await brainmigrate_pool.execute("DELETE FROM memories WHERE id = 8")
    added = await brainmigrate_pool.fetchval("INSERT INTO memories (content) VALUES ('added') RETURNING id")

    await migrator.rollback("enrich_001")

    after = await rows(brainmigrate_pool)
    assert after[7][0] == "edited after"
    assert 8 not in after and added in after
    for key, value in before.items():
        if key not in (7, 8):
            assert after[key] == value  # no sentiment: the original is back
    assert [t for t in await tables(brainmigrate_pool) if t.startswith("bm_")] == []
    assert await migrator.status("enrich_001") is MigrationStatus.ROLLED_BACK


async def test_writes_during_the_copy_and_the_index_build_are_all_in_the_swapped_table_transformed(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 3000)
    touched: dict[int, str | None] = {}
    writes = anyio.Event()

    original = await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid")
    late: set[int] = set()  # written to the rewritten table, after the swap: not transformed

    async def writer(migrator: Migrator) -> None:
        """Inserts, edits and deletes until the rewrite has swapped the tables (each write's
        table tells whether it came before the swap, into the change log, or after it)."""
        i = 0
        async with brainmigrate_pool.acquire() as conn:
            while not late:
                i += 1
                key = (i * 37) % 3000 + 1
                if i % 5 == 0:
                    row = await conn.fetchrow(
                        "DELETE FROM memories WHERE id = $1 RETURNING id, tableoid", key
                    )
                    touched[key] = None
                elif i % 5 == 1:
                    text = f"a sad insert {i}"
                    row = await conn.fetchrow(
                        "INSERT INTO memories (content) VALUES ($1) RETURNING id, tableoid", text
                    )
                    touched[row["id"]] = text
                else:
                    text = f"a happy edit {i}" if i % 2 else f"a sad edit {i}"
                    row = await conn.fetchrow(
                        "UPDATE memories SET content = $2 WHERE id = $1 RETURNING id, tableoid", key, text
                    )
                    if row is not None:
                        touched[key] = text
                if row is not None and row["tableoid"] != original:
                    late.add(row["id"])
                if i == 100:
                    writes.set()

    class WaitsForTheWriter(enrichment()):  # type: ignore[misc, valid-type]
        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            await writes.wait()  # the copy starts once the application has written
            return await super().transform_memory(memory)

    migrator = Migrator(brainmigrate_pool, [WaitsForTheWriter])
    async with anyio.create_task_group() as group:
        group.start_soon(writer, migrator)
        await migrator.run_pending()

    assert len(touched) > 100 and late
    after = await rows(brainmigrate_pool)
    for key, content in touched.items():
        if content is None:
            assert key not in after
        else:
            assert after[key][0] == content
    for key, (content, metadata, _) in after.items():
        if key not in late:
            assert metadata.get("sentiment") == sentiment(content), key


async def test_a_structure_migration_can_be_rewritten_too(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    await create_store(brainmigrate_pool, 100)

    class Rename(MemoryStructureMigration):
        strategy: ClassVar[Any] = "rewrite"

        def operations(self) -> list[s.Operation]:
            return [s.rename("n", "number")]

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="rename_001",
                name="n becomes number",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_STRUCTURE,
                reversible=True,
            )

    migrator = Migrator(brainmigrate_pool, [Rename])
    await migrator.run_pending()
    after = await rows(brainmigrate_pool)
    assert all(set(metadata) == {"number"} for _, metadata, _ in after.values())
    assert after[5][1] == {"number": 5}


async def test_auto_runs_in_place_on_a_small_table_and_rewrites_a_large_one(
    brainmigrate_pool: asyncpg.Pool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    await create_store(brainmigrate_pool, 300)
    await brainmigrate_pool.execute("ANALYZE memories")
    caplog.set_level(logging.INFO, logger="brainmigrate")
    small = enrichment("auto_small", strategy="auto")
    await Migrator(brainmigrate_pool, [small]).run_pending()
    assert "runs in place: the table holds about 300 rows, fewer than rewrite_min_rows" in caplog.text
    assert not [t for t in await tables(brainmigrate_pool) if t.startswith("bm_")]

    await brainmigrate_pool.execute("UPDATE memories SET metadata = metadata - 'sentiment'")
    large = enrichment("auto_large", strategy="auto", rewrite_min_rows=100)
    migrator = Migrator(brainmigrate_pool, [small, large])
    await migrator.run_pending()
    assert re.search(
        r"data migration auto_large runs rewrite: about [\d,]+ rows, 100% of a sample changing, and "
        r"each update would enter 4 index\(es\) including memories_embedding_idx, memories_metadata_idx",
        caplog.text,
    )
    assert await migrator.hybrid_phase("auto_large") is HybridPhase.READY_TO_CONTRACT
    assert all(m.get("sentiment") for _, m, _ in (await rows(brainmigrate_pool)).values())


async def test_a_table_that_cannot_be_rewritten_is_refused_with_the_reason_and_nothing_created(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    await brainmigrate_pool.execute("CREATE MATERIALIZED VIEW counts AS SELECT count(*) FROM memories")
    before = await rows(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [enrichment()])

    with pytest.raises(MigrationValidationError, match="materialized views depend on") as raised:
        await migrator.run_pending()

    assert "enrich_001" in str(raised.value)
    assert await rows(brainmigrate_pool) == before
    assert sorted(await tables(brainmigrate_pool)) == ["memories"]
    triggers = await brainmigrate_pool.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'memories'::regclass AND NOT tgisinternal"
    )
    assert triggers == 0


async def test_a_batch_statement_declaring_rewrite_is_refused_when_loaded(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 10)

    class Statement(DatabaseDataMigration):
        strategy: ClassVar[Any] = "rewrite"
        source = DataSource(table="memories", key="id")

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="statement_001", name="s", version="1", migration_type=MigrationType.DATABASE_DATA
            )

        async def get_batch_statement(self) -> str | None:
            return "UPDATE memories SET content = upper(content) WHERE id BETWEEN $1 AND $2"

    with pytest.raises(
        MigrationValidationError, match="get_batch_statement\\(\\) updates the table in place"
    ):
        await Migrator(brainmigrate_pool, [Statement]).run_pending()
    assert (
        await brainmigrate_pool.fetchval("SELECT count(*) FROM memories WHERE content = upper(content)") == 0
    )


async def test_a_dry_run_says_how_each_data_migration_would_write_and_why_and_writes_nothing(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 300)
    await brainmigrate_pool.execute("ANALYZE memories")
    before = await rows(brainmigrate_pool)
    migrator = Migrator(
        brainmigrate_pool,
        [
            enrichment("declared_001"),
            enrichment("auto_001", strategy="auto", rewrite_min_rows=100),
            enrichment("small_001", strategy="auto"),
            enrichment("in_place_001", strategy="in_place"),
        ],
    )

    results = {r.migration_id: r for r in await migrator.run_pending(config=MigrationConfig(dry_run=True))}

    assert (results["declared_001"].strategy, results["declared_001"].strategy_reason) == (
        "rewrite",
        "it declares strategy = 'rewrite'",
    )
    assert all(r.status is MigrationStatus.COMPLETED and r.dry_run for r in results.values())
    assert results["declared_001"].changes  # the sample of what would change, as in place
    assert results["auto_001"].strategy == "rewrite"
    assert "100% of a sample changing" in (results["auto_001"].strategy_reason or "")
    assert results["small_001"].strategy == "in_place"
    assert "fewer than rewrite_min_rows" in (results["small_001"].strategy_reason or "")
    assert (results["in_place_001"].strategy, results["in_place_001"].strategy_reason) == (
        "in_place",
        "it declares strategy = 'in_place'",
    )
    assert await rows(brainmigrate_pool) == before
    assert sorted(await tables(brainmigrate_pool)) == ["memories"]


async def test_progress_of_a_rewrite_is_its_copy_then_its_fill_and_contract_of_an_in_place_run_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 120)
    migrator = Migrator(
        brainmigrate_pool, [enrichment("rewritten_001"), enrichment("in_place_001", strategy="auto")]
    )
    await migrator.run_pending()

    progress = await migrator.progress("rewritten_001")
    assert progress is not None
    assert progress.migration_id == "rewritten_001/fill"
    assert progress.status.value == "completed"
    with pytest.raises(MigrationStateError, match="it runs in place, not as a rewrite") as refused:
        await migrator.contract("in_place_001")
    assert refused.value.migration_id == "in_place_001"
    assert await migrator.status("in_place_001") is MigrationStatus.COMPLETED
