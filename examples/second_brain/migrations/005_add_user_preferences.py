"""The user preferences table, as the migration system's design document writes it.

The class is the document's, laid out by the formatter; only the imports differ: brainmigrate
provides DatabaseSchemaMigration, MigrationMetadata and MigrationType.
"""

# The class below keeps the document's typing.List spelling on purpose.
# ruff: noqa: UP006, UP035

from datetime import datetime
from typing import List

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class AddUserPreferencesTable(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="add_user_preferences_001",
            name="Add user preferences table",
            description="Creates table for storing user preferences",
            version="2.6.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
            author="system",
            created_at=datetime.now(),
            dependencies=[],
            reversible=True,
            checksum="abc123",
        )

    async def get_forward_statements(self) -> List[str]:
        return [
            """
            CREATE TABLE user_preferences (
                id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                user_id UUID NOT NULL,
                theme VARCHAR(50) DEFAULT 'gruvbox_light',
                notifications_enabled BOOLEAN DEFAULT true,
                created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
                updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
            )
            """,
            "CREATE INDEX idx_user_preferences_user_id ON user_preferences(user_id)",
        ]

    async def get_rollback_statements(self) -> List[str]:
        return ["DROP TABLE IF EXISTS user_preferences"]
