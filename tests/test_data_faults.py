"""Data migrations under faults: workers killed, sessions terminated, runners racing, runs cancelled.

Every scenario runs real worker processes (``workers/data_worker.py``) against a real server, over
20,000 memories whose trigger counts the writes of each row, so "exactly once" is a fact read back
from the table. The migration (``workers/tag_memories``) sleeps a little in each batch's transform,
or a trigger makes each batch's write sleep, so that a test can catch the run midway; the test
finds where it stands by polling the run's chunks in ``brainmigrate.data_chunks`` and the
sessions in ``pg_stat_activity``.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import asyncpg
import attrs
import pytest

from brainmigrate import MigrationConfig, MigrationStatus, Migrator
from data_support import create_memories, write_counts
from workers.harness import (
    end_sessions,
    finish,
    history_rows,
    migrations_dir,
    sigkill,
    start_data_worker,
    stop,
    wait_until,
)

pytestmark = pytest.mark.anyio

MEMORIES = 20_000
BATCH = 500
MIGRATIONS = "tag_memories"
TAG = "tag_memories_001"
INDEX = "index_tagged_memories_002"  # a schema migration that depends on TAG
CONFIG = MigrationConfig(batch_size=BATCH, checkpoint_frequency=BATCH)
BOTH_APPLIED = [(TAG, "completed"), (INDEX, "completed")]
APPLIED_ONCE = [(TAG, "apply", "completed", True), (INDEX, "apply", "completed", True)]


#: Makes each batch's write sleep inside its transaction for ``write_delay.seconds`` (0 at first).
WRITE_DELAY_DDL = """
CREATE TABLE write_delay (seconds float NOT NULL);
INSERT INTO write_delay VALUES (0);
CREATE FUNCTION slow_memory_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep((SELECT seconds FROM write_delay)); RETURN NULL; END $$;
CREATE TRIGGER memories_slow_writes AFTER UPDATE ON memories
    FOR EACH STATEMENT EXECUTE FUNCTION slow_memory_writes();
"""


@attrs.frozen
class Moment:
    """When a fault hits the worker: while it transforms a batch, or while it writes one."""

    name: str
    #: Seconds each batch's transform sleeps (outside any transaction).
    batch_delay: float
    #: Seconds each batch's write sleeps, inside the transaction that also writes the checkpoint.
    write_delay: float

    async def reached(self, pool: asyncpg.Pool[Any]) -> int:
        """The worker's session once a checkpoint has committed and the worker is at this moment; else 0."""
        if not await _committed(pool):
            return 0
        busy_writing = self.write_delay > 0
        pid: int | None = await pool.fetchval(
            """
            SELECT c.lease_pid FROM brainmigrate.data_chunks c JOIN pg_stat_activity a ON a.pid = c.lease_pid
             WHERE c.migration_id = $1 AND NOT c.done AND c.lease_owner IS NOT NULL
               AND CASE WHEN $2 THEN a.state = 'active' AND a.wait_event = 'PgSleep' ELSE a.state = 'idle' END
            """,
            TAG,
            busy_writing,
        )
        return pid or 0


#: Each batch's transform sleeps long enough that the worker's session sits idle between writes for
#: most of the run, and the run lasts long enough (40 batches) to be caught there on a busy machine.
BETWEEN_WRITES = Moment("between writes", batch_delay=0.2, write_delay=0)
INSIDE_A_WRITE = Moment("inside a write", batch_delay=0, write_delay=0.1)
MOMENTS = pytest.mark.parametrize("moment", [BETWEEN_WRITES, INSIDE_A_WRITE], ids=lambda m: m.name)


def _options(*, delay: float, name: str, parallel: bool = False, lease_seconds: float = 60) -> list[str]:
    """Worker options: batches of BATCH items, a checkpoint after each, ``delay`` s per batch."""
    options = [
        f"--batch-size={BATCH}",
        f"--checkpoint-frequency={BATCH}",
        f"--batch-delay={delay}",
        f"--lease-seconds={lease_seconds}",
        f"--application-name={name}",
    ]
    if parallel:
        options += ["--parallel", "--max-workers=2"]
    return options


async def _memories(pool: asyncpg.Pool[Any], write_delay: float = 0) -> None:
    async with pool.acquire() as conn:
        await create_memories(conn, MEMORIES)
        await conn.execute(WRITE_DELAY_DDL)
        await _slow_writes(pool, write_delay)


async def _slow_writes(pool: asyncpg.Pool[Any], seconds: float) -> None:
    await pool.execute("UPDATE write_delay SET seconds = $1", seconds)


async def _chunks_exist(pool: asyncpg.Pool[Any]) -> bool:
    return bool(await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"))


async def _committed(pool: asyncpg.Pool[Any]) -> int:
    """Items the run's checkpoints have committed so far (0 before it starts)."""
    if not await _chunks_exist(pool):
        return 0
    committed: int = await pool.fetchval(
        "SELECT coalesce(sum(processed), 0) FROM brainmigrate.data_chunks WHERE migration_id = $1", TAG
    )
    return committed


async def _leases(pool: asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    """The chunks not done that a live session holds: chunk, lease_pid, lease_expires_at, holder's name."""
    if not await _chunks_exist(pool):
        return []
    return await pool.fetch(
        """
        SELECT c.chunk, c.lease_pid, c.lease_expires_at, a.application_name AS holder
          FROM brainmigrate.data_chunks c JOIN pg_stat_activity a ON a.pid = c.lease_pid
         WHERE c.migration_id = $1 AND NOT c.done AND c.lease_owner IS NOT NULL
         ORDER BY c.chunk
        """,
        TAG,
    )


async def _leased_by(pool: asyncpg.Pool[Any], name: str) -> bool:
    """Whether a session of the worker named ``name`` holds a chunk of the run."""
    return any(lease["holder"] == name for lease in await _leases(pool))


async def _chunks_written_by(pool: asyncpg.Pool[Any], chunks: list[int], writer: int) -> list[int]:
    """Those of ``chunks`` (of the run) in whose key range the process ``writer`` wrote memories."""
    rows = await pool.fetch(
        """
        SELECT DISTINCT c.chunk
          FROM brainmigrate.data_chunks c
          JOIN memories m ON (c.lower_key IS NULL OR m.id >= c.lower_key::uuid)
                         AND (c.upper_key IS NULL OR m.id < c.upper_key::uuid)
         WHERE c.migration_id = $1 AND c.chunk = ANY($2) AND (m.metadata->>'writer')::int = $3
         ORDER BY 1
        """,
        TAG,
        chunks,
        writer,
    )
    return [row[0] for row in rows]


async def _sessions_named(pool: asyncpg.Pool[Any], name: str) -> list[int]:
    rows = await pool.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
        name,
    )
    return [row["pid"] for row in rows]


async def _until_sessions_end(pool: asyncpg.Pool[Any], name: str) -> None:
    """Wait until the server has let go of every session of the (dead) worker named ``name``."""

    async def ended() -> bool:
        return not await _sessions_named(pool, name)

    await wait_until(ended, what=f"the sessions of {name!r} to end")


async def _writers(pool: asyncpg.Pool[Any]) -> dict[int, int]:
    """Memories tagged, by the pid of the process that wrote them."""
    rows = await pool.fetch(
        "SELECT (metadata->>'writer')::int, count(*) FROM memories WHERE metadata ? 'writer' GROUP BY 1"
    )
    return {row[0]: row[1] for row in rows}


async def _history(pool: asyncpg.Pool[Any]) -> list[tuple[str, str, str, bool | None]]:
    return [
        (row["migration_id"], row["operation"], row["status"], row["applied_after"])
        for row in await history_rows(pool)
    ]


def _details(report: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    assert report is not None
    return {detail["id"]: detail for detail in report["details"]}


# -- a worker killed midway ---------------------------------------------------------------------


@MOMENTS
async def test_worker_killed_mid_run_is_resumed_from_its_checkpoints_writing_each_memory_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], moment: Moment
) -> None:
    """A worker SIGKILLed midway keeps what its checkpoints committed; the next run resumes from there.

    Whether it dies transforming a batch or inside a batch's write, the memories written until the
    rerun are exactly those its checkpoints count, and the run is reported failed (no worker left)
    but resumable. The rerun writes only the rest, so every memory is written exactly once and the
    migration is recorded as applied once.
    """
    await _memories(brainmigrate_pool, moment.write_delay)
    worker = await start_data_worker(
        brainmigrate_database, MIGRATIONS, *_options(delay=moment.batch_delay, name="killed worker")
    )
    try:
        await wait_until(
            lambda: moment.reached(brainmigrate_pool), within=60, what=f"the worker to be {moment.name}"
        )
        assert await sigkill(worker) == -signal.SIGKILL
    finally:
        await stop(worker)
    await _until_sessions_end(brainmigrate_pool, "killed worker")
    await _slow_writes(brainmigrate_pool, 0)
    at_kill = await _committed(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS), config=CONFIG)

    assert 0 < at_kill < MEMORIES
    assert await write_counts(brainmigrate_pool) == {0: MEMORIES - at_kill, 1: at_kill}
    assert await migrator.status(TAG) is MigrationStatus.FAILED
    assert await _history(brainmigrate_pool) == []

    results = await migrator.run_pending()

    assert [(r.migration_id, r.status.value) for r in results] == BOTH_APPLIED
    assert results[0].items_processed == MEMORIES - at_kill  # resumed, not restarted
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    assert await _history(brainmigrate_pool) == APPLIED_ONCE
    progress = await migrator.progress(TAG)
    assert progress is not None
    assert (progress.status, progress.processed, progress.total) == ("completed", MEMORIES, MEMORIES)
    assert await migrator.status(TAG) is MigrationStatus.COMPLETED


async def test_parallel_worker_killed_mid_run_has_its_chunks_taken_over_before_its_lease_expires(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """Of two processes working one run in parallel, the survivor finishes the chunks of the killed one.

    The second process joins the run the first started. When the first is SIGKILLed, its leases
    (60 s) are still far from expiring, yet the survivor takes its chunks over as soon as the dead
    sessions are gone, finishes the run and records it; every memory is written exactly once.
    """
    # Each batch's write takes a second until the second process has joined, so that the first
    # cannot lease and finish every chunk while the second is still starting on a loaded machine.
    await _memories(brainmigrate_pool, write_delay=1.0)
    first = await start_data_worker(
        brainmigrate_database, MIGRATIONS, *_options(delay=0.2, name="worker a", parallel=True)
    )
    second = None
    try:
        await wait_until(
            lambda: _leased_by(brainmigrate_pool, "worker a"), within=20, what="the first process to start"
        )
        second = await start_data_worker(
            brainmigrate_database, MIGRATIONS, *_options(delay=0.2, name="worker b", parallel=True)
        )
        await wait_until(
            lambda: _leased_by(brainmigrate_pool, "worker b"), within=30, what="the second process to join"
        )
        await _slow_writes(brainmigrate_pool, 0)

        async def first_committed() -> int:
            return (await _writers(brainmigrate_pool)).get(first.pid, 0)

        await wait_until(first_committed, within=20, what="the first process to commit a checkpoint")
        held = [lease for lease in await _leases(brainmigrate_pool) if lease["holder"] == "worker a"]
        assert held
        assert await sigkill(first) == -signal.SIGKILL
        await _until_sessions_end(brainmigrate_pool, "worker a")
        outcome = await finish(second, within=30)
    finally:
        await stop(first)
        if second is not None:
            await stop(second)

    assert outcome.returncode == 0, (outcome.report, outcome.stderr)
    assert outcome.results == BOTH_APPLIED
    # The survivor wrote in the chunks the dead worker held, and finished before any of its leases
    # could have expired.
    assert await _chunks_written_by(brainmigrate_pool, [lease["chunk"] for lease in held], second.pid)
    assert await brainmigrate_pool.fetchval(
        "SELECT now() < $1", min(lease["lease_expires_at"] for lease in held)
    )
    writers = await _writers(brainmigrate_pool)
    assert set(writers) == {first.pid, second.pid}
    assert _details(outcome.report)[TAG]["items_processed"] == writers[second.pid]
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    assert await brainmigrate_pool.fetchval(
        "SELECT bool_and(done) FROM brainmigrate.data_chunks WHERE migration_id = $1", TAG
    )
    assert await _history(brainmigrate_pool) == APPLIED_ONCE
    progress = await Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS)).progress(TAG)
    assert progress is not None
    assert (progress.status, progress.processed) == ("completed", MEMORIES)


# -- a worker whose session is terminated --------------------------------------------------------


@MOMENTS
async def test_worker_whose_session_is_terminated_retries_from_its_checkpoint_in_the_same_call(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], moment: Moment
) -> None:
    """pg_terminate_backend on a worker's session midway: it reconnects and goes on from its checkpoint.

    Whether the session ends while the worker transforms a batch or inside a batch's write, the same
    run_pending() call completes the run, counting each memory once, and every memory is written
    exactly once.
    """
    await _memories(brainmigrate_pool, moment.write_delay)
    worker = await start_data_worker(
        brainmigrate_database, MIGRATIONS, *_options(delay=moment.batch_delay, name="worker")
    )
    try:
        terminated = await wait_until(
            lambda: moment.reached(brainmigrate_pool), within=60, what=f"the worker to be {moment.name}"
        )
        await end_sessions(brainmigrate_pool, [terminated])
        at_termination = await _committed(brainmigrate_pool)
        await _slow_writes(brainmigrate_pool, 0)
        outcome = await finish(worker, within=30)
    finally:
        await stop(worker)

    assert 0 < at_termination < MEMORIES
    assert outcome.returncode == 0, (outcome.report, outcome.stderr)
    assert outcome.results == BOTH_APPLIED
    assert _details(outcome.report)[TAG]["items_processed"] == MEMORIES
    assert "resuming from the checkpoint" in outcome.stderr
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    # The run's last checkpoint was written by another session than the terminated one.
    last_session = await brainmigrate_pool.fetchval(
        "SELECT lease_pid FROM brainmigrate.data_chunks WHERE migration_id = $1", TAG
    )
    assert last_session not in (None, terminated)
    assert await _history(brainmigrate_pool) == APPLIED_ONCE


# -- runners racing ----------------------------------------------------------------------------


async def test_runners_started_together_leave_the_data_migration_to_one_and_skip_its_dependent(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Any
) -> None:
    """Four run_pending() calls released at once: one works on the data migration, the others step aside.

    The other three return while the run is still going, reporting the data migration as running
    and its dependent as skipped; the working process writes every memory exactly once and then
    applies the dependent, so nothing is left for a later run_pending().
    """
    await _memories(brainmigrate_pool)
    start_file = tmp_path / "start"
    ready_files = [tmp_path / f"ready-{n}" for n in range(4)]
    processes = [
        await start_data_worker(
            brainmigrate_database,
            MIGRATIONS,
            *_options(delay=0.05, name=f"runner {n}"),
            f"--ready-file={ready}",
            f"--start-file={start_file}",
        )
        for n, ready in enumerate(ready_files)
    ]
    migrator = Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS), config=CONFIG)
    try:

        async def all_ready() -> bool:
            return all(ready.exists() for ready in ready_files)

        await wait_until(all_ready, within=30, what="four runners to open their pools")
        start_file.touch()
        finishing = [asyncio.ensure_future(finish(process, within=30)) for process in processes]

        async def three_returned() -> bool:
            return sum(task.done() for task in finishing) >= 3

        await wait_until(three_returned, within=20, what="three runners to return")
        progress_then = await migrator.progress(TAG)
        outcomes = [await task for task in finishing]
    finally:
        for process in processes:
            await stop(process)

    assert all(outcome.returncode == 0 for outcome in outcomes), [o.stderr for o in outcomes]
    [winner] = [outcome for outcome in outcomes if outcome.results == BOTH_APPLIED]
    others = [outcome for outcome in outcomes if outcome is not winner]
    assert [outcome.results for outcome in others] == [[(TAG, "running"), (INDEX, "skipped")]] * 3
    assert progress_then is not None
    assert progress_then.status == "running"
    assert progress_then.processed < MEMORIES  # the others returned while the run was going on
    assert winner.report is not None
    assert await _writers(brainmigrate_pool) == {winner.report["pid"]: MEMORIES}
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    assert await _history(brainmigrate_pool) == APPLIED_ONCE
    assert await migrator.run_pending() == []


# -- a run cancelled from another process ---------------------------------------------------------


async def test_run_cancelled_from_another_process_pauses_until_execute_resumes_it(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """cancel(id) from another process stops the worker at a checkpoint; only execute(id) resumes it.

    The worker's run_pending() reports the run cancelled (and its dependent skipped); the progress
    it made is persisted and matches the memories written. A later run_pending() leaves the paused
    run alone; execute(id) resumes it from its checkpoint and completes it, each memory written once.
    """
    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS), config=CONFIG)
    worker = await start_data_worker(brainmigrate_database, MIGRATIONS, *_options(delay=0.05, name="worker"))
    try:
        await wait_until(
            lambda: _committed(brainmigrate_pool), within=20, what="the worker's first checkpoints"
        )
        cancelling = await migrator.cancel(TAG)
        at_cancel = await _committed(brainmigrate_pool)
        outcome = await finish(worker, within=30)
    finally:
        await stop(worker)

    assert cancelling is MigrationStatus.CANCELLING
    assert outcome.returncode == 0, (outcome.report, outcome.stderr)
    assert outcome.results == [(TAG, "cancelled"), (INDEX, "skipped")]
    assert await migrator.status(TAG) is MigrationStatus.CANCELLED
    paused = await migrator.progress(TAG)
    assert paused is not None
    assert (paused.status, paused.workers) == ("cancelled", 0)
    # It stopped at a checkpoint: at most the checkpoint in flight and the next one came after cancel().
    assert at_cancel <= paused.processed <= at_cancel + 2 * BATCH
    assert paused.processed % BATCH == 0
    assert paused.processed < MEMORIES
    assert await write_counts(brainmigrate_pool) == {0: MEMORIES - paused.processed, 1: paused.processed}

    again = await migrator.run_pending()

    assert [(r.migration_id, r.status) for r in again] == [
        (TAG, MigrationStatus.CANCELLED),
        (INDEX, MigrationStatus.SKIPPED),
    ]
    assert await write_counts(brainmigrate_pool) == {0: MEMORIES - paused.processed, 1: paused.processed}

    resumed = await migrator.execute(TAG)

    assert (resumed.status, resumed.items_processed) == (
        MigrationStatus.COMPLETED,
        MEMORIES - paused.processed,
    )
    assert await write_counts(brainmigrate_pool) == {1: MEMORIES}
    assert await migrator.status(TAG) is MigrationStatus.COMPLETED
    assert [(r.migration_id, r.status) for r in await migrator.run_pending()] == [
        (INDEX, MigrationStatus.COMPLETED)
    ]
    assert await _history(brainmigrate_pool) == APPLIED_ONCE
