"""Keep memories.updated_at current on every update, whoever writes the row."""

from datetime import UTC, datetime

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class TouchMemoriesUpdatedAt(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="touch_memories_updated_at_001",
            name="Touch memories.updated_at",
            description="A BEFORE UPDATE trigger that sets updated_at to now()",
            version="2.10.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="second-brain",
            created_at=datetime(2025, 2, 17, tzinfo=UTC),
            dependencies=["create_memories_001"],
            reversible=True,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            """
            CREATE FUNCTION memories_touch_updated_at() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                NEW.updated_at := now();
                RETURN NEW;
            END
            $$
            """,
            """
            CREATE TRIGGER memories_touch_updated_at
                BEFORE UPDATE ON memories
                FOR EACH ROW EXECUTE FUNCTION memories_touch_updated_at()
            """,
        ]

    async def get_rollback_statements(self) -> list[str]:
        return [
            "DROP TRIGGER IF EXISTS memories_touch_updated_at ON memories",
            "DROP FUNCTION IF EXISTS memories_touch_updated_at()",
        ]
