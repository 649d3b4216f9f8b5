"""Make content varchar(2000); a branch of its own."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class WidenContent(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="widen_content",
            name="Make memories.content varchar(2000)",
            version="1.1.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["create_memories"],
        )

    async def get_forward_statements(self) -> list[str]:
        return ["ALTER TABLE memories ALTER COLUMN content TYPE varchar(2000)"]

    async def get_rollback_statements(self) -> list[str]:
        return ["ALTER TABLE memories ALTER COLUMN content TYPE text"]
