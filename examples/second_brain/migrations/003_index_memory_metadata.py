"""A GIN index on memories.metadata, built without blocking writes to the table.

``CREATE INDEX CONCURRENTLY`` cannot run inside a transaction, so this migration is
non-transactional (``transactional = False``): brainmigrate runs its statements one by one and
records how far it got. If it is interrupted midway, the migration is marked dirty and the next run
stops with instructions instead of guessing.
"""

from __future__ import annotations

from datetime import UTC, datetime

from brainmigrate import Connection, DatabaseSchemaMigration, MigrationMetadata, MigrationType


class IndexMemoryMetadata(DatabaseSchemaMigration):
    transactional = False

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="index_memory_metadata_001",
            name="Index memory metadata",
            description="GIN index for containment and key queries on memories.metadata",
            version="2.3.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="second-brain",
            created_at=datetime(2025, 1, 13, tzinfo=UTC),
            dependencies=["create_memories_001"],
            reversible=True,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_memories_metadata ON memories USING gin (metadata)",
        ]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP INDEX CONCURRENTLY IF EXISTS idx_memories_metadata"]

    async def validate_postconditions(self, conn: Connection) -> bool:
        # A concurrent build that failed earlier leaves an INVALID index behind, which
        # IF NOT EXISTS would silently accept: insist on a valid one. Returning False makes
        # brainmigrate run the rollback statements and report the migration as failed.
        valid = await conn.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('idx_memories_metadata')"
        )
        return valid is True
