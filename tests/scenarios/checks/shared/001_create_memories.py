"""Create the memories table."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class CreateMemories(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="create_memories",
            name="Create memories",
            version="1.0.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            "CREATE TABLE memories (id bigint PRIMARY KEY, content text NOT NULL, "
            "metadata jsonb NOT NULL DEFAULT '{}')"
        ]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP TABLE memories"]
