"""Hybrid migrations under faults: a runner SIGKILLed in each phase, then a new runner resumes.

A real worker process (``workers/hybrid_worker.py``) runs the hybrid of ``workers/hybrid_topics``
over 5,000 memories whose trigger counts the writes of each row; the test catches it in a phase
(a pause statement of that phase is running on the server, or the backfill's checkpoints have
committed part of the rows), reads the phase from its own process, and SIGKILLs the worker. A new
runner then resumes, and the end state is exactly that of a run never killed: every step applied
once, every row written once by the backfill and once by contract, one run of the hybrid, nothing
compensated.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from typing import Any

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import HybridPhase, MigrationConfig, MigrationExecutionError, MigrationStatus, Migrator
from workers.harness import (
    backends_running,
    finish,
    migrations_dir,
    sigkill,
    start_role_worker,
    stop,
    wait_until,
)

pytestmark = pytest.mark.anyio

ROWS = 5_000
BATCH = 250
MIGRATIONS = "hybrid_topics"
HYBRID = "topics_to_column_001"
ADD_COLUMN, INDEX, FILL = "add_topic_column_001", "index_topics_002", "fill_topic_003"
DROP_KEY, REQUIRE = "drop_topic_key_004", "require_topic_005"
CONFIG = MigrationConfig(batch_size=BATCH, checkpoint_frequency=BATCH)
WORKER_NAME = "hybrid worker"

#: The memories, with a trigger counting the writes of each row.
MEMORIES_DDL = """
CREATE TABLE memories (id int PRIMARY KEY, metadata jsonb NOT NULL, writes int NOT NULL DEFAULT 0);
CREATE FUNCTION count_memory_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$;
CREATE TRIGGER memories_count_writes BEFORE UPDATE ON memories
    FOR EACH ROW EXECUTE FUNCTION count_memory_writes();
"""

#: The history of a run never killed: each step once, in its phase, then the hybrid.
HISTORY = [
    (ADD_COLUMN, "apply", "completed", HYBRID, "expanding"),
    (INDEX, "apply", "completed", HYBRID, "expanding"),
    (FILL, "apply", "completed", HYBRID, "backfilling"),
    (DROP_KEY, "apply", "completed", HYBRID, "contracting"),
    (REQUIRE, "apply", "completed", HYBRID, "contracting"),
    (HYBRID, "apply", "completed", HYBRID, "completed"),
]


async def _memories(pool: asyncpg.Pool[Any]) -> None:
    async with pool.acquire() as conn:
        await conn.execute(MEMORIES_DDL)
        await conn.execute(
            "INSERT INTO memories (id, metadata) SELECT i, jsonb_build_object('n', i, 'topic', "
            "'topic ' || (i % 3)) FROM generate_series(1, $1) i",
            ROWS,
        )


async def _start_worker(
    dsn: str,
    settings: Mapping[str, str],
    batch_delay: float,
    *options: str,
    name: str = WORKER_NAME,
) -> asyncio.subprocess.Process:
    args = list(options)
    for setting, value in settings.items():
        args += ["--setting", f"{setting}={value}"]
    args += [f"--batch-size={BATCH}", f"--batch-delay={batch_delay}", f"--application-name={name}"]
    return await start_role_worker("hybrid_worker.py", dsn, MIGRATIONS, *args)


async def _committed(pool: asyncpg.Pool[Any]) -> int:
    """Rows of the backfill its checkpoints have committed so far."""
    if not await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"):
        return 0
    committed: int = await pool.fetchval(
        "SELECT coalesce(sum(processed), 0) FROM brainmigrate.data_chunks WHERE migration_id = $1", FILL
    )
    return committed


async def _pausing(pool: asyncpg.Pool[Any], phase: str) -> bool:
    return bool(await backends_running(pool, f"SELECT '{phase} pause'"))


@attrs.frozen
class Fault:
    """Where the runner is killed: the phase, how the worker is held up there, and what is done."""

    phase: HybridPhase
    settings: Mapping[str, str] = attrs.field(factory=dict)
    batch_delay: float = 0.0
    #: The steps applied when it is killed.
    done: tuple[str, ...] = ()

    async def reached(self, pool: asyncpg.Pool[Any]) -> bool:
        if self.phase is HybridPhase.BACKFILLING:
            return 2 * BATCH <= await _committed(pool) <= ROWS - 4 * BATCH
        return await _pausing(
            pool, {"expanding": "expand", "validating": "validate"}.get(self.phase, "contract")
        )


FAULTS = [
    Fault(HybridPhase.EXPANDING, {"bm.expand_pause": "30"}, done=(ADD_COLUMN,)),
    Fault(HybridPhase.BACKFILLING, batch_delay=0.1, done=(ADD_COLUMN, INDEX)),
    Fault(HybridPhase.VALIDATING, {"bm.validate_pause": "30"}, done=(ADD_COLUMN, INDEX, FILL)),
    Fault(HybridPhase.CONTRACTING, {"bm.contract_pause": "30"}, done=(ADD_COLUMN, INDEX, FILL, DROP_KEY)),
]


async def _end_worker_sessions(pool: asyncpg.Pool[Any]) -> None:
    """Terminate what is left of the dead worker on the server (a pause may still be sleeping
    there), and wait until none of its sessions is left."""

    async def sessions() -> list[int]:
        rows = await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
            WORKER_NAME,
        )
        return [row[0] for row in rows]

    for pid in await sessions():
        await pool.execute("SELECT pg_terminate_backend($1)", pid)

    async def gone() -> bool:
        return not await sessions()

    await wait_until(gone, within=15, what="the dead worker's sessions to end")


async def _history(pool: asyncpg.Pool[Any]) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT migration_id, operation, status, hybrid_id, hybrid_phase "
        "FROM brainmigrate.migration_history ORDER BY attempt_id"
    )
    return [tuple(row) for row in rows]


async def _writes(pool: asyncpg.Pool[Any]) -> dict[int, int]:
    rows = await pool.fetch("SELECT writes, count(*) FROM memories GROUP BY writes ORDER BY writes")
    return {row[0]: row[1] for row in rows}


async def _assert_as_if_never_killed(pool: asyncpg.Pool[Any]) -> None:
    """Every step applied once, every row written once by the backfill and once by contract."""
    assert await _writes(pool) == {2: ROWS}
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM memories WHERE topic = 'topic ' || (id % 3) AND NOT metadata ? 'topic'"
        )
        == ROWS
    )
    assert await _history(pool) == HISTORY
    runs = await pool.fetch("SELECT phase, error FROM brainmigrate.hybrid_runs ORDER BY run_id")
    assert [tuple(run) for run in runs] == [("completed", None)]  # one run, resumed, never restarted
    data_runs = await pool.fetch("SELECT migration_id, status FROM brainmigrate.data_runs ORDER BY run_id")
    assert [tuple(run) for run in data_runs] == [(FILL, "completed")]
    assert await pool.fetchval(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attname = 'topic'"
    )
    assert await pool.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'memories_topic_idx'::regclass"
    )


@pytest.mark.parametrize("fault", FAULTS, ids=lambda fault: fault.phase.value)
async def test_a_runner_killed_in_each_phase_is_resumed_as_if_it_had_not_been_killed(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], fault: Fault
) -> None:
    """SIGKILL mid-phase leaves the hybrid in that phase, visible from another process, with the
    steps before it applied; a new runner carries it on from there to COMPLETED, exactly once."""
    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS), config=CONFIG)
    worker = await _start_worker(brainmigrate_database, fault.settings, fault.batch_delay)
    try:
        await wait_until(
            lambda: fault.reached(brainmigrate_pool), within=30, what=f"the worker to be {fault.phase.value}"
        )
        seen = await migrator.hybrid_status(HYBRID)  # read from this process, while it runs there
        assert await sigkill(worker) == -signal.SIGKILL
    finally:
        await stop(worker)
    await _end_worker_sessions(brainmigrate_pool)

    assert seen.phase is fault.phase
    status = await migrator.hybrid_status(HYBRID)
    assert (status.phase, status.steps_done) == (fault.phase, fault.done)
    assert await migrator.status(HYBRID) is MigrationStatus.RUNNING
    assert [row[0] for row in await _history(brainmigrate_pool)] == list(fault.done)
    at_kill = await _committed(brainmigrate_pool)
    if fault.phase is HybridPhase.BACKFILLING:
        assert 0 < at_kill < ROWS
        assert await _writes(brainmigrate_pool) == {0: ROWS - at_kill, 1: at_kill}

    with anyio.fail_after(60):
        results = await migrator.run_pending()

    assert [(r.migration_id, r.status) for r in results] == [(HYBRID, MigrationStatus.COMPLETED)]
    if fault.phase is HybridPhase.BACKFILLING:
        assert results[0].items_processed == ROWS - at_kill  # resumed from its checkpoints
    elif fault.phase is not HybridPhase.EXPANDING:
        assert results[0].items_processed == 0  # the backfill was not run again
    await _assert_as_if_never_killed(brainmigrate_pool)
    assert (await migrator.hybrid_status(HYBRID)).phase is HybridPhase.COMPLETED


async def test_a_run_never_killed_ends_in_the_same_state(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """The reference the killed runs are held to: the worker, left alone, ends exactly there."""
    await _memories(brainmigrate_pool)
    worker = await _start_worker(brainmigrate_database, {}, 0.0)
    try:
        outcome = await finish(worker, within=60)
    finally:
        await stop(worker)

    assert outcome.returncode == 0, (outcome.report, outcome.stderr)
    assert outcome.results == [(HYBRID, "completed")]
    await _assert_as_if_never_killed(brainmigrate_pool)


async def test_a_runner_killed_inside_a_manual_contract_call_is_carried_on_by_contract_again(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """contract_mode='manual': one process stops at READY_TO_CONTRACT, an operator's process is
    SIGKILLed inside contract(); calling contract() again finishes contract from the step it was at,
    never compensating it."""
    await _memories(brainmigrate_pool)
    first = await _start_worker(brainmigrate_database, {}, 0.0, "--contract-mode=manual")
    try:
        outcome = await finish(first, within=60)
    finally:
        await stop(first)
    assert outcome.results == [(HYBRID, "running")], (outcome.report, outcome.stderr)
    migrator = Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS), config=CONFIG)
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.READY_TO_CONTRACT

    operator = await _start_worker(
        brainmigrate_database,
        {"bm.contract_pause": "30"},
        0.0,
        "--contract-mode=manual",
        f"--contract={HYBRID}",
    )
    try:
        await wait_until(lambda: _pausing(brainmigrate_pool, "contract"), within=30, what="contract to start")
        assert await sigkill(operator) == -signal.SIGKILL
    finally:
        await stop(operator)
    await _end_worker_sessions(brainmigrate_pool)
    status = await migrator.hybrid_status(HYBRID)
    assert (status.phase, status.current_step) == (HybridPhase.CONTRACTING, REQUIRE)

    with anyio.fail_after(60):
        result = await migrator.contract(HYBRID)

    assert result.status is MigrationStatus.COMPLETED
    await _assert_as_if_never_killed(brainmigrate_pool)


async def test_two_runners_at_once_apply_each_step_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """Two processes run the hybrid at the same time: the runner lock and the recorded phase let
    each step be applied once, the backfill's rows written once, and the hybrid completed once."""
    await _memories(brainmigrate_pool)
    workers = [
        await _start_worker(brainmigrate_database, {}, 0.02, name=f"{WORKER_NAME} {n}") for n in (1, 2)
    ]
    try:
        outcomes = [await finish(worker, within=90) for worker in workers]
    finally:
        for worker in workers:
            await stop(worker)

    for outcome in outcomes:
        assert outcome.returncode == 0, (outcome.report, outcome.stderr)
    statuses = sorted(status for outcome in outcomes for _, status in outcome.results)
    assert "completed" in statuses and set(statuses) <= {"completed", "running"}
    await _assert_as_if_never_killed(brainmigrate_pool)


async def test_a_runner_killed_while_compensating_leaves_the_compensation_to_the_next_runner(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """The gate refuses, the runner compensates and is SIGKILLed midway (the backfill already
    rolled back, an expand step's rollback running): the hybrid stays COMPENSATING, and the next
    runner finishes the compensation, raising why, and leaves the old layout exactly as it was."""
    await _memories(brainmigrate_pool)
    original = await brainmigrate_pool.fetch("SELECT id, metadata::text FROM memories ORDER BY id")
    worker = await _start_worker(
        brainmigrate_database, {"bm.compensate_pause": "30"}, 0.0, "--refuse-validation"
    )
    try:
        await wait_until(
            lambda: _pausing(brainmigrate_pool, "compensate"), within=30, what="the compensation to start"
        )
        assert await sigkill(worker) == -signal.SIGKILL
    finally:
        await stop(worker)
    await _end_worker_sessions(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, migrations_dir(MIGRATIONS), config=CONFIG)
    status = await migrator.hybrid_status(HYBRID)
    assert (status.phase, status.current_step, status.steps_done) == (
        HybridPhase.COMPENSATING,
        INDEX,
        (ADD_COLUMN, INDEX),
    )

    with anyio.fail_after(60), pytest.raises(MigrationExecutionError) as raised:
        await migrator.run_pending()

    message = str(raised.value)
    assert f"hybrid migration '{HYBRID}' was compensating when its runner stopped" in message
    assert "failed validation before contract: validate_backfill returned False" in message
    assert f"('{INDEX}', '{ADD_COLUMN}' rolled back, in reverse order)" in message
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.ROLLED_BACK
    assert await brainmigrate_pool.fetch("SELECT id, metadata::text FROM memories ORDER BY id") == original
    assert await brainmigrate_pool.fetchval("SELECT to_regclass('memories_topic_idx')") is None
    assert not await brainmigrate_pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'memories'::regclass "
        "AND attname = 'topic' AND NOT attisdropped)"
    )
    rollbacks = [row[0] for row in await _history(brainmigrate_pool) if row[1] == "rollback"]
    assert rollbacks == [FILL, INDEX, ADD_COLUMN]  # each once, last first
    assert await _writes(brainmigrate_pool) == {2: ROWS}  # written once, restored once
