"""Dry runs report what writing each changed row costs: the indexes it touches, whether the update
can be HOT, and, for vector indexes updated per row, a warning with a cost measured on a sample."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from brainmigrate import (
    DatabaseDataMigration,
    DataSource,
    MigrationConfig,
    MigrationMetadata,
    MigrationResult,
    MigrationStatus,
    MigrationType,
    Migrator,
    WriteImpact,
)
from brainmigrate._engine.impact import write_impact
from brainmigrate._engine.table import TableShape
from data_support import create_memories, memory_migration, server_side_migration
from helpers import snapshot

pytestmark = pytest.mark.anyio
DRY = MigrationConfig(dry_run=True)

NOTES = """
CREATE TABLE notes (id int PRIMARY KEY, note text NOT NULL, body text NOT NULL, seen int NOT NULL);
INSERT INTO notes SELECT i, 'note ' || i, 'body ' || i, i FROM generate_series(1, 300) AS i;
ANALYZE notes;
"""


def note_migration(column: str = "note") -> type[DatabaseDataMigration]:
    """A DatabaseDataMigration over ``notes`` writing ``column`` of every row, row by row."""

    class WriteNotes(DatabaseDataMigration):
        source: ClassVar[DataSource | None] = DataSource(table="notes", key="id", columns=(column,))

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="write_notes_001",
                name=f"write {column}",
                version="1.0.0",
                migration_type=MigrationType.DATABASE_DATA,
                reversible=True,
            )

        async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
            value = row[column]
            return {column: value + 1 if isinstance(value, int) else f"{value}!"}

    return WriteNotes


async def dry_impact(pool: Any, migration: type[Any], config: MigrationConfig = DRY) -> WriteImpact:
    """The write impact of ``migration``'s dry run, checking the database is left as it was."""
    before = await snapshot(pool)
    [result] = await Migrator(pool, [migration]).run_pending(config=config)
    assert await snapshot(pool) == before
    return _impact(result)


def _impact(result: MigrationResult) -> WriteImpact:
    assert (result.dry_run, result.status) == (True, MigrationStatus.COMPLETED), result.error
    assert result.write_impact is not None
    return result.write_impact


async def notes_table(pool: Any, *indexes: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(NOTES)
        for index in indexes:
            await conn.execute(index)


async def test_a_column_no_index_references_can_be_updated_hot(brainmigrate_pool: Any) -> None:
    """Writing an unindexed column touches no index: HOT is possible, and the cost is measured."""
    await notes_table(brainmigrate_pool, "CREATE INDEX notes_body ON notes (body)")

    impact = await dry_impact(brainmigrate_pool, note_migration("note"))

    assert impact.table == "notes"
    assert impact.written_columns == ("note",)
    assert impact.hot_possible is True
    assert impact.touched_indexes == ()
    assert impact.vector_indexes == ()
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0
    assert not any("vector index" in warning for warning in impact.warnings)


async def test_hot_updates_failing_for_lack_of_room_are_noted(brainmigrate_pool: Any) -> None:
    """HOT possible, but the sample's rows sit on full pages (fillfactor 100): the note says so."""
    await notes_table(brainmigrate_pool, "CREATE INDEX notes_body ON notes (body)")

    impact = await dry_impact(brainmigrate_pool, note_migration("note"))

    assert impact.hot_possible is True
    [note] = [w for w in impact.warnings if "sampled updates were HOT" in w]
    assert "fillfactor 100" in note and "lower fillfactor" in note


@pytest.mark.parametrize(
    ("index", "hot"),
    [
        pytest.param("CREATE INDEX notes_lower ON notes (lower(note))", False, id="expression-on-written"),
        pytest.param("CREATE INDEX notes_lower ON notes (lower(body))", True, id="expression-on-other"),
        pytest.param(
            "CREATE INDEX notes_partial ON notes (id) WHERE note LIKE 'note 1%'",
            False,
            id="partial-on-written",
        ),
        pytest.param(
            "CREATE INDEX notes_partial ON notes (id) WHERE body LIKE 'body 1%'", True, id="partial-on-other"
        ),
        pytest.param(
            "CREATE INDEX notes_covering ON notes (seen) INCLUDE (note)", False, id="include-column"
        ),
    ],
)
async def test_expression_partial_and_included_columns_count(
    brainmigrate_pool: Any, index: str, hot: bool
) -> None:
    """A column referenced by an index expression, predicate or INCLUDE list prevents HOT; then every
    index of the table is touched."""
    await notes_table(brainmigrate_pool, index)

    impact = await dry_impact(brainmigrate_pool, note_migration("note"))

    assert impact.hot_possible is hot
    name = index.split()[2]
    assert impact.touched_indexes == (() if hot else tuple(sorted([name, "notes_pkey"])))


async def test_a_metadata_migration_with_a_gin_index_is_not_hot(brainmigrate_pool: Any) -> None:
    """A memory migration writing metadata, which a GIN index covers: every index is touched."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 200)
        await conn.execute("CREATE INDEX memories_metadata_gin ON memories USING gin (metadata)")
        await conn.execute("CREATE INDEX memories_type ON memories (memory_type)")

    impact = await dry_impact(brainmigrate_pool, memory_migration())

    assert impact.written_columns == ("metadata",)
    assert impact.hot_possible is False
    assert impact.touched_indexes == ("memories_metadata_gin", "memories_pkey", "memories_type")
    assert impact.vector_indexes == ()
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0


async def test_a_brin_index_does_not_prevent_hot_from_postgresql_16(brainmigrate_pool: Any) -> None:
    """From PostgreSQL 16 a summarizing (BRIN) index does not prevent HOT; before, it does."""
    await notes_table(brainmigrate_pool, "CREATE INDEX notes_seen_brin ON notes USING brin (seen)")
    version = int(await brainmigrate_pool.fetchval("SHOW server_version_num"))

    impact = await dry_impact(brainmigrate_pool, note_migration("seen"))

    if version >= 160000:
        assert impact.hot_possible is True
        assert impact.touched_indexes == ("notes_seen_brin",)  # summarized, cheaply, HOT or not
    else:
        assert impact.hot_possible is False
        assert impact.touched_indexes == ("notes_pkey", "notes_seen_brin")


VECTOR_MEMORIES = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id       uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    content  text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}',
    embedding vector(8)
);
INSERT INTO memories (content, metadata, embedding)
SELECT 'memory ' || i, jsonb_build_object('n', i),
       (SELECT array_agg(random())::real[]::vector FROM generate_series(1, 8) WHERE i > 0)
  FROM generate_series(1, 300) AS i;
CREATE INDEX memories_metadata_gin ON memories USING gin (metadata);
CREATE INDEX memories_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops);
ANALYZE memories;
"""


async def memory_rows(pool: Any) -> list[tuple[str, str, str]]:
    rows = await pool.fetch("SELECT id::text, metadata::text, embedding::text FROM memories ORDER BY id")
    return [tuple(row) for row in rows]


async def test_a_vector_index_updated_per_row_is_warned_about_with_a_measured_cost(
    brainmigrate_pool: Any,
) -> None:
    """A metadata-only migration on a memories table with HNSW and GIN indexes: not HOT, so the HNSW
    index gets an insert per changed row; the warning names it, with the cost measured on the sample,
    and the table is left exactly as it was."""
    await brainmigrate_pool.execute(VECTOR_MEMORIES)
    rows = await memory_rows(brainmigrate_pool)

    impact = await dry_impact(
        brainmigrate_pool, memory_migration(), MigrationConfig(dry_run=True, dry_run_sample=300)
    )

    assert await memory_rows(brainmigrate_pool) == rows
    assert impact.hot_possible is False
    assert impact.touched_indexes == ("memories_embedding_hnsw", "memories_metadata_gin", "memories_pkey")
    assert impact.vector_indexes == ("memories_embedding_hnsw",)
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0
    [warning] = [w for w in impact.warnings if "memories_embedding_hnsw" in w]
    assert "(hnsw)" in warning and "every changed row" in warning
    assert "ms per row" in warning and "~300 rows that would change" in warning
    assert "memories_metadata_gin" in warning  # why the metadata-only update is not HOT
    assert "new column or table" in warning


async def test_a_server_side_batch_statement_is_measured_over_one_key_range(brainmigrate_pool: Any) -> None:
    """get_batch_statement() is run over one key range of the sample's size, timed, and undone."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
        await conn.execute("CREATE INDEX memories_metadata_gin ON memories USING gin (metadata)")

    impact = await dry_impact(brainmigrate_pool, server_side_migration())

    assert impact.written_columns == ("importance_score",)
    assert impact.hot_possible is True
    assert impact.touched_indexes == ()
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0


async def test_a_statement_without_declared_writes_is_judged_by_its_sample(brainmigrate_pool: Any) -> None:
    """With no `writes`, whether the updates were HOT is read from the measured sample."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
        await conn.execute("CREATE INDEX memories_metadata_gin ON memories USING gin (metadata)")
    statement = """UPDATE memories SET metadata = metadata || '{"x": 1}' WHERE id BETWEEN $1 AND $2"""
    made = server_side_migration(statement=statement, writes=(), reversible=False)

    impact = await dry_impact(brainmigrate_pool, made)

    assert impact.written_columns == ()
    assert impact.hot_possible is False
    assert impact.touched_indexes == ("memories_metadata_gin", "memories_pkey")
    assert any(
        "does not declare the columns it writes" in w and "0 of 100 updates were HOT" in w
        for w in impact.warnings
    )


async def test_write_impact_runs_the_measure_in_a_savepoint_it_rolls_back(brainmigrate_pool: Any) -> None:
    """What another runner calls: its own write, timed, always undone; the transaction goes on."""
    await notes_table(brainmigrate_pool, "CREATE INDEX notes_lower ON notes (lower(note))")
    async with brainmigrate_pool.acquire() as conn:
        shape = await TableShape.read(conn, DataSource(table="notes", key="id"), "m")

        async def measure() -> int:
            status = await conn.execute("UPDATE notes SET note = note || '!' WHERE id <= 100")
            return int(status.split()[-1])

        async with conn.transaction():
            impact = await write_impact(conn, shape, ["note"], measure=measure, rows_to_change=300)
            assert await conn.fetchval("SELECT count(*) FROM notes WHERE note LIKE '%!'") == 0
        failing = await write_impact(conn, shape, ["note"], measure=_fails(conn))

    assert impact.hot_possible is False
    assert impact.touched_indexes == ("notes_lower", "notes_pkey")
    assert impact.seconds_per_row is not None and impact.seconds_per_row > 0
    assert failing.seconds_per_row is None
    assert any("not measured" in w and "division by zero" in w for w in failing.warnings)


def _fails(conn: Any) -> Any:
    async def measure() -> int:
        await conn.execute("UPDATE notes SET note = note || (1 / 0)::text")
        return 0

    return measure
