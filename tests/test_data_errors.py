"""Data migrations given bad input: a typed error with a clear message, and a database left as it was."""

from __future__ import annotations

import re
from typing import Any

import pytest

from brainmigrate import (
    BulkMemoryItem,
    ChecksumMismatchError,
    ConfigError,
    DataSource,
    MemoryDataMigration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationNotFoundError,
    MigrationStateError,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate.testing import fingerprint
from data_support import (
    create_memories,
    given_memories,
    key_at,
    memory_migration,
    meta,
    tag,
    write_counts,
)
from helpers import create_table, history_rows, snapshot

pytestmark = pytest.mark.anyio

MIGRATION = "tag_memories_001"


# -- a source that does not fit the table ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            DataSource(table="nowhere", key="id"),
            'source table "nowhere" does not exist; create it with a schema migration this one depends on',
            id="missing-table",
        ),
        pytest.param(
            DataSource(table="memories", key="memory_id", columns=("content", "metadata")),
            "key column 'memory_id' does not exist in \"memories\"",
            id="missing-key-column",
        ),
        pytest.param(
            DataSource(table="memories", key="memory_type", columns=("content", "metadata")),
            "key column 'memory_type' of \"memories\" has no unique index; batches page by key, so it must "
            "be unique (use the primary key)",
            id="key-not-unique",
        ),
        pytest.param(
            DataSource(table="memories", key="id", columns=("content", "summary")),
            "reads column 'summary', which \"memories\" does not have",
            id="missing-column",
        ),
    ],
)
async def test_a_source_that_does_not_fit_the_table_is_refused_before_any_batch(
    brainmigrate_pool: Any, source: DataSource, message: str
) -> None:
    """The table, its key (present and unique) and the columns read are checked before a batch runs."""
    await given_memories(brainmigrate_pool, 50)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [memory_migration(source=source)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending()

    assert caught.value.migration_id == MIGRATION
    assert str(caught.value).startswith(f"data migration {MIGRATION!r}")
    assert message in str(caught.value)
    assert await snapshot(brainmigrate_pool) == before
    assert await migrator.status(MIGRATION) is MigrationStatus.PENDING


# -- transforms that break -----------------------------------------------------------------------


async def test_a_transform_returning_the_wrong_type_stops_the_run_and_reverses_it(
    brainmigrate_pool: Any,
) -> None:
    """A dict where a BulkMemoryItem is due is a programming error, not a failed item: the run stops
    (even after committed batches), says what came back for which memory, and is reversed."""
    await given_memories(brainmigrate_pool, 300)
    async with brainmigrate_pool.acquire() as conn:
        bad = await key_at(conn, 130)
        before = await fingerprint(conn)

    async def transform(memory: dict[str, Any]) -> Any:
        if str(memory["id"]) == bad:
            return {"memory_id": memory["id"], "metadata": {"tagged": True}}
        return tag(memory)

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=transform)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=50, checkpoint_frequency=50))

    message = str(caught.value)
    assert caught.value.migration_id == MIGRATION
    assert (
        f"data migration {MIGRATION!r}: the transform must return a BulkMemoryItem or None, "
        f"got dict for memory {bad}"
    ) in message
    assert "its writes were reversed (100 rows restored)" in message
    async with brainmigrate_pool.acquire() as conn:
        assert before.diff(await fingerprint(conn)) == []
    [record] = await history_rows(brainmigrate_pool)
    assert (record["status"], record["applied_after"]) == ("failed", None)
    assert await migrator.status(MIGRATION) is MigrationStatus.FAILED


async def test_a_transform_raising_on_every_item_stops_at_the_first(brainmigrate_pool: Any) -> None:
    """Without continue_on_error the first failing item (in key order) stops the run; the error
    names it and says how to go on past failing items; nothing is written."""
    await given_memories(brainmigrate_pool, 120)
    async with brainmigrate_pool.acquire() as conn:
        first = await key_at(conn, 1)
    before = await snapshot(brainmigrate_pool)

    async def down(memory: dict[str, Any]) -> BulkMemoryItem:
        raise RuntimeError("model unavailable")

    migrator = Migrator(brainmigrate_pool, [memory_migration(transform=down)])

    with pytest.raises(MigrationExecutionError) as caught:
        await migrator.run_pending(config=MigrationConfig(batch_size=40))

    assert str(caught.value) == (
        f"data migration {MIGRATION!r} failed on item {first}: RuntimeError: model unavailable; pass "
        "MigrationConfig(continue_on_error=True) to record failing items and go on; its writes were "
        "reversed (0 rows restored)"
    )
    fingerprint_after, history = await snapshot(brainmigrate_pool)
    assert fingerprint_after == before[0]
    assert [(r["migration_id"], r["status"]) for r in history] == [(MIGRATION, "failed")]
    assert history[0]["error"] == str(caught.value)
    assert await migrator.failed_items(MIGRATION) == []


# -- resuming a run whose code changed ------------------------------------------------------------

BROKEN: set[str] = set()


class TagMemories(MemoryDataMigration):
    def _get_metadata(self) -> MigrationMetadata:
        return meta(MIGRATION, migration_type=MigrationType.MEMORY_DATA, reversible=True)

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        if str(memory["id"]) in BROKEN:
            raise RuntimeError("the model is down")
        return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": True})


class TagMemoriesEdited(MemoryDataMigration):
    """The same migration after an edit of its transform."""

    def _get_metadata(self) -> MigrationMetadata:
        return meta(MIGRATION, migration_type=MigrationType.MEMORY_DATA, reversible=True)

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "tagged": "yes"})


async def test_resuming_after_the_migration_changed_is_refused(brainmigrate_pool: Any) -> None:
    """A run left resumable midway must not be finished by different code: ChecksumMismatchError
    (resuming=True) says so and changes nothing; rolling back the partial run, as it advises, lets
    the edited migration start again."""
    async with brainmigrate_pool.acquire() as conn:
        await create_memories(conn, 300)
        BROKEN.add(await key_at(conn, 130))
    config = MigrationConfig(batch_size=50, checkpoint_frequency=50, enable_rollback=False)
    try:
        with pytest.raises(MigrationExecutionError, match="it can be resumed"):
            await Migrator(brainmigrate_pool, [TagMemories]).run_pending(config=config)
    finally:
        BROKEN.clear()
    async with brainmigrate_pool.acquire() as conn:
        assert await write_counts(conn) == {0: 200, 1: 100}
    before = await snapshot(brainmigrate_pool)
    edited = Migrator(brainmigrate_pool, [TagMemoriesEdited])

    with pytest.raises(ChecksumMismatchError) as caught:
        await edited.execute(MIGRATION, config=config)

    error = caught.value
    assert (error.migration_id, error.resuming) == (MIGRATION, True)
    assert error.expected != error.actual
    assert str(error) == (
        f"data migration {MIGRATION!r} was changed since its unfinished run started (checksum "
        f"{error.expected[:12]} at the checkpoint, {error.actual[:12]} now), so resuming it would mix two "
        f"versions; restore its content to resume, or roll back the partial run with "
        f"`await migrator.rollback({MIGRATION!r})` and start again"
    )
    assert await snapshot(brainmigrate_pool) == before

    await edited.rollback(MIGRATION)
    [result] = await edited.run_pending(config=config)

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 300)
    tagged = await brainmigrate_pool.fetchval(
        "SELECT count(*) FROM memories WHERE metadata->>'tagged' = 'yes'"
    )
    assert tagged == 300


# -- configuration out of range -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch_size must be between 1 and 100000, got 0"),
        ("batch_size", 100_001, "batch_size must be between 1 and 100000, got 100001"),
        ("batch_size", 2.5, "batch_size must be an integer, got 2.5"),
        ("concurrency", 0, "concurrency must be between 1 and 1000, got 0"),
        ("concurrency", 1001, "concurrency must be between 1 and 1000, got 1001"),
        ("max_workers", 0, "max_workers must be between 1 and 64, got 0"),
        ("max_workers", 65, "max_workers must be between 1 and 64, got 65"),
        ("rate_limit", 0, "rate_limit must be between 0.001 and 1e+06, got 0"),
        ("rate_limit", -5.0, "rate_limit must be between 0.001 and 1e+06, got -5.0"),
        ("rate_limit", "10/s", "rate_limit must be a number, got '10/s'"),
        ("lease_seconds", 0.5, "lease_seconds must be between 1 and 86400, got 0.5"),
        ("lease_seconds", 86_401, "lease_seconds must be between 1 and 86400, got 86401"),
    ],
)
async def test_data_settings_out_of_range_are_refused_when_the_config_is_built(
    brainmigrate_pool: Any, field: str, value: Any, message: str
) -> None:
    """ConfigError (a ValueError) names the setting, its range and the value, before any database work."""
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        MigrationConfig(**{field: value})

    assert await snapshot(brainmigrate_pool) == before


# -- operations that do not fit the migration's state ---------------------------------------------


async def test_rolling_back_an_unknown_id_is_refused(brainmigrate_pool: Any) -> None:
    """An id no migration has raises MigrationNotFoundError pointing at pending() for the ids."""
    await given_memories(brainmigrate_pool, 20)
    migrator = Migrator(brainmigrate_pool, [memory_migration()])
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationNotFoundError) as caught:
        await migrator.rollback("tag_memories_002")

    assert (
        str(caught.value) == "no migration with id 'tag_memories_002'; did you mean 'tag_memories_001'? "
        "`await migrator.pending()` lists the ids"
    )
    assert await snapshot(brainmigrate_pool) == before


async def test_rolling_back_a_data_migration_that_never_ran_is_refused(brainmigrate_pool: Any) -> None:
    """A data migration with no run has nothing to roll back: MigrationStateError, nothing changed."""
    await given_memories(brainmigrate_pool, 20)
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationStateError) as caught:
        await Migrator(brainmigrate_pool, [memory_migration()]).rollback(MIGRATION)

    assert str(caught.value) == f"migration {MIGRATION!r} is not applied, so there is nothing to roll back"
    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.parametrize("state", ["never-ran", "completed", "schema-migration"])
async def test_cancelling_a_migration_that_is_not_running_is_refused(
    brainmigrate_pool: Any, state: str
) -> None:
    """Only a running data migration can be cancelled: otherwise MigrationStateError, and the
    database and history are as they were."""
    await given_memories(brainmigrate_pool, 20)
    migrator = Migrator(brainmigrate_pool, [memory_migration(), create_table("notes_001", "notes")])
    target = "notes_001" if state == "schema-migration" else MIGRATION
    if state != "never-ran":
        await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationStateError) as caught:
        await migrator.cancel(target)

    assert caught.value.migration_id == target
    assert str(caught.value) == (
        f"migration {target!r} is not a running data migration, so there is nothing to cancel"
    )
    assert await snapshot(brainmigrate_pool) == before
    if state == "completed":
        assert await migrator.status(MIGRATION) is MigrationStatus.COMPLETED


async def test_cancelling_an_unknown_id_is_refused(brainmigrate_pool: Any) -> None:
    """cancel() of an id no migration has raises MigrationNotFoundError."""
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationNotFoundError, match="no migration with id 'ghost_001'"):
        await Migrator(brainmigrate_pool, [memory_migration()]).cancel("ghost_001")

    assert await snapshot(brainmigrate_pool) == before
