"""Six schema migrations that each take a while, so a runner is mid-plan for a few seconds."""

from __future__ import annotations

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType

COUNT = 6


def _slow_migration(number: int) -> type[DatabaseSchemaMigration]:
    table = f"slow_{number:02d}"

    class SlowMigration(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=table,
                name=f"create {table} slowly",
                version=f"1.0.{number}",
                migration_type=MigrationType.DATABASE_SCHEMA,
            )

        async def get_forward_statements(self) -> list[str]:
            return [f"CREATE TABLE {table} (id int PRIMARY KEY)", "SELECT pg_sleep(0.25)"]

        async def get_rollback_statements(self) -> list[str]:
            return [f"DROP TABLE {table}"]

    SlowMigration.__name__ = SlowMigration.__qualname__ = f"Slow{number:02d}"
    return SlowMigration


Slow01, Slow02, Slow03, Slow04, Slow05, Slow06 = (_slow_migration(number) for number in range(1, COUNT + 1))
