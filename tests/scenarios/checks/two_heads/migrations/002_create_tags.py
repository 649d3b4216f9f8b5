"""Create the tags table: a branch of its own, nothing depends on it."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class CreateTags(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="create_tags",
            name="Create tags",
            version="1.1.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["create_memories"],
        )

    async def get_forward_statements(self) -> list[str]:
        return ["CREATE TABLE tags (id bigint PRIMARY KEY, memory_id bigint REFERENCES memories (id))"]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP TABLE tags"]
