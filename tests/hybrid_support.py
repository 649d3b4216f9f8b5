"""A hybrid migration to order, for hybrid-migration tests: a memory's topic moves from a JSONB key
to a column of its own.

expand adds the ``topic`` column, backfill copies ``metadata->>'topic'`` into it (a real data
migration, in batches, reversible from its before-images), contract drops the key from the
metadata (the old read path) and, optionally, makes the column NOT NULL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import asyncpg

from brainmigrate import (
    DatabaseDataMigration,
    DataSource,
    HybridMigration,
    Migration,
    MigrationMetadata,
    MigrationType,
)
from helpers import schema_migration

HYBRID = "topics_to_column_001"
ADD_COLUMN = "add_topic_column_001"
FILL = "fill_topic_001"
DROP_KEY = "drop_topic_key_001"
REQUIRE = "require_topic_001"

MEMORIES_DDL = "CREATE TABLE memories (id int PRIMARY KEY, metadata jsonb NOT NULL)"
SEED = """
INSERT INTO memories (id, metadata)
SELECT i, jsonb_build_object('n', i, 'topic', 'topic ' || (i % 3)) FROM generate_series(1, $1) AS i
"""


async def create_memories(conn: asyncpg.Connection[Any] | Any, count: int) -> None:
    """``count`` memories, each with ``{"n": i, "topic": "topic <i % 3>"}`` as its metadata."""
    await conn.execute(MEMORIES_DDL)
    await conn.execute(SEED, count)


AddTopicColumn = schema_migration(
    ADD_COLUMN, ["ALTER TABLE memories ADD COLUMN topic text"], ["ALTER TABLE memories DROP COLUMN topic"]
)
DropTopicKey = schema_migration(
    DROP_KEY,
    ["UPDATE memories SET metadata = metadata - 'topic'"],
    ["UPDATE memories SET metadata = metadata || jsonb_build_object('topic', topic) WHERE topic IS NOT NULL"],
)
RequireTopic = schema_migration(
    REQUIRE,
    ["ALTER TABLE memories ALTER COLUMN topic SET NOT NULL"],
    ["ALTER TABLE memories ALTER COLUMN topic DROP NOT NULL"],
)

RowHook = Callable[[dict[str, Any]], Awaitable[None]]


def fill_topic(
    migration_id: str = FILL, *, before_row: RowHook | None = None, reversible: bool = True
) -> type[DatabaseDataMigration]:
    """The backfill: ``topic`` from ``metadata->>'topic'``, row by row; ``before_row`` runs first."""

    class FillTopic(DatabaseDataMigration):
        source: ClassVar[DataSource | None] = DataSource(table="memories", key="id", columns=("metadata",))

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name="copy each memory's topic into its column",
                version="1.0.0",
                migration_type=MigrationType.DATABASE_DATA,
                reversible=reversible,
            )

        async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
            if before_row is not None:
                await before_row(row)
            return {"topic": row["metadata"]["topic"]}

    FillTopic.__qualname__ = FillTopic.__name__ = f"FillTopic_{migration_id}"
    return FillTopic


Gate = Callable[[Any], Awaitable[bool]]


def topics_to_column(
    hybrid_id: str = HYBRID,
    *,
    expand: Sequence[type[Migration]] = (AddTopicColumn,),
    backfill: Sequence[type[Migration]] | None = None,
    contract: Sequence[type[Migration]] = (DropTopicKey,),
    mode: str = "auto",
    validate: Gate | None = None,
    dependencies: Sequence[str] = (),
    reversible: bool = True,
) -> type[HybridMigration]:
    """The hybrid, with the steps and contract mode given; ``validate`` replaces the default gate."""

    class TopicsToColumn(HybridMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=hybrid_id,
                name="move each memory's topic from its metadata to a column",
                version="1.0.0",
                migration_type=MigrationType.HYBRID,
                dependencies=list(dependencies),
                reversible=reversible,
            )

        async def validate_backfill(self, conn: Any) -> bool:
            if validate is not None:
                return await validate(conn)
            return await super().validate_backfill(conn)

    TopicsToColumn.expand = tuple(expand)
    TopicsToColumn.backfill = tuple(backfill if backfill is not None else (fill_topic(),))
    TopicsToColumn.contract = tuple(contract)
    TopicsToColumn.contract_mode = mode  # type: ignore[assignment]
    TopicsToColumn.__qualname__ = TopicsToColumn.__name__ = f"TopicsToColumn_{hybrid_id}"
    return TopicsToColumn


async def every_topic_copied(conn: Any) -> bool:
    """The gate a demanding author writes: no memory whose topic key and column disagree."""
    return not await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM memories WHERE topic IS DISTINCT FROM metadata->>'topic')"
    )


async def topics(conn: Any) -> dict[int, tuple[str | None, str | None]]:
    """Each memory's ``(topic column, topic key)``; the column is None while it does not exist."""
    has_column = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns "
        "WHERE table_name = 'memories' AND column_name = 'topic')"
    )
    column = "topic" if has_column else "NULL::text"
    rows = await conn.fetch(f"SELECT id, {column}, metadata->>'topic' FROM memories ORDER BY id")
    return {row[0]: (row[1], row[2]) for row in rows}


async def hybrid_history(pool: Any) -> list[tuple[str, str, str, str | None, str | None]]:
    """History rows as ``(migration_id, operation, status, hybrid_id, hybrid_phase)``."""
    rows = await pool.fetch(
        "SELECT migration_id, operation, status, hybrid_id, hybrid_phase "
        "FROM brainmigrate.migration_history ORDER BY attempt_id"
    )
    return [tuple(row) for row in rows]
