"""The online table rewrite under faults: a runner SIGKILLed in each phase, then a new runner resumes.

A real worker process (``workers/rewrite_worker.py``) runs the rewrite of ``workers/rewrite_toy``
(a sentiment label added to each memory's metadata, the memories marked ``keep`` left as they
are) over a memory store with a GIN, an HNSW and a B-tree index, a CHECK and a UNIQUE constraint
and a serial key. The test catches the worker mid-copy (its checkpoints have committed part of
the rows), or holds it with the server's own waits (a lock it keeps on the shadow table while an
index is built, or on the table while the swap, or the swap back, waits for it), and SIGKILLs it.
A new runner then resumes, and the end state is exactly that of a run never killed: the table
under its name holds every original row transformed (row by row), with the original's columns,
indexes and constraints, its sequence going on; the original is kept until contract; each step
applied once; the run ready to contract. Contract then leaves no shadow, old table, capture
trigger, capture function or change log behind. A rollback killed while it waits for the table
is resumed into the original, with what was written since the swap; a run abandoned after a kill
leaves the table as it was and nothing of the rewrite; and what the application writes through a
kill and the resume is in the swapped-in table, transformed.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import HybridPhase, MigrationStatus, Migrator
from rewrite_support import (
    BATCH,
    COPY,
    DELAY_VARIABLE,
    FILL,
    INDEXES,
    MIGRATIONS,
    REWRITE,
    ROWS,
    SHADOW,
    TOY_CONFIG,
    Store,
    ToyRow,
    assert_swapped_in,
    capture_installed,
    checkpointed,
    create_toy_store,
    holding,
    hybrid_runs,
    kill_worker,
    layout_of,
    nothing_of_the_rewrite_left,
    oid_of,
    only_relation,
    relations,
    resume_to_contract,
    rewritten,
    roll_back_into_the_original,
    rollback_killed_while_the_swap_back_waits,
    rows_of,
    runner_killed_while_the_swap_waits,
    shadow_created,
    start_rewrite_worker,
    step_history,
    toy_migrator,
    transformed,
    user_triggers,
    waiting_for,
    write_after_the_swap,
)
from workers.harness import committed, migrations_dir, stop, wait_until

pytestmark = pytest.mark.anyio

# -- SIGKILL in each phase -----------------------------------------------------------------------


async def test_a_runner_killed_mid_copy_is_resumed_from_its_checkpoints_and_swaps_in_every_row_transformed(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed once the copy's checkpoints have committed part of the rows: the table is untouched,
    the shadow holds part of the rows, transformed; the next runner copies the rest and swaps."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    worker = await start_rewrite_worker(brainmigrate_database, "--transform-delay=0.15")
    try:

        async def partly() -> bool:
            return 4 * BATCH <= await committed(pool, COPY) <= ROWS - 8 * BATCH

        await wait_until(partly, within=40, what="the copy to commit part of the rows")
        seen = await toy_migrator(pool).hybrid_status(REWRITE)
        await kill_worker(pool, worker)
    finally:
        await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.BACKFILLING, COPY)
    status = await toy_migrator(pool).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.BACKFILLING, (SHADOW,))
    assert await oid_of(pool) == store.oid
    assert await rows_of(pool) == store.rows
    assert capture_installed(await user_triggers(pool), "memories")
    at_kill = await committed(pool, COPY)
    assert 0 < at_kill < ROWS
    cursor = int(
        await pool.fetchval("SELECT cursor_key FROM brainmigrate.data_chunks WHERE migration_id = $1", COPY)
    )
    # The shadow holds every row the checkpoints cover that the transform changes (maybe some of
    # a batch in flight), each transformed; the rows it leaves as they are wait for the fill.
    shadow = await rows_of(pool, await only_relation(pool, "bm_new_"))
    want = rewritten(store.rows)
    changed = {key for key, row in store.rows.items() if want[key] != row}
    assert {key for key in changed if key <= cursor} <= shadow.keys() <= changed
    assert len(shadow) < len(changed)
    assert all(row == want[key] for key, row in shadow.items())

    await resume_to_contract(pool, monkeypatch)

    await assert_swapped_in(pool, store)
    # The checkpoints account for each row once, across the kill: the copy's (each row
    # transformed or skipped) and the fill's (each key range copied once).
    assert await checkpointed(pool) == [(COPY, ROWS, 0), (FILL, ROWS, 0)]


async def test_a_runner_killed_while_an_index_of_the_shadow_is_built_leaves_no_invalid_or_second_index(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shadow's first index is built, and the build of the next waits behind this test's lock
    on the shadow, when the runner is killed: the next runner keeps the index built, builds the
    others once, and swaps; the table ends with each of the original's indexes once, all valid."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    worker = await start_rewrite_worker(brainmigrate_database, "--transform-delay=0.2")
    try:
        shadow = await shadow_created(pool)  # while the copy is slowed down, the shadow is locked
        lock = f'LOCK TABLE "{shadow}" IN ROW EXCLUSIVE MODE'  # the copy writes on; CREATE INDEX waits
        second = await pool.acquire()
        queued = second.transaction()
        await queued.start()
        try:
            pid = await second.fetchval("SELECT pg_backend_pid()")

            async def queued_behind() -> bool:
                return bool(
                    await pool.fetchval("SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted", pid)
                )

            with anyio.fail_after(60):
                # The task group ends once the second lock is granted, after this test's first
                # lock is released.
                async with anyio.create_task_group() as group, holding(pool, lock):
                    await wait_until(
                        lambda: waiting_for(pool, shadow), within=40, what="the first build to wait"
                    )
                    # A second lock, queued behind the build: granted once the first index is
                    # built, before the build of the next can lock the shadow.
                    group.start_soon(second.execute, lock)
                    await wait_until(queued_behind, within=10, what="the second lock to queue")
                # The first lock is released; the first index is built, and the next build waits.

            async def second_build_waits() -> bool:
                built = await pool.fetchval(
                    "SELECT count(*) FROM pg_index WHERE indrelid = to_regclass($1) AND NOT indisprimary",
                    f'"{shadow}"',
                )
                return built == 1 and await waiting_for(pool, shadow)

            await wait_until(second_build_waits, within=30, what="the next index build to wait")
            seen = await toy_migrator(pool).hybrid_status(REWRITE)
            await kill_worker(pool, worker)
        finally:
            await queued.rollback()
            await pool.release(second)
    finally:
        await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.CUTTING_OVER, INDEXES)
    status = await toy_migrator(pool).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.CUTTING_OVER, (SHADOW, COPY, FILL))
    assert await rows_of(pool) == store.rows
    built = await pool.fetch(
        "SELECT indexrelid::oid AS oid, indisvalid FROM pg_index WHERE indrelid = to_regclass($1) "
        "AND NOT indisprimary",
        f'"{shadow}"',
    )
    assert [row["indisvalid"] for row in built] == [True]

    await resume_to_contract(pool, monkeypatch)

    new_oid = await assert_swapped_in(
        pool, store, others=[(INDEXES, "apply", "dirty"), (INDEXES, "resolve", "completed")]
    )
    kept = await pool.fetchval(
        "SELECT indrelid = $2 FROM pg_index WHERE indexrelid = $1", built[0]["oid"], new_oid
    )
    assert kept  # the index built before the kill, not built again


async def test_a_runner_killed_while_the_swap_waits_for_the_table_swaps_nothing_and_the_next_swaps_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap's LOCK TABLE waits behind this test's ACCESS SHARE lock when the runner is killed:
    nothing is half renamed (the original keeps its name and every row, the shadow its own, the
    capture goes on), and the next runner swaps once."""
    pool = brainmigrate_pool
    store, shadow_oid = await runner_killed_while_the_swap_waits(brainmigrate_database, pool)

    await resume_to_contract(pool, monkeypatch)

    assert await assert_swapped_in(pool, store) == shadow_oid


async def test_a_rollback_killed_while_the_swap_back_waits_for_the_table_is_resumed_into_the_original(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the swap, the application writes to the new table; a rollback in another process is
    killed while its swap back waits behind this test's lock: nothing is swapped back yet. The
    rollback resumed puts the original back under its name, with what was written since the swap
    (and without the transform), drops the copy, and leaves nothing of the rewrite."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    await resume_to_contract(pool, monkeypatch)  # a run never killed, to READY_TO_CONTRACT
    new_oid = await oid_of(pool)
    written = await write_after_the_swap(pool)
    swapped = await rows_of(pool)
    assert swapped[written.edited] == (
        "a sad edit after the swap",
        {**store.rows[written.edited][1], "sentiment": "positive"},
        *store.rows[written.edited][2:],
    )
    assert written.deleted not in swapped and swapped[written.added] == written.added_row
    await rollback_killed_while_the_swap_back_waits(brainmigrate_database, pool)

    assert await oid_of(pool) == new_oid
    assert await rows_of(pool) == swapped
    old = await only_relation(pool, "bm_old_")
    assert await oid_of(pool, old) == store.oid
    assert await rows_of(pool, old) == store.rows
    assert capture_installed(await user_triggers(pool), "memories")

    # The rows written since the swap come back as the application wrote them to the new table
    # (the edited memory keeps the label it had there); every other row is the original's.
    want = {key: row for key, row in store.rows.items() if key != written.deleted}
    want[written.edited] = swapped[written.edited]
    want[written.added] = written.added_row
    await roll_back_into_the_original(pool, store, want, next_id=written.added + 1)


async def test_a_run_abandoned_after_its_runner_was_killed_mid_copy_leaves_the_table_as_it_was_and_no_more(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """Killed mid-copy, then given up: the table is untouched, row by row, and carries no capture;
    no shadow, capture function or change log is left; history says abandoned, and why."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    worker = await start_rewrite_worker(brainmigrate_database, "--transform-delay=0.15")
    try:

        async def partly() -> bool:
            return 4 * BATCH <= await committed(pool, COPY) <= ROWS - 8 * BATCH

        await wait_until(partly, within=40, what="the copy to commit part of the rows")
        await kill_worker(pool, worker)
    finally:
        await stop(worker)
    assert await relations(pool, "bm_new_")  # what the killed run left

    record = await toy_migrator(pool).abandon(REWRITE, reason="the copy is given up after its runner died")

    assert record.operation.value == "abandon"
    assert await toy_migrator(pool).hybrid_phase(REWRITE) is HybridPhase.ABANDONED
    runs = await hybrid_runs(pool)
    assert len(runs) == 1 and runs[0][0] == "abandoned"
    assert "the copy is given up after its runner died" in (runs[0][1] or "")
    assert (await step_history(pool))[-1] == (REWRITE, "abandon", "completed")
    assert await oid_of(pool) == store.oid
    assert await rows_of(pool) == store.rows
    assert await layout_of(pool, store.oid) == store.layout
    await nothing_of_the_rewrite_left(pool)
    await pool.execute("TRUNCATE memories")  # no capture refuses it any more


# -- the application writing through a kill ------------------------------------------------------

RESUMER_NAME = "rewrite resumer"


@attrs.define
class Writer:
    """The application: inserts, edits and deletes memories one statement at a time, and records
    each write as the row it left (None: deleted) in the table it landed in."""

    dsn: str
    original: int
    #: (key, the row as written or None when deleted, the oid of the table written).
    log: list[tuple[int, ToyRow | None, int]] = attrs.field(factory=list)
    stopping: bool = False

    def writes(self, *, late: bool = False) -> int:
        """Writes so far (``late``: only those to the swapped-in table)."""
        return sum(1 for _, _, oid in self.log if late == (oid != self.original))

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        returning = (
            "RETURNING id, content, metadata::text AS m, embedding::text AS e, created_at::text AS c, "
            "tableoid::oid AS t"
        )
        try:
            i = 0
            while not self.stopping:
                i += 1
                key = (i * 37) % ROWS + 1
                if i % 5 == 0:
                    row = await conn.fetchrow(
                        "DELETE FROM memories WHERE id = $1 RETURNING id, tableoid::oid AS t", key
                    )
                    if row is not None:
                        self.log.append((key, None, row["t"]))
                    continue
                if i % 5 == 1:
                    text = f"a {'sad' if i % 2 else 'happy'} insert {i}"
                    row = await conn.fetchrow(f"INSERT INTO memories (content) VALUES ($1) {returning}", text)
                else:
                    text = f"a {'happy' if i % 3 else 'sad'} edit {i}"
                    row = await conn.fetchrow(
                        f"UPDATE memories SET content = $2 WHERE id = $1 {returning}", key, text
                    )
                if row is not None:
                    self.log.append(
                        (row["id"], (row["content"], json.loads(row["m"]), row["e"], row["c"]), row["t"])
                    )
        finally:
            await conn.close()

    def expected(self, store: Store) -> tuple[dict[int, ToyRow], dict[int, ToyRow]]:
        """The rows the swapped-in table must hold (every write before the swap transformed, those
        after it as written), and those the original, kept, must hold (every write before the swap)."""
        new, old = rewritten(store.rows), dict(store.rows)
        for key, row, oid in self.log:
            if oid == self.original:
                if row is None:
                    new.pop(key, None)
                    old.pop(key, None)
                else:
                    new[key] = (row[0], transformed(row[0], row[1]), *row[2:])
                    old[key] = row
            elif row is None:
                new.pop(key, None)
            else:
                new[key] = row
        return new, old


async def test_what_the_application_writes_through_a_kill_and_the_resume_is_in_the_swapped_table_transformed(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application inserts, edits and deletes memories while a runner copies, after it is
    killed, and while the next runner builds the shadow's indexes (held by this test's lock on the
    shadow) and swaps: every write before the swap is in the swapped-in table, transformed (the
    memories it deleted absent), every write after it as written, and the original kept holds
    every write before the swap."""
    pool = brainmigrate_pool
    store = await create_toy_store(pool)
    writer = Writer(brainmigrate_database, store.oid)
    monkeypatch.setenv(DELAY_VARIABLE, "0")
    resumer = await asyncpg.create_pool(
        brainmigrate_database, min_size=1, max_size=4, server_settings={"application_name": RESUMER_NAME}
    )
    results: list[tuple[str, MigrationStatus]] = []

    async def resume() -> None:
        ran = await Migrator(resumer, migrations_dir(MIGRATIONS), config=TOY_CONFIG).run_pending()
        results.extend((r.migration_id, r.status) for r in ran)

    def written(count: int) -> Any:
        async def probe() -> bool:
            return writer.writes() >= count

        return probe

    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as application:
                application.start_soon(writer.run)
                worker = await start_rewrite_worker(brainmigrate_database, "--transform-delay=0.15")
                try:

                    async def partly() -> bool:
                        return (
                            4 * BATCH <= await committed(pool, COPY) <= ROWS - 8 * BATCH
                            and writer.writes() >= 30
                        )

                    await wait_until(partly, within=40, what="the copy and the application to write")
                    await kill_worker(pool, worker)
                finally:
                    await stop(worker)
                at_kill = writer.writes()
                await wait_until(written(at_kill + 30), within=20, what="writes after the kill")

                shadow = await only_relation(pool, "bm_new_")
                # The task group ends once the resumed run has returned, after this test's lock on
                # the shadow is released: it builds the indexes, replays the changes and swaps.
                lock = f'LOCK TABLE "{shadow}" IN ROW EXCLUSIVE MODE'
                async with anyio.create_task_group() as runner, holding(pool, lock):
                    runner.start_soon(resume)
                    await wait_until(
                        lambda: waiting_for(pool, shadow, RESUMER_NAME),
                        within=40,
                        what="the resumed index build to wait",
                    )
                    held = writer.writes()
                    await wait_until(written(held + 30), within=20, what="writes while the indexes wait")

                async def late() -> bool:
                    return writer.writes(late=True) >= 10

                await wait_until(late, within=20, what="writes to the swapped-in table")
                writer.stopping = True
    finally:
        await resumer.close()

    assert results == [(REWRITE, MigrationStatus.RUNNING)]
    new, old = writer.expected(store)
    deleted = {key for key, row, _ in writer.log if row is None}
    assert deleted and not deleted & new.keys()
    inserted = [key for key, _, _ in writer.log if key > ROWS]
    await assert_swapped_in(pool, store, expected=new, old_rows=old, next_id=max(inserted) + 1)
