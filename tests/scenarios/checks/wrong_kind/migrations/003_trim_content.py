"""Trim every memory's content in SQL: row changes only, declared as a schema change."""

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class TrimContent(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="trim_content",
            name="Trim content",
            version="1.2.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["lowercase_content"],
            reversible=False,
        )

    async def get_forward_statements(self) -> list[str]:
        return ["UPDATE memories SET content = btrim(content)"]
