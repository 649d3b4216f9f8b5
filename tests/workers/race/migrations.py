"""Ten independent schema migrations for runners racing each other; race_05 sleeps to widen the race."""

from __future__ import annotations

from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType

COUNT = 10
SLOW = 5


def _race_migration(number: int) -> type[DatabaseSchemaMigration]:
    table = f"race_{number:02d}"
    forward = [f"CREATE TABLE {table} (id int PRIMARY KEY)"]
    if number == SLOW:
        forward.append("SELECT pg_sleep(0.3)")

    class RaceMigration(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=table,
                name=f"create {table}",
                version=f"1.0.{number}",
                migration_type=MigrationType.DATABASE_SCHEMA,
            )

        async def get_forward_statements(self) -> list[str]:
            return list(forward)

        async def get_rollback_statements(self) -> list[str]:
            return [f"DROP TABLE {table}"]

    RaceMigration.__name__ = RaceMigration.__qualname__ = f"Race{number:02d}"
    return RaceMigration


Race01, Race02, Race03, Race04, Race05, Race06, Race07, Race08, Race09, Race10 = (
    _race_migration(number) for number in range(1, COUNT + 1)
)
