"""Rename content to body; another branch, changing the same column."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class RenameContent(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="rename_content",
            name="Rename memories.content to body",
            version="1.1.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["create_memories"],
        )

    async def get_forward_statements(self) -> list[str]:
        return ["ALTER TABLE memories RENAME COLUMN content TO body"]

    async def get_rollback_statements(self) -> list[str]:
        return ["ALTER TABLE memories RENAME COLUMN body TO content"]
