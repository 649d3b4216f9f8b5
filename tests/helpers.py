"""Building blocks for tests: migrations made to order, and database snapshots."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from brainmigrate import DatabaseSchemaMigration, Migration, MigrationMetadata, MigrationType

Hook = Callable[[Any], Awaitable[bool]]


def schema_migration(
    migration_id: str,
    forward: Sequence[str],
    rollback: Sequence[str] = (),
    *,
    dependencies: Sequence[str] = (),
    version: str = "1.0.0",
    reversible: bool = True,
    transactional: bool = True,
    migration_type: MigrationType = MigrationType.DATABASE_SCHEMA,
    preconditions: Hook | None = None,
    postconditions: Hook | None = None,
) -> type[DatabaseSchemaMigration]:
    """A DatabaseSchemaMigration class with the given statements and metadata.

    The statements are read from class attributes each time, so a test can edit them to simulate a
    migration changed after it was applied.
    """

    class Made(DatabaseSchemaMigration):
        statements = list(forward)
        undo = list(rollback)

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name=f"migration {migration_id}",
                version=version,
                migration_type=migration_type,
                dependencies=list(dependencies),
                reversible=reversible,
            )

        async def get_forward_statements(self) -> list[str]:
            return list(type(self).statements)

        async def get_rollback_statements(self) -> list[str]:
            return list(type(self).undo)

        async def validate_preconditions(self, conn: Any) -> bool:
            return True if preconditions is None else await preconditions(conn)

        async def validate_postconditions(self, conn: Any) -> bool:
            return True if postconditions is None else await postconditions(conn)

    Made.transactional = transactional
    Made.__name__ = Made.__qualname__ = f"Migration_{migration_id}"
    return Made


def create_table(migration_id: str, table: str, **kwargs: Any) -> type[DatabaseSchemaMigration]:
    """A reversible migration that creates one table."""
    return schema_migration(
        migration_id,
        [f"CREATE TABLE {table} (id int PRIMARY KEY, note text)"],
        [f"DROP TABLE {table}"],
        **kwargs,
    )


async def table_exists(pool: asyncpg.Pool[Any], table: str) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table))


async def history_rows(pool: asyncpg.Pool[Any]) -> list[dict[str, Any]]:
    """The history table's rows as dicts, or [] when it does not exist."""
    if not await table_exists(pool, "brainmigrate.migration_history"):
        return []
    rows = await pool.fetch("SELECT * FROM brainmigrate.migration_history ORDER BY attempt_id")
    return [dict(row) for row in rows]


async def snapshot(pool: asyncpg.Pool[Any]) -> tuple[Any, list[dict[str, Any]]]:
    """Everything a failed call must leave unchanged: schema and data, and the history."""
    from brainmigrate.testing import fingerprint

    async with pool.acquire() as conn:
        return await fingerprint(conn), await history_rows(pool)


class PythonMigration(Migration):
    """A migration written in Python: up() and down() run in the migration's transaction."""

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="python_001", name="seed settings", version="1.0", migration_type=MigrationType.DATABASE_DATA
        )

    async def up(self, conn: Any) -> None:
        await conn.execute("CREATE TABLE settings (key text PRIMARY KEY, value text)")
        await conn.executemany("INSERT INTO settings VALUES ($1, $2)", [("theme", "dark"), ("lang", "en")])

    async def down(self, conn: Any) -> None:
        await conn.execute("DROP TABLE settings")
