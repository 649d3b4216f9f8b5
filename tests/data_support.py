"""A small Second Brain memories table, and data migrations made to order, for data-migration tests."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import asyncpg

from brainmigrate import (
    BulkMemoryItem,
    DatabaseDataMigration,
    DataSource,
    MemoryDataMigration,
    MigrationMetadata,
    MigrationType,
)

#: The memories table of the examples, cut down, with a trigger counting writes per row.
MEMORIES_DDL = """
CREATE TABLE memories (
    id               uuid PRIMARY KEY,
    content          text NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}',
    memory_type      text NOT NULL DEFAULT 'semantic',
    importance_score numeric(5, 4) NOT NULL DEFAULT 0.5
        CHECK (importance_score >= 0 AND importance_score <= 1),
    embedding        real[],
    writes           integer NOT NULL DEFAULT 0
);
CREATE FUNCTION count_memory_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$;
CREATE TRIGGER memories_count_writes BEFORE UPDATE ON memories
    FOR EACH ROW EXECUTE FUNCTION count_memory_writes();
"""


async def create_memories(conn: asyncpg.Connection[Any] | Any, count: int) -> None:
    """The memories table with ``count`` memories: random ids, metadata {"n": i, "tags": [...]}."""
    await conn.execute(MEMORIES_DDL)
    await conn.execute(
        """
        INSERT INTO memories (id, content, metadata, importance_score)
        SELECT gen_random_uuid(), 'memory number ' || i || ' ' || repeat('x', i % 50),
               jsonb_build_object('n', i, 'tags', jsonb_build_array('t' || (i % 3))),
               (i % 100) / 100.0
          FROM generate_series(1, $1) AS i
        """,
        count,
    )
    await conn.execute("ANALYZE memories")


async def given_memories(pool: asyncpg.Pool[Any] | Any, count: int, *, count_writes: bool = False) -> None:
    """The memories table with ``count`` memories (see ``create_memories``), made on a connection of
    ``pool``; its writes counted only with ``count_writes`` (see ``stop_counting_writes``)."""
    async with pool.acquire() as conn:
        await create_memories(conn, count)
        if not count_writes:
            await stop_counting_writes(conn)


async def write_counts(conn: Any) -> dict[int, int]:
    """How many rows were written how many times: {writes: rows}."""
    rows = await conn.fetch("SELECT writes, count(*) FROM memories GROUP BY writes ORDER BY writes")
    return {row[0]: row[1] for row in rows}


async def metadata_by_n(conn: Any) -> dict[int, dict[str, Any]]:
    rows = await conn.fetch("SELECT metadata::text FROM memories")
    decoded = [json.loads(row[0]) for row in rows]
    return {item["n"]: item for item in decoded}


def meta(
    migration_id: str, *, migration_type: MigrationType, reversible: bool, dependencies: Sequence[str] = ()
) -> MigrationMetadata:
    return MigrationMetadata(
        id=migration_id,
        name=f"data migration {migration_id}",
        version="1.0.0",
        migration_type=migration_type,
        dependencies=list(dependencies),
        reversible=reversible,
    )


Transform = Callable[[dict[str, Any]], Awaitable[BulkMemoryItem | None]]


def memory_migration(
    migration_id: str = "tag_memories_001",
    transform: Transform | None = None,
    *,
    reversible: bool = True,
    source: DataSource | None = None,
    dependencies: Sequence[str] = (),
    retry_on: tuple[type[BaseException], ...] = (),
) -> type[MemoryDataMigration]:
    """A MemoryDataMigration; by default it adds ``"tagged": true`` to every memory's metadata."""

    async def default(memory: dict[str, Any]) -> BulkMemoryItem | None:
        return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})

    chosen = transform or default

    class Made(MemoryDataMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return meta(
                migration_id,
                migration_type=MigrationType.MEMORY_DATA,
                reversible=reversible,
                dependencies=dependencies,
            )

        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            return await chosen(memory)

    if source is not None:
        Made.source = source
    Made.retry_on = retry_on
    return Made


def server_side_migration(
    migration_id: str = "score_memories_001",
    statement: str = "UPDATE memories SET importance_score = importance_score / 2 WHERE id BETWEEN $1 AND $2",
    *,
    writes: Sequence[str] = ("importance_score",),
    reversible: bool = True,
) -> type[DatabaseDataMigration]:
    """A DatabaseDataMigration running ``statement`` on the server for each key range."""

    class Made(DatabaseDataMigration):
        source: ClassVar[DataSource | None] = DataSource(table="memories", key="id")

        def _get_metadata(self) -> MigrationMetadata:
            return meta(migration_id, migration_type=MigrationType.DATABASE_DATA, reversible=reversible)

        async def get_batch_statement(self) -> str | None:
            return statement

    Made.writes = tuple(writes)
    return Made


async def key_at(conn: Any, position: int) -> str:
    """The id (as text) of the memory at ``position`` (1-based) in key order, the order batches follow."""
    key: str = await conn.fetchval(
        "SELECT id::text FROM memories ORDER BY id OFFSET $1 LIMIT 1", position - 1
    )
    return key


async def stop_counting_writes(conn: Any) -> None:
    """Disable the write-counting trigger, so a restore leaves the rows exactly as they were."""
    await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")


async def tagged_count(conn: Any) -> int:
    """Memories whose metadata carries the ``tagged`` mark of the default transform."""
    count: int = await conn.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'tagged'")
    return count


def tag(memory: dict[str, Any]) -> BulkMemoryItem:
    """The default transform's result: the memory's metadata with ``"tagged": true`` added."""
    return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})
