"""Index the memories' content."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class IndexContent(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="index_content",
            name="Index memories by content",
            version="1.2.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["tag_source"],
        )

    async def get_forward_statements(self) -> list[str]:
        return ["CREATE INDEX memories_content_idx ON memories (content)"]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP INDEX memories_content_idx"]
