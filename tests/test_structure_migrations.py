"""MEMORY_STRUCTURE migrations: a declared reshaping of every memory's metadata, on the server,
reversible by construction, refused where the data would make it irreversible."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest

from brainmigrate import (
    DataSource,
    MemoryStructureMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate import structure as s
from brainmigrate.testing import fingerprint
from data_support import MEMORIES_DDL, write_counts
from helpers import snapshot

pytestmark = pytest.mark.anyio

MIGRATION = "nest_sentiment_001"
NO_WRITE_COUNTS = "ALTER TABLE memories DISABLE TRIGGER memories_count_writes"
COUNT = 1_000


def metadata_of(i: int) -> dict[str, Any]:
    """The metadata memory ``i`` starts with: some keys missing from some memories."""
    document: dict[str, Any] = {"n": i, "sentiment": round((i % 7) / 7, 3)}
    if i % 4:
        document["topic"] = f"t{i % 5}"
    document["kind"] = "note" if i % 2 == 0 else "event"
    if i % 5:
        document["legacy_score"] = i % 3
    return document


def reshaped(i: int) -> dict[str, Any]:
    """What :class:`NestSentiment` makes of memory ``i``'s metadata."""
    before = metadata_of(i)
    after: dict[str, Any] = {"n": i, "analysis": {"sentiment": before["sentiment"]}, "schema_version": 2}
    if "topic" in before:
        after["topics"] = [before["topic"]]
    after["kind"] = {"note": "semantic", "event": "episodic"}[before["kind"]]
    return after


async def given_memories(pool: Any, count: int = COUNT, *, extra: str = "") -> None:
    async with pool.acquire() as conn:
        await conn.execute(MEMORIES_DDL)
        await conn.executemany(
            "INSERT INTO memories (id, content, metadata) VALUES (gen_random_uuid(), $1, $2::jsonb)",
            [(f"memory {i}", json.dumps(metadata_of(i))) for i in range(1, count + 1)],
        )
        if extra:
            await conn.execute(extra)
        await conn.execute("ANALYZE memories")


async def metadata_by_n(pool: Any) -> dict[int, dict[str, Any]]:
    rows = await pool.fetch("SELECT metadata::text FROM memories")
    documents = [json.loads(row[0]) for row in rows]
    return {document["n"]: document for document in documents}


def structure_migration(
    operations: Sequence[s.Operation],
    *,
    migration_id: str = MIGRATION,
    expected: dict[str, str] | None = None,
    keep_before_images: bool = False,
    column: str = "metadata",
    source: DataSource | None = None,
    reversible: bool = True,
) -> type[MemoryStructureMigration]:
    """A structure migration with these operations."""

    class Reshaping(MemoryStructureMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name="reshape memory metadata",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_STRUCTURE,
                reversible=reversible,
            )

        def operations(self) -> list[s.Operation]:
            return list(operations)

    Reshaping.expected = expected
    Reshaping.keep_before_images = keep_before_images
    Reshaping.column = column
    if source is not None:
        Reshaping.source = source
    return Reshaping


class NestSentiment(MemoryStructureMigration):
    """The guide's example."""

    expected: ClassVar[dict[str, str]] = {
        "topics": "array?",
        "schema_version": "number",
        "analysis.sentiment": "number",
    }

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=MIGRATION,
            name="nest sentiment",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_STRUCTURE,
        )

    def operations(self) -> list[s.Operation]:
        return [
            s.rename("topic", "topics"),
            s.wrap("topics"),
            s.move("sentiment", "analysis.sentiment"),
            s.add("schema_version", 2),
            s.convert("kind", {"note": "semantic", "event": "episodic"}),
            s.remove("legacy_score", default=None),
        ]


INVERTIBLE = [s.rename("topic", "topics"), s.wrap("topics"), s.move("sentiment", "analysis.sentiment")]

# -- running ------------------------------------------------------------------------------------


async def test_a_reshaping_gives_every_memory_its_new_shape_and_is_recorded_applied(
    brainmigrate_pool: Any,
) -> None:
    """Each memory gets exactly the shape the operations describe, written once, in key ranges."""
    await given_memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [NestSentiment])

    [result] = await migrator.run_pending(config=MigrationConfig(batch_size=128, checkpoint_frequency=300))

    assert result.status is MigrationStatus.COMPLETED, result.error
    assert await metadata_by_n(brainmigrate_pool) == {i: reshaped(i) for i in range(1, COUNT + 1)}
    assert await write_counts(brainmigrate_pool) == {1: COUNT}
    assert await migrator.status(MIGRATION) is MigrationStatus.COMPLETED
    progress = await migrator.progress(MIGRATION)
    assert progress is not None and progress.status == "completed"


async def test_only_memories_whose_value_changes_are_written(brainmigrate_pool: Any) -> None:
    """A memory the operations leave as it is keeps its row version: no write, no trigger, no bloat."""
    await given_memories(brainmigrate_pool)
    migration = structure_migration([s.rename("topic", "topics")])

    [result] = await Migrator(brainmigrate_pool, [migration]).run_pending()

    assert result.status is MigrationStatus.COMPLETED, result.error
    with_topic = sum(1 for i in range(1, COUNT + 1) if i % 4)
    assert await write_counts(brainmigrate_pool) == {0: COUNT - with_topic, 1: with_topic}


async def test_a_source_filter_limits_the_memories_reshaped(brainmigrate_pool: Any) -> None:
    """With ``where`` on the source, only the memories it selects change; the rollback (by
    before-images, since the filter may stop matching) restores exactly those."""
    await given_memories(
        brainmigrate_pool, extra="ALTER TABLE memories DISABLE TRIGGER memories_count_writes"
    )
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)
    migration = structure_migration(
        [s.add("flagged", True)],
        source=DataSource(table="memories", key="id", where="(metadata->>'n')::int <= 10"),
    )
    migrator = Migrator(brainmigrate_pool, [migration])

    await migrator.run_pending()

    documents = await metadata_by_n(brainmigrate_pool)
    assert sorted(n for n, document in documents.items() if document.get("flagged")) == list(range(1, 11))
    await migrator.rollback(MIGRATION)
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


# -- rollback -----------------------------------------------------------------------------------


async def test_rollback_of_invertible_operations_applies_their_inverse_and_keeps_no_copies(
    brainmigrate_pool: Any,
) -> None:
    """Renames, wraps and moves are undone by their inverses: no before-image table is made, and
    the table comes back to the byte."""
    await given_memories(
        brainmigrate_pool, extra="ALTER TABLE memories DISABLE TRIGGER memories_count_writes"
    )
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)
    migrator = Migrator(brainmigrate_pool, [structure_migration(INVERTIBLE)])
    await migrator.run_pending()
    assert await brainmigrate_pool.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'topic'") == 0
    images = await brainmigrate_pool.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'brainmigrate' AND tablename LIKE 'before_%'"
    )

    [result] = await migrator.rollback(MIGRATION)

    assert result.status is MigrationStatus.ROLLED_BACK
    assert images == 0
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.ROLLED_BACK


async def test_rollback_after_a_lossy_removal_restores_the_removed_values_exactly(
    brainmigrate_pool: Any,
) -> None:
    """``remove`` drops data, so the old values of the changed memories are kept, and the rollback
    puts them back: the guide's example round-trips to the byte."""
    await given_memories(brainmigrate_pool)
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)
    migrator = Migrator(brainmigrate_pool, [NestSentiment])
    await migrator.run_pending()
    assert (
        await brainmigrate_pool.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'legacy_score'") == 0
    )

    [result] = await migrator.rollback(MIGRATION)

    assert result.status is MigrationStatus.ROLLED_BACK
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


# -- the dry run --------------------------------------------------------------------------------


async def test_a_dry_run_counts_and_shows_the_changes_and_writes_nothing(brainmigrate_pool: Any) -> None:
    """The dry run reports how many memories would change, with their old and new values, and the
    update it would run, leaving the table as it was."""
    await given_memories(brainmigrate_pool, 50)
    state = await snapshot(brainmigrate_pool)

    [result] = await Migrator(brainmigrate_pool, [NestSentiment]).run_pending(
        config=MigrationConfig(dry_run=True, dry_run_sample=5)
    )

    assert result.status is MigrationStatus.COMPLETED, result.error
    assert (result.items_processed, result.items_skipped) == (50, 0)
    assert len(result.changes) == 5
    for change in result.changes:
        n = change.before["n"]
        assert change.column == "metadata"
        assert (change.before, change.after) == (metadata_of(n), reshaped(n))
    assert result.violations == ()
    impact = result.write_impact
    assert impact is not None
    assert (impact.written_columns, impact.hot_possible, impact.touched_indexes) == (("metadata",), True, ())
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0
    [statement] = result.statements
    assert statement.startswith('UPDATE "memories" AS m SET "metadata" = ')
    assert await snapshot(brainmigrate_pool) == state


async def test_a_dry_run_shows_the_memories_breaking_a_condition(brainmigrate_pool: Any) -> None:
    """Memories that already hold a rename's target are counted, with some of their keys, and the
    dry run says the real run would be refused."""
    await given_memories(
        brainmigrate_pool,
        40,
        extra="UPDATE memories SET metadata = metadata || '{\"topics\": []}' "
        "WHERE (metadata->>'n')::int IN (3, 7)",
    )
    keys = {
        row[0] for row in await brainmigrate_pool.fetch("SELECT id FROM memories WHERE metadata ? 'topics'")
    }

    migrator = Migrator(brainmigrate_pool, [structure_migration([s.rename("topic", "topics")])])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True))

    assert result.status is MigrationStatus.FAILED
    [violation] = result.violations
    assert (violation.operation, violation.count) == ("rename('topic', 'topics')", 2)
    assert set(violation.sample_keys) == keys
    assert "was not run, nothing was changed" in (result.error or "")
    assert "keep_before_images = True" in (result.error or "")


async def test_a_dry_run_reports_an_expected_shape_the_operations_would_not_give(
    brainmigrate_pool: Any,
) -> None:
    """``expected`` is checked against the values the operations would give, before anything runs."""
    await given_memories(brainmigrate_pool, 20)
    migration = structure_migration([s.rename("topic", "topics")], expected={"topics": "array"})

    [result] = await Migrator(brainmigrate_pool, [migration]).run_pending(
        config=MigrationConfig(dry_run=True)
    )

    assert result.status is MigrationStatus.FAILED
    [violation] = result.violations
    assert violation.operation == "expected['topics']"
    # Memories without a topic lack the key; the others hold a string, not an array.
    assert violation.count == 20
    assert "does not leave the expected shape" in (result.error or "")


# -- refusals: typed errors, nothing written ----------------------------------------------------


async def test_a_rename_onto_an_existing_key_is_refused_with_counts_and_nothing_written(
    brainmigrate_pool: Any,
) -> None:
    await given_memories(
        brainmigrate_pool,
        30,
        extra="UPDATE memories SET metadata = metadata || '{\"topics\": 1}' WHERE (metadata->>'n')::int = 5",
    )
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)
    migrator = Migrator(brainmigrate_pool, [structure_migration([s.rename("topic", "topics")])])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    message = str(caught.value)
    assert message.startswith(f"structure migration {MIGRATION!r} was not run, nothing was changed: ")
    assert "rename('topic', 'topics'): 1 memories break" in message
    assert "keep_before_images = True" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.progress(MIGRATION) is None
    assert await migrator.status(MIGRATION) is MigrationStatus.PENDING


async def test_keeping_before_images_lets_a_conditional_operation_run_and_roll_back_exactly(
    brainmigrate_pool: Any,
) -> None:
    await given_memories(
        brainmigrate_pool,
        30,
        extra="UPDATE memories SET metadata = metadata || '{\"topics\": 1}' WHERE (metadata->>'n')::int = 5",
    )
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)
    migration = structure_migration([s.rename("topic", "topics")], keep_before_images=True)
    migrator = Migrator(brainmigrate_pool, [migration])

    [result] = await migrator.run_pending()
    assert result.status is MigrationStatus.COMPLETED
    await migrator.rollback(MIGRATION)

    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


async def test_an_operation_on_a_column_that_is_not_jsonb_is_refused(brainmigrate_pool: Any) -> None:
    await given_memories(brainmigrate_pool, 10)
    state = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [structure_migration([s.add("x", 1)], column="content")])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    assert str(caught.value).startswith(f"structure migration {MIGRATION!r} reshapes column 'content' of ")
    assert "which is text, not jsonb" in str(caught.value)
    assert await migrator.progress(MIGRATION) is None
    async with brainmigrate_pool.acquire() as conn:
        assert state[0].diff(await fingerprint(conn)) == []


async def test_a_convert_table_that_is_not_one_to_one_is_refused_when_loaded(brainmigrate_pool: Any) -> None:
    migration = structure_migration([s.convert("kind", {"note": "semantic", "fact": "semantic"})])

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [migration]).pending()

    assert "cannot be inverted" in str(caught.value)
    assert "keep_before_images = True" in str(caught.value)


async def test_a_convert_table_that_is_not_one_to_one_runs_when_before_images_are_kept(
    brainmigrate_pool: Any,
) -> None:
    await given_memories(brainmigrate_pool, 20)
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)
    migration = structure_migration(
        [s.convert("kind", {"note": "memory", "event": "memory"})], keep_before_images=True
    )
    migrator = Migrator(brainmigrate_pool, [migration])

    await migrator.run_pending()
    kinds = {document["kind"] for document in (await metadata_by_n(brainmigrate_pool)).values()}
    await migrator.rollback(MIGRATION)

    assert kinds == {"memory"}
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []


async def test_contradictory_operations_are_refused_when_loaded(brainmigrate_pool: Any) -> None:
    migration = structure_migration([s.rename("topic", "subject"), s.rename("title", "subject")])

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [migration]).pending()

    assert MIGRATION in str(caught.value)
    assert "subject" in str(caught.value)


async def test_a_path_that_is_neither_text_nor_a_tuple_is_refused_when_loaded(brainmigrate_pool: Any) -> None:
    class BadPath(MemoryStructureMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=MIGRATION, name="bad", version="1", migration_type=MigrationType.MEMORY_STRUCTURE
            )

        def operations(self) -> list[s.Operation]:
            return [s.rename(42, "topics")]  # type: ignore[arg-type]

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [BadPath]).pending()

    assert MIGRATION in str(caught.value)
    assert "42" in str(caught.value)


async def test_an_expected_shape_the_data_violates_fails_the_run_and_reverses_it(
    brainmigrate_pool: Any,
) -> None:
    """The postcondition is the declared shape, checked on the server once every batch ran: a
    violation fails the run, reports counts and keys, and (with enable_rollback) undoes it."""
    await given_memories(brainmigrate_pool, 30)
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        before = await fingerprint(conn)
    migration = structure_migration([s.rename("topic", "topics")], expected={"topics": "array"})
    migrator = Migrator(brainmigrate_pool, [migration])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending(config=MigrationConfig(enable_rollback=True))

    message = str(caught.value)
    assert f"structure migration {MIGRATION!r} does not leave the expected shape: " in message
    assert (
        "expected['topics']: 30 memories break the condition that every memory has 'topics' of type array"
        in message
    )
    assert "its writes were reversed" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


async def test_a_structure_migration_must_declare_the_memory_structure_type(brainmigrate_pool: Any) -> None:
    class Mistyped(MemoryStructureMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=MIGRATION, name="mistyped", version="1", migration_type=MigrationType.MEMORY_DATA
            )

        def operations(self) -> list[s.Operation]:
            return [s.add("x", 1)]

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [Mistyped]).pending()

    assert "declares migration_type=MigrationType.MEMORY_DATA" in str(caught.value)


# -- describing a column ------------------------------------------------------------------------


async def test_describe_structure_lists_every_key_path_with_its_types_and_counts(
    brainmigrate_pool: Any,
) -> None:
    await given_memories(
        brainmigrate_pool,
        40,
        extra="UPDATE memories SET metadata = metadata || "
        '\'{"analysis": {"mood": "calm"}}\' WHERE (metadata->>\'n\')::int <= 4',
    )
    migrator = Migrator(brainmigrate_pool, [NestSentiment])

    described = await migrator.describe_structure(table="memories", column="metadata")

    assert (described.memories, described.sampled) == (40, False)
    topic = described.get("topic")
    assert topic is not None and (topic.memories, topic.types) == (30, {"string": 30})
    mood = described.get("analysis.mood")
    assert mood is not None and (mood.memories, mood.types) == (4, {"string": 4})
    analysis = described.get("analysis")
    assert analysis is not None and analysis.types == {"object": 4}
    assert described.get("missing") is None
    assert "analysis.mood" in str(described)


async def test_describe_structure_of_a_column_that_is_not_jsonb_is_refused(brainmigrate_pool: Any) -> None:
    await given_memories(brainmigrate_pool, 3)

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [NestSentiment]).describe_structure(
            table="memories", column="content"
        )

    assert "content" in str(caught.value) and "jsonb" in str(caught.value)


async def test_a_dry_run_warns_that_a_gin_index_on_the_column_makes_every_update_touch_every_index(
    brainmigrate_pool: Any,
) -> None:
    """With a GIN index on metadata, no reshaping update can be HOT: the dry run lists the indexes
    each changed memory is inserted into, and measures what a write costs."""
    await given_memories(
        brainmigrate_pool, 200, extra="CREATE INDEX memories_metadata_gin ON memories USING gin (metadata)"
    )
    state = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [structure_migration([s.add("schema_version", 2)])])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True))

    impact = result.write_impact
    assert impact is not None
    assert impact.hot_possible is False
    assert set(impact.touched_indexes) == {"memories_pkey", "memories_metadata_gin"}
    assert impact.vector_indexes == ()
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0
    assert await snapshot(brainmigrate_pool) == state


async def test_parallel_workers_reshape_each_memory_once(brainmigrate_pool: Any) -> None:
    """A reshaping runs on the data engine's workers like any data migration: in parallel key
    ranges, each memory written exactly once."""
    await given_memories(brainmigrate_pool, 3000)
    migrator = Migrator(brainmigrate_pool, [NestSentiment])

    [result] = await migrator.run_pending(
        config=MigrationConfig(
            parallel_execution=True, max_workers=3, batch_size=100, checkpoint_frequency=200
        )
    )

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 3000)
    assert await write_counts(brainmigrate_pool) == {1: 3000}
    assert await metadata_by_n(brainmigrate_pool) == {i: reshaped(i) for i in range(1, 3001)}


async def test_describe_structure_reads_a_sample_of_a_large_table(brainmigrate_pool: Any) -> None:
    """Past ``sample_rows`` memories (by the planner's estimate) the figures come from a sample."""
    await given_memories(brainmigrate_pool, 5000)

    described = await Migrator(brainmigrate_pool, [NestSentiment]).describe_structure(sample_rows=500)

    assert described.sampled is True
    assert 0 < described.memories < 5000
    n = described.get("n")
    assert n is not None and n.memories == described.memories and n.types == {"number": described.memories}
