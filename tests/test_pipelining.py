"""A stream's pages flow through the transform without waiting for each other: calls stay in flight
while pages are read and checkpoints written, and the guarantees hold all the same.

The transforms here stand for a remote model: each call sleeps, and records when it ran and how
many calls were in flight. A trigger can make each batch's write sleep inside the transaction that
also advances the checkpoint, so that checkpoints take long enough to matter. Whatever stops a run
midway (SIGKILL of its process, a cancel, a failing item), its checkpoint covers only a prefix of
the key space whose every memory is written, and nothing beyond it is; a resumed run writes each
memory exactly once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import (
    BulkMemoryItem,
    MemoryDataMigration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
    Progress,
)
from data_support import create_memories, meta, tag, write_counts
from workers.harness import migrations_dir, sigkill, start_data_worker, stop, wait_until

pytestmark = pytest.mark.anyio

MIGRATION = "embed_memories_001"
CALL_SECONDS = 0.05

#: Makes each UPDATE of memories sleep ``write_delay.seconds`` inside its transaction.
WRITE_DELAY_DDL = """
CREATE TABLE write_delay (seconds float NOT NULL);
INSERT INTO write_delay VALUES ({seconds});
CREATE TABLE write_log (started float8 NOT NULL, ended float8 NOT NULL);
CREATE FUNCTION slow_memory_writes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE started float8 := extract(epoch FROM clock_timestamp());
BEGIN
    PERFORM pg_sleep((SELECT seconds FROM write_delay));
    INSERT INTO write_log VALUES (started, extract(epoch FROM clock_timestamp()));
    RETURN NULL;
END $$;
CREATE TRIGGER memories_slow_writes AFTER UPDATE ON memories
    FOR EACH STATEMENT EXECUTE FUNCTION slow_memory_writes();
"""


class Model:
    """A simulated model: each call sleeps; records each call's start and end, and the peak."""

    def __init__(
        self, fail_on: str | None = None, watch: Callable[[list[dict[str, Any]]], None] | None = None
    ) -> None:
        self.calls: list[tuple[float, float]] = []
        #: Each call's start on the wall clock (the server's clock_timestamp() reads the same).
        self.started: list[float] = []
        self.in_flight = 0
        self.peak = 0
        self.fail_on = fail_on
        self.watch = watch

    async def __call__(self, memories: list[dict[str, Any]]) -> list[BulkMemoryItem | None]:
        start = time.monotonic()
        self.started.append(time.time())
        if self.watch is not None:
            self.watch(memories)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await anyio.sleep(CALL_SECONDS)
        finally:
            self.in_flight -= 1
            self.calls.append((start, time.monotonic()))
        if self.fail_on is not None and any(str(m["id"]) == self.fail_on for m in memories):
            raise RuntimeError("the model refused this memory")
        return [tag(memory) for memory in memories]


def embedding_migration(model: Model, batch: int = 10) -> type[MemoryDataMigration]:
    class Embed(MemoryDataMigration):
        transform_batch_size = batch

        def _get_metadata(self) -> MigrationMetadata:
            return meta(MIGRATION, migration_type=MigrationType.MEMORY_DATA, reversible=False)

        async def transform_batch(self, memories: list[dict[str, Any]]) -> Sequence[BulkMemoryItem | None]:
            return await model(memories)

    return Embed


async def given(pool: asyncpg.Pool[Any], count: int, write_delay: float = 0) -> list[str]:
    """``count`` memories (and writes that sleep ``write_delay``); their ids in key order."""
    async with pool.acquire() as conn:
        await create_memories(conn, count)
        await conn.execute(WRITE_DELAY_DDL.format(seconds=float(write_delay)))
        return [row[0] for row in await conn.fetch("SELECT id::text FROM memories ORDER BY id")]


async def checkpoint_of(pool: asyncpg.Pool[Any], migration_id: str) -> tuple[str | None, int]:
    """The cursor and the processed count of the run's one chunk."""
    row = await pool.fetchrow(
        "SELECT cursor_key, processed FROM brainmigrate.data_chunks WHERE migration_id = $1", migration_id
    )
    assert row is not None
    return row["cursor_key"], row["processed"]


async def assert_checkpoint_covers_a_written_prefix(pool: asyncpg.Pool[Any], migration_id: str) -> int:
    """Every memory up to the checkpoint's cursor is written once, none after it; the count."""
    cursor, processed = await checkpoint_of(pool, migration_id)
    counts = await pool.fetchrow(
        """
        SELECT count(*) FILTER (WHERE $1::uuid IS NOT NULL AND id <= $1::uuid) AS covered,
               count(*) FILTER (WHERE $1::uuid IS NOT NULL AND id <= $1::uuid AND writes = 1) AS written,
               count(*) FILTER (WHERE ($1::uuid IS NULL OR id > $1::uuid) AND writes > 0) AS beyond
          FROM memories
        """,
        cursor,
    )
    assert counts is not None
    assert (counts["covered"], counts["written"], counts["beyond"]) == (processed, processed, 0)
    return int(processed)


# -- keeping the model busy ----------------------------------------------------------------------


async def test_calls_stay_in_flight_while_pages_are_read_and_checkpoints_written(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """With writes that take 0.1 s per page inside each checkpoint's transaction (two calls' time),
    calls go on while the checkpoints are written: model calls start during the writes, and all
    `concurrency` slots are used. (How close to the model's bound this comes is measured in
    bench/model_throughput.py, not here.)"""
    await given(brainmigrate_pool, 1200, write_delay=0.1)
    model = Model()
    migrator = Migrator(brainmigrate_pool, [embedding_migration(model)])

    [result] = await migrator.run_pending(
        config=MigrationConfig(batch_size=100, checkpoint_frequency=200, concurrency=4)
    )

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 1200)
    assert len(model.calls) == 120
    assert model.peak == 4
    writes = [tuple(row) for row in await brainmigrate_pool.fetch("SELECT started, ended FROM write_log")]
    assert len(writes) == 12  # a write of each page of 100
    during = [w for w in writes if any(w[0] < start < w[1] for start in model.started)]
    # A page at a time, the model would wait for every write; here calls start during most of them.
    assert len(during) >= len(writes) // 2, (len(during), len(writes))
    assert await write_counts(brainmigrate_pool) == {1: 1200}


async def test_pages_read_ahead_of_the_checkpoint_stay_within_a_group_and_a_few_pages(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """Calls run on pages beyond the checkpoint group being committed, but never on more than a
    group and three pages past the last checkpoint: memory stays bounded."""
    keys = await given(brainmigrate_pool, 2000, write_delay=0.05)
    position = {key: i + 1 for i, key in enumerate(keys)}
    committed: list[int] = []
    ahead: list[int] = []

    def on_progress(progress: Progress) -> None:
        committed.append(progress.processed)

    def watch(memories: list[dict[str, Any]]) -> None:
        done = committed[-1] if committed else 0
        ahead.append(max(position[str(m["id"])] for m in memories) - done)

    model = Model(watch=watch)
    migrator = Migrator(brainmigrate_pool, [embedding_migration(model)], on_progress=on_progress)

    config = MigrationConfig(batch_size=100, checkpoint_frequency=200, concurrency=4)
    await migrator.run_pending(config=config)

    assert 200 < max(ahead) <= 200 + 3 * 100
    assert await write_counts(brainmigrate_pool) == {1: 2000}


# -- the guarantees, with calls in flight ------------------------------------------------------------


async def test_a_failing_item_read_ahead_is_raised_once_the_groups_before_it_are_committed(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """The call holding the 550th memory fails while earlier groups are still being written: those
    groups commit, the run fails on that call's memories, and their group and those after it are
    not written; once the model is back, execute() writes the rest."""
    keys = await given(brainmigrate_pool, 1000, write_delay=0.1)
    model = Model(fail_on=keys[549])
    migrator = Migrator(brainmigrate_pool, [embedding_migration(model)])
    config = MigrationConfig(batch_size=100, checkpoint_frequency=200, concurrency=4, enable_rollback=False)

    with pytest.raises(MigrationExecutionError, match=r"failed on item .*: RuntimeError: the model refused"):
        await migrator.run_pending(config=config)

    assert await assert_checkpoint_covers_a_written_prefix(brainmigrate_pool, MIGRATION) == 400
    assert await write_counts(brainmigrate_pool) == {0: 600, 1: 400}
    model.fail_on = None
    result = await migrator.execute(MIGRATION, config=config)
    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 600)
    assert await write_counts(brainmigrate_pool) == {1: 1000}


async def test_a_run_cancelled_with_calls_in_flight_stops_at_a_written_prefix_and_resumes_once(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """cancel() while calls run on pages ahead: the worker stops at its next checkpoint, which
    covers only written memories; execute() resumes it and writes each memory exactly once."""
    await given(brainmigrate_pool, 3000, write_delay=0.05)
    model = Model()
    two_checkpoints = anyio.Event()
    committed: list[int] = []

    def on_progress(progress: Progress) -> None:
        committed.append(progress.processed)
        if len(committed) >= 2:
            two_checkpoints.set()

    migrator = Migrator(brainmigrate_pool, [embedding_migration(model)], on_progress=on_progress)
    config = MigrationConfig(batch_size=100, checkpoint_frequency=200, concurrency=4)
    results: list[Any] = []

    async def run() -> None:
        results.extend(await migrator.run_pending(config=config))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        with anyio.fail_after(20):
            await two_checkpoints.wait()
        await Migrator(brainmigrate_pool, [embedding_migration(Model())]).cancel(MIGRATION)

    assert [r.status for r in results] == [MigrationStatus.CANCELLED]
    done = await assert_checkpoint_covers_a_written_prefix(brainmigrate_pool, MIGRATION)
    assert 0 < done < 3000
    assert model.in_flight == 0

    result = await migrator.execute(MIGRATION, config=config)

    assert (result.status, result.items_processed) == (MigrationStatus.COMPLETED, 3000 - done)
    assert await write_counts(brainmigrate_pool) == {1: 3000}


TAG = "tag_memories_001"
KILL_MEMORIES = 8000


async def _inside_a_write(pool: asyncpg.Pool[Any]) -> int:
    """The worker's session, once a checkpoint has committed and it sleeps inside a write; else 0."""
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"):
        return 0
    pid: int | None = await pool.fetchval(
        """
        SELECT c.lease_pid FROM brainmigrate.data_chunks c JOIN pg_stat_activity a ON a.pid = c.lease_pid
         WHERE c.migration_id = $1 AND NOT c.done AND c.processed > 0
           AND a.state = 'active' AND a.wait_event = 'PgSleep'
        """,
        TAG,
    )
    return pid or 0


@pytest.mark.parametrize("kills", [1, 2], ids=["killed once", "killed twice"])
async def test_a_worker_killed_mid_pipeline_leaves_its_checkpoint_at_a_written_prefix(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], kills: int
) -> None:
    """SIGKILL while calls run on pages ahead and a group is being written: the checkpoint covers
    exactly the memories written, nothing beyond it is written, and after each kill a rerun resumes
    from there; the last run writes the rest, each memory exactly once."""
    await given(brainmigrate_pool, KILL_MEMORIES, write_delay=0.1)
    options = [
        "--batch-size=250",
        "--checkpoint-frequency=500",
        "--batch-delay=0.05",
        "--application-name=pipelined worker",
    ]
    for _ in range(kills):
        worker = await start_data_worker(brainmigrate_database, "tag_memories", *options)
        try:
            await wait_until(lambda: _inside_a_write(brainmigrate_pool), within=30, what="a write")
            assert await sigkill(worker) == -signal.SIGKILL
        finally:
            await stop(worker)

        async def ended() -> bool:
            return not await brainmigrate_pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pipelined worker'"
            )

        await wait_until(ended, what="the killed worker's sessions to end")
        done = await assert_checkpoint_covers_a_written_prefix(brainmigrate_pool, TAG)
        assert 0 < done < KILL_MEMORIES

    await brainmigrate_pool.execute("UPDATE write_delay SET seconds = 0")
    migrator = Migrator(brainmigrate_pool, migrations_dir("tag_memories"))
    config = MigrationConfig(batch_size=250, checkpoint_frequency=500)
    results = await migrator.run_pending(config=config)

    assert (results[0].migration_id, results[0].status) == (TAG, MigrationStatus.COMPLETED)
    assert results[0].items_processed == KILL_MEMORIES - done
    assert await write_counts(brainmigrate_pool) == {1: KILL_MEMORIES}
