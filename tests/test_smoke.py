from __future__ import annotations

from datetime import datetime

import pytest

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType, Migrator

pytestmark = pytest.mark.anyio


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

    async def get_forward_statements(self) -> list[str]:
        return [
            """
            CREATE TABLE user_preferences (
                id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
                user_id UUID NOT NULL,
                theme VARCHAR(50) DEFAULT 'gruvbox_light'
            )
            """,
            "CREATE INDEX idx_user_preferences_user_id ON user_preferences(user_id)",
        ]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP TABLE IF EXISTS user_preferences"]


async def test_smoke(brainmigrate_pool):
    m = Migrator(brainmigrate_pool, [AddUserPreferencesTable])
    assert [p.id for p in await m.pending()] == ["add_user_preferences_001"]
    results = await m.run_pending()
    assert results[0].status == "completed", results
    assert await m.pending() == []
    assert await m.run_pending() == []
    h = await m.history()
    assert len(h) == 1
    rb = await m.rollback("add_user_preferences_001")
    assert rb[0].status == "rolled_back"
    assert len(await m.pending()) == 1
    assert await m.status("add_user_preferences_001") == "rolled_back"
