"""One partial index per memory type, for "most important memories of this type" queries.

A Python migration: it subclasses Migration and writes ``up``/``down`` instead of statements,
because the statements depend on the database (one index per label of the memory_type enum).
Both run inside the migration's transaction, on the connection they are given. The SQL stays inside
``up()``: its source is what brainmigrate checksums to notice later edits.
"""

from __future__ import annotations

from datetime import UTC, datetime

from brainmigrate import Connection, Migration, MigrationMetadata, MigrationType


class IndexImportanceByType(Migration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="index_importance_by_type_001",
            name="Index importance per memory type",
            description="Partial indexes ranking each memory type by importance and recency",
            version="2.9.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="second-brain",
            created_at=datetime(2025, 2, 3, tzinfo=UTC),
            dependencies=["create_memories_001"],
            reversible=True,
        )

    async def validate_preconditions(self, conn: Connection) -> bool:
        return bool(await conn.fetchval("SELECT to_regtype('memory_type') IS NOT NULL"))

    async def up(self, conn: Connection) -> None:
        # PostgreSQL quotes names and labels itself: %I for identifiers, %L for literals.
        for (statement,) in await conn.fetch(
            """
            SELECT format(
                'CREATE INDEX %I ON memories (importance_score DESC, last_accessed DESC) '
                'WHERE memory_type = %L',
                'idx_memories_importance_' || label, label)
              FROM unnest(enum_range(NULL::memory_type)) AS label
            """
        ):
            await conn.execute(statement)

    async def down(self, conn: Connection) -> None:
        for (statement,) in await conn.fetch(
            """
            SELECT format('DROP INDEX IF EXISTS %I', 'idx_memories_importance_' || label)
              FROM unnest(enum_range(NULL::memory_type)) AS label
            """
        ):
            await conn.execute(statement)

    async def validate_postconditions(self, conn: Connection) -> bool:
        missing: int = await conn.fetchval(
            """
            SELECT count(*) FROM unnest(enum_range(NULL::memory_type)) AS label
             WHERE to_regclass('idx_memories_importance_' || label) IS NULL
            """
        )
        return missing == 0
