"""Lower-case every memory's content: a data migration that declares itself a schema change."""

from typing import Any

from brainmigrate import DatabaseDataMigration, DataSource, MigrationMetadata, MigrationType


class LowercaseContent(DatabaseDataMigration):
    source = DataSource(table="memories", key="id", columns=("content",))

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="lowercase_content",
            name="Lower-case content",
            version="1.1.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            dependencies=["create_memories"],
        )

    async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        return {"content": row["content"].lower()}
