"""A transactional migration that creates a table, then sleeps for ``bm.sleep`` seconds.

The sleep reads a per-connection setting, so a killed run and its re-run have the same statements
(and checksum) while sleeping for different times.
"""

from __future__ import annotations

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


class CreateThenSleep(DatabaseSchemaMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="killed_tx_001",
            name="create killed_tx, then sleep",
            version="1.0.0",
            migration_type=MigrationType.DATABASE_SCHEMA,
        )

    async def get_forward_statements(self) -> list[str]:
        return [
            "CREATE TABLE killed_tx (id int PRIMARY KEY)",
            "SELECT pg_sleep(current_setting('bm.sleep')::float)",
        ]

    async def get_rollback_statements(self) -> list[str]:
        return ["DROP TABLE killed_tx"]
