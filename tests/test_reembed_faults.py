"""Re-embedding under faults: a runner SIGKILLed in each phase, then a new runner resumes.

A real worker process (``workers/reembed_worker.py``) runs the re-embedding of
``workers/reembed_toy`` over 2,000 memories whose trigger counts the writes of each row. The test
holds the worker in a phase with the server's own waits (a lock it keeps on the table, a snapshot
it keeps open) or catches it mid-backfill (its checkpoints have committed part of the rows), and
SIGKILLs it. A new runner then resumes, and the end state is exactly that of a run never killed:
every memory's vector the toy model's vector of its text, each step applied once, one generation
moved from building to active, the old column kept as ``embedding_previous``, nothing compensated,
the run ready to contract; contract then completes. Two workers at once share the backfill, and
one of them SIGSTOPped past its lease loses its chunk to the other. Every process logs the texts
its model calls embedded, so that the calls are counted per text across processes.
"""

from __future__ import annotations

import asyncio
import json
import signal
import struct
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import GenerationStatus, HybridPhase, MigrationConfig, MigrationStatus, Migrator
from reembed_support import columns, create_store, indexes, toy_vector, vectors
from workers.harness import (
    applied,
    committed,
    end_sessions_named,
    finish,
    migrations_dir,
    sessions_named,
    sigkill,
    start_role_worker,
    stop,
    wait_until,
)

pytestmark = pytest.mark.anyio

ROWS = 2_000
KEYS_FROM = 1
BATCH = 50
MIGRATIONS = "reembed_toy"
REEMBED = "reembed_toy_faults_001"
EXPAND, BACKFILL, INDEX, CUTOVER = (
    f"{REEMBED}/{step}" for step in ("expand", "backfill", "index", "cutover")
)
WORKER_NAME = "reembed worker"
LOG_VARIABLE, DELAY_VARIABLE = "BM_EMBED_LOG", "BM_EMBED_DELAY"
#: The resuming runner's (in this process).
CONFIG = MigrationConfig(batch_size=BATCH, checkpoint_frequency=BATCH, concurrency=2)

#: A count of each row's writes, and a table for a snapshot that holds no lock on the memories.
WRITES_DDL = """
ALTER TABLE memories ADD COLUMN writes int NOT NULL DEFAULT 0;
CREATE FUNCTION count_memory_writes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.writes := OLD.writes + 1; RETURN NEW; END $$;
CREATE TRIGGER memories_count_writes BEFORE UPDATE ON memories
    FOR EACH ROW EXECUTE FUNCTION count_memory_writes();
CREATE TABLE elsewhere (x int);
"""

#: The memories' columns and indexes (indexed column) before cutover, and after it.
BEFORE_CUTOVER = (
    (
        "content text",
        "embedding vector(8)",
        "embedding_next vector(12)",
        "embedding_next_md5 uuid",
        "id bigint",
        "metadata jsonb",
        "writes integer",
    ),
    (
        "memories_embedding_idx embedding",
        "memories_embedding_next_idx embedding_next",
        "memories_pkey id",
    ),
)
AFTER_CUTOVER = (
    (
        "content text",
        "embedding vector(12)",
        "embedding_next_md5 uuid",
        "embedding_previous vector(8)",
        "id bigint",
        "metadata jsonb",
        "writes integer",
    ),
    (
        "memories_embedding_idx embedding",
        "memories_embedding_idx_previous embedding_previous",
        "memories_pkey id",
    ),
)
_LAYOUT = """
SELECT (SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attname)
          FROM pg_attribute WHERE attrelid = 'memories'::regclass AND attnum > 0 AND NOT attisdropped),
       (SELECT array_agg(c.relname || ' ' || a.attname ORDER BY c.relname)
          FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
          JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
         WHERE x.indrelid = 'memories'::regclass)
"""


@attrs.frozen
class Store:
    """The memories as created: each one's text and old vector."""

    texts: dict[int, str]
    old: dict[int, list[float]]


async def _store(pool: asyncpg.Pool[Any]) -> Store:
    await create_store(pool, ROWS)
    await pool.execute(WRITES_DDL)
    texts = {row["id"]: row["content"] for row in await pool.fetch("SELECT id, content FROM memories")}
    return Store(texts, await vectors(pool))


async def _start_worker(
    dsn: str, log: Path, *options: str, name: str = WORKER_NAME
) -> asyncio.subprocess.Process:
    return await start_role_worker(
        "reembed_worker.py",
        dsn,
        MIGRATIONS,
        f"--batch-size={BATCH}",
        f"--embed-log={log}",
        f"--application-name={name}",
        *options,
    )


async def _waiting_for_lock(pool: asyncpg.Pool[Any], query_prefix: str) -> bool:
    """Whether a worker's session waits for a lock in a statement starting with ``query_prefix``."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND starts_with(application_name, $1) AND wait_event_type = 'Lock' AND starts_with(query, $2)",
            WORKER_NAME,
            query_prefix,
        )
    )


async def _history(pool: asyncpg.Pool[Any]) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT migration_id, operation, status FROM brainmigrate.migration_history ORDER BY attempt_id"
    )
    return [tuple(row) for row in rows]


async def _layout(pool: asyncpg.Pool[Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    row = await pool.fetchrow(_LAYOUT)
    assert row is not None
    return tuple(row[0]), tuple(row[1])


async def _next_index_valid(pool: asyncpg.Pool[Any]) -> bool | None:
    valid: bool | None = await pool.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('memories_embedding_next_idx')"
    )
    return valid


def _float4(vector: list[float]) -> tuple[float, ...]:
    """``vector`` as pgvector stores it: 4-byte floats (its text form round-trips to those exactly)."""
    return struct.unpack(f"{len(vector)}f", struct.pack(f"{len(vector)}f", *vector))


def _embedded(log: Path) -> Counter[str]:
    """How many times a process's model calls embedded each text."""
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


def _migrator(pool: asyncpg.Pool[Any]) -> Migrator:
    return Migrator(pool, migrations_dir(MIGRATIONS), config=CONFIG)


async def _resume(pool: asyncpg.Pool[Any], log: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """A new runner in this process carries the re-embedding on; the items its backfill wrote."""
    monkeypatch.setenv(LOG_VARIABLE, str(log))
    monkeypatch.setenv(DELAY_VARIABLE, "0")
    with anyio.fail_after(60):
        results = await _migrator(pool).run_pending()
    assert [(r.migration_id, r.status) for r in results] == [(REEMBED, MigrationStatus.RUNNING)]
    return results[0].items_processed


async def _assert_as_if_never_killed(
    pool: asyncpg.Pool[Any], store: Store, *, interrupted: bool = False
) -> None:
    """Every memory holds the toy model's vector of its text, written once; each step applied once
    (``interrupted``: the index build was run again after an interruption, nothing else); one
    generation, building then active; the old column kept; nothing compensated; ready to contract.
    Then contract completes."""
    new = await vectors(pool)
    assert new.keys() == store.texts.keys()
    wrong = [key for key, vector in new.items() if _float4(vector) != _float4(toy_vector(store.texts[key]))]
    assert not wrong, f"{len(wrong)} memories hold another vector, e.g. {wrong[:5]}"
    assert await vectors(pool, "embedding_previous") == store.old
    writes = await pool.fetch("SELECT writes, count(*) FROM memories GROUP BY writes ORDER BY writes")
    assert {row[0]: row[1] for row in writes} == {1: ROWS}
    assert await _layout(pool) == AFTER_CUTOVER
    assert await pool.fetchval(
        "SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid = 'memories'::regclass"
    )

    history = await _history(pool)
    applied = [row[0] for row in history if row[1:] == ("apply", "completed")]
    assert applied == [EXPAND, BACKFILL, INDEX, CUTOVER]  # each once, in order
    others = [row for row in history if row[1:] != ("apply", "completed")]
    assert others == ([(INDEX, "apply", "dirty"), (INDEX, "resolve", "completed")] if interrupted else [])
    runs = await pool.fetch("SELECT phase, error FROM brainmigrate.hybrid_runs ORDER BY run_id")
    assert [tuple(run) for run in runs] == [("ready_to_contract", None)]  # one run, never compensated
    data_runs = await pool.fetch("SELECT migration_id, status FROM brainmigrate.data_runs ORDER BY run_id")
    assert [tuple(run) for run in data_runs] == [(BACKFILL, "completed")]
    assert await committed(pool, BACKFILL) == ROWS

    migrator = _migrator(pool)
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    generations = await migrator.embedding_generations(table="memories", column="embedding")
    assert [(g.model.name, g.model.dimensions, g.status) for g in generations] == [
        ("unknown", 8, GenerationStatus.PREVIOUS),
        ("toy-embedder", 12, GenerationStatus.ACTIVE),
    ]
    assert generations[1].index_phase == "done"

    with anyio.fail_after(30):
        result = await migrator.contract(REEMBED)
    assert result.status is MigrationStatus.COMPLETED
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.COMPLETED
    assert set(await columns(pool)) == {"id", "content", "metadata", "embedding", "writes"}
    assert set(await indexes(pool)) == {"memories_pkey", "memories_embedding_idx"}
    assert await vectors(pool) == new
    generations = await migrator.embedding_generations(table="memories", column="embedding")
    assert [(g.model.name, g.status) for g in generations] == [
        ("unknown", GenerationStatus.RETIRED),
        ("toy-embedder", GenerationStatus.ACTIVE),
    ]


@asynccontextmanager
async def _transaction(
    pool: asyncpg.Pool[Any],
    *statements: str,
    isolation: Literal["read_committed", "repeatable_read"] = "read_committed",
) -> AsyncIterator[None]:
    """A transaction of this test, open (after ``statements``) until the block ends, rolled back."""
    async with pool.acquire() as conn:
        transaction = conn.transaction(isolation=isolation)
        await transaction.start()
        try:
            for statement in statements:
                await conn.execute(statement)
            yield
        finally:
            await transaction.rollback()


# -- SIGKILL in each phase -----------------------------------------------------------------------


async def test_a_runner_killed_while_expand_waits_for_the_table_is_resumed_as_if_never_killed(
    brainmigrate_database: str,
    brainmigrate_pool: asyncpg.Pool[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Expand's ALTER TABLE waits behind this test's ACCESS SHARE lock when the runner is killed:
    its transaction (the generations it recorded too) is gone, and a new runner runs every phase."""
    pool = brainmigrate_pool
    store = await _store(pool)
    killed, resumed = tmp_path / "killed.log", tmp_path / "resumed.log"
    async with _transaction(pool, "LOCK TABLE memories IN ACCESS SHARE MODE"):
        worker = await _start_worker(brainmigrate_database, killed, "--lock-timeout-ms=60000")
        try:
            await wait_until(
                lambda: _waiting_for_lock(pool, "ALTER TABLE"), within=30, what="expand to wait for the table"
            )
            seen = await _migrator(pool).hybrid_status(REEMBED)
            assert await sigkill(worker) == -signal.SIGKILL
        finally:
            await stop(worker)
    await end_sessions_named(pool, WORKER_NAME)

    assert (seen.phase, seen.current_step) == (HybridPhase.EXPANDING, EXPAND)
    status = await _migrator(pool).hybrid_status(REEMBED)
    assert (status.phase, status.steps_done) == (HybridPhase.EXPANDING, ())
    assert set(await columns(pool)) == {"id", "content", "metadata", "embedding", "writes"}
    assert await _migrator(pool).embedding_generations(table="memories", column="embedding") == []

    assert await _resume(pool, resumed, monkeypatch) == ROWS
    await _assert_as_if_never_killed(pool, store)
    assert _embedded(killed) == Counter()
    assert _embedded(resumed) == Counter(store.texts.values())  # each text once


async def test_a_runner_killed_mid_backfill_is_resumed_from_its_checkpoints_embedding_only_the_rest(
    brainmigrate_database: str,
    brainmigrate_pool: asyncpg.Pool[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed once part of the rows is checkpointed: exactly those keep their new vectors, and the
    new runner embeds the others, once each; a text is embedded twice only if its batch had not
    committed when the runner was killed."""
    pool = brainmigrate_pool
    store = await _store(pool)
    killed, resumed = tmp_path / "killed.log", tmp_path / "resumed.log"
    worker = await _start_worker(brainmigrate_database, killed, "--embed-delay=0.1")
    try:

        async def partly() -> bool:
            return 4 * BATCH <= await committed(pool, BACKFILL) <= ROWS - 8 * BATCH

        await wait_until(partly, within=30, what="the backfill to commit part of the rows")
        seen = await _migrator(pool).hybrid_status(REEMBED)
        assert await sigkill(worker) == -signal.SIGKILL
    finally:
        await stop(worker)
    await end_sessions_named(pool, WORKER_NAME)

    assert (seen.phase, seen.current_step) == (HybridPhase.BACKFILLING, BACKFILL)
    at_kill = await committed(pool, BACKFILL)
    assert 0 < at_kill < ROWS
    done = {row[0] for row in await pool.fetch("SELECT id FROM memories WHERE embedding_next IS NOT NULL")}
    assert len(done) == at_kill
    writes = await pool.fetch("SELECT writes, count(*) FROM memories GROUP BY writes ORDER BY writes")
    assert {row[0]: row[1] for row in writes} == {0: ROWS - at_kill, 1: at_kill}
    status = await _migrator(pool).hybrid_status(REEMBED)
    assert (status.phase, status.steps_done) == (HybridPhase.BACKFILLING, (EXPAND,))

    assert await _resume(pool, resumed, monkeypatch) == ROWS - at_kill
    await _assert_as_if_never_killed(pool, store)
    before, after = _embedded(killed), _embedded(resumed)
    assert set(before.values()) == {1} and set(after.values()) == {1}
    assert set(after) == {store.texts[key] for key in store.texts.keys() - done}
    assert {store.texts[key] for key in done} <= set(before)
    assert set(before) & set(after) <= {store.texts[key] for key in store.texts.keys() - done}


async def _build_phase(pool: asyncpg.Pool[Any]) -> str | None:
    phase: str | None = await pool.fetchval(
        "SELECT phase FROM pg_stat_progress_create_index WHERE relid = 'memories'::regclass"
    )
    return phase


async def _kill_in_index_build(pool: asyncpg.Pool[Any], dsn: str, log: Path, *, server_finishes: bool) -> int:
    """Start a worker, catch its CREATE INDEX CONCURRENTLY waiting for this test's old snapshot,
    and SIGKILL it. What is left of it on the server is ended while the build still waits, or
    (``server_finishes``) only once the snapshot has ended and the build has finished. Returns the
    index's oid (0 when there is none)."""
    async with _transaction(pool, "SELECT 1 FROM elsewhere", isolation="repeatable_read"):
        worker = await _start_worker(dsn, log)
        try:

            async def waiting() -> bool:
                return await _build_phase(pool) == "waiting for old snapshots"

            await wait_until(waiting, within=40, what="the index build to wait for old snapshots")
            seen = await _migrator(pool).hybrid_status(REEMBED)
            assert await sigkill(worker) == -signal.SIGKILL
        finally:
            await stop(worker)
        if not server_finishes:
            await end_sessions_named(pool, WORKER_NAME)  # the build is cancelled while it waits
    if server_finishes:
        await wait_until(
            lambda: _next_index_valid(pool),
            within=30,
            what="the server to finish the build of the dead runner",
        )
        await end_sessions_named(pool, WORKER_NAME)

    assert (seen.phase, seen.current_step) == (HybridPhase.CUTTING_OVER, INDEX)
    assert await _build_phase(pool) is None
    status = await _migrator(pool).hybrid_status(REEMBED)
    assert (status.phase, status.steps_done) == (HybridPhase.CUTTING_OVER, (EXPAND, BACKFILL))
    oid: int = await pool.fetchval("SELECT coalesce(to_regclass('memories_embedding_next_idx')::oid, 0)")
    return oid


async def test_a_runner_killed_while_building_the_index_leaves_an_invalid_index_the_next_run_builds_again(
    brainmigrate_database: str,
    brainmigrate_pool: asyncpg.Pool[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CREATE INDEX CONCURRENTLY waits for this test's old snapshot when the runner is killed (and
    its session ended): the build leaves an INVALID index, and the next runner drops it and builds
    it again, valid; the backfill is not run again."""
    pool = brainmigrate_pool
    store = await _store(pool)
    killed, resumed = tmp_path / "killed.log", tmp_path / "resumed.log"

    leftover = await _kill_in_index_build(pool, brainmigrate_database, killed, server_finishes=False)

    assert leftover and await _next_index_valid(pool) is False  # the leftover of the interrupted build
    assert await _resume(pool, resumed, monkeypatch) == 0
    await _assert_as_if_never_killed(pool, store, interrupted=True)
    rebuilt = await pool.fetchval("SELECT 'memories_embedding_idx'::regclass::oid")
    assert rebuilt != leftover
    assert _embedded(killed) == Counter(store.texts.values())
    assert _embedded(resumed) == Counter()


async def test_an_index_build_the_server_finished_after_its_runner_was_killed_is_kept_not_built_again(
    brainmigrate_database: str,
    brainmigrate_pool: asyncpg.Pool[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The runner is killed while its build waits, and the server finishes the build once the old
    snapshot ends: the next runner finds the index valid, keeps it (recording the build done) and
    carries on."""
    pool = brainmigrate_pool
    store = await _store(pool)
    killed, resumed = tmp_path / "killed.log", tmp_path / "resumed.log"

    built = await _kill_in_index_build(pool, brainmigrate_database, killed, server_finishes=True)

    assert built and await _next_index_valid(pool) is True
    assert await _resume(pool, resumed, monkeypatch) == 0
    await _assert_as_if_never_killed(pool, store, interrupted=True)
    assert await pool.fetchval("SELECT 'memories_embedding_idx'::regclass::oid") == built
    assert _embedded(killed) == Counter(store.texts.values())
    assert _embedded(resumed) == Counter()


async def test_a_runner_killed_while_cutover_waits_for_the_table_switches_nothing_and_the_next_switches_once(
    brainmigrate_database: str,
    brainmigrate_pool: asyncpg.Pool[Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cutover's LOCK TABLE waits behind this test's long transaction when the runner is killed:
    nothing is switched, no state between the two layouts is ever visible to another session, and
    the next runner switches the names once."""
    pool = brainmigrate_pool
    store = await _store(pool)
    killed, resumed = tmp_path / "killed.log", tmp_path / "resumed.log"
    seen_layouts: list[tuple[tuple[str, ...], tuple[str, ...]]] = []
    watching = True

    async def watch() -> None:
        """Read the layout from another session, again and again, each time in one statement, and
        once more after the resumed run returned."""
        while True:
            last = not watching
            layout = await _layout(pool)
            if not seen_layouts or seen_layouts[-1] != layout:
                seen_layouts.append(layout)
            if last:
                return
            await anyio.sleep(0.01)

    worker = await _start_worker(brainmigrate_database, killed, "--embed-delay=0.02")
    try:
        await wait_until(lambda: applied(pool, EXPAND), within=30, what="expand to be applied")
        async with _transaction(pool, "LOCK TABLE memories IN ACCESS SHARE MODE"):
            await wait_until(
                lambda: _waiting_for_lock(pool, "LOCK TABLE"), within=40, what="cutover to wait for the table"
            )
            seen = await _migrator(pool).hybrid_status(REEMBED)
            assert await sigkill(worker) == -signal.SIGKILL
            assert await _layout(pool) == BEFORE_CUTOVER
        # The transaction ended: what is left of the worker on the server may take the lock now,
        # until it is ended, and then the new runner switches the names.
        async with anyio.create_task_group() as group:
            group.start_soon(watch)
            try:
                await end_sessions_named(pool, WORKER_NAME)
                assert await _layout(pool) == BEFORE_CUTOVER
                status = await _migrator(pool).hybrid_status(REEMBED)
                assert (status.phase, status.steps_done) == (
                    HybridPhase.CUTTING_OVER,
                    (EXPAND, BACKFILL, INDEX),
                )
                generations = await _migrator(pool).embedding_generations(
                    table="memories", column="embedding"
                )
                assert [g.status for g in generations] == [GenerationStatus.ACTIVE, GenerationStatus.BUILDING]

                assert await _resume(pool, resumed, monkeypatch) == 0
            finally:
                watching = False
    finally:
        await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.CUTTING_OVER, CUTOVER)
    assert seen_layouts == [BEFORE_CUTOVER, AFTER_CUTOVER]  # switched once, all at once
    await _assert_as_if_never_killed(pool, store)
    assert _embedded(killed) == Counter(store.texts.values())
    assert _embedded(resumed) == Counter()


# -- runners at once -----------------------------------------------------------------------------


async def test_two_runners_at_once_embed_each_memory_once_and_record_one_generation(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    """Two processes run the re-embedding at the same time, sharing its backfill: every text is
    embedded once across both, each step applied once, one generation recorded."""
    pool = brainmigrate_pool
    store = await _store(pool)
    logs = [tmp_path / f"worker{n}.log" for n in (1, 2)]
    workers = [
        await _start_worker(
            brainmigrate_database, log, "--parallel", "--embed-delay=0.08", name=f"{WORKER_NAME} {n}"
        )
        for n, log in enumerate(logs, 1)
    ]
    try:
        outcomes = [await finish(worker, within=60) for worker in workers]
    finally:
        for worker in workers:
            await stop(worker)

    for outcome in outcomes:
        assert outcome.returncode == 0, (outcome.report, outcome.stderr)
        assert outcome.results == [(REEMBED, "running")]  # ready to contract, by hand
    await _assert_as_if_never_killed(pool, store)
    counts = [_embedded(log) for log in logs]
    assert all(counts), "both runners took part in the backfill"
    assert counts[0] + counts[1] == Counter(store.texts.values())  # each text once across both


@pytest.mark.parametrize("then", ["killed", "continued"])
async def test_a_stopped_runner_loses_its_chunk_to_the_other_which_finishes_and_nothing_is_written_twice(
    brainmigrate_database: str, brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path, then: str
) -> None:
    """Of two runners sharing the backfill, one is SIGSTOPped (between transactions) past its
    chunk's lease: the other takes the chunk over and finishes the re-embedding, then the stopped
    one is killed, or continued (SIGCONT): it fails, and leaves the run the other finished exactly
    as it is (nothing reversed, nothing compensated). No row is written twice or left out, and a
    text is embedded by both only if the stopped runner had not committed it."""
    pool = brainmigrate_pool
    store = await _store(pool)
    names = [f"{WORKER_NAME} a", f"{WORKER_NAME} b"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    options = ("--parallel", "--lease-seconds=2", "--embed-delay=0.15")
    workers = [
        await _start_worker(brainmigrate_database, log, *options, name=name)
        for name, log in zip(names, logs, strict=True)
    ]
    stopped, other = workers

    async def leases() -> dict[str, list[asyncpg.Record]]:
        rows = await pool.fetch(
            "SELECT a.application_name, c.chunk, c.lower_key, c.upper_key, c.cursor_key "
            "FROM brainmigrate.data_chunks c JOIN pg_stat_activity a ON a.pid = c.lease_pid "
            "WHERE c.migration_id = $1 AND c.lease_owner IS NOT NULL AND NOT c.done",
            BACKFILL,
        )
        held: dict[str, list[asyncpg.Record]] = {}
        for row in rows:
            held.setdefault(row["application_name"], []).append(row)
        return held

    async def both_leasing() -> bool:
        if not await pool.fetchval("SELECT to_regclass('brainmigrate.data_chunks') IS NOT NULL"):
            return False
        return set(await leases()) == set(names)

    try:
        await wait_until(both_leasing, within=30, what="both runners to lease a chunk")
        for _ in range(50):  # stopped between transactions (no lock, no snapshot), holding a chunk
            stopped.send_signal(signal.SIGSTOP)
            await anyio.sleep(0.2)
            states = await pool.fetch(
                "SELECT state, backend_xid, backend_xmin FROM pg_stat_activity WHERE application_name = $1",
                names[0],
            )
            between = all(
                s["state"] == "idle" and s["backend_xid"] is None and s["backend_xmin"] is None
                for s in states
            )
            held = (await leases()).get(names[0], [])
            if between and len(held) == 1:
                break
            stopped.send_signal(signal.SIGCONT)
            await anyio.sleep(0.07)
        else:
            raise AssertionError("the runner to stop was never caught between transactions")
        pids = set(await sessions_named(pool, names[0]))
        chunk = held[0]

        outcome = await finish(other, within=60)  # it takes the chunk over once the lease is over
        assert outcome.returncode == 0, (outcome.report, outcome.stderr)
        assert outcome.results == [(REEMBED, "running")]
        row = await pool.fetchrow(
            "SELECT done, lease_pid FROM brainmigrate.data_chunks WHERE migration_id = $1 AND chunk = $2",
            BACKFILL,
            chunk["chunk"],
        )
        assert row is not None and row["done"] and row["lease_pid"] not in pids
        assert await _migrator(pool).hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT

        if then == "killed":
            assert await sigkill(stopped) == -signal.SIGKILL  # never let on: it dies stopped
        else:
            stopped.send_signal(signal.SIGCONT)
            late = await finish(stopped, within=60)
            assert late.returncode != 0, late.report
            assert "another runner" in late.stderr + json.dumps(late.report), (late.report, late.stderr)
    finally:
        for worker in workers:
            await stop(worker)
    await end_sessions_named(pool, names[0])

    await _assert_as_if_never_killed(pool, store)

    first, second = (_embedded(log) for log in logs)
    assert set(first.values()) <= {1} and set(second.values()) <= {1}
    assert set(first) | set(second) == set(store.texts.values())
    # A text embedded by both is one the stopped runner had read but not committed when stopped.
    if chunk["cursor_key"] is not None:
        after = int(chunk["cursor_key"])
    else:
        after = int(chunk["lower_key"]) - 1 if chunk["lower_key"] is not None else KEYS_FROM - 1
    upper = int(chunk["upper_key"]) if chunk["upper_key"] is not None else KEYS_FROM + ROWS
    assert set(first) & set(second) <= {store.texts[key] for key in store.texts if after < key < upper}
