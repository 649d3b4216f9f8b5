"""The online table rewrite under faults, in the phases ``test_rewrite_faults`` does not kill: the
fill, the replay of the change log into the shadow, and contract; and a run abandoned after each.

A real worker process (``workers/rewrite_worker.py``) runs the rewrite of ``workers/rewrite_toy``
over the fault tests' memory store (``rewrite_support``). Each stop is a wait of the server's: the
fill waits for a memory this test inserts into the shadow and keeps uncommitted, the replay for a
row of the shadow this test keeps locked, contract for this test's lock on the original; the test
sees the worker waiting in ``pg_locks`` and SIGKILLs it. The runner resumed afterwards leaves the
rows of a run never killed (compared row by row), with each step applied once; a run abandoned
instead leaves the table as it was and nothing of the rewrite, by the names the rewrite gives its
objects.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import HybridPhase, HybridStatus, IrreversibleMigrationError, MigrationStatus
from brainmigrate._rewrite.capture import MIRRORED_EVENTS, capture_triggers
from brainmigrate._rewrite.names import RewriteNames
from brainmigrate._rewrite.replay import REPLAY_BATCH
from rewrite_support import (
    COPY,
    DROP_OLD,
    FILL,
    INDEXES,
    REWRITE,
    ROWS,
    SHADOW,
    TO_CONTRACT,
    WORKER_NAME,
    Store,
    ToyRow,
    assert_swapped_in,
    checkpointed,
    create_toy_store,
    holding,
    hybrid_runs,
    kill_worker,
    layout_of,
    nothing_of_the_rewrite_left,
    oid_of,
    resume_to_contract,
    reverse_logged,
    rewritten,
    rows_of,
    shadow_created,
    start_rewrite_worker,
    step_history,
    toy_migrator,
    waiting_for,
)
from workers.harness import committed, stop, wait_until

pytestmark = pytest.mark.anyio

#: Where the rewrite keeps its objects (the table is ``public.memories``).
NAMES = RewriteNames(REWRITE, "public", "memories", "brainmigrate")
#: A memory marked ``keep`` (the copy leaves it to the fill), past the middle of the keys: the
#: test's uncommitted copy of it in the shadow stops the fill there.
FILL_HELD = 1_000
#: A memory the copy writes in its first batch: the test locks its row in the shadow, and the
#: second batch of the replay, which holds its change, stops there.
REPLAY_HELD = 11


async def _waiting_on(pool: asyncpg.Pool[Any], holder: int) -> bool:
    """Whether a session of the worker, in the test's database, waits for the transaction of the
    test's session ``holder`` (for a row it locked, or a key it inserted and has not committed)."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid "
            "JOIN pg_locks h ON h.locktype = 'transactionid' AND h.transactionid = w.transactionid "
            "AND h.granted AND h.pid = $2 "
            "WHERE NOT w.granted AND w.locktype = 'transactionid' AND a.application_name = $1 "
            "AND a.datname = current_database()",
            WORKER_NAME,
            holder,
        )
    )


async def _in_table(pool: asyncpg.Pool[Any], table: str, key: int) -> bool:
    return bool(await pool.fetchval(f'SELECT count(*) FROM "{table}" WHERE id = $1', key))


#: The tables and change logs a rewrite creates, and its capture functions, each by its name.
_RELATIONS = {
    "shadow": NAMES.in_table_schema(NAMES.shadow),
    "old table": NAMES.in_table_schema(NAMES.old),
    "forward log": NAMES.in_history_schema(NAMES.forward_log),
    "reverse log": NAMES.in_history_schema(NAMES.reverse_log),
}
_FUNCTIONS = {
    "forward function": NAMES.in_history_schema(NAMES.forward_function),
    "reverse function": NAMES.in_history_schema(NAMES.reverse_function),
}


async def _rewrite_objects(pool: asyncpg.Pool[Any]) -> list[str]:
    """What the catalog holds of the rewrite's objects, looked up by the names it gives them: its
    shadow, the original kept, the change logs, the capture functions, and its triggers on any
    table."""
    found = [
        what
        for what, name in _RELATIONS.items()
        if await pool.fetchval("SELECT to_regclass($1)", name) is not None
    ]
    found += [
        what
        for what, name in _FUNCTIONS.items()
        if await pool.fetchval("SELECT to_regprocedure($1 || '()')", name) is not None
    ]
    triggers = [*capture_triggers(NAMES), *(NAMES.mirror_trigger(event) for event in MIRRORED_EVENTS)]
    rows = await pool.fetch(
        "SELECT tgname::text, tgrelid::regclass::text FROM pg_trigger WHERE tgname = ANY($1::text[])",
        triggers,
    )
    found += [f"trigger {row[0]} on {row[1]}" for row in rows]
    return sorted(found)


def _captured(*objects: str) -> list[str]:
    """``objects``, and the capture's two triggers on the table, as :func:`_rewrite_objects` lists them."""
    return sorted([*objects, *(f"trigger {trigger} on memories" for trigger in capture_triggers(NAMES))])


#: The rewrite's objects before the swap: the shadow, and the capture of what is written to the table.
BEFORE_THE_SWAP = _captured("shadow", "forward log", "forward function")
#: Between the swap and contract: the original kept, and the capture of what is written to the
#: swapped-in table.
BEFORE_CONTRACT = _captured("old table", "reverse log", "reverse function")


@attrs.frozen
class Killed:
    """What the test saw when it killed the worker, and the original's rows then."""

    seen: HybridStatus
    rows: dict[int, ToyRow]
    #: The keys the first replay batch took from the change log (none when killed before the replay).
    replayed: frozenset[int] = frozenset()


async def _killed_mid_fill(pool: asyncpg.Pool[Any], dsn: str, store: Store) -> Killed:
    """The worker killed while the fill waits at memory FILL_HELD, some of its batches committed."""
    worker = await start_rewrite_worker(dsn, "--transform-delay=0.15")
    try:
        shadow = await shadow_created(pool)  # the copy is slowed down: the fill is a while away
        async with holding(pool) as gate:
            await gate.execute(f'INSERT INTO "{shadow}" (id, content) VALUES ($1, $2)', FILL_HELD, "held")

            async def held() -> bool:
                return await _waiting_on(pool, gate.get_server_pid()) and await committed(pool, FILL) > 0

            await wait_until(held, within=40, what=f"the fill to wait at memory {FILL_HELD}")
            seen = await toy_migrator(pool).hybrid_status(REWRITE)
            await kill_worker(pool, worker)
    finally:
        await stop(worker)
    return Killed(seen, store.rows)


async def _write_while_copying(pool: asyncpg.Pool[Any]) -> None:
    """The application's writes, over two replay batches' worth of changes: every memory but
    REPLAY_HELD edited (its sentiment flipped to sad), then REPLAY_HELD, so that its change is
    logged after the first batch's; metadata touched, memories deleted and added."""
    await pool.execute(
        "UPDATE memories SET content = replace(content, 'happy', 'sad') || ' (edited)' WHERE id <> $1",
        REPLAY_HELD,
    )
    await pool.execute(
        "UPDATE memories SET content = 'a sad edit of memory ' || id WHERE id = $1", REPLAY_HELD
    )
    await pool.execute(
        "UPDATE memories SET metadata = metadata || '{\"touched\": true}' WHERE id <= $1", REPLAY_BATCH
    )
    await pool.execute("DELETE FROM memories WHERE id % 97 = 0")
    await pool.execute(
        "INSERT INTO memories (content) SELECT 'a sad memory added ' || i FROM generate_series(1, 20) AS i"
    )


async def _forward_log(pool: asyncpg.Pool[Any]) -> list[int]:
    """The keys the forward change log holds, oldest change first."""
    rows = await pool.fetch(f'SELECT "key" FROM {NAMES.in_history_schema(NAMES.forward_log)} ORDER BY seq')
    return [row[0] for row in rows]


async def _killed_mid_replay(pool: asyncpg.Pool[Any], dsn: str, store: Store) -> Killed:
    """The worker killed while the index step replays the change log into the shadow: its first
    batch committed, the second waiting for this test's lock on memory REPLAY_HELD's row."""
    worker = await start_rewrite_worker(dsn, "--transform-delay=0.15")
    try:
        shadow = await shadow_created(pool)
        async with holding(pool) as row_lock:
            await wait_until(
                lambda: _in_table(pool, shadow, REPLAY_HELD), within=30, what=f"the copy of {REPLAY_HELD}"
            )
            locked = f'SELECT id FROM "{shadow}" WHERE id = $1 FOR UPDATE'
            assert await row_lock.fetchval(locked, REPLAY_HELD) == REPLAY_HELD
            # The fill waits at FILL_HELD while the application writes: every change is logged
            # before the index step starts replaying.
            async with holding(pool) as gate:
                await gate.execute(f'INSERT INTO "{shadow}" (id, content) VALUES ($1, $2)', FILL_HELD, "held")
                await _write_while_copying(pool)
                await wait_until(
                    lambda: _waiting_on(pool, gate.get_server_pid()),
                    within=40,
                    what=f"the fill to wait at memory {FILL_HELD}",
                )
                logged = await _forward_log(pool)
            assert len(logged) > 2 * REPLAY_BATCH
            assert REPLAY_HELD not in logged[:REPLAY_BATCH]
            assert REPLAY_HELD in logged[REPLAY_BATCH : 2 * REPLAY_BATCH]
            await wait_until(
                lambda: _waiting_on(pool, row_lock.get_server_pid()),
                within=40,
                what=f"the replay to wait at memory {REPLAY_HELD}",
            )
            seen = await toy_migrator(pool).hybrid_status(REWRITE)
            await kill_worker(pool, worker)
    finally:
        await stop(worker)
    # Only the first batch was replayed: what is left is every change logged after it.
    assert await _forward_log(pool) == logged[REPLAY_BATCH:]
    return Killed(seen, await rows_of(pool), frozenset(logged[:REPLAY_BATCH]))


#: A way of killing the worker mid-run.
Kill = Callable[["asyncpg.Pool[Any]", str, Store], Awaitable[Killed]]


# -- resumed ------------------------------------------------------------------------------------


async def test_a_runner_killed_mid_fill_is_resumed_and_fills_each_remaining_row_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed while the fill waits at a memory, some of its key ranges committed: the table is
    untouched, the shadow holds part of the rows (the copy's transformed, the fill's as they are);
    the next runner fills the rest, each row once, and swaps once."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)

    killed = await _killed_mid_fill(pool, brainmigrate_database, store)

    assert (killed.seen.phase, killed.seen.current_step) == (HybridPhase.BACKFILLING, FILL)
    status = await toy_migrator(pool).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.BACKFILLING, (SHADOW, COPY))
    assert await oid_of(pool) == store.oid
    assert await rows_of(pool) == store.rows
    shadow = await rows_of(pool, NAMES.shadow)
    want = rewritten(store.rows)
    assert FILL_HELD not in shadow
    assert 0 < len(shadow) < ROWS
    assert all(row == want[key] for key, row in shadow.items())
    filled = await committed(pool, FILL)
    assert 0 < filled < ROWS

    await resume_to_contract(pool, monkeypatch)

    await assert_swapped_in(pool, store)
    # The fill's checkpoints account for each row once across the kill, as the copy's do.
    assert await checkpointed(pool) == [(COPY, ROWS, 0), (FILL, ROWS, 0)]


async def test_a_runner_killed_mid_replay_is_resumed_and_each_logged_change_is_swapped_in_once_transformed(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application edits, deletes and adds memories during the copy; the runner is killed
    while the index step replays the change log, its first batch committed (those rows in the
    shadow as the application left them, transformed) and the second waiting for a row this test
    locked. The next runner replays the rest: every change is in the swapped-in table once,
    transformed, and the original kept holds what the application wrote."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)

    killed = await _killed_mid_replay(pool, brainmigrate_database, store)

    assert (killed.seen.phase, killed.seen.current_step) == (HybridPhase.CUTTING_OVER, INDEXES)
    assert await oid_of(pool) == store.oid
    want = rewritten(killed.rows)
    shadow = await rows_of(pool, NAMES.shadow)
    assert killed.replayed
    assert {key: shadow.get(key) for key in killed.replayed} == {
        key: want.get(key) for key in killed.replayed
    }
    # The held memory's change is not replayed yet: the shadow holds it as the copy wrote it.
    assert shadow[REPLAY_HELD] == rewritten(store.rows)[REPLAY_HELD] != want[REPLAY_HELD]

    await resume_to_contract(pool, monkeypatch)

    assert killed.rows != store.rows
    await assert_swapped_in(
        pool,
        store,
        expected=want,
        old_rows=killed.rows,
        others=[(INDEXES, "apply", "dirty"), (INDEXES, "resolve", "completed")],
        next_id=max(killed.rows) + 1,
    )


# -- contract -----------------------------------------------------------------------------------


async def test_a_contract_killed_while_it_waits_for_the_original_leaves_it_whole_and_the_next_drops_it_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A contract in another process is killed while dropping the original waits behind this
    test's lock on it: nothing is dropped (the original keeps every row, the reverse capture goes
    on logging writes to the swapped-in table), a rollback is refused as after any contract begun,
    and the next contract drops the original once and leaves nothing of the rewrite."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    await resume_to_contract(pool, monkeypatch)
    new_oid = await oid_of(pool)
    swapped = await rows_of(pool)
    assert await _rewrite_objects(pool) == BEFORE_CONTRACT
    worker = await start_rewrite_worker(brainmigrate_database, f"--contract={REWRITE}")
    try:
        async with holding(pool, f'LOCK TABLE "{NAMES.old}" IN ACCESS SHARE MODE'):
            await wait_until(
                lambda: waiting_for(pool, NAMES.old), within=40, what="the contract to wait for the original"
            )
            seen = await toy_migrator(pool).hybrid_status(REWRITE)
            await kill_worker(pool, worker)
    finally:
        await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.CONTRACTING, DROP_OLD)
    assert await oid_of(pool, NAMES.old) == store.oid
    assert await rows_of(pool, NAMES.old) == store.rows
    kept = await layout_of(pool, store.oid)  # its indexes and constraints renamed aside since the swap
    assert kept.columns == store.layout.columns
    assert len(kept.indexes) == len(store.layout.indexes)
    assert len(kept.constraints) == len(store.layout.constraints)
    assert await oid_of(pool) == new_oid
    assert await rows_of(pool) == swapped
    assert await _rewrite_objects(pool) == BEFORE_CONTRACT
    assert await step_history(pool) == [(step, "apply", "completed") for step in TO_CONTRACT]
    assert [phase for phase, _ in await hybrid_runs(pool)] == ["contracting"]
    await pool.execute("UPDATE memories SET content = 'a sad edit after the killed contract' WHERE id = 7")
    assert await reverse_logged(pool) == 1
    with pytest.raises(IrreversibleMigrationError, match=re.escape(DROP_OLD)):
        await toy_migrator(pool).rollback(REWRITE)
    assert [phase for phase, _ in await hybrid_runs(pool)] == ["contracting"]
    assert await _rewrite_objects(pool) == BEFORE_CONTRACT
    assert await rows_of(pool, NAMES.old) == store.rows

    with anyio.fail_after(30):
        result = await toy_migrator(pool).contract(REWRITE)

    assert result.status is MigrationStatus.COMPLETED
    assert await toy_migrator(pool).hybrid_phase(REWRITE) is HybridPhase.COMPLETED
    assert await _rewrite_objects(pool) == []
    await nothing_of_the_rewrite_left(pool)
    assert await oid_of(pool) == new_oid
    want = dict(swapped)
    want[7] = ("a sad edit after the killed contract", *swapped[7][1:])
    assert await rows_of(pool) == want
    applied = [row for row in await step_history(pool) if row[1:] == ("apply", "completed")]
    assert [step for step, _, _ in applied] == [*TO_CONTRACT, DROP_OLD, REWRITE]


# -- abandoned ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kill",
    [pytest.param(_killed_mid_fill, id="mid-fill"), pytest.param(_killed_mid_replay, id="mid-replay")],
)
async def test_a_run_abandoned_after_a_kill_leaves_the_table_as_it_was_and_nothing_of_the_rewrite(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], kill: Kill
) -> None:
    """Killed mid-fill, or mid-replay (after the application wrote), then given up: the table is
    as it was, row by row, with its layout; no shadow, trigger, capture function or change log
    is left, by the rewrite's names; history says abandoned; TRUNCATE is no longer refused."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    killed = await kill(pool, brainmigrate_database, store)
    assert await _rewrite_objects(pool) == BEFORE_THE_SWAP  # what the killed run left
    # The killed runner's attempt of the step it was in, where that step records one while it
    # runs (the index step does; a data step's run is in its own table).
    interrupted = [step for step, _, status in await step_history(pool) if status == "running"]

    record = await toy_migrator(pool).abandon(REWRITE, reason="given up after its runner died")

    assert record.operation.value == "abandon"
    assert await toy_migrator(pool).hybrid_phase(REWRITE) is HybridPhase.ABANDONED
    history = await step_history(pool)
    assert history[-1] == (REWRITE, "abandon", "completed")
    # History tells the truth about the killed runner's attempt: interrupted, not still running.
    assert [row for row in history if row[2] == "running"] == []
    closed = await pool.fetch(
        "SELECT migration_id, error, finished_at FROM brainmigrate.migration_history "
        "WHERE status = 'dirty' ORDER BY attempt_id"
    )
    assert [row["migration_id"] for row in closed] == interrupted
    assert all("interrupted" in row["error"] and row["finished_at"] is not None for row in closed)
    assert await oid_of(pool) == store.oid
    assert await rows_of(pool) == killed.rows
    assert await layout_of(pool, store.oid) == store.layout
    assert await _rewrite_objects(pool) == []
    await nothing_of_the_rewrite_left(pool)
    await pool.execute("TRUNCATE memories")
