"""Kinds of migration: each base class declares the kind that runs it and the types it may declare."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from brainmigrate import (
    BulkMemoryItem,
    DatabaseDataMigration,
    DatabaseSchemaMigration,
    DataSource,
    MemoryDataMigration,
    Migration,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate._model.migration import MigrationKind
from data_support import create_memories, memory_migration, meta, server_side_migration
from helpers import PythonMigration, create_table, schema_migration, snapshot

pytestmark = pytest.mark.anyio


def test_each_base_class_declares_its_kind_once() -> None:
    """The kind (which picks the runner) is a class attribute of brainmigrate's base classes."""
    assert Migration.kind is MigrationKind.PYTHON
    assert DatabaseSchemaMigration.kind is MigrationKind.SQL
    assert DatabaseDataMigration.kind is MigrationKind.DATA
    assert MemoryDataMigration.kind is MigrationKind.DATA
    assert PythonMigration().kind is MigrationKind.PYTHON


def test_each_base_class_accepts_the_types_it_runs() -> None:
    """A Python migration may declare any type; SQL any but MEMORY_DATA; data ones their own."""
    assert Migration.migration_types == frozenset(MigrationType)
    assert DatabaseSchemaMigration.migration_types == frozenset(MigrationType) - {MigrationType.MEMORY_DATA}
    assert DatabaseDataMigration.migration_types == {MigrationType.DATABASE_DATA}
    assert MemoryDataMigration.migration_types == {MigrationType.MEMORY_DATA}


async def test_a_schema_migration_declaring_memory_data_is_refused_at_load(brainmigrate_pool: Any) -> None:
    """The error names the migration, its class, its kind and the declared type, and what to do."""
    wrong = schema_migration(
        "wrong_001", ["CREATE TABLE wrong (id int)"], migration_type=MigrationType.MEMORY_DATA
    )
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [wrong]).run_pending()

    message = str(caught.value)
    assert caught.value.migration_id == "wrong_001"
    assert "'wrong_001'" in message and "Migration_wrong_001" in message
    assert "is a DatabaseSchemaMigration (kind 'sql')" in message
    assert "migration_type=MigrationType.MEMORY_DATA" in message
    assert "subclass MemoryDataMigration" in message
    assert "DATABASE_SCHEMA" in message  # what it may declare instead
    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.parametrize(
    ("base", "declared", "advice"),
    [
        ("database", MigrationType.MEMORY_DATA, "subclass MemoryDataMigration"),
        ("database", MigrationType.DATABASE_SCHEMA, "subclass DatabaseSchemaMigration"),
        ("memory", MigrationType.DATABASE_DATA, "subclass DatabaseDataMigration"),
        ("memory", MigrationType.HYBRID, "Declare one of MEMORY_DATA"),
    ],
)
async def test_a_data_migration_declaring_another_type_is_refused(
    brainmigrate_pool: Any, base: str, declared: MigrationType, advice: str
) -> None:
    """DatabaseDataMigration declares DATABASE_DATA, MemoryDataMigration MEMORY_DATA."""
    made = server_side_migration("data_001") if base == "database" else memory_migration("data_001")

    class Mislabelled(made):  # type: ignore[valid-type,misc]
        def _get_metadata(self) -> MigrationMetadata:
            return meta("data_001", migration_type=declared, reversible=True)

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(brainmigrate_pool, [Mislabelled]).pending()

    message = str(caught.value)
    kind_of = "DatabaseDataMigration" if base == "database" else "MemoryDataMigration"
    assert f"is a {kind_of} (kind 'data')" in message
    assert f"MigrationType.{declared.name}" in message
    assert advice in message


@pytest.mark.parametrize("declared", list(MigrationType))
async def test_a_python_migration_may_declare_any_type(
    brainmigrate_pool: Any, declared: MigrationType
) -> None:
    """up()/down() can change anything, so a plain Migration is labelled as its author sees fit."""

    class Labelled(PythonMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(id="python_001", name="seed", version="1.0", migration_type=declared)

    migrator = Migrator(brainmigrate_pool, [Labelled])

    [result] = await migrator.run_pending(migration_type=declared)

    assert result.status is MigrationStatus.COMPLETED
    assert result.migration_type is declared


async def test_a_kind_set_by_hand_is_refused(brainmigrate_pool: Any) -> None:
    """The kind belongs to the base classes; a migration that sets it to something else is refused."""

    class Odd(PythonMigration):
        kind: ClassVar[Any] = "batch"

    with pytest.raises(MigrationValidationError, match="kind must be one of brainmigrate's MigrationKind"):
        await Migrator(brainmigrate_pool, [Odd]).pending()


async def test_run_pending_by_type_runs_the_kinds_that_declare_it(brainmigrate_pool: Any) -> None:
    """With labels consistent with classes, a type filter runs exactly the migrations of that type."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 30)

    async def tag(memory: dict[str, Any]) -> BulkMemoryItem | None:
        return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})

    class Scores(DatabaseDataMigration):
        source: ClassVar[DataSource | None] = DataSource(table="memories", key="id")
        writes: ClassVar[tuple[str, ...]] = ("importance_score",)

        def _get_metadata(self) -> MigrationMetadata:
            return meta("scores_001", migration_type=MigrationType.DATABASE_DATA, reversible=True)

        async def get_batch_statement(self) -> str | None:
            return "UPDATE memories SET importance_score = importance_score / 2 WHERE id BETWEEN $1 AND $2"

    migrations = [create_table("notes_001", "notes"), Scores, memory_migration("tag_001", tag)]
    migrator = Migrator(brainmigrate_pool, migrations)

    memory = await migrator.run_pending(migration_type=MigrationType.MEMORY_DATA)
    data = await migrator.run_pending(migration_type="DATABASE_DATA")
    schema = await migrator.run_pending(migration_type=MigrationType.DATABASE_SCHEMA)

    assert [(r.migration_id, r.migration_type) for r in memory] == [("tag_001", MigrationType.MEMORY_DATA)]
    assert [(r.migration_id, r.migration_type) for r in data] == [("scores_001", MigrationType.DATABASE_DATA)]
    assert [(r.migration_id, r.migration_type) for r in schema] == [
        ("notes_001", MigrationType.DATABASE_SCHEMA)
    ]
    assert all(r.status is MigrationStatus.COMPLETED for r in [*memory, *data, *schema])
