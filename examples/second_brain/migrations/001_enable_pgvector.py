"""Enable pgvector, which gives the ``vector`` type and its ivfflat and HNSW indexes."""

from datetime import UTC, datetime

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class EnablePgvector(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="enable_pgvector_001",
            name="Enable pgvector",
            description="Installs the vector extension that stores and indexes embeddings",
            version="2.1.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="second-brain",
            created_at=datetime(2025, 1, 6, tzinfo=UTC),
            dependencies=[],
            reversible=True,
        )

    async def get_forward_statements(self) -> list[str]:
        # Creating an extension needs a superuser, or a user allowed to create trusted extensions.
        return ["CREATE EXTENSION IF NOT EXISTS vector"]

    async def get_rollback_statements(self) -> list[str]:
        # Refused by PostgreSQL while any column still uses the vector type: roll back the
        # memories table first (brainmigrate enforces that order through dependencies).
        return ["DROP EXTENSION IF EXISTS vector"]
