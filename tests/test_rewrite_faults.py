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

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import HybridPhase, MigrationConfig, MigrationStatus, Migrator
from workers.harness import (
    applied,
    committed,
    end_sessions_named,
    migrations_dir,
    sigkill,
    start_role_worker,
    stop,
    wait_until,
)

pytestmark = pytest.mark.anyio

ROWS = 1_200
BATCH = 50
MIGRATIONS = "rewrite_toy"
REWRITE = "rewrite_toy_faults_001"
SHADOW, COPY, FILL, INDEXES, SWAP, VALIDATE_KEYS, DROP_OLD = (
    f"{REWRITE}/{step}" for step in ("shadow", "copy", "fill", "indexes", "swap", "validate-keys", "drop-old")
)
#: The steps a run applies up to READY_TO_CONTRACT, in order.
TO_CONTRACT = (SHADOW, COPY, FILL, INDEXES, SWAP, VALIDATE_KEYS)
WORKER_NAME = "rewrite worker"
DELAY_VARIABLE = "BM_REWRITE_DELAY"
#: The resuming runner's (in this process).
CONFIG = MigrationConfig(batch_size=BATCH, checkpoint_frequency=BATCH, concurrency=2)

STORE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id         bigserial PRIMARY KEY,
    content    text NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    embedding  vector(3),
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT content_not_empty CHECK (content <> ''),
    CONSTRAINT memories_content_key UNIQUE (content)
);
CREATE INDEX memories_metadata_idx ON memories USING gin (metadata);
CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops);
CREATE INDEX memories_created_idx ON memories (created_at);
"""
#: Every tenth memory is marked ``keep``: the transform skips it, and the fill copies it as it is.
ROWS_SQL = """
INSERT INTO memories (content, metadata, embedding, created_at)
SELECT CASE WHEN i % 3 = 0 THEN 'a sad memory ' ELSE 'a happy memory ' END || i,
       CASE WHEN i % 10 = 0 THEN jsonb_build_object('n', i, 'keep', true) ELSE jsonb_build_object('n', i) END,
       ARRAY[i % 7, 1, i % 5 + 1]::real[]::vector,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'
  FROM generate_series(1, $1::int) AS i
"""

#: A memory as the test compares it: content, metadata, embedding (text), created_at (text).
Row = tuple[str, dict[str, Any], str | None, str]

#: The columns, indexes and constraints of a table (by oid), each as its definition.
_LAYOUT = """
SELECT (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) || ' '
                         || CASE WHEN attnotnull THEN 'not null' ELSE 'null' END || ' '
                         || coalesce(pg_get_expr(d.adbin, d.adrelid), '') ORDER BY attnum)
          FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE a.attrelid = $1 AND attnum > 0 AND NOT attisdropped),
       (SELECT array_agg(pg_get_indexdef(indexrelid) ORDER BY indexrelid::regclass::text)
          FROM pg_index WHERE indrelid = $1),
       (SELECT array_agg(conname || ' ' || pg_get_constraintdef(oid) ORDER BY conname)
          FROM pg_constraint WHERE conrelid = $1 AND contype <> 'n')
"""


@attrs.frozen
class Layout:
    columns: tuple[str, ...]
    indexes: tuple[str, ...]
    constraints: tuple[str, ...]


@attrs.frozen
class Store:
    """The memories as created, and the table's oid and layout."""

    rows: dict[int, Row]
    oid: int
    layout: Layout


def sentiment(content: str) -> str:
    return "negative" if "sad" in content else "positive"


def transformed(content: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata the rewrite gives a memory: a sentiment label, unless it is marked ``keep``."""
    return metadata if metadata.get("keep") else {**metadata, "sentiment": sentiment(content)}


def rewritten(rows: dict[int, Row]) -> dict[int, Row]:
    """``rows`` as the rewrite must leave them: each transformed, nothing else changed."""
    return {
        key: (content, transformed(content, metadata), embedding, created)
        for key, (content, metadata, embedding, created) in rows.items()
    }


async def _rows(pool: asyncpg.Pool[Any], table: str = "memories") -> dict[int, Row]:
    records = await pool.fetch(
        f'SELECT id, content, metadata::text AS m, embedding::text AS e, created_at::text AS c FROM "{table}"'
    )
    return {r["id"]: (r["content"], json.loads(r["m"]), r["e"], r["c"]) for r in records}


async def _oid(pool: asyncpg.Pool[Any], table: str = "memories") -> int | None:
    oid: int | None = await pool.fetchval("SELECT to_regclass($1)::oid", f'"{table}"')
    return oid


async def _layout(pool: asyncpg.Pool[Any], oid: int) -> Layout:
    row = await pool.fetchrow(_LAYOUT, oid)
    assert row is not None
    return Layout(tuple(row[0]), tuple(row[1] or ()), tuple(row[2] or ()))


async def _store(pool: asyncpg.Pool[Any]) -> Store:
    await pool.execute(STORE)
    await pool.execute(ROWS_SQL, ROWS)
    oid = await _oid(pool)
    assert oid is not None
    return Store(await _rows(pool), oid, await _layout(pool, oid))


async def _relations(pool: asyncpg.Pool[Any], prefix: str, kinds: str = "r") -> list[str]:
    """The relations of the kinds ``kinds`` named ``prefix…`` in the tables' or brainmigrate's schema."""
    rows = await pool.fetch(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('public', 'brainmigrate') AND starts_with(c.relname, $1) "
        'AND c.relkind = ANY($2::text[]::"char"[]) ORDER BY 1',
        prefix,
        list(kinds),
    )
    return [row[0] for row in rows]


async def _one(pool: asyncpg.Pool[Any], prefix: str) -> str:
    found = await _relations(pool, prefix)
    assert len(found) == 1, found
    return found[0]


async def _triggers(pool: asyncpg.Pool[Any]) -> list[tuple[str, str]]:
    """The user triggers of the database: (table, trigger)."""
    rows = await pool.fetch(
        "SELECT tgrelid::regclass::text, tgname::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
    )
    return [(row[0], row[1]) for row in rows]


async def _capture_functions(pool: asyncpg.Pool[Any]) -> list[str]:
    rows = await pool.fetch(
        "SELECT proname::text FROM pg_proc WHERE pronamespace = 'brainmigrate'::regnamespace "
        "AND starts_with(proname, 'rewrite_') ORDER BY 1"
    )
    return [row[0] for row in rows]


async def _nothing_of_the_rewrite_left(pool: asyncpg.Pool[Any]) -> None:
    """No shadow, old table or index of theirs, no capture trigger or function, no change log."""
    left = {
        "tables and indexes": await _relations(pool, "bm_", "rip"),
        "change logs": await _relations(pool, "rewrite_", "rS"),
        "triggers": await _triggers(pool),
        "functions": await _capture_functions(pool),
    }
    assert left == {what: [] for what in left}


def _capture_installed(triggers: list[tuple[str, str]], table: str) -> bool:
    names = {trigger for on, trigger in triggers if on == table}
    return any(t.startswith("bm_capture_") for t in names) and any(t.startswith("bm_notrunc_") for t in names)


async def _start_worker(dsn: str, *options: str, migrations: str = MIGRATIONS) -> asyncio.subprocess.Process:
    return await start_role_worker(
        "rewrite_worker.py",
        dsn,
        migrations,
        f"--batch-size={BATCH}",
        f"--application-name={WORKER_NAME}",
        *options,
    )


async def _kill(pool: asyncpg.Pool[Any], worker: asyncio.subprocess.Process) -> None:
    """SIGKILL the worker, then end what is left of it on the server."""
    assert await sigkill(worker) == -signal.SIGKILL
    await end_sessions_named(pool, WORKER_NAME)


async def _waiting(pool: asyncpg.Pool[Any], query_prefix: str) -> bool:
    """Whether a session of the worker waits for a lock in a statement starting with ``query_prefix``."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1 AND wait_event_type = 'Lock' AND starts_with(query, $2)",
            WORKER_NAME,
            query_prefix,
        )
    )


async def _waiting_for(pool: asyncpg.Pool[Any], table: str, application_name: str = WORKER_NAME) -> bool:
    """Whether a session named ``application_name`` waits for a lock on ``table``."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE NOT l.granted AND l.relation = to_regclass($1) AND a.application_name = $2 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            f'"{table}"',
            application_name,
        )
    )


async def _history(pool: asyncpg.Pool[Any]) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT migration_id, operation, status FROM brainmigrate.migration_history ORDER BY attempt_id"
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def _runs(pool: asyncpg.Pool[Any]) -> list[tuple[str, str | None]]:
    rows = await pool.fetch("SELECT phase, error FROM brainmigrate.hybrid_runs ORDER BY run_id")
    return [(row[0], row[1]) for row in rows]


def _migrator(pool: asyncpg.Pool[Any], migrations: str = MIGRATIONS) -> Migrator:
    return Migrator(pool, migrations_dir(migrations), config=CONFIG)


async def _resume(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch, *, migrations: str = MIGRATIONS
) -> None:
    """A new runner in this process carries the rewrite (of ``migrations``) on, to READY_TO_CONTRACT."""
    monkeypatch.setenv(DELAY_VARIABLE, "0")
    with anyio.fail_after(60):
        results = await _migrator(pool, migrations).run_pending()
    assert [(r.migration_id, r.status) for r in results] == [(REWRITE, MigrationStatus.RUNNING)]


async def _next_id(pool: asyncpg.Pool[Any]) -> int:
    """The id a new memory gets (the row is inserted, and deleted again)."""
    key: int = await pool.fetchval("INSERT INTO memories (content) VALUES ('a new memory') RETURNING id")
    await pool.execute("DELETE FROM memories WHERE id = $1", key)
    return key


async def _assert_swapped_in(
    pool: asyncpg.Pool[Any],
    store: Store,
    *,
    expected: dict[int, Row] | None = None,
    old_rows: dict[int, Row] | None = None,
    others: list[tuple[str, str, str]] | None = None,
    next_id: int = ROWS + 1,
    migrations: str = MIGRATIONS,
) -> int:
    """The table under its name is the shadow, holding ``expected`` (by default, every original row
    transformed) with the original's columns, indexes (all valid) and constraints; the original is
    kept as ``bm_old_…``, holding ``old_rows`` (by default, the rows as created); each step applied
    once, in order (``others``: the history's other rows); one run, READY_TO_CONTRACT; the
    sequence goes on from ``next_id``. Then contract (by a Migrator of ``migrations``) completes
    and leaves nothing of the rewrite. Returns the swapped-in table's oid."""
    new_oid = await _oid(pool)
    assert new_oid is not None and new_oid != store.oid
    after = await _rows(pool)
    want = rewritten(store.rows) if expected is None else expected
    assert after.keys() == want.keys()
    wrong = [key for key in want if after[key] != want[key]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {[(k, after[k], want[k]) for k in wrong[:3]]}"
    assert await _layout(pool, new_oid) == store.layout
    assert await pool.fetchval(
        "SELECT bool_and(indisvalid AND indisready) FROM pg_index WHERE indrelid = $1", new_oid
    )
    old = await _one(pool, "bm_old_")
    assert await _oid(pool, old) == store.oid  # the original, under another name
    assert await _rows(pool, old) == (store.rows if old_rows is None else old_rows)
    assert await _relations(pool, "bm_new_") == []

    history = await _history(pool)
    applied = [row[0] for row in history if row[1:] == ("apply", "completed")]
    assert applied == list(TO_CONTRACT)  # each once, in order
    assert [row for row in history if row[1:] != ("apply", "completed")] == (others or [])
    assert await _runs(pool) == [("ready_to_contract", None)]
    migrator = _migrator(pool, migrations)
    assert await migrator.hybrid_phase(REWRITE) is HybridPhase.READY_TO_CONTRACT
    assert await _next_id(pool) == next_id

    with anyio.fail_after(30):
        result = await migrator.contract(REWRITE)
    assert result.status is MigrationStatus.COMPLETED
    assert await migrator.hybrid_phase(REWRITE) is HybridPhase.COMPLETED
    await _nothing_of_the_rewrite_left(pool)
    assert await _oid(pool) == new_oid
    assert await _rows(pool) == after
    assert await _layout(pool, new_oid) == store.layout
    assert await _next_id(pool) == next_id + 1
    assert (await _history(pool))[-2:] == [(DROP_OLD, "apply", "completed"), (REWRITE, "apply", "completed")]
    return new_oid


@asynccontextmanager
async def _holding(pool: asyncpg.Pool[Any], *statements: str) -> AsyncIterator[None]:
    """A transaction of this test, open (after ``statements``) until the block ends, rolled back."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for statement in statements:
                await conn.execute(statement)
            yield
        finally:
            await transaction.rollback()


async def _shadow_created(pool: asyncpg.Pool[Any]) -> str:
    """The shadow's name, once the step creating it has committed."""

    async def created() -> bool:
        return await applied(pool, SHADOW)

    await wait_until(created, within=30, what="the shadow to be created")
    return await _one(pool, "bm_new_")


# -- SIGKILL in each phase -----------------------------------------------------------------------


async def test_a_runner_killed_mid_copy_is_resumed_from_its_checkpoints_and_swaps_in_every_row_transformed(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed once the copy's checkpoints have committed part of the rows: the table is untouched,
    the shadow holds part of the rows, transformed; the next runner copies the rest and swaps."""
    pool = brainmigrate_pool
    store = await _store(pool)
    worker = await _start_worker(brainmigrate_database, "--transform-delay=0.15")
    try:

        async def partly() -> bool:
            return 4 * BATCH <= await committed(pool, COPY) <= ROWS - 8 * BATCH

        await wait_until(partly, within=40, what="the copy to commit part of the rows")
        seen = await _migrator(pool).hybrid_status(REWRITE)
        await _kill(pool, worker)
    finally:
        await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.BACKFILLING, COPY)
    status = await _migrator(pool).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.BACKFILLING, (SHADOW,))
    assert await _oid(pool) == store.oid
    assert await _rows(pool) == store.rows
    assert _capture_installed(await _triggers(pool), "memories")
    at_kill = await committed(pool, COPY)
    assert 0 < at_kill < ROWS
    cursor = int(
        await pool.fetchval("SELECT cursor_key FROM brainmigrate.data_chunks WHERE migration_id = $1", COPY)
    )
    # The shadow holds every row the checkpoints cover that the transform changes (maybe some of
    # a batch in flight), each transformed; the rows it leaves as they are wait for the fill.
    shadow = await _rows(pool, await _one(pool, "bm_new_"))
    want = rewritten(store.rows)
    changed = {key for key, row in store.rows.items() if want[key] != row}
    assert {key for key in changed if key <= cursor} <= shadow.keys() <= changed
    assert len(shadow) < len(changed)
    assert all(row == want[key] for key, row in shadow.items())

    await _resume(pool, monkeypatch)

    await _assert_swapped_in(pool, store)
    # The checkpoints account for each row once, across the kill: the copy's (each row
    # transformed or skipped) and the fill's (each key range copied once).
    counts = await pool.fetch(
        "SELECT migration_id, sum(processed + skipped) AS rows, sum(failed) AS failed "
        "FROM brainmigrate.data_chunks GROUP BY migration_id ORDER BY migration_id"
    )
    assert [tuple(row) for row in counts] == [(COPY, ROWS, 0), (FILL, ROWS, 0)]


async def test_a_runner_killed_while_an_index_of_the_shadow_is_built_leaves_no_invalid_or_second_index(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shadow's first index is built, and the build of the next waits behind this test's lock
    on the shadow, when the runner is killed: the next runner keeps the index built, builds the
    others once, and swaps; the table ends with each of the original's indexes once, all valid."""
    pool = brainmigrate_pool
    store = await _store(pool)
    worker = await _start_worker(brainmigrate_database, "--transform-delay=0.2")
    try:
        shadow = await _shadow_created(pool)  # while the copy is slowed down, the shadow is locked
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
                async with anyio.create_task_group() as group, _holding(pool, lock):
                    await wait_until(
                        lambda: _waiting_for(pool, shadow), within=40, what="the first build to wait"
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
                return built == 1 and await _waiting_for(pool, shadow)

            await wait_until(second_build_waits, within=30, what="the next index build to wait")
            seen = await _migrator(pool).hybrid_status(REWRITE)
            await _kill(pool, worker)
        finally:
            await queued.rollback()
            await pool.release(second)
    finally:
        await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.CUTTING_OVER, INDEXES)
    status = await _migrator(pool).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.CUTTING_OVER, (SHADOW, COPY, FILL))
    assert await _rows(pool) == store.rows
    built = await pool.fetch(
        "SELECT indexrelid::oid AS oid, indisvalid FROM pg_index WHERE indrelid = to_regclass($1) "
        "AND NOT indisprimary",
        f'"{shadow}"',
    )
    assert [row["indisvalid"] for row in built] == [True]

    await _resume(pool, monkeypatch)

    new_oid = await _assert_swapped_in(
        pool, store, others=[(INDEXES, "apply", "dirty"), (INDEXES, "resolve", "completed")]
    )
    kept = await pool.fetchval(
        "SELECT indrelid = $2 FROM pg_index WHERE indexrelid = $1", built[0]["oid"], new_oid
    )
    assert kept  # the index built before the kill, not built again


async def _runner_killed_while_the_swap_waits(
    dsn: str, pool: asyncpg.Pool[Any], *, migrations: str = MIGRATIONS
) -> tuple[Store, int]:
    """A runner of ``migrations`` is killed while the swap's LOCK TABLE waits behind this test's
    ACCESS SHARE lock: nothing is half renamed (the original keeps its name and every row, the
    shadow its own, the capture goes on). Returns the store and the shadow's oid."""
    store = await _store(pool)
    # ACCESS SHARE lets every step before the swap go on (the capture trigger's creation too).
    async with _holding(pool, "LOCK TABLE memories IN ACCESS SHARE MODE"):
        worker = await _start_worker(dsn, migrations=migrations)
        try:
            await wait_until(
                lambda: _waiting(pool, "LOCK TABLE"), within=40, what="the swap to wait for the table"
            )
            seen = await _migrator(pool, migrations).hybrid_status(REWRITE)
            shadow = await _one(pool, "bm_new_")
            shadow_oid = await _oid(pool, shadow)
            await _kill(pool, worker)
            assert await _oid(pool) == store.oid
        finally:
            await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.CUTTING_OVER, SWAP)
    status = await _migrator(pool, migrations).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.CUTTING_OVER, (SHADOW, COPY, FILL, INDEXES))
    assert await _oid(pool) == store.oid
    assert await _rows(pool) == store.rows
    assert await _layout(pool, store.oid) == store.layout
    assert shadow_oid is not None and await _oid(pool, shadow) == shadow_oid
    assert await _relations(pool, "bm_old") == []
    assert _capture_installed(await _triggers(pool), "memories")
    assert await _rows(pool, shadow) == rewritten(store.rows)
    return store, shadow_oid


async def test_a_runner_killed_while_the_swap_waits_for_the_table_swaps_nothing_and_the_next_swaps_once(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap's LOCK TABLE waits behind this test's ACCESS SHARE lock when the runner is killed:
    nothing is half renamed (the original keeps its name and every row, the shadow its own, the
    capture goes on), and the next runner swaps once."""
    pool = brainmigrate_pool
    store, shadow_oid = await _runner_killed_while_the_swap_waits(brainmigrate_database, pool)

    await _resume(pool, monkeypatch)

    assert await _assert_swapped_in(pool, store) == shadow_oid


@attrs.frozen
class Written:
    """What the application wrote to the swapped-in table: an edit, a deletion and an insert."""

    edited: int
    deleted: int
    added: int
    added_row: Row


async def _write_after_the_swap(pool: asyncpg.Pool[Any]) -> Written:
    await pool.execute("UPDATE memories SET content = 'a sad edit after the swap' WHERE id = 7")
    await pool.execute("DELETE FROM memories WHERE id = 8")
    row = await pool.fetchrow(
        "INSERT INTO memories (content) VALUES ('added after the swap') "
        "RETURNING id, metadata::text AS m, embedding::text AS e, created_at::text AS c"
    )
    assert row is not None
    return Written(7, 8, row["id"], ("added after the swap", json.loads(row["m"]), row["e"], row["c"]))


async def _rollback_killed_while_the_swap_back_waits(
    dsn: str, pool: asyncpg.Pool[Any], *, migrations: str = MIGRATIONS
) -> None:
    """A rollback (by a worker of ``migrations``) is killed while its swap back waits behind this
    test's ACCESS SHARE lock on the table."""
    worker = await _start_worker(dsn, f"--rollback={REWRITE}", migrations=migrations)
    try:
        async with _holding(pool, "LOCK TABLE memories IN ACCESS SHARE MODE"):
            await wait_until(
                lambda: _waiting(pool, "LOCK TABLE"), within=40, what="the swap back to wait for the table"
            )
            seen = await _migrator(pool, migrations).hybrid_status(REWRITE)
            await _kill(pool, worker)
    finally:
        await stop(worker)
    assert (seen.phase, seen.current_step) == (HybridPhase.COMPENSATING, SWAP)


async def _roll_back_into_the_original(
    pool: asyncpg.Pool[Any],
    store: Store,
    want: dict[int, Row],
    *,
    next_id: int,
    migrations: str = MIGRATIONS,
) -> None:
    """The rollback, run in this process (after one killed while its swap back waited, if any),
    puts the original back under its name holding ``want``, with its layout, the sequence going
    on from ``next_id``, and leaves nothing of the rewrite; each step applied and rolled back once."""
    migrator = _migrator(pool, migrations)
    with anyio.fail_after(60):
        results = await migrator.rollback(REWRITE)

    assert [(r.migration_id, r.status) for r in results] == [(REWRITE, MigrationStatus.ROLLED_BACK)]
    assert await _oid(pool) == store.oid
    after = await _rows(pool)
    assert after.keys() == want.keys()
    wrong = [key for key in want if after[key] != want[key]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {[(k, after[k], want[k]) for k in wrong[:3]]}"
    assert await _layout(pool, store.oid) == store.layout
    assert await _next_id(pool) == next_id
    await _nothing_of_the_rewrite_left(pool)
    assert await migrator.status(REWRITE) is MigrationStatus.ROLLED_BACK
    assert await migrator.hybrid_phase(REWRITE) is HybridPhase.ROLLED_BACK
    # Each step applied once, then each rolled back once, last first: the swap back by this
    # rollback only (a killed one's transaction left nothing).
    assert await _history(pool) == [
        *((step, "apply", "completed") for step in TO_CONTRACT),
        *((step, "rollback", "completed") for step in reversed(TO_CONTRACT)),
    ]
    assert [phase for phase, _ in await _runs(pool)] == ["rolled_back"]


async def test_a_rollback_killed_while_the_swap_back_waits_for_the_table_is_resumed_into_the_original(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the swap, the application writes to the new table; a rollback in another process is
    killed while its swap back waits behind this test's lock: nothing is swapped back yet. The
    rollback resumed puts the original back under its name, with what was written since the swap
    (and without the transform), drops the copy, and leaves nothing of the rewrite."""
    pool = brainmigrate_pool
    store = await _store(pool)
    await _resume(pool, monkeypatch)  # a run never killed, to READY_TO_CONTRACT
    new_oid = await _oid(pool)
    written = await _write_after_the_swap(pool)
    swapped = await _rows(pool)
    assert swapped[written.edited] == (
        "a sad edit after the swap",
        {**store.rows[written.edited][1], "sentiment": "positive"},
        *store.rows[written.edited][2:],
    )
    assert written.deleted not in swapped and swapped[written.added] == written.added_row
    await _rollback_killed_while_the_swap_back_waits(brainmigrate_database, pool)

    assert await _oid(pool) == new_oid
    assert await _rows(pool) == swapped
    old = await _one(pool, "bm_old_")
    assert await _oid(pool, old) == store.oid
    assert await _rows(pool, old) == store.rows
    assert _capture_installed(await _triggers(pool), "memories")

    # The rows written since the swap come back as the application wrote them to the new table
    # (the edited memory keeps the label it had there); every other row is the original's.
    want = {key: row for key, row in store.rows.items() if key != written.deleted}
    want[written.edited] = swapped[written.edited]
    want[written.added] = written.added_row
    await _roll_back_into_the_original(pool, store, want, next_id=written.added + 1)


async def test_a_run_abandoned_after_its_runner_was_killed_mid_copy_leaves_the_table_as_it_was_and_no_more(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any]
) -> None:
    """Killed mid-copy, then given up: the table is untouched, row by row, and carries no capture;
    no shadow, capture function or change log is left; history says abandoned, and why."""
    pool = brainmigrate_pool
    store = await _store(pool)
    worker = await _start_worker(brainmigrate_database, "--transform-delay=0.15")
    try:

        async def partly() -> bool:
            return 4 * BATCH <= await committed(pool, COPY) <= ROWS - 8 * BATCH

        await wait_until(partly, within=40, what="the copy to commit part of the rows")
        await _kill(pool, worker)
    finally:
        await stop(worker)
    assert await _relations(pool, "bm_new_")  # what the killed run left

    record = await _migrator(pool).abandon(REWRITE, reason="the copy is given up after its runner died")

    assert record.operation.value == "abandon"
    assert await _migrator(pool).hybrid_phase(REWRITE) is HybridPhase.ABANDONED
    runs = await _runs(pool)
    assert len(runs) == 1 and runs[0][0] == "abandoned"
    assert "the copy is given up after its runner died" in (runs[0][1] or "")
    assert (await _history(pool))[-1] == (REWRITE, "abandon", "completed")
    assert await _oid(pool) == store.oid
    assert await _rows(pool) == store.rows
    assert await _layout(pool, store.oid) == store.layout
    await _nothing_of_the_rewrite_left(pool)
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
    log: list[tuple[int, Row | None, int]] = attrs.field(factory=list)
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

    def expected(self, store: Store) -> tuple[dict[int, Row], dict[int, Row]]:
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
    store = await _store(pool)
    writer = Writer(brainmigrate_database, store.oid)
    monkeypatch.setenv(DELAY_VARIABLE, "0")
    resumer = await asyncpg.create_pool(
        brainmigrate_database, min_size=1, max_size=4, server_settings={"application_name": RESUMER_NAME}
    )
    results: list[tuple[str, MigrationStatus]] = []

    async def resume() -> None:
        ran = await Migrator(resumer, migrations_dir(MIGRATIONS), config=CONFIG).run_pending()
        results.extend((r.migration_id, r.status) for r in ran)

    def written(count: int) -> Any:
        async def probe() -> bool:
            return writer.writes() >= count

        return probe

    try:
        with anyio.fail_after(90):
            async with anyio.create_task_group() as application:
                application.start_soon(writer.run)
                worker = await _start_worker(brainmigrate_database, "--transform-delay=0.15")
                try:

                    async def partly() -> bool:
                        return (
                            4 * BATCH <= await committed(pool, COPY) <= ROWS - 8 * BATCH
                            and writer.writes() >= 30
                        )

                    await wait_until(partly, within=40, what="the copy and the application to write")
                    await _kill(pool, worker)
                finally:
                    await stop(worker)
                at_kill = writer.writes()
                await wait_until(written(at_kill + 30), within=20, what="writes after the kill")

                shadow = await _one(pool, "bm_new_")
                # The task group ends once the resumed run has returned, after this test's lock on
                # the shadow is released: it builds the indexes, replays the changes and swaps.
                lock = f'LOCK TABLE "{shadow}" IN ROW EXCLUSIVE MODE'
                async with anyio.create_task_group() as runner, _holding(pool, lock):
                    runner.start_soon(resume)
                    await wait_until(
                        lambda: _waiting_for(pool, shadow, RESUMER_NAME),
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
    await _assert_swapped_in(pool, store, expected=new, old_rows=old, next_id=max(inserted) + 1)
