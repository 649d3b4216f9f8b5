"""Migrations for the timeline's tests: a history with every kind of attempt on a real database.

A schema migration applied, one applied and rolled back, one that fails at its second statement,
a data migration tagging memories, and a hybrid waiting for its manual contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from brainmigrate import DatabaseDataMigration, DataSource, MigrationMetadata, MigrationType, Migrator
from brainmigrate._errors import MigrationExecutionError
from helpers import schema_migration
from hybrid_support import create_memories, topics_to_column

NOTES = "create_notes_001"
SCRATCH = "create_scratch_002"
BROKEN = "break_things_003"
TAG = "tag_memories_004"
HYBRID = "topics_to_column_005"

#: A name no page may run as markup.
HOSTILE = "</script><img src=x onerror=alert(1)> & \u2028 <b>bold</b>"

RowHook = Callable[[dict[str, Any]], Awaitable[None]]


def tag_memories(
    migration_id: str = TAG, *, name: str = "tag every memory", before_row: RowHook | None = None
) -> type[DatabaseDataMigration]:
    """A data migration adding ``"tagged": true`` to each memory's metadata; ``before_row`` runs first."""

    class TagMemories(DatabaseDataMigration):
        source: ClassVar[DataSource | None] = DataSource(table="memories", key="id", columns=("metadata",))

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name=name,
                version="1.0.0",
                migration_type=MigrationType.DATABASE_DATA,
                reversible=True,
            )

        async def transform_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
            if before_row is not None:
                await before_row(row)
            return {"metadata": {**row["metadata"], "tagged": True}}

    return TagMemories


def timeline_migrations(*, tag: type[DatabaseDataMigration] | None = None) -> list[type[Any]]:
    """The five migrations, in no dependency order (each stands alone)."""
    return [
        schema_migration(NOTES, ["CREATE TABLE notes (id int)"], ["DROP TABLE notes"]),
        schema_migration(SCRATCH, ["CREATE TABLE scratch (id int)"], ["DROP TABLE scratch"]),
        schema_migration(
            BROKEN,
            ["CREATE TABLE broken (id int)", "SELECT 1 / 0", "CREATE TABLE never (id int)"],
            ["DROP TABLE broken"],
        ),
        tag or tag_memories(),
        topics_to_column(HYBRID, mode="manual"),
    ]


async def run_everything(pool: Any, migrator: Migrator, *, memories: int = 30) -> None:
    """Apply NOTES, apply and roll back SCRATCH, fail BROKEN, run HYBRID up to its contract."""
    await create_memories(pool, memories)
    await migrator.execute(NOTES)
    await migrator.execute(SCRATCH)
    await migrator.rollback(SCRATCH)
    try:
        await migrator.execute(BROKEN)
    except MigrationExecutionError:
        pass
    else:  # pragma: no cover - the migration divides by zero
        raise AssertionError(f"{BROKEN} was expected to fail")
    await migrator.execute(HYBRID)
