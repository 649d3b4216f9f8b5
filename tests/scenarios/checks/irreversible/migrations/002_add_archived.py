"""Add an archived flag; the rollback only drops its default, so the column stays behind."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class AddArchived(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="add_archived",
            name="Add memories.archived",
            version="1.1.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["create_memories"],
            reversible=True,
        )

    async def get_forward_statements(self) -> list[str]:
        return ["ALTER TABLE memories ADD COLUMN IF NOT EXISTS archived boolean NOT NULL DEFAULT false"]

    async def get_rollback_statements(self) -> list[str]:
        return ["ALTER TABLE memories ALTER COLUMN archived DROP DEFAULT"]
