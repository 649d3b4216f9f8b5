"""A Python-transform migration run as an online rewrite while the application writes to its table.

The migration labels each memory's metadata with the length of its content, in Python (so the
replay runs the transform again on what the application last wrote). While the copy runs and
while the swap waits, the application moves a unique slug from a memory the copy has copied to
one it has not reached, and exchanges slugs between memories in one transaction: the rewrite
completes without a duplicate, and the swapped-in table holds every memory as last written,
labelled; swapped back, the original holds the same writes, unlabelled. So it does when the
exchange's changes fall on both sides of a boundary between two batches of the replay. An
identity ``ALWAYS`` column set to its default on a copied memory has its new value in the
rewritten table.

Abandoned mid-copy (its runner's process gone) while the application writes, the rewrite leaves
the table exactly as the application left it and nothing of its own (no shadow, old table,
capture trigger, capture function or change log); the application's writes and TRUNCATE go on
working, and the next run rewrites the table from scratch. A copy interrupted while its process
goes on (its lease not expired) is never resumed by the run after the abandon either: every
memory ends labelled. Abandoned after the swap, nothing is undone: the rewritten table stays in
place with every memory, the original is kept, and the rewrite can still be carried on to
contract, or rolled back (swapped back), a refusal saying how.

Each phase is held on the server, not by sleeping (see ``rewrite_support``): the table's
CHECK constraint and an expression index call a function that waits, for memory ``HELD``, for an
advisory lock the test holds, while the application's own connection passes freely.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import (
    BrainMigrateError,
    BulkMemoryItem,
    HybridPhase,
    MemoryDataMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationResult,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate._rewrite.replay import REPLAY_BATCH
from rewrite_support import (
    CONFIG,
    COUNT,
    Application,
    Metadata,
    Rewrite,
    Row,
    create_store,
    gated,
    nothing_of_the_rewrite_left,
    slugs,
    stored,
    swapped,
    until,
)
from test_rewrite import tables

pytestmark = pytest.mark.anyio

MIGRATION = "label_001"


def labelled(content: str, metadata: Metadata) -> Metadata:
    """What the migration makes of a memory's metadata: labelled with its content's length."""
    return {**(metadata or {}), "length": len(content)}


def labelling(migration_id: str = MIGRATION) -> type[MemoryDataMigration]:
    class Label(MemoryDataMigration):
        strategy: ClassVar[Any] = "rewrite"

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name="label each memory with its length",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_DATA,
                reversible=True,
            )

        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            metadata = labelled(memory["content"], memory["metadata"])
            if metadata == memory["metadata"]:
                return None
            return BulkMemoryItem(memory_id=memory["id"], metadata=metadata)

    return Label


def transformed(written: dict[int, Row | None]) -> dict[int, Row]:
    """Every memory not deleted, labelled from what was last written to it."""
    return {key: (row[0], labelled(*row)) for key, row in written.items() if row is not None}


def as_written(written: dict[int, Row | None]) -> dict[int, Row]:
    return {key: row for key, row in written.items() if row is not None}


#: The application name of the rewrite runner's sessions.
RUNNER = "rewrite runner"


class Runner:
    """The process running the rewrite: its own pool, and the task running the migrations."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool
        self.scope = anyio.CancelScope()

    def interrupted(self) -> None:
        """Stop the run where it stands (its task cancelled); the process and its sessions go on."""
        self.scope.cancel()

    async def dies(self, control: asyncpg.Connection[Any]) -> None:
        """Stop the run where it stands and end the runner's sessions, as if its process died."""
        self.interrupted()
        self.pool.terminate()

        async def gone() -> bool:
            sessions = await control.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", RUNNER
            )
            return not sessions

        await until(gone, "the runner's sessions have ended")


@contextlib.asynccontextmanager
async def gated_rewrite(
    dsn: str, start: dict[int, Row], config: MigrationConfig = CONFIG
) -> AsyncIterator[tuple[Rewrite, Application, Runner]]:
    """Run the labelling (up to the swap) in a task of a runner of its own, the copy and the gated
    index build held at memory HELD until the test opens them; the application writes on a
    connection of its own."""
    runner = Runner(
        await asyncpg.create_pool(dsn, min_size=1, max_size=5, server_settings={"application_name": RUNNER})
    )
    migrator = Migrator(runner.pool, [labelling()])

    async def run() -> list[MigrationResult]:
        with runner.scope:
            return await migrator.run_pending(config=config)
        return []  # interrupted: no results

    try:
        async with gated(dsn, run) as (rewrite, conn):
            yield rewrite, Application(conn, start), runner
    finally:
        runner.pool.terminate()


async def test_unique_values_moved_and_exchanged_during_a_python_rewrite_end_as_last_written_and_labelled(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool, unique_slugs=True)
    expected_slugs: dict[int, str | None] = {key: f"m{key}" for key in start}

    async with gated_rewrite(brainmigrate_database, start) as (rewrite, app, _):
        await rewrite.copy_stopped()
        assert await rewrite.in_shadow(60) and await rewrite.in_shadow(100)
        assert not await rewrite.in_shadow(2_900) and not await rewrite.in_shadow(2_800)
        # A copied memory's slug goes to one the copy has not reached.
        await app.conn.execute("UPDATE memories SET slug = 'renamed' WHERE id = 60")
        await app.conn.execute("UPDATE memories SET slug = 'm60' WHERE id = 2900")
        expected_slugs.update({60: "renamed", 2_900: "m60"})
        # A copied memory and one not reached exchange their slugs (and are edited) at once.
        async with app.conn.transaction():
            await app.conn.execute("UPDATE memories SET slug = 'moving' WHERE id = 100")
            await app.conn.execute("UPDATE memories SET slug = 'm100' WHERE id = 2800")
            await app.conn.execute("UPDATE memories SET slug = 'm2800' WHERE id = 100")
            await app.edit(100, "memory one hundred, edited as its slug moved")
            await app.edit(2_800, "memory 2800, edited")
        expected_slugs.update({100: "m2800", 2_800: "m100"})
        await rewrite.open_copy()
        await rewrite.open_indexes()
        # Two copied memories exchange their slugs in the transaction the swap waits for.
        async with app.conn.transaction():
            await app.conn.execute("UPDATE memories SET slug = 'moving' WHERE id = 200")
            await rewrite.swap_waiting()
            await app.conn.execute("UPDATE memories SET slug = 'm200' WHERE id = 300")
            await app.conn.execute("UPDATE memories SET slug = 'm300' WHERE id = 200")
            await app.edit(300, "memory 300, edited as the swap waited")
        expected_slugs.update({200: "m300", 300: "m200"})
    swapped(rewrite)

    migrator = Migrator(brainmigrate_pool, [labelling()])
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.READY_TO_CONTRACT
    after = await stored(brainmigrate_pool)
    assert after == transformed(app.written)
    assert after[100] == (
        "memory one hundred, edited as its slug moved",
        {**start[100][1], "length": len("memory one hundred, edited as its slug moved")},
    )
    assert await slugs(brainmigrate_pool) == expected_slugs

    await migrator.rollback(MIGRATION)

    assert await migrator.status(MIGRATION) is MigrationStatus.ROLLED_BACK
    assert await stored(brainmigrate_pool) == as_written(app.written)
    assert await slugs(brainmigrate_pool) == expected_slugs
    assert await tables(brainmigrate_pool) == ["memories"]


async def test_an_identity_column_set_to_its_default_during_a_python_copy_has_its_new_value_after_the_swap(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    await brainmigrate_pool.execute(
        "ALTER TABLE memories ADD COLUMN serial_no bigint GENERATED ALWAYS AS IDENTITY"
    )
    async with gated_rewrite(brainmigrate_database, start) as (rewrite, app, _):
        await rewrite.copy_stopped()
        assert await rewrite.in_shadow(10) and not await rewrite.in_shadow(2_000)
        # A copied memory and one the copy has not reached are numbered again.
        renumbered = await app.conn.fetch(
            "UPDATE memories SET serial_no = DEFAULT WHERE id IN (10, 2000) RETURNING id, serial_no"
        )
        await rewrite.open_copy()
        await rewrite.open_indexes()
    swapped(rewrite)

    numbers = dict(
        await brainmigrate_pool.fetch("SELECT id, serial_no FROM memories WHERE id IN (10, 11, 2000)")
    )
    assert {r["id"]: r["serial_no"] for r in renumbered} == {10: numbers[10], 2_000: numbers[2_000]}
    assert numbers[10] > COUNT and numbers[2_000] > COUNT and numbers[11] == 11
    assert await stored(brainmigrate_pool) == transformed(app.written)


async def keep_writing(app: Application, stopping: anyio.Event) -> None:
    """The application at work: edits, deletes and inserts memories, one statement each, until
    told to stop."""
    i = 0
    while not stopping.is_set():
        i += 1
        key = (i * 37) % COUNT + 1
        if app.written.get(key) is None:
            await app.insert(f"memory {key} written again", {"n": key, "again": i}, key=key)
        elif i % 7 == 0:
            await app.delete(key)
        elif i % 7 == 1:
            await app.insert(f"inserted {i}", {"i": i})
        else:
            await app.update(key, {"n": key, "write": i}, content=f"edited {i}")


async def test_a_python_rewrite_abandoned_mid_copy_as_the_application_writes_leaves_the_table_as_written(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    original = await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid")
    migrator = Migrator(brainmigrate_pool, [labelling()])
    stopping = anyio.Event()

    async with (
        gated_rewrite(brainmigrate_database, start) as (rewrite, app, runner),
        anyio.create_task_group() as application,
    ):
        application.start_soon(keep_writing, app, stopping)
        await rewrite.copy_stopped()
        await until(lambda: _at_least(app, 100), "the application has written during the copy")
        await runner.dies(rewrite.control)  # mid-copy

        record = await migrator.abandon(MIGRATION, reason="the copy is given up")

        writes = app.writes
        await until(lambda: _at_least(app, writes + 100), "the application writes after the abandon")
        stopping.set()

    assert record.operation.value == "abandon"
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.ABANDONED
    assert await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid") == original
    assert await stored(brainmigrate_pool) == as_written(app.written)
    await nothing_of_the_rewrite_left(brainmigrate_pool)
    async with brainmigrate_pool.acquire() as conn:
        with contextlib.suppress(_Undone):
            async with conn.transaction():
                await conn.execute("TRUNCATE memories")  # no capture refuses it
                assert await conn.fetchval("SELECT count(*) FROM memories") == 0
                raise _Undone
    assert await stored(brainmigrate_pool) == as_written(app.written)

    # The next run rewrites the table from scratch.
    results = await migrator.run_pending(config=CONFIG)

    assert [r.status for r in results] == [MigrationStatus.RUNNING]
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.READY_TO_CONTRACT
    assert await stored(brainmigrate_pool) == transformed(app.written)


class _Undone(Exception):
    """Raised to roll a transaction back."""


async def _at_least(app: Application, writes: int) -> bool:
    return app.writes >= writes


async def test_a_python_rewrite_abandoned_as_its_interrupted_copy_still_holds_its_lease_is_never_resumed(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """The runner's task is cancelled mid-copy while its process goes on, so the copy's lease
    lives until it expires: the rewrite is abandoned (at once, or once the lease has expired), and
    the next run labels every memory, none of them left as the abandoned copy's checkpoints say."""
    start = await create_store(brainmigrate_pool)
    config = attrs.evolve(CONFIG, lease_seconds=2.0)
    migrator = Migrator(brainmigrate_pool, [labelling()])
    async with gated_rewrite(brainmigrate_database, start, config) as (rewrite, _, runner):
        await rewrite.copy_stopped()
        assert await rewrite.in_shadow(1_000)  # the copy has committed part of the rows
        runner.interrupted()
        await rewrite.open_copy()
        await rewrite.open_indexes()

        refusals: list[str] = []

        async def abandoned() -> bool:
            try:
                await migrator.abandon(MIGRATION, reason="the interrupted copy is given up")
            except BrainMigrateError as refused:
                refusals.append(str(refused))
                return False
            return True

        await until(abandoned, "the rewrite is abandoned")
        # Refused, if at all, only while the interrupted copy's lease lives, saying so.
        assert all("worker" in refusal for refusal in refusals), refusals
        await nothing_of_the_rewrite_left(brainmigrate_pool)

        async def rewritten() -> bool:
            await migrator.run_pending(config=config)
            return await migrator.hybrid_phase(MIGRATION) is HybridPhase.READY_TO_CONTRACT

        await until(rewritten, "the next run has swapped the table")

    after = await stored(brainmigrate_pool)
    unlabelled = sorted(key for key, row in after.items() if row != (start[key][0], labelled(*start[key])))
    assert unlabelled == []
    assert after == transformed(dict(start))


async def test_a_python_rewrite_abandoned_after_its_swap_keeps_both_tables_and_a_new_run_contracts_it(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    start = await create_store(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [labelling()])
    await migrator.run_pending(config=CONFIG)
    rewritten = transformed(dict(start))
    assert await stored(brainmigrate_pool) == rewritten

    record = await migrator.abandon(MIGRATION, reason="the operator gives the run up after the swap")

    assert record.operation.value == "abandon"
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.ABANDONED
    # Nothing is undone: the rewritten table is in place with every memory, the original is kept.
    assert await stored(brainmigrate_pool) == rewritten
    old = [t for t in await tables(brainmigrate_pool) if t.startswith("bm_old_")]
    assert len(old) == 1
    assert await stored(brainmigrate_pool, old[0]) == start
    await brainmigrate_pool.execute("UPDATE memories SET content = 'edited after the abandon' WHERE id = 5")
    rewritten[5] = ("edited after the abandon", rewritten[5][1])

    # A new run carries on from the steps applied: it waits at READY_TO_CONTRACT again.
    results = await migrator.run_pending(config=CONFIG)

    assert [r.status for r in results] == [MigrationStatus.RUNNING]
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.READY_TO_CONTRACT
    assert await stored(brainmigrate_pool) == rewritten
    await migrator.contract(MIGRATION)
    assert await migrator.status(MIGRATION) is MigrationStatus.COMPLETED
    assert await stored(brainmigrate_pool) == rewritten
    await nothing_of_the_rewrite_left(brainmigrate_pool)


async def test_a_python_rewrite_abandoned_after_its_swap_can_still_be_rolled_back_to_the_original(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """As the guide says: after the swap, abandon undoes nothing, and the rewrite is rolled back
    (swapped back) or contracted. A rollback refused says how to go on, and changes nothing."""
    start = await create_store(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [labelling()])
    await migrator.run_pending(config=CONFIG)
    await migrator.abandon(MIGRATION, reason="the operator gives the run up after the swap")
    await brainmigrate_pool.execute("UPDATE memories SET content = 'edited after the abandon' WHERE id = 5")
    rewritten = transformed(dict(start))
    rewritten[5] = ("edited after the abandon", rewritten[5][1])

    refusal: str | None = None
    try:
        await migrator.rollback(MIGRATION)
    except BrainMigrateError as refused:
        refusal = str(refused)
    if refusal is not None:
        assert "run_pending" in refusal, f"the refusal does not say how to go on: {refusal}"
        assert await stored(brainmigrate_pool) == rewritten
        await migrator.run_pending(config=CONFIG)
        await migrator.rollback(MIGRATION)

    assert await migrator.status(MIGRATION) is MigrationStatus.ROLLED_BACK
    # The memory written since the swap comes back whole, as it stands in the rewritten table.
    expected = dict(start)
    expected[5] = rewritten[5]
    assert await stored(brainmigrate_pool) == expected
    await nothing_of_the_rewrite_left(brainmigrate_pool)


async def test_unique_values_exchanged_across_a_replay_batch_boundary_are_no_duplicates(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """The first of an exchange's changes is the last of a batch of the replay, the others in the
    next: the rewrite completes all the same, the slugs exchanged."""
    start = await create_store(brainmigrate_pool, unique_slugs=True)
    expected_slugs: dict[int, str | None] = {key: f"m{key}" for key in start}
    async with gated_rewrite(brainmigrate_database, start) as (rewrite, app, _):
        await rewrite.copy_stopped()
        await rewrite.open_copy()
        await rewrite.indexes_stopped()  # the shadow's unique index on slug is built, or will be
        before = REPLAY_BATCH - 1 - await rewrite.logged()
        assert before > 0
        edited = await app.conn.execute(
            "UPDATE memories SET content = 'edited: ' || id WHERE id BETWEEN 1001 AND $1", 1_000 + before
        )
        assert edited == f"UPDATE {before}"
        async with app.conn.transaction():
            await app.conn.execute("UPDATE memories SET slug = 'moving' WHERE id = 100")
            await app.conn.execute("UPDATE memories SET slug = 'm100' WHERE id = 200")
            await app.conn.execute("UPDATE memories SET slug = 'm200' WHERE id = 100")
        expected_slugs.update({100: "m200", 200: "m100"})
        assert await rewrite.logged() == REPLAY_BATCH + 2
        await rewrite.open_indexes()
    swapped(rewrite)

    assert await slugs(brainmigrate_pool) == expected_slugs
