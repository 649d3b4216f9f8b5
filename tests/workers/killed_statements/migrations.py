"""A non-transactional migration of four statements whose third sleeps for ``bm.sleep`` seconds."""

from __future__ import annotations

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class IndexConcurrently(DatabaseSchemaMigration):
    transactional = False

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="killed_nontx_001",
            name="create notes with an index built concurrently",
            version="1.0.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            "CREATE TABLE notes (id int PRIMARY KEY, body text)",
            "CREATE INDEX CONCURRENTLY notes_body_idx ON notes (body)",
            "SELECT pg_sleep(current_setting('bm.sleep')::float)",
            "ALTER TABLE notes ADD COLUMN created_at timestamptz",
        ]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP TABLE IF EXISTS notes"]
