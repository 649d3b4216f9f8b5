"""brainmigrate's own tables are versioned: a 0.1.0 database is upgraded in place, keeping its history
and its data runs; a database newer than this code is refused; the steps are checked as data."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import pytest

from brainmigrate import (
    BulkMemoryItem,
    MigrationConfig,
    MigrationStateError,
    MigrationStatus,
    Migrator,
    SchemaVersionError,
)
from brainmigrate._engine import sql as run_sql
from brainmigrate._engine.runner import DataRunner
from brainmigrate._ledger import schema as own
from brainmigrate._model.sqltext import quote_ident
from brainmigrate._model.states import AttemptStatus, HybridPhase, MigrationOperation, RunStatus
from data_support import create_memories, key_at, memory_migration
from helpers import schema_migration

pytestmark = pytest.mark.anyio

S = "brainmigrate"
MEMORIES = 300


# -- the steps, as data ----------------------------------------------------------------------------


def test_the_steps_count_up_from_one_without_gaps() -> None:
    versions = [version for version, _, _ in own.STEPS]
    assert versions == list(range(1, len(versions) + 1))
    assert own.CURRENT_VERSION == versions[-1] >= 2
    assert all(description and sql.strip() for _, description, sql in own.STEPS)


def test_each_step_is_sql_for_any_schema_name() -> None:
    for _, _, sql in own.STEPS:
        text = own.step_sql(sql, 'odd "name"')
        assert '"odd ""name"""' in text
        assert "{" not in text and "}" not in text


def test_version_two_allows_every_attempt_status_and_operation_and_stamp() -> None:
    v2 = dict((version, sql) for version, _, sql in own.STEPS)[2]
    operations = re.search(r"CHECK \(operation IN \(([^)]*)\)\)", v2)
    statuses = re.search(r"CHECK \(status IN \(([^)]*)\)\)", v2)
    assert operations is not None and statuses is not None
    listed_operations = {word.strip(" '\n") for word in operations.group(1).split(",")}
    listed_statuses = {word.strip(" '\n") for word in statuses.group(1).split(",")}
    # 'abandon' came with version 3.
    assert listed_operations == {op.value for op in MigrationOperation} - {"abandon"} | {"stamp"}
    assert listed_statuses == {status.value for status in AttemptStatus}


def test_version_three_allows_every_operation_and_version_four_every_hybrid_phase() -> None:
    steps = dict((version, sql) for version, _, sql in own.STEPS)
    operations = re.search(r"CHECK \(operation IN \(([^)]*)\)\)", steps[3])
    phases = re.search(r"CHECK \(phase IN \(([^)]*)\)\)", steps[4])
    assert operations is not None and phases is not None
    listed_operations = {word.strip(" '\n") for word in operations.group(1).split(",")}
    listed_phases = {word.strip(" '\n") for word in phases.group(1).split(",")}
    assert listed_operations == {op.value for op in MigrationOperation} | {"stamp"}
    assert listed_phases == {phase.value for phase in HybridPhase}


def test_version_one_is_the_0_1_0_layout() -> None:
    v1 = dict((version, sql) for version, _, sql in own.STEPS)[1]
    for table in ("migration_history", "data_runs", "data_chunks", "data_errors"):
        assert f"CREATE TABLE IF NOT EXISTS {{s}}.{table} (" in v1
    assert "migration_id        text PRIMARY KEY" in v1  # one run per migration, as 0.1.0 kept it
    assert "run_id" not in v1


# -- a 0.1.0 database ------------------------------------------------------------------------------

HISTORY_COLUMNS = (
    "migration_id, name, migration_type, version, checksum, operation, status, applied_after, "
    "started_at, finished_at, duration_ms, statement_index, statement_count, error, sqlstate, hostname, pid"
)


def _catalog() -> list[Any]:
    async def paused_transform(memory: dict[str, Any]) -> BulkMemoryItem | None:
        return BulkMemoryItem(memory_id=memory["id"], metadata={**memory["metadata"], "paused": True})

    return [
        schema_migration("notes_001", ["CREATE TABLE notes (id int)"], ["DROP TABLE notes"]),
        schema_migration("rolled_002", ["CREATE TABLE rolled (id int)"], ["DROP TABLE rolled"]),
        schema_migration("failed_003", ["CREATE TABLE failed_once (id int)"], ["DROP TABLE failed_once"]),
        schema_migration(
            "dirty_004",
            ["CREATE TABLE IF NOT EXISTS dirty_a (id int)", "CREATE TABLE IF NOT EXISTS dirty_b (id int)"],
            ["DROP TABLE IF EXISTS dirty_b", "DROP TABLE IF EXISTS dirty_a"],
            transactional=False,
        ),
        memory_migration("tag_memories_001", reversible=False),
        memory_migration("pause_memories_002", paused_transform),
    ]


async def _history_row(
    conn: Any, migration_id: str, checksum: str, operation: str, status: str, **more: Any
) -> None:
    values = {
        "migration_id": migration_id,
        "name": f"migration {migration_id}",
        "migration_type": more.pop("migration_type", "database_schema"),
        "version": "1.0.0",
        "checksum": checksum,
        "operation": operation,
        "status": status,
        "applied_after": more.pop("applied_after", None),
        "started_at": None,
        "finished_at": None,
        "duration_ms": 12.5,
        "statement_index": more.pop("statement_index", None),
        "statement_count": more.pop("statement_count", None),
        "error": more.pop("error", None),
        "sqlstate": more.pop("sqlstate", None),
        "hostname": "old-host",
        "pid": 4242,
    }
    assert not more
    await conn.execute(
        f"INSERT INTO {S}.migration_history ({HISTORY_COLUMNS}) "
        "SELECT $1, $2, $3, $4, $5, $6, $7, $8, now() - interval '1 hour', now() - interval '59 minutes', "
        "$9, $10, $11, $12, $13, $14, $15",
        *[v for k, v in values.items() if k not in ("started_at", "finished_at")],
    )


async def _make_0_1_0(pool: Any) -> dict[str, Any]:
    """brainmigrate 0.1.0's tables and what 0.1.0 left in them, written as 0.1.0 wrote them."""
    checksums = {m.metadata.id: await m.checksum() for m in (cls() for cls in _catalog())}
    async with pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
        await conn.execute("ALTER TABLE memories DISABLE TRIGGER memories_count_writes")
        await conn.execute(own.step_sql(dict((v, sql) for v, _, sql in own.STEPS)[1], S))
        await conn.execute("CREATE TABLE notes (id int); CREATE TABLE dirty_a (id int)")
        # History: applied, applied then rolled back, failed, dirty, and the completed data run.
        await _history_row(
            conn, "notes_001", checksums["notes_001"], "apply", "completed", applied_after=True
        )
        await _history_row(
            conn, "rolled_002", checksums["rolled_002"], "apply", "completed", applied_after=True
        )
        await _history_row(
            conn, "rolled_002", checksums["rolled_002"], "rollback", "completed", applied_after=False
        )
        await _history_row(
            conn, "failed_003", checksums["failed_003"], "apply", "failed", error="boom", sqlstate="42P07"
        )
        await _history_row(
            conn,
            "dirty_004",
            checksums["dirty_004"],
            "apply",
            "dirty",
            statement_index=1,
            statement_count=2,
            error="interrupted: its runner stopped midway",
        )
        await _history_row(
            conn,
            "tag_memories_001",
            checksums["tag_memories_001"],
            "apply",
            "completed",
            applied_after=True,
            migration_type="memory_data",
            error="2 items failed; see Migrator.failed_items('tag_memories_001')",
        )
        # The completed run of tag_memories_001: every memory tagged but two, which failed.
        failed_keys = [await key_at(conn, 150), await key_at(conn, 250)]
        await conn.execute(
            "UPDATE memories SET metadata = metadata || '{\"tagged\": true}' "
            "WHERE id::text <> ALL($1::text[])",
            failed_keys,
        )
        await conn.execute(
            f"""INSERT INTO {S}.data_runs
                       (migration_id, checksum, status, mode, total, started_at, resumed_at, finished_at)
                VALUES ('tag_memories_001', $1, 'completed', 'stream', $2, now() - interval '1 hour',
                        now() - interval '1 hour', now() - interval '59 minutes')""",
            checksums["tag_memories_001"],
            MEMORIES,
        )
        await conn.execute(
            f"""INSERT INTO {S}.data_chunks
                       (migration_id, chunk, cursor_key, done, processed, failed, batches)
                VALUES ('tag_memories_001', 0, $1, true, $2, 2, 3)""",
            await key_at(conn, MEMORIES),
            MEMORIES - 2,
        )
        await conn.execute(
            f"""INSERT INTO {S}.data_errors (migration_id, item_key, error, attempts, first_failed_at,
                                            last_failed_at)
                SELECT 'tag_memories_001', k, 'model overloaded', 1, now(), now()
                  FROM unnest($1::text[]) AS k""",
            failed_keys,
        )
        # The paused run of pause_memories_002: its first 100 memories written, before-images kept.
        image = f'"{S}".{quote_ident(run_sql.image_table("pause_memories_002"))}'
        columns = ['"content"', '"metadata"', '"memory_type"', '"importance_score"', '"embedding"']
        await conn.execute(run_sql.create_images(image, '"memories"', '"id"', columns))
        cursor = await key_at(conn, 100)
        original = await _metadata(conn)
        await conn.execute(
            f"INSERT INTO {image} (id, written, metadata) "
            "SELECT id, '{metadata}', metadata FROM memories WHERE id <= $1::uuid",
            cursor,
        )
        await conn.execute(
            "UPDATE memories SET metadata = metadata || '{\"paused\": true}' WHERE id <= $1::uuid", cursor
        )
        await conn.execute(
            f"""INSERT INTO {S}.data_runs (migration_id, checksum, status, mode, total, before_images,
                                          started_at, resumed_at, finished_at)
                VALUES ('pause_memories_002', $1, 'cancelled', 'stream', $2, $3,
                        now() - interval '30 minutes', now() - interval '30 minutes',
                        now() - interval '29 minutes')""",
            checksums["pause_memories_002"],
            MEMORIES,
            image,
        )
        await conn.execute(
            f"""INSERT INTO {S}.data_chunks (migration_id, chunk, cursor_key, processed, batches)
                VALUES ('pause_memories_002', 0, $1, 100, 2)""",
            cursor,
        )
        history = await conn.fetch(f"SELECT * FROM {S}.migration_history ORDER BY attempt_id")
    return {"original": original, "history": [dict(r) for r in history], "failed_keys": failed_keys}


async def _metadata(conn: Any) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch("SELECT id::text, metadata::text FROM memories")
    return {row[0]: json.loads(row[1]) for row in rows}


async def _version_row(pool: Any) -> asyncpg.Record | None:
    if not await pool.fetchval(f"SELECT to_regclass('{S}.schema_version') IS NOT NULL"):
        return None
    row: asyncpg.Record | None = await pool.fetchrow(f"SELECT * FROM {S}.schema_version")
    return row


async def test_a_0_1_0_database_is_upgraded_keeping_its_history_and_its_data_runs(
    brainmigrate_pool: Any,
) -> None:
    """Reads work on the 0.1.0 tables without changing them; the first write upgrades them to the
    current version in place. History and runs are kept: the completed run's failed items can be
    retried, the paused run resumed and rolled back, and a new run is a row of its own."""
    before = await _make_0_1_0(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, _catalog())

    # Reads of the history need no upgrade, and make none.
    assert [r.migration_id for r in await migrator.history()] == [
        "notes_001",
        "rolled_002",
        "rolled_002",
        "failed_003",
        "dirty_004",
        "tag_memories_001",
    ]
    assert await migrator.status("notes_001") is MigrationStatus.COMPLETED
    assert await migrator.status("rolled_002") is MigrationStatus.ROLLED_BACK
    assert await migrator.status("failed_003") is MigrationStatus.FAILED
    assert await migrator.status("dirty_004") is MigrationStatus.DIRTY
    assert await migrator.status("tag_memories_001") is MigrationStatus.COMPLETED
    with pytest.raises(SchemaVersionError, match=r"at version 1; .*upgrades them first"):
        await migrator.progress("pause_memories_002")
    assert await _version_row(brainmigrate_pool) is None
    async with brainmigrate_pool.acquire() as conn:
        assert await own.read_version(conn, S) == 1

    # The first write (here: resolving the dirty mark) upgrades.
    await migrator.resolve("dirty_004", applied=False)

    version = await _version_row(brainmigrate_pool)
    assert version is not None and version["version"] == own.CURRENT_VERSION == 4
    assert version["upgraded_by"]
    kept = await brainmigrate_pool.fetch(f"SELECT * FROM {S}.migration_history ORDER BY attempt_id")
    columns = before["history"][0].keys()  # version 3 added columns for hybrid migrations
    assert [{k: v for k, v in dict(r).items() if k in columns} for r in kept][: len(before["history"])] == (
        before["history"]
    )
    assert (kept[-1]["migration_id"], kept[-1]["operation"]) == ("dirty_004", "resolve")

    done = await migrator.progress("tag_memories_001")
    assert done is not None
    assert (done.status, done.processed, done.failed, done.total) == ("completed", MEMORIES - 2, 2, MEMORIES)
    assert sorted(item.key for item in await migrator.failed_items("tag_memories_001")) == sorted(
        before["failed_keys"]
    )
    paused = await migrator.progress("pause_memories_002")
    assert paused is not None
    assert (paused.status, paused.processed, paused.workers) == ("cancelled", 100, 0)
    assert await migrator.status("pause_memories_002") is MigrationStatus.CANCELLED

    results = await migrator.run_pending()

    assert [(r.migration_id, r.status) for r in results] == [
        ("dirty_004", MigrationStatus.COMPLETED),
        ("failed_003", MigrationStatus.COMPLETED),
        ("pause_memories_002", MigrationStatus.CANCELLED),  # paused: only execute(id) resumes it
        ("rolled_002", MigrationStatus.COMPLETED),
    ]

    retried = await migrator.retry_failed("tag_memories_001")
    assert retried.items_processed == 2
    assert await migrator.failed_items("tag_memories_001") == []

    resumed = await migrator.execute("pause_memories_002", config=MigrationConfig(batch_size=64))
    assert (resumed.status, resumed.items_processed) == (MigrationStatus.COMPLETED, MEMORIES - 100)
    async with brainmigrate_pool.acquire() as conn:
        assert all(m.get("paused") and m.get("tagged") for m in (await _metadata(conn)).values())

    [rolled_back] = await migrator.rollback("pause_memories_002")
    assert rolled_back.status is MigrationStatus.ROLLED_BACK
    async with brainmigrate_pool.acquire() as conn:
        restored = await _metadata(conn)
    assert not any("paused" in m for m in restored.values())
    assert {k: m for k, m in restored.items() if k not in before["failed_keys"]} == {
        k: m for k, m in before["original"].items() if k not in before["failed_keys"]
    }
    assert await migrator.status("pause_memories_002") is MigrationStatus.ROLLED_BACK

    # Applied again: a new run, the earlier one kept.
    again = await migrator.execute("pause_memories_002")
    assert (again.status, again.items_processed) == (MigrationStatus.COMPLETED, MEMORIES)
    runs = await brainmigrate_pool.fetch(f"SELECT migration_id, status FROM {S}.data_runs ORDER BY run_id")
    assert [tuple(r) for r in runs] == [
        ("tag_memories_001", "completed"),
        ("pause_memories_002", "rolled_back"),
        ("pause_memories_002", "completed"),
    ]
    latest = await migrator.progress("pause_memories_002")
    assert latest is not None and (latest.status, latest.processed) == ("completed", MEMORIES)
    assert await migrator.run_pending() == []


async def test_a_second_upgrade_is_a_no_op(brainmigrate_pool: Any, brainmigrate_database: str) -> None:
    migrator = Migrator(brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])])
    await migrator.run_pending()
    first = await _version_row(brainmigrate_pool)
    assert first is not None and first["version"] == own.CURRENT_VERSION

    conn = await asyncpg.connect(brainmigrate_database)  # a connection that never checked
    try:
        assert await own.upgrade(conn, S, create=True) == own.CURRENT_VERSION
        assert await own.upgrade(conn, S, create=False) == own.CURRENT_VERSION
    finally:
        await conn.close()
    fresh = Migrator(brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])])
    assert await fresh.run_pending() == []

    assert await _version_row(brainmigrate_pool) == first


async def test_a_database_newer_than_this_code_is_refused_and_nothing_is_written(
    brainmigrate_database: str,
) -> None:
    setup = await asyncpg.connect(brainmigrate_database)
    try:
        await own.upgrade(setup, S, create=True)
        await setup.execute(f"UPDATE {S}.schema_version SET version = 99")
        before = await setup.fetchval(f"SELECT count(*) FROM {S}.migration_history")
    finally:
        await setup.close()
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=3)
    try:
        migrator = Migrator(pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])])

        for attempt in (migrator.run_pending(), migrator.execute("notes_001")):
            with pytest.raises(SchemaVersionError) as caught:
                await attempt
            assert caught.value.found == 99 and caught.value.supported == own.CURRENT_VERSION
            assert "upgrade brainmigrate" in str(caught.value)

        assert await pool.fetchval("SELECT to_regclass('notes')") is None
        assert await pool.fetchval(f"SELECT count(*) FROM {S}.migration_history") == before
        assert await pool.fetchval(f"SELECT version FROM {S}.schema_version") == 99
    finally:
        await pool.close()


async def test_a_dry_run_does_not_upgrade_a_0_1_0_database(brainmigrate_pool: Any) -> None:
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute(own.step_sql(dict((v, sql) for v, _, sql in own.STEPS)[1], S))
    migrator = Migrator(brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True))

    assert result.status is MigrationStatus.COMPLETED
    assert await _version_row(brainmigrate_pool) is None
    assert await brainmigrate_pool.fetchval(f"SELECT to_regclass('{S}.data_runs_migration_idx')") is None


async def test_a_fresh_database_gets_the_current_version_in_any_schema(brainmigrate_pool: Any) -> None:
    schema = 'Odd "Schema"'
    migrator = Migrator(
        brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])], schema=schema
    )
    await migrator.run_pending()

    quoted = quote_ident(schema)
    assert (
        await brainmigrate_pool.fetchval(f"SELECT version FROM {quoted}.schema_version")
        == own.CURRENT_VERSION
    )
    assert await migrator.status("notes_001") is MigrationStatus.COMPLETED


async def test_run_status_changes_follow_the_transition_table(brainmigrate_pool: Any) -> None:
    """Each run's status moves only as RUN_TRANSITIONS allows: a refused move changes nothing and,
    for an operation that needs it, raises MigrationStateError naming the operation."""
    runner = DataRunner(S)
    async with brainmigrate_pool.acquire() as conn:
        await own.upgrade(conn, S, create=True)
        await conn.execute(run_sql.start_run(S), "m_001", "c", "stream", 10, None)

        assert await runner.set_status(conn, "m_001", RunStatus.CANCELLED) is None  # not from running
        assert await runner.set_status(conn, "m_001", RunStatus.COMPLETED) is RunStatus.COMPLETED
        with pytest.raises(MigrationStateError) as refused:
            await runner.set_status(conn, "m_001", RunStatus.RUNNING, operation="resume")
        assert "cannot resume migration 'm_001': it is completed" in str(refused.value)
        assert await runner.set_status(conn, "m_001", "rolled_back") is RunStatus.ROLLED_BACK
        with pytest.raises(MigrationStateError, match="cannot roll back migration 'm_001'"):
            await runner.set_status(conn, "m_001", RunStatus.ROLLED_BACK, operation="roll back")

        # A new run is a row of its own; status changes apply to the latest only.
        await conn.execute(run_sql.start_run(S), "m_001", "c", "stream", 10, None)
        assert await runner.set_status(conn, "m_001", RunStatus.CANCELLING) is RunStatus.CANCELLING
        statuses = await conn.fetch(f"SELECT status FROM {S}.data_runs ORDER BY run_id")
        assert [r[0] for r in statuses] == ["rolled_back", "cancelling"]
        progress = await runner.progress(conn, "m_001")
        assert progress is not None and progress.status is RunStatus.CANCELLING


#: The transaction that created a table, and the one that gave data_chunks its run id (version 2).
_CREATED_IN = """
SELECT (SELECT xmin::text FROM pg_class WHERE oid = 'brainmigrate.migration_history'::regclass),
       (SELECT xmin::text FROM pg_attribute
         WHERE attrelid = 'brainmigrate.data_chunks'::regclass AND attname = 'run_id'),
       (SELECT xmin::text FROM brainmigrate.schema_version)
"""


async def test_a_fresh_database_gets_every_step_in_one_transaction(brainmigrate_pool: Any) -> None:
    """A reader polling while the first runner bootstraps meets no tables or the current layout,
    never version 1 waiting for version 2: every step is written by one transaction."""
    await Migrator(
        brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])]
    ).run_pending()

    history, run_id, version = await brainmigrate_pool.fetchrow(_CREATED_IN)

    assert history == run_id == version


async def test_a_0_1_0_database_is_upgraded_in_one_transaction(brainmigrate_pool: Any) -> None:
    """Upgrading 0.1.0's tables adds the run ids and records the version in one transaction."""
    await _make_0_1_0(brainmigrate_pool)
    table = "SELECT 'brainmigrate.migration_history'::regclass::oid"
    before = await brainmigrate_pool.fetchval(table)

    await Migrator(brainmigrate_pool, _catalog()).resolve("dirty_004", applied=False)

    history, run_id, version = await brainmigrate_pool.fetchrow(_CREATED_IN)
    assert before == await brainmigrate_pool.fetchval(table)  # 0.1.0's table kept, not made anew
    assert history == run_id == version  # its CHECK changed with the rest, in the same transaction


async def test_a_version_2_database_is_upgraded_to_3_for_hybrid_migrations(brainmigrate_pool: Any) -> None:
    """Tables at version 2 are read as they are (history without the hybrid columns), and the first
    write adds hybrid_runs and the history's hybrid columns, keeping every row."""
    migrator = Migrator(brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])])
    async with brainmigrate_pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(own.step_sql(own._VERSION_TABLE_SQL, S))
            for _, _, sql in own.STEPS[:2]:
                await conn.execute(own.step_sql(sql, S))
            await conn.execute(own.step_sql(own._RECORD_VERSION, S), 2, "0.1.0")
        await _history_row(conn, "old_001", "c", "apply", "completed", applied_after=True)
        before = [dict(r) for r in await conn.fetch(f"SELECT * FROM {S}.migration_history")]
        assert await own.read_version(conn, S) == 2

    [old] = await migrator.history()  # read on version 2: no hybrid columns yet
    assert (old.migration_id, old.hybrid_id, old.hybrid_phase, old.actor) == ("old_001", None, None, None)

    await migrator.run_pending()

    async with brainmigrate_pool.acquire() as conn:
        assert await own.read_version(conn, S) == own.CURRENT_VERSION == 4
        assert await conn.fetchval(f"SELECT to_regclass('{S}.hybrid_runs') IS NOT NULL")
        kept = [dict(r) for r in await conn.fetch(f"SELECT * FROM {S}.migration_history ORDER BY attempt_id")]
    assert [{k: v for k, v in row.items() if k in before[0]} for row in kept[:1]] == before
    assert all(row["hybrid_id"] is None for row in kept)
    assert [r.migration_id for r in await migrator.history()] == ["old_001", "notes_001"]


async def test_a_version_3_database_is_upgraded_to_4_keeping_its_hybrid_runs(brainmigrate_pool: Any) -> None:
    """Version 4 widens the phases a hybrid run may record (cutting_over) and adds the table of
    embedding generations; a run recorded at version 3 is kept as it was."""
    migrator = Migrator(brainmigrate_pool, [schema_migration("notes_001", ["CREATE TABLE notes (id int)"])])
    async with brainmigrate_pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute(own.step_sql(own._VERSION_TABLE_SQL, S))
            for _, _, sql in own.STEPS[:3]:
                await conn.execute(own.step_sql(sql, S))
            await conn.execute(own.step_sql(own._RECORD_VERSION, S), 3, "0.2.0")
        await conn.execute(
            f"INSERT INTO {S}.hybrid_runs (hybrid_id, checksum, phase, started_at, updated_at) "
            "VALUES ('old_hybrid', 'c', 'ready_to_contract', now(), now())"
        )
        before = [dict(r) for r in await conn.fetch(f"SELECT * FROM {S}.hybrid_runs")]
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(f"UPDATE {S}.hybrid_runs SET phase = 'cutting_over'")

    await migrator.run_pending()

    async with brainmigrate_pool.acquire() as conn:
        assert await own.read_version(conn, S) == own.CURRENT_VERSION == 4
        assert [dict(r) for r in await conn.fetch(f"SELECT * FROM {S}.hybrid_runs")] == before
        assert await conn.fetchval(f"SELECT to_regclass('{S}.embedding_generations') IS NOT NULL")
        assert await conn.execute(f"UPDATE {S}.hybrid_runs SET phase = 'cutting_over'") == "UPDATE 1"
