"""The Second Brain example migrations and the demo script, on a real PostgreSQL with pgvector."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import (
    HybridPhase,
    MigrationConfig,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate.testing import assert_reversible, fingerprint

pytestmark = pytest.mark.anyio

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MIGRATIONS = EXAMPLES / "second_brain" / "migrations"
ORDER = [
    "enable_pgvector_001",
    "create_memories_001",
    "index_memory_metadata_001",
    "index_memory_embeddings_001",
    "add_user_preferences_001",
    "index_importance_by_type_001",
    "touch_memories_updated_at_001",
    "enrich_memories_with_sentiment_001",
    "nest_memory_metadata_001",
    "reembed_memories_hashed_words_001",
]
SENTIMENT = "enrich_memories_with_sentiment_001"
STRUCTURE = "nest_memory_metadata_001"
REEMBED = "reembed_memories_hashed_words_001"
#: The re-embedding's steps, in the order they run (its contract waits for contract()).
REEMBED_STEPS = [f"{REEMBED}/{step}" for step in ("expand", "backfill", "index", "cutover")]

# What the example schema leaves behind in the public schema, read from the catalogs.
USER_OBJECTS = """
SELECT 'relation ' || c.relname FROM pg_class c
 WHERE c.relnamespace = 'public'::regnamespace
UNION ALL
SELECT 'type ' || t.typname FROM pg_type t
 WHERE t.typnamespace = 'public'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = t.oid AND d.deptype = 'e')
   AND t.typrelid = 0 AND t.typcategory <> 'A'
UNION ALL
SELECT 'function ' || p.proname FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'extension ' || e.extname FROM pg_extension e WHERE e.extname <> 'plpgsql'
ORDER BY 1
"""


async def user_objects(pool: asyncpg.Pool[Any]) -> list[str]:
    async with pool.acquire() as conn:
        return [row[0] for row in await conn.fetch(USER_OBJECTS)]


async def test_migrations_run_in_dependency_then_version_order(brainmigrate_pool):
    """On a fresh database the examples are pending and run by dependencies, then by version as a version."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)

    pending = [meta.id for meta in await migrator.pending()]
    results = await migrator.run_pending()

    assert pending == ORDER
    # The re-embedding stops before its contract (contract_mode = "manual"): RUNNING, until contract().
    expected = [(mid, MigrationStatus.COMPLETED) for mid in ORDER[:-1]] + [(REEMBED, MigrationStatus.RUNNING)]
    assert [(result.migration_id, result.status) for result in results] == expected
    assert [record.migration_id for record in await migrator.history()] == ORDER[:-1] + REEMBED_STEPS
    assert [meta.id for meta in await migrator.pending()] == [REEMBED]
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT

    await migrator.contract(REEMBED)

    assert await migrator.pending() == []


async def test_memories_table_has_the_documented_columns(brainmigrate_pool):
    """The memories table has the store's columns and types: vector(1536), the memory_type enum, jsonb."""
    await Migrator(brainmigrate_pool, MIGRATIONS).run_pending(MigrationType.DATABASE_SCHEMA)

    async with brainmigrate_pool.acquire() as conn:
        columns = {
            row["attname"]: row["type"]
            for row in await conn.fetch(
                """
                SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute
                 WHERE attrelid = 'memories'::regclass AND attnum > 0 AND NOT attisdropped
                """
            )
        }
        labels = await conn.fetchval("SELECT enum_range(NULL::memory_type)::text[]")
        id_default = await conn.fetchval(
            "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef "
            "WHERE adrelid = 'memories'::regclass AND adnum = 1"
        )

    assert columns == {
        "id": "uuid",
        "content": "text",
        "embedding": "vector(1536)",
        "memory_type": "memory_type",
        "importance_score": "numeric(5,4)",
        "access_count": "integer",
        "last_accessed": "timestamp with time zone",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
        "semantic_metadata": "jsonb",
        "episodic_metadata": "jsonb",
        "procedural_metadata": "jsonb",
        "consolidation_score": "numeric",
        "last_consolidated": "timestamp with time zone",
        "decay_applied": "boolean",
        "metadata": "jsonb",
    }
    assert labels == ["semantic", "episodic", "procedural"]
    assert id_default == "gen_random_uuid()"


async def test_memories_table_accepts_memories_and_enforces_its_rules(brainmigrate_pool):
    """A memory gets its defaults, the trigger moves updated_at, and importance outside 0..1 is refused."""
    await Migrator(brainmigrate_pool, MIGRATIONS).run_pending(MigrationType.DATABASE_SCHEMA)
    embedding = "[" + ",".join(["0.01"] * 1536) + "]"

    async with brainmigrate_pool.acquire() as conn:
        row = await conn.fetchrow(
            "INSERT INTO memories (content, embedding) VALUES ($1, $2::vector) "
            "RETURNING memory_type::text, importance_score::text, metadata::text, updated_at",
            "Tea is best at 80 degrees",
            embedding,
        )
        touched = await conn.fetchval(
            "UPDATE memories SET access_count = access_count + 1 RETURNING updated_at > $1", row["updated_at"]
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO memories (content, importance_score) VALUES ('x', 1.5)")

    assert (row["memory_type"], row["importance_score"], row["metadata"]) == ("semantic", "0.5000", "{}")
    assert touched is True


async def test_indexes_exist_and_the_concurrent_one_is_valid(brainmigrate_pool):
    """The GIN index built concurrently (non-transactional) is valid; HNSW and per-type indexes exist."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    await migrator.run_pending()

    async with brainmigrate_pool.acquire() as conn:
        indexes = {
            row["name"]: (row["valid"], row["definition"])
            for row in await conn.fetch(
                """
                SELECT c.relname AS name, i.indisvalid AS valid, pg_get_indexdef(i.indexrelid) AS definition
                  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                 WHERE i.indrelid = 'memories'::regclass
                """
            )
        }
    [gin_attempt] = [r for r in await migrator.history() if r.migration_id == "index_memory_metadata_001"]

    assert (
        indexes["idx_memories_metadata"][0],
        indexes["idx_memories_metadata"][1].split(" ON public.memories ")[1],
    ) == (True, "USING gin (metadata)")
    assert (
        gin_attempt.status,
        gin_attempt.statement_index,
        gin_attempt.statement_count,
    ) == ("completed", 0, 1)
    assert "USING hnsw (embedding vector_cosine_ops)" in indexes["idx_memories_embedding_hnsw"][1]
    assert {"semantic", "episodic", "procedural"} == {
        name.removeprefix("idx_memories_importance_")
        for name in indexes
        if name.startswith("idx_memories_importance_")
    }
    assert all(valid for valid, _ in indexes.values())


async def test_rolling_back_in_reverse_order_restores_each_earlier_state(brainmigrate_pool):
    """Rolling back the examples one by one, newest first, restores each earlier schema, then an empty one."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    async with brainmigrate_pool.acquire() as conn:
        states = [await fingerprint(conn)]
    for migration_id in ORDER:
        await migrator.execute(migration_id)
        async with brainmigrate_pool.acquire() as conn:
            states.append(await fingerprint(conn))

    for position in reversed(range(len(ORDER))):
        [result] = await migrator.rollback(ORDER[position])
        async with brainmigrate_pool.acquire() as conn:
            restored = await fingerprint(conn)
        assert result.status is MigrationStatus.ROLLED_BACK
        assert states[position].diff(restored) == [], ORDER[position]

    assert await user_objects(brainmigrate_pool) == []
    assert [meta.id for meta in await migrator.pending()] == ORDER


async def test_cascade_rollback_of_the_extension_reverses_everything_newest_first(brainmigrate_pool):
    """Rolling back pgvector with cascade=True first rolls back every applied migration that needs it."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    await migrator.run_pending()

    results = await migrator.rollback("enable_pgvector_001", cascade=True)

    # user_preferences depends on nothing, so it stays.
    needs_pgvector = [mid for mid in ORDER if mid != "add_user_preferences_001"]
    assert list(reversed(needs_pgvector)) == [result.migration_id for result in results]
    assert [name for name in await user_objects(brainmigrate_pool) if "pkey" not in name] == [
        "relation idx_user_preferences_user_id",
        "relation user_preferences",
    ]


async def test_examples_pass_the_stairway_check(brainmigrate_pool):
    """brainmigrate.testing.assert_reversible accepts every example: up, down and up again match."""

    await assert_reversible(brainmigrate_pool, MIGRATIONS)

    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    assert [meta.id for meta in await migrator.pending()] == [REEMBED]  # waiting for contract()
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT


async def test_demo_runs_end_to_end_on_a_given_database(brainmigrate_database):
    """examples/demo.py --dsn migrates that database, enriches its memories, reshapes their metadata,
    rolls both back (newest first), re-embeds every memory with a new model, exits 0."""
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("BRAINMIGRATE_DEMO_DSN", None)

    with anyio.fail_after(120):
        process = await anyio.run_process(
            [sys.executable, str(EXAMPLES / "demo.py"), "--dsn", brainmigrate_database, "--memories", "3000"],
            check=False,
            env=env,
        )
    output = process.stdout.decode()
    text = " ".join(output.split())  # rich wraps long lines

    assert process.returncode == 0, output + process.stderr.decode()
    assert "History" in text
    assert all(migration_id in text for migration_id in ORDER)
    assert f"applied {SENTIMENT}: 3,000 memories written, 0 skipped, 0 failed" in text
    assert "It returned 0 results" in text
    assert f"Roll back {SENTIMENT}" in text
    assert "Every memory's metadata is identical to before the migration" in text
    # The structure migration: the shape before, the dry run's diff and write impact, the run, the
    # shape after, then its rollback, before the sentiment migration's.
    assert "describe_structure(table='memories', column='metadata')" in text
    assert "Before: 3,000 memories" in text
    assert f"Dry run: {STRUCTURE}" in text
    assert "of 3,000 memories, 3,000 would change and 0 stay as they are" in text
    assert "Violations: none" in text
    assert '- {"tags": ' in text and '"analysis": {"sentiment": {' in text
    assert "Write impact: metadata of 3,000 memories; no HOT updates" in text
    assert f"applied {STRUCTURE}: 3,000 memories written, 0 skipped, 0 failed" in text
    assert "After: 3,000 memories" in text
    assert "analysis.sentiment (new)" in text and "schema_version (new)" in text
    assert "gone: language, sentiment" in text
    assert f"Roll back {STRUCTURE}" in text
    assert "applied the inverse operations (remove('schema_version', default=2), unwrap('languages')" in text
    assert "After the rollback: 3,000 memories" in text
    assert "The structure is back: the same key paths, with the same types and counts" in text
    assert f"{STRUCTURE} is left rolled_back, not applied again" in text
    assert text.index(f"Roll back {STRUCTURE}") < text.index(f"Roll back {SENTIMENT}")
    # Then the re-embedding, through every phase, a search with the new vectors, and contract.
    assert text.index(f"Roll back {SENTIMENT}") < text.index(f"Changing the embedding model: {REEMBED}")
    assert "Cut over in" in text and "hashed-words-64 1 (local), 64 dimensions" in text
    assert "embedding vector(64), embedding_next_md5 uuid, embedding_previous vector(1536)" in text
    assert "The 3 memories nearest to 'the weekend hike was relaxing'" in text
    assert "text-embedding-3-small retired, hashed-words-64 active" in text
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=2, max_size=2)
    try:
        migrator = Migrator(pool, MIGRATIONS)
        assert [meta.id for meta in await migrator.pending()] == [SENTIMENT, STRUCTURE]
        assert [(r.migration_id, r.operation) for r in await migrator.history()] == [
            *((mid, "apply") for mid in ORDER[:-1]),
            (STRUCTURE, "rollback"),
            (SENTIMENT, "rollback"),
            *((step, "apply") for step in [*REEMBED_STEPS, f"{REEMBED}/contract"]),
            (REEMBED, "apply"),
        ]
        model = await migrator.embedding_model(table="memories", column="embedding")
        assert model is not None and (model.name, model.dimensions) == ("hashed-words-64", 64)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'sentiment'") == 0
            assert await conn.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'analysis'") == 0
            assert await conn.fetchval("SELECT count(*) FROM memories") == 3000
    finally:
        await pool.close()


# Memories whose sentiment the word list decides, with metadata the migration must keep.
SEEDED = [
    ("The team offsite was a great success", {"source": "journal"}, "positive"),
    ("The flight was delayed and I felt exhausted", {"source": "chat", "tags": ["travel"]}, "negative"),
    ("The review was not great, honestly", {"nested": {"depth": [1, 2, {"x": None}]}}, "negative"),
    ("Sprint planning is on Tuesday", {}, "neutral"),
    ("Café crème, naïve résumé: wonderful ☕", {"lang": "fr", "score": 1.50}, "positive"),
]


async def test_sentiment_migration_enriches_memories_and_rolls_back_to_the_byte(brainmigrate_pool):
    """The memory data migration adds metadata.sentiment in batches, keeps the rest, and its rollback
    restores the database exactly: every row of every table is as before (fingerprint)."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    # Only what the data migration depends on: the trigger of 007 would stamp updated_at on every
    # write, the rollback's included, so rows would differ in that column.
    await migrator.execute("enable_pgvector_001")
    await migrator.execute("create_memories_001")
    async with brainmigrate_pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO memories (content, metadata) VALUES ($1, $2::jsonb)",
            [(content, json.dumps(metadata)) for content, metadata, _ in SEEDED],
        )
        await conn.execute(
            "INSERT INTO memories (content, metadata, memory_type, importance_score) "
            "SELECT 'Memory ' || i || CASE WHEN i % 3 = 0 THEN ' was fun' ELSE '' END, "
            "       jsonb_build_object('n', i), 'episodic', 0.1234 FROM generate_series(1, 500) AS i"
        )
        # The application already wrote this one's sentiment: the source's filter leaves it out.
        await conn.execute(
            "INSERT INTO memories (content, metadata) "
            """VALUES ('I hate mondays', '{"sentiment": {"label": "custom"}}')"""
        )
        before = await fingerprint(conn)
    config = MigrationConfig(batch_size=64, checkpoint_frequency=128, parallel_execution=True)

    [result] = await migrator.run_pending(MigrationType.MEMORY_DATA, config=config)
    async with brainmigrate_pool.acquire() as conn:
        rows = {
            row["content"]: json.loads(row["metadata"])
            for row in await conn.fetch("SELECT content, metadata::text FROM memories")
        }
        applied = await fingerprint(conn)
    [rolled_back] = await migrator.rollback(SENTIMENT)
    async with brainmigrate_pool.acquire() as conn:
        after = await fingerprint(conn)

    assert (result.status, result.items_processed, result.items_failed) == (
        MigrationStatus.COMPLETED,
        len(SEEDED) + 500,
        0,
    )
    for content, metadata, label in SEEDED:
        sentiment = rows[content].pop("sentiment")
        assert (sentiment["label"], rows[content]) == (label, metadata), content
        assert -1 < sentiment["score"] < 1
    assert rows["Memory 3 was fun"]["sentiment"]["label"] == "positive"
    assert rows["Memory 4"]["sentiment"]["label"] == "neutral"
    assert rows["I hate mondays"] == {"sentiment": {"label": "custom"}}
    assert before.diff(applied) != []
    restored = (rolled_back.status, rolled_back.items_processed)
    assert restored == (MigrationStatus.ROLLED_BACK, len(SEEDED) + 500)
    assert before.diff(after) == []
    assert [meta.id for meta in await migrator.pending(MigrationType.MEMORY_DATA)] == [SENTIMENT]


async def test_structure_migration_nests_the_sentiment_and_rolls_back_to_the_byte(brainmigrate_pool):
    """After the sentiment migration, the structure migration gives every memory's metadata its new
    shape on the server, and its rollback (by the inverse operations) restores every row exactly."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    # As above: without the updated_at trigger of 007, rows compare equal after the rollback.
    for migration_id in ("enable_pgvector_001", "create_memories_001"):
        await migrator.execute(migration_id)
    async with brainmigrate_pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO memories (content, metadata) VALUES ($1, $2::jsonb)",
            [
                ("The team offsite was a great success", '{"source": "journal", "language": "en"}'),
                ("Sprint planning is on Tuesday", '{"source": "chat"}'),
                ("I hate mondays", '{"sentiment": {"label": "custom"}}'),
            ],
        )
    await migrator.execute(SENTIMENT)  # leaves out the memory with a sentiment (its source's filter)
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)

    [result] = await migrator.run_pending(MigrationType.MEMORY_STRUCTURE)
    async with brainmigrate_pool.acquire() as conn:
        rows = {
            row["content"]: json.loads(row["metadata"])
            for row in await conn.fetch("SELECT content, metadata::text FROM memories")
        }
    [rolled_back] = await migrator.rollback(STRUCTURE)
    async with brainmigrate_pool.acquire() as conn:
        after = await fingerprint(conn)

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 3)
    offsite = rows["The team offsite was a great success"]
    assert offsite["analysis"]["sentiment"]["label"] == "positive"
    assert {key: offsite[key] for key in ("source", "languages", "schema_version")} == {
        "source": "journal",
        "languages": ["en"],
        "schema_version": 2,
    }
    assert "sentiment" not in offsite and "language" not in offsite
    # A memory without a language gets none (``languages`` may be absent); a sentiment the
    # application wrote is nested all the same.
    assert "languages" not in rows["Sprint planning is on Tuesday"]
    assert rows["I hate mondays"] == {"analysis": {"sentiment": {"label": "custom"}}, "schema_version": 2}
    assert rolled_back.status is MigrationStatus.ROLLED_BACK
    assert before.diff(after) == []


async def test_structure_migration_refuses_memories_its_rollback_could_not_restore(brainmigrate_pool):
    """A memory that has ``languages`` already would lose it to the rename's inverse: the run is
    refused before its first batch, naming the condition, and nothing is written."""
    migrator = Migrator(brainmigrate_pool, MIGRATIONS)
    for migration_id in ("enable_pgvector_001", "create_memories_001"):
        await migrator.execute(migration_id)
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO memories (content, metadata) VALUES "
            """('Bonjour', '{"language": "fr", "languages": ["fr", "en"]}'),"""
            """ ('Hello', '{"language": "en"}')"""
        )
    await migrator.execute(SENTIMENT)
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.execute(STRUCTURE)

    message = str(caught.value)
    assert f"structure migration {STRUCTURE!r} was not run, nothing was changed" in message
    assert "rename('language', 'languages'): 1 memories break the condition" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(STRUCTURE) is MigrationStatus.PENDING
