"""Hybrid migrations: expand → backfill → validate → contract, with compensation before contract.

The hybrid moves each memory's topic from a JSONB key to a column of its own (see
``hybrid_support``): expand adds the column, a real data migration backfills it in batches, the
validation gate checks it, and contract drops the key, the old read path.
"""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import (
    ChecksumMismatchError,
    ConfigError,
    DependencyError,
    DuplicateMigrationError,
    HybridMigration,
    HybridPhase,
    HybridPhaseError,
    IrreversibleMigrationError,
    MemoryStructureMigration,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStateError,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate import structure as s
from brainmigrate._ledger import schema as own
from brainmigrate._model.states import HYBRID_TRANSITIONS, check_transition
from brainmigrate.testing import fingerprint
from helpers import create_table, schema_migration, snapshot
from hybrid_support import (
    ADD_COLUMN,
    DROP_KEY,
    FILL,
    HYBRID,
    REQUIRE,
    AddTopicColumn,
    DropTopicKey,
    RequireTopic,
    create_memories,
    every_topic_copied,
    fill_topic,
    hybrid_history,
    topics,
    topics_to_column,
)

pytestmark = pytest.mark.anyio

MEMORIES = 300
CONFIG = MigrationConfig(batch_size=50, checkpoint_frequency=50)
ALL_STEPS = (ADD_COLUMN, FILL, DROP_KEY)


async def _memories(pool: asyncpg.Pool[Any], count: int = MEMORIES) -> None:
    async with pool.acquire() as conn:
        await create_memories(conn, count)


async def _topics(pool: asyncpg.Pool[Any]) -> dict[int, tuple[str | None, str | None]]:
    async with pool.acquire() as conn:
        return await topics(conn)


async def _fingerprint(pool: asyncpg.Pool[Any]) -> Any:
    async with pool.acquire() as conn:
        return await fingerprint(conn)


def _expected(*, column: bool, key: bool) -> dict[int, tuple[str | None, str | None]]:
    topic = {i: f"topic {i % 3}" for i in range(1, MEMORIES + 1)}
    return {i: (t if column else None, t if key else None) for i, t in topic.items()}


async def _run_rows(pool: asyncpg.Pool[Any]) -> list[tuple[str, str]]:
    rows = await pool.fetch("SELECT hybrid_id, phase FROM brainmigrate.hybrid_runs ORDER BY run_id")
    return [(row[0], row[1]) for row in rows]


# -- the phases ------------------------------------------------------------------------------------


async def test_a_hybrid_expands_backfills_validates_and_contracts_in_order(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """In auto mode one run_pending() takes the hybrid through every phase; each step's history row
    carries the hybrid's id and the phase it ran in, and the hybrid's own row comes last."""
    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column(validate=every_topic_copied)], config=CONFIG)

    [result] = await migrator.run_pending()

    assert (result.migration_id, result.status) == (HYBRID, MigrationStatus.COMPLETED)
    assert result.items_processed == MEMORIES
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=False)
    assert await hybrid_history(brainmigrate_pool) == [
        (ADD_COLUMN, "apply", "completed", HYBRID, "expanding"),
        (FILL, "apply", "completed", HYBRID, "backfilling"),
        (DROP_KEY, "apply", "completed", HYBRID, "contracting"),
        (HYBRID, "apply", "completed", HYBRID, "completed"),
    ]
    status = await migrator.hybrid_status(HYBRID)
    assert status.phase is HybridPhase.COMPLETED
    assert status.steps == status.steps_done == ALL_STEPS
    assert await migrator.status(HYBRID) is MigrationStatus.COMPLETED
    assert await migrator.pending() == []
    assert await migrator.run_pending() == []


async def test_history_records_show_the_hybrid_the_phase_and_the_step(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """``history()`` gives each step's row with its hybrid and phase (the step is its migration id)."""
    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column()], config=CONFIG)
    await migrator.run_pending()

    records = await migrator.history()

    assert [(r.migration_id, r.hybrid_id, r.hybrid_phase) for r in records] == [
        (ADD_COLUMN, HYBRID, "expanding"),
        (FILL, HYBRID, "backfilling"),
        (DROP_KEY, HYBRID, "contracting"),
        (HYBRID, HYBRID, "completed"),
    ]
    assert all(r.actor is None and r.reason is None for r in records)


async def test_steps_are_owned_by_the_hybrid_not_loaded_as_migrations_of_their_own(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """A step listed in the source as well is still only the hybrid's: not pending on its own, not
    executable or reversible on its own, yet its status and progress can be read."""
    await _memories(brainmigrate_pool)
    hybrid = topics_to_column()
    migrator = Migrator(brainmigrate_pool, [hybrid, AddTopicColumn, *hybrid.backfill], config=CONFIG)

    assert [m.id for m in await migrator.pending()] == [HYBRID]
    with pytest.raises(MigrationStateError, match=f"it is a step of hybrid migration '{HYBRID}'"):
        await migrator.execute(ADD_COLUMN)

    await migrator.run_pending()

    with pytest.raises(MigrationStateError, match=f"roll back '{HYBRID}' instead"):
        await migrator.rollback(FILL)
    assert await migrator.status(FILL) is MigrationStatus.COMPLETED
    progress = await migrator.progress(FILL)
    assert progress is not None and (progress.processed, progress.total) == (MEMORIES, MEMORIES)


async def test_each_step_runs_once_even_when_run_pending_is_called_again(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """Steps are applied once; a second run_pending() and a second Migrator find nothing to do."""
    await _memories(brainmigrate_pool)
    await Migrator(brainmigrate_pool, [topics_to_column()], config=CONFIG).run_pending()

    assert await Migrator(brainmigrate_pool, [topics_to_column()], config=CONFIG).run_pending() == []
    applies = [row for row in await hybrid_history(brainmigrate_pool) if row[1] == "apply"]
    assert [row[0] for row in applies] == [*ALL_STEPS, HYBRID]


async def test_a_paused_backfill_pauses_the_hybrid_and_execute_resumes_it(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """cancel() on a backfill step pauses it at a batch boundary, and the hybrid with it (CANCELLED,
    still BACKFILLING); run_pending() leaves it paused, execute(hybrid) resumes it from its
    checkpoint and carries the hybrid on to COMPLETED."""
    await _memories(brainmigrate_pool)
    reached, release = anyio.Event(), anyio.Event()

    async def hold_at_row_200(row: dict[str, Any]) -> None:
        if row["id"] == 200 and not release.is_set():
            reached.set()
            await release.wait()

    catalog = [topics_to_column(backfill=(fill_topic(before_row=hold_at_row_200),))]
    migrator = Migrator(brainmigrate_pool, catalog, config=CONFIG)
    results: list[Any] = []

    async def run() -> None:
        results.extend(await migrator.run_pending())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        await reached.wait()
        assert await Migrator(brainmigrate_pool, catalog).cancel(FILL) is MigrationStatus.CANCELLING
        release.set()

    [paused] = results
    assert paused.status is MigrationStatus.CANCELLED
    assert paused.error is not None and f"`await migrator.execute('{HYBRID}')` resumes" in paused.error
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.BACKFILLING
    assert [r.status for r in await migrator.run_pending()] == [MigrationStatus.CANCELLED]
    progress = await migrator.progress(FILL)
    assert progress is not None
    # The pause comes at a batch boundary: after the batch held at row 200 (rows 151 to 200), or
    # before it, when the cancel is seen while that batch is still being transformed ahead.
    assert progress.processed in (150, 200)

    resumed = await migrator.execute(HYBRID)

    assert resumed.status is MigrationStatus.COMPLETED
    assert resumed.items_processed == MEMORIES - progress.processed  # each memory written once
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=False)


# -- manual contract --------------------------------------------------------------------------------


async def test_manual_contract_stops_at_ready_to_contract_until_contract_is_called(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """With contract_mode='manual', the old read path stays until the operator calls contract():
    in between, new code can be deployed. Its phase is visible from another process's Migrator,
    and a migration depending on the hybrid waits until it is COMPLETED."""
    await _memories(brainmigrate_pool)
    dependent = schema_migration(
        "index_topics_002", ["CREATE INDEX memories_topic_idx ON memories (topic)"], dependencies=[HYBRID]
    )
    catalog = [topics_to_column(mode="manual"), dependent]
    migrator = Migrator(brainmigrate_pool, catalog, config=CONFIG)

    waiting, skipped = await migrator.run_pending()

    assert waiting.status is MigrationStatus.RUNNING
    assert waiting.error is not None and "READY_TO_CONTRACT" in waiting.error
    assert f"await migrator.contract('{HYBRID}')" in waiting.error
    assert (skipped.migration_id, skipped.status) == ("index_topics_002", MigrationStatus.SKIPPED)
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=True)  # old path intact

    other_pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=2)
    try:
        elsewhere = Migrator(other_pool, catalog)
        status = await elsewhere.hybrid_status(HYBRID)
        assert status.phase is HybridPhase.READY_TO_CONTRACT
        assert status.steps_done == (ADD_COLUMN, FILL)
        assert await elsewhere.hybrid_phase(HYBRID) is HybridPhase.READY_TO_CONTRACT
        assert await elsewhere.status(HYBRID) is MigrationStatus.RUNNING
    finally:
        await other_pool.close()

    again = await migrator.run_pending()  # still waiting: nothing changes
    assert [r.status for r in again] == [MigrationStatus.RUNNING, MigrationStatus.SKIPPED]
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=True)

    contracted = await migrator.contract(HYBRID)

    assert contracted.status is MigrationStatus.COMPLETED
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=False)
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.COMPLETED
    [index] = await migrator.run_pending()
    assert (index.migration_id, index.status) == ("index_topics_002", MigrationStatus.COMPLETED)


async def test_contract_before_the_hybrid_ran_is_refused_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column(mode="manual")], config=CONFIG)
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(HybridPhaseError, match="has not run its expand and backfill yet") as refused:
        await migrator.contract(HYBRID)

    assert refused.value.phase is None and refused.value.migration_id == HYBRID
    assert await snapshot(brainmigrate_pool) == before


async def test_contract_while_the_backfill_runs_is_refused_naming_the_step_and_its_progress(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """GitLab's "ensure finished" gate: while a backfill step is in flight, contract() says where
    it stands and changes nothing; the backfill then finishes undisturbed."""
    await _memories(brainmigrate_pool)
    started, release = anyio.Event(), anyio.Event()

    async def hold_at_row_200(row: dict[str, Any]) -> None:
        if row["id"] == 200:
            started.set()
            await release.wait()

    catalog = [topics_to_column(mode="manual", backfill=(fill_topic(before_row=hold_at_row_200),))]
    migrator = Migrator(brainmigrate_pool, catalog, config=CONFIG)
    results: list[Any] = []

    async def run() -> None:
        results.extend(await migrator.run_pending())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run)
        await started.wait()
        runs_before = await brainmigrate_pool.fetch("SELECT * FROM brainmigrate.hybrid_runs")
        history_before = await hybrid_history(brainmigrate_pool)

        with pytest.raises(HybridPhaseError, match="its backfill is unfinished") as refused:
            await Migrator(brainmigrate_pool, catalog, config=CONFIG).contract(HYBRID)

        assert refused.value.phase == "backfilling"
        assert f"at step '{FILL}' (150 of {MEMORIES} items, running)" in str(refused.value)
        assert await brainmigrate_pool.fetch("SELECT * FROM brainmigrate.hybrid_runs") == runs_before
        assert await hybrid_history(brainmigrate_pool) == history_before
        release.set()

    assert [r.status for r in results] == [MigrationStatus.RUNNING]  # validated, waiting
    assert (await migrator.contract(HYBRID)).status is MigrationStatus.COMPLETED


async def test_contract_while_the_backfill_is_validated_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """While the gate runs (phase VALIDATING, without the runner lock), contract() is refused:
    contract never starts before validation passed."""
    await _memories(brainmigrate_pool)
    validating, release = anyio.Event(), anyio.Event()

    async def slow_gate(conn: Any) -> bool:
        validating.set()
        await release.wait()
        return await every_topic_copied(conn)

    catalog = [topics_to_column(mode="manual", validate=slow_gate)]
    migrator = Migrator(brainmigrate_pool, catalog, config=CONFIG)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(migrator.run_pending)
        await validating.wait()
        other = Migrator(brainmigrate_pool, catalog, config=CONFIG)
        before = await snapshot(brainmigrate_pool)

        with pytest.raises(HybridPhaseError, match="has not passed validation yet") as refused:
            await other.contract(HYBRID)

        assert refused.value.phase == "validating"
        assert await snapshot(brainmigrate_pool) == before
        assert (await other.hybrid_status(HYBRID)).steps_done == (ADD_COLUMN, FILL)
        release.set()

    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.READY_TO_CONTRACT
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=True)


# -- failures before contract compensate ------------------------------------------------------------


async def test_a_refused_validation_compensates_and_contract_never_starts(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """validate_backfill returning False rolls back backfill, then expand (reverse order); the
    contract step never runs, and the database is as it was."""
    await _memories(brainmigrate_pool)
    before = await _fingerprint(brainmigrate_pool)

    async def refuse(conn: Any) -> bool:
        return False

    migrator = Migrator(brainmigrate_pool, [topics_to_column(validate=refuse)], config=CONFIG)

    with pytest.raises(MigrationValidationError) as failed:
        await migrator.run_pending()

    message = str(failed.value)
    assert "failed validation before contract: validate_backfill returned False" in message
    assert f"was compensated ('{FILL}', '{ADD_COLUMN}' rolled back, in reverse order)" in message
    assert await _fingerprint(brainmigrate_pool) == before
    assert await hybrid_history(brainmigrate_pool) == [
        (ADD_COLUMN, "apply", "completed", HYBRID, "expanding"),
        (FILL, "apply", "completed", HYBRID, "backfilling"),
        (FILL, "rollback", "completed", HYBRID, "compensating"),
        (ADD_COLUMN, "rollback", "completed", HYBRID, "compensating"),
        (HYBRID, "apply", "failed", HYBRID, "rolled_back"),
    ]
    status = await migrator.hybrid_status(HYBRID)
    assert status.phase is HybridPhase.ROLLED_BACK and status.steps_done == ()
    assert await migrator.status(HYBRID) is MigrationStatus.FAILED


async def test_a_failed_backfill_compensates_the_completed_steps_in_reverse_order(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """A second backfill step failing midway: its own writes are reversed, then the first backfill
    and the expand step are rolled back, last first; the original error is raised, chained."""
    await _memories(brainmigrate_pool)
    before = await _fingerprint(brainmigrate_pool)

    async def fail_at_row_120(row: dict[str, Any]) -> None:
        if row["id"] == 120:
            raise RuntimeError("the topic service is down")

    backfill = (fill_topic(), fill_topic("refill_topic_002", before_row=fail_at_row_120))
    migrator = Migrator(brainmigrate_pool, [topics_to_column(backfill=backfill)], config=CONFIG)

    with pytest.raises(MigrationExecutionError) as failed:
        await migrator.run_pending()

    message = str(failed.value)
    assert "the topic service is down" in message
    assert f"backfill step 'refill_topic_002' of hybrid migration '{HYBRID}' failed" in message
    assert f"('{FILL}', '{ADD_COLUMN}' rolled back, in reverse order)" in message
    assert failed.value.__cause__ is not None
    assert await _fingerprint(brainmigrate_pool) == before
    rollbacks = [row[0] for row in await hybrid_history(brainmigrate_pool) if row[1] == "rollback"]
    assert rollbacks == [FILL, ADD_COLUMN]
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.ROLLED_BACK


async def test_a_failed_expand_step_compensates_the_steps_before_it(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    before = await _fingerprint(brainmigrate_pool)
    broken = schema_migration("add_broken_002", ["ALTER TABLE no_such_table ADD COLUMN x int"])
    migrator = Migrator(brainmigrate_pool, [topics_to_column(expand=(AddTopicColumn, broken))], config=CONFIG)

    with pytest.raises(MigrationExecutionError, match="no_such_table") as failed:
        await migrator.run_pending()

    assert f"expand step 'add_broken_002' of hybrid migration '{HYBRID}' failed" in str(failed.value)
    assert failed.value.sqlstate == "42P01"
    assert await _fingerprint(brainmigrate_pool) == before
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.ROLLED_BACK


async def test_a_compensated_hybrid_runs_again_from_the_start_once_fixed(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    verdict = {"pass": False}

    async def gate(conn: Any) -> bool:
        return verdict["pass"]

    migrator = Migrator(brainmigrate_pool, [topics_to_column(validate=gate)], config=CONFIG)
    with pytest.raises(MigrationValidationError):
        await migrator.run_pending()
    verdict["pass"] = True

    [result] = await migrator.run_pending()

    assert result.status is MigrationStatus.COMPLETED
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=False)
    assert await _run_rows(brainmigrate_pool) == [(HYBRID, "rolled_back"), (HYBRID, "completed")]


async def test_a_failed_compensation_keeps_the_original_error_and_leaves_the_hybrid_failed(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """When rolling a step back fails too, the error raised is still the original failure, with the
    compensation's failure chained as ``compensation_error``; the hybrid is FAILED, naming the step
    and the way out, and no further run touches it until someone has looked."""
    await _memories(brainmigrate_pool)
    # Its rollback drops a table that is not there: compensating it fails.
    stubborn = schema_migration(
        "add_topic_index_002",
        ["CREATE INDEX memories_n_idx ON memories ((metadata->>'n'))"],
        ["DROP TABLE no_such_table"],
    )

    async def refuse(conn: Any) -> bool:
        return False

    hybrid = topics_to_column(expand=(stubborn, AddTopicColumn), validate=refuse)
    migrator = Migrator(brainmigrate_pool, [hybrid], config=CONFIG)

    with pytest.raises(MigrationValidationError) as failed:
        await migrator.run_pending()

    error = failed.value
    message = str(error)
    assert message.startswith(f"hybrid migration '{HYBRID}' failed validation before contract")
    assert (
        "compensating hybrid 'topics_to_column_001' failed too, at expand step 'add_topic_index_002'"
        in message
    )
    assert f"'{FILL}', '{ADD_COLUMN}' were rolled back before that" in message
    assert f"`await migrator.abandon('{HYBRID}', reason=...)`" in message
    assert isinstance(error.compensation_error, MigrationExecutionError)
    assert "no_such_table" in str(error.compensation_error)
    status = await migrator.hybrid_status(HYBRID)
    assert status.phase is HybridPhase.FAILED
    assert status.current_step == "add_topic_index_002"
    assert status.steps_done == ("add_topic_index_002",)
    assert await migrator.status(HYBRID) is MigrationStatus.FAILED

    with pytest.raises(
        HybridPhaseError, match="is FAILED: its compensation failed at step 'add_topic_index_002'"
    ):
        await migrator.run_pending()
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.FAILED


async def test_abandon_is_audited_and_the_next_run_carries_on(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """abandon() records who and why in history and ends the run where it stands; nothing is
    reset silently: steps still applied stay applied, and the next run carries on from them."""
    await _memories(brainmigrate_pool)
    stubborn = schema_migration(
        "add_topic_index_002",
        ["CREATE INDEX memories_n_idx ON memories ((metadata->>'n'))"],
        ["DROP TABLE no_such_table"],
    )
    verdict = {"pass": False}

    async def gate(conn: Any) -> bool:
        return verdict["pass"]

    migrator = Migrator(
        brainmigrate_pool, [topics_to_column(expand=(stubborn, AddTopicColumn), validate=gate)], config=CONFIG
    )
    with pytest.raises(MigrationValidationError):
        await migrator.run_pending()

    with pytest.raises(ConfigError, match="abandon\\(\\) needs a reason"):
        await migrator.abandon(HYBRID, reason="  ")
    record = await migrator.abandon(HYBRID, reason="index kept on purpose; see ticket 42", actor="alice")

    assert (record.migration_id, record.operation, record.status) == (HYBRID, "abandon", "completed")
    assert (record.actor, record.reason) == ("alice", "index kept on purpose; see ticket 42")
    assert (record.hybrid_id, record.hybrid_phase, record.applied_after) == (HYBRID, "failed", False)
    assert (await migrator.history())[-1] == record
    status = await migrator.hybrid_status(HYBRID)
    assert status.phase is HybridPhase.ABANDONED
    assert status.error == "abandoned in phase failed by alice: index kept on purpose; see ticket 42"
    assert await migrator.status(HYBRID) is MigrationStatus.PENDING
    with pytest.raises(HybridPhaseError, match="not in progress"):
        await migrator.abandon(HYBRID, reason="again")

    verdict["pass"] = True
    [result] = await migrator.run_pending()

    assert result.status is MigrationStatus.COMPLETED
    applies = [row[0] for row in await hybrid_history(brainmigrate_pool) if row[1] == "apply"]
    assert applies.count("add_topic_index_002") == 1  # still applied: not run again
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=False)


async def test_abandon_defaults_the_actor_to_the_operating_system_user(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    import getpass

    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column(mode="manual")], config=CONFIG)
    await migrator.run_pending()

    record = await migrator.abandon(HYBRID, reason="the new code was never deployed")

    assert record.actor == getpass.getuser()
    assert record.hybrid_phase == "ready_to_contract"
    assert record.db_user  # and the database user, host and pid, as on every row
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=True)  # nothing undone


# -- contract is never compensated --------------------------------------------------------------------


async def test_a_failed_contract_step_is_not_compensated_and_the_next_run_carries_it_on(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """Contract, once started, only goes forward: a failed contract step leaves every earlier step
    applied and the phase CONTRACTING; once the cause is fixed, the next run finishes from there."""
    await _memories(brainmigrate_pool)
    await brainmigrate_pool.execute("""INSERT INTO memories VALUES (0, '{"n": 0, "topic": null}')""")
    migrator = Migrator(
        brainmigrate_pool, [topics_to_column(contract=(DropTopicKey, RequireTopic))], config=CONFIG
    )

    with pytest.raises(MigrationExecutionError) as failed:
        await migrator.run_pending()

    assert failed.value.sqlstate == "23502"  # the memory without a topic breaks NOT NULL
    assert "contract is never compensated: the next run carries it on from this step" in str(failed.value)
    status = await migrator.hybrid_status(HYBRID)
    assert (status.phase, status.current_step) == (HybridPhase.CONTRACTING, REQUIRE)
    assert status.steps_done == (*ALL_STEPS,)
    assert status.error is not None and "23502" in status.error
    assert await migrator.status(HYBRID) is MigrationStatus.FAILED

    await brainmigrate_pool.execute("UPDATE memories SET topic = 'none' WHERE id = 0")
    [result] = await migrator.run_pending()

    assert result.status is MigrationStatus.COMPLETED
    status = await migrator.hybrid_status(HYBRID)
    assert (status.phase, status.error) == (HybridPhase.COMPLETED, None)
    assert [row[0] for row in await hybrid_history(brainmigrate_pool) if row[2] == "completed"] == [
        *ALL_STEPS,
        REQUIRE,
        HYBRID,
    ]


# -- rollback -------------------------------------------------------------------------------------------


async def test_rollback_before_contract_reverses_every_step(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    await _memories(brainmigrate_pool)
    before = await _fingerprint(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column(mode="manual")], config=CONFIG)
    await migrator.run_pending()

    [result] = await migrator.rollback(HYBRID)

    assert (result.migration_id, result.status) == (HYBRID, MigrationStatus.ROLLED_BACK)
    assert await _fingerprint(brainmigrate_pool) == before
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.ROLLED_BACK
    assert await migrator.status(HYBRID) is MigrationStatus.ROLLED_BACK
    rollbacks = [row for row in await hybrid_history(brainmigrate_pool) if row[1] == "rollback"]
    assert rollbacks == [
        (FILL, "rollback", "completed", HYBRID, "compensating"),
        (ADD_COLUMN, "rollback", "completed", HYBRID, "compensating"),
    ]


async def test_rollback_after_contract_is_refused_when_a_contract_step_is_irreversible(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    forget = schema_migration(
        "forget_topic_key_001", ["UPDATE memories SET metadata = metadata - 'topic'"], reversible=False
    )
    migrator = Migrator(brainmigrate_pool, [topics_to_column(contract=(forget,))], config=CONFIG)
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(IrreversibleMigrationError) as refused:
        await migrator.rollback(HYBRID)

    assert "contract step 'forget_topic_key_001' is not reversible" in str(refused.value)
    assert "only when every contract step is" in str(refused.value)
    assert await snapshot(brainmigrate_pool) == before
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.COMPLETED


async def test_rollback_after_contract_reverses_everything_when_every_contract_step_is_reversible(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    before = await _fingerprint(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column()], config=CONFIG)
    await migrator.run_pending()

    [result] = await migrator.rollback(HYBRID)

    assert result.status is MigrationStatus.ROLLED_BACK
    assert await _fingerprint(brainmigrate_pool) == before
    assert [row[0] for row in await hybrid_history(brainmigrate_pool) if row[1] == "rollback"] == [
        DROP_KEY,
        FILL,
        ADD_COLUMN,
        HYBRID,
    ]
    assert await migrator.status(HYBRID) is MigrationStatus.ROLLED_BACK
    assert await migrator.pending() != []  # it can be applied again


async def test_rollback_of_a_hybrid_with_applied_dependents_needs_cascade(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    dependent = create_table("notes_002", "notes", dependencies=[HYBRID])
    migrator = Migrator(brainmigrate_pool, [topics_to_column(), dependent], config=CONFIG)
    await migrator.run_pending()

    with pytest.raises(DependencyError, match="notes_002"):
        await migrator.rollback(HYBRID)
    results = await migrator.rollback(HYBRID, cascade=True)

    assert [(r.migration_id, r.status) for r in results] == [
        ("notes_002", MigrationStatus.ROLLED_BACK),
        (HYBRID, MigrationStatus.ROLLED_BACK),
    ]


# -- bad input, refused when loaded, nothing written ------------------------------------------------------


WRONG_KINDS = [
    pytest.param(
        "expand", lambda: {"expand": (fill_topic("fill_early_001"),)}, "fill_early_001", id="data-in-expand"
    ),
    pytest.param(
        "backfill", lambda: {"backfill": (create_table("t_001", "t"),)}, "t_001", id="schema-in-backfill"
    ),
    pytest.param(
        "contract",
        lambda: {"contract": (fill_topic("fill_late_001"),)},
        "fill_late_001",
        id="data-in-contract",
    ),
    pytest.param(
        "backfill",
        lambda: {"backfill": (topics_to_column("inner_hybrid_001"),)},
        "inner_hybrid_001",
        id="hybrid-in-backfill",
    ),
]


@pytest.mark.parametrize(("phase", "steps", "step_id"), WRONG_KINDS)
async def test_a_step_of_the_wrong_kind_for_its_phase_is_refused_when_loaded(
    brainmigrate_pool: asyncpg.Pool[Any], phase: str, steps: Any, step_id: str
) -> None:
    await _memories(brainmigrate_pool)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column(**steps())])

    with pytest.raises(MigrationValidationError) as refused:
        await migrator.run_pending()

    message = str(refused.value)
    assert f"hybrid migration '{HYBRID}'" in message
    assert f"step '{step_id}'" in message and f"in {phase} (phase " in message
    assert f"{phase} takes" in message
    assert refused.value.migration_id == HYBRID
    assert await snapshot(brainmigrate_pool) == before
    assert not await brainmigrate_pool.fetchval("SELECT to_regclass('brainmigrate.hybrid_runs') IS NOT NULL")


async def test_a_step_id_used_elsewhere_in_the_catalog_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    clash = create_table(ADD_COLUMN, "other")  # a top-level migration with a step's id

    with pytest.raises(DuplicateMigrationError, match=f"duplicate migration id '{ADD_COLUMN}'"):
        await Migrator(brainmigrate_pool, [topics_to_column(), clash]).pending()
    with pytest.raises(DuplicateMigrationError, match="a step of hybrid 'second_hybrid_001'"):
        await Migrator(
            brainmigrate_pool, [topics_to_column(), topics_to_column("second_hybrid_001")]
        ).pending()


async def test_depending_on_a_step_instead_of_its_hybrid_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    dependent = create_table("notes_002", "notes", dependencies=[FILL])

    with pytest.raises(DependencyError, match=f"a step of hybrid migration '{HYBRID}'.*depend on '{HYBRID}'"):
        await Migrator(brainmigrate_pool, [topics_to_column(), dependent]).pending()


async def test_malformed_hybrids_are_refused_naming_the_hybrid(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    single = topics_to_column()
    single.expand = AddTopicColumn  # type: ignore[assignment]
    with pytest.raises(MigrationValidationError, match="expand must be a tuple of migration classes"):
        await Migrator(brainmigrate_pool, [single]).pending()

    mode = topics_to_column()
    mode.contract_mode = "later"  # type: ignore[assignment]
    with pytest.raises(MigrationValidationError, match="contract_mode must be 'auto' or 'manual'"):
        await Migrator(brainmigrate_pool, [mode]).pending()

    empty = topics_to_column(expand=(), backfill=(), contract=())
    with pytest.raises(MigrationValidationError, match="declares no steps"):
        await Migrator(brainmigrate_pool, [empty]).pending()


async def test_the_hybrid_checksum_covers_its_steps(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """Editing an applied step is drift of the hybrid (and of the step)."""
    await _memories(brainmigrate_pool)
    step = schema_migration(
        "add_topic_column_v_001",
        ["ALTER TABLE memories ADD COLUMN topic text"],
        ["ALTER TABLE memories DROP COLUMN topic"],
    )
    hybrid = topics_to_column(expand=(step,))
    first = await hybrid(brainmigrate_pool).checksum()
    await Migrator(brainmigrate_pool, [hybrid], config=CONFIG).run_pending()

    step.statements = ["ALTER TABLE memories ADD COLUMN topic varchar(40)"]

    assert await hybrid(brainmigrate_pool).checksum() != first
    with pytest.raises(ChecksumMismatchError, match="was changed after it was applied"):
        await Migrator(brainmigrate_pool, [hybrid], config=CONFIG).run_pending()


async def test_a_dry_run_of_a_hybrid_runs_its_steps_and_leaves_no_trace(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await _memories(brainmigrate_pool)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column()], config=CONFIG)

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True, dry_run_sample=20))

    assert (result.status, result.dry_run) == (MigrationStatus.COMPLETED, True)
    assert result.items_processed == 20
    assert "ALTER TABLE memories ADD COLUMN topic text" in result.statements
    assert await snapshot(brainmigrate_pool) == before


async def test_hybrid_operations_on_other_migrations_are_refused(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    migrator = Migrator(brainmigrate_pool, [topics_to_column(), create_table("notes_002", "notes")])

    with pytest.raises(MigrationStateError, match="'notes_002': it is not a hybrid migration"):
        await migrator.contract("notes_002")
    with pytest.raises(MigrationStateError, match="it is not a hybrid migration"):
        await migrator.hybrid_status("notes_002")
    assert await migrator.hybrid_phase(HYBRID) is None
    assert await migrator.status(HYBRID) is MigrationStatus.PENDING
    assert issubclass(type(topics_to_column()(None)), HybridMigration)


def test_the_phases_move_only_as_the_transition_table_allows() -> None:
    """Contract is never compensated by a failure (only rollback(id) moves it to COMPENSATING);
    a run that ended goes nowhere (a new run starts instead); abandon ends any run in progress."""
    assert set(HYBRID_TRANSITIONS) == set(HybridPhase)
    ended = {HybridPhase.ROLLED_BACK, HybridPhase.ABANDONED}
    assert all(not HYBRID_TRANSITIONS[phase] for phase in ended)
    in_progress = set(HybridPhase) - ended - {HybridPhase.COMPLETED}
    assert all(HybridPhase.ABANDONED in HYBRID_TRANSITIONS[phase] for phase in in_progress)
    assert HybridPhase.CONTRACTING not in HYBRID_TRANSITIONS[HybridPhase.BACKFILLING]  # validate first
    assert HybridPhase.CONTRACTING not in HYBRID_TRANSITIONS[HybridPhase.EXPANDING]
    with pytest.raises(MigrationStateError, match="cannot contract migration 'h_001': it is backfilling"):
        check_transition(
            HYBRID_TRANSITIONS,
            HybridPhase.BACKFILLING,
            HybridPhase.CONTRACTING,
            operation="contract",
            migration_id="h_001",
        )


async def test_a_failure_to_record_the_phase_is_a_typed_error_chaining_the_driver_error(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """When brainmigrate's own write of the phase fails, the error is a MigrationExecutionError
    naming the hybrid, with the driver's error chained; the run stays where it was, and the next
    run carries it on."""
    await _memories(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [topics_to_column()], config=CONFIG)
    async with brainmigrate_pool.acquire() as conn:
        await own.upgrade(conn, "brainmigrate", create=True)  # brainmigrate's tables, to add a trigger
        await conn.execute(
            """
            CREATE FUNCTION refuse_backfilling() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'hybrid_runs is read-only today'; END $$;
            CREATE TRIGGER refuse_backfilling BEFORE UPDATE ON brainmigrate.hybrid_runs
                FOR EACH ROW WHEN (NEW.phase = 'backfilling') EXECUTE FUNCTION refuse_backfilling();
            """
        )

    with pytest.raises(MigrationExecutionError) as failed:
        await migrator.run_pending()

    assert f"hybrid migration '{HYBRID}' stopped: recording its progress failed" in str(failed.value)
    assert "hybrid_runs is read-only today" in str(failed.value)
    assert isinstance(failed.value.__cause__, asyncpg.RaiseError)
    assert await migrator.hybrid_phase(HYBRID) is HybridPhase.EXPANDING

    await brainmigrate_pool.execute("DROP TRIGGER refuse_backfilling ON brainmigrate.hybrid_runs")
    [result] = await migrator.run_pending()

    assert result.status is MigrationStatus.COMPLETED
    assert await _topics(brainmigrate_pool) == _expected(column=True, key=False)


async def test_a_structure_migration_is_a_backfill_step_like_a_data_migration(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """A structure migration (a declared reshaping of the JSONB column) backfills too, through its
    own runner, and is rolled back with the rest."""

    class RenameN(MemoryStructureMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id="rename_n_002",
                name="rename n to number",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_STRUCTURE,
            )

        def operations(self) -> list[s.Operation]:
            return [s.rename("n", "number")]

    await _memories(brainmigrate_pool)
    before = await _fingerprint(brainmigrate_pool)
    migrator = Migrator(
        brainmigrate_pool, [topics_to_column(backfill=(fill_topic(), RenameN))], config=CONFIG
    )

    [result] = await migrator.run_pending()

    assert result.status is MigrationStatus.COMPLETED
    assert (
        await brainmigrate_pool.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'number'")
        == MEMORIES
    )
    assert [row[0] for row in await hybrid_history(brainmigrate_pool)] == [
        ADD_COLUMN, FILL, "rename_n_002", DROP_KEY, HYBRID,
    ]  # fmt: skip
    await migrator.rollback(HYBRID)
    assert await _fingerprint(brainmigrate_pool) == before
