"""What the rewrite tests share: the enrichment migration they run as a rewrite, and the table
an online rewrite runs on while the application writes to it, the application's recorded writes and
the gates that hold each of the rewrite's phases on the server, not by sleeping.

The table's CHECK constraint and one of its expression indexes call a function that, for memory
``HELD``, waits for an advisory lock the test holds: the copy into the shadow and the build of that
index on the shadow stop at ``HELD`` until the test lets them go, while the application's own
connection passes freely.

The fault tests' own store (a serial key, a GIN, an HNSW and a B-tree index, a CHECK and a UNIQUE
constraint) is rewritten by a worker process (``workers/rewrite_worker.py`` running
``workers/rewrite_toy``, or ``workers/rewrite_toy_instant``: its migration with the instant swap
back): starting and killing that worker, reading the store, its layout and what the rewrite leaves
in the catalog, the kills while the swap or the swap back waits for the table, and the end states
of a rewrite swapped in and of one rolled back into the original are shared below.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import anyio
import asyncpg
import attrs
import pytest

from brainmigrate import (
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
from workers.harness import (
    applied,
    end_sessions_named,
    migrations_dir,
    sigkill,
    start_role_worker,
    stop,
    wait_until,
)


def sentiment(content: str) -> str:
    """The sentiment label the enrichment gives a memory of this content."""
    return "negative" if "sad" in content else "positive"


def enrichment(migration_id: str = "enrich_001", **attributes: Any) -> type[MemoryDataMigration]:
    """A rewrite labelling each memory's metadata with its sentiment, with ``attributes`` set on it."""

    class Enrich(MemoryDataMigration):
        strategy: ClassVar[Any] = "rewrite"

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name="add a sentiment label",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_DATA,
                reversible=True,
            )

        async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
            metadata = dict(memory["metadata"])
            if "sentiment" in metadata:
                return None
            metadata["sentiment"] = sentiment(memory["content"])
            return BulkMemoryItem(memory_id=memory["id"], metadata=metadata)

    for name, value in attributes.items():
        setattr(Enrich, name, value)
    return Enrich


COUNT = 3_000
#: The memory at which the copy and the gated index build wait while their gate is closed.
HELD = 1_500
#: The advisory locks (key1, 0) closing the gates: the copy's, and the index build's.
COPY_GATE, INDEX_GATE = 1, 2
#: Ranges of 200 keys, each committed on its own: the copy is part done when it stops at HELD.
CONFIG = MigrationConfig(batch_size=200, checkpoint_frequency=200, statement_lock_timeout_ms=60_000)
#: How long a phase may take to be reached, at most.
WAIT_SECONDS = 30.0

STORE = f"""
CREATE FUNCTION gate(gate int, key bigint) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF key = {HELD} AND coalesce(current_setting('application.writer', true), '') <> 'on' THEN
        PERFORM pg_advisory_xact_lock_shared(gate, 0);
    END IF;
    RETURN true;
END
$$;
CREATE TABLE memories (
    id       bigserial PRIMARY KEY,
    content  text NOT NULL,
    metadata jsonb,
    slug     text,
    CONSTRAINT copied_through_the_gate CHECK (gate({COPY_GATE}, id))
);
CREATE INDEX memories_metadata_idx ON memories USING gin (metadata);
CREATE INDEX memories_gated_idx ON memories ((gate({INDEX_GATE}, id)));
"""

Metadata = Any  # a JSON value, or None for SQL NULL
Row = tuple[str, Metadata]


def metadata_of(i: int) -> dict[str, Any]:
    """The metadata memory ``i`` starts with."""
    document: dict[str, Any] = {"n": i}
    if i % 3 == 0:
        document["mood"] = "calm" if i % 2 else "tense"
    if i % 5 == 0:
        document["analysis"] = {"score": i % 7}
    if i % 11 == 0:
        document["schema_version"] = 1
    return document


async def the_old_table(pool: asyncpg.Pool[Any]) -> str:
    """The name of the original table, kept beside the rewritten one since the swap."""
    name: str = await pool.fetchval("SELECT relname FROM pg_class WHERE relname LIKE 'bm\\_old\\_%'")
    return name


async def reverse_logged(pool: asyncpg.Pool[Any]) -> int:
    """The keys the reverse change log holds, for a swap back to replay."""
    log = await pool.fetchval(
        "SELECT format('%I.%I', relnamespace::regnamespace, relname) FROM pg_class "
        "WHERE relname LIKE 'rewrite\\_back\\_%' AND relkind = 'r'"
    )
    count: int = await pool.fetchval(f"SELECT count(*) FROM {log}")
    return count


def encoded(metadata: Metadata) -> str | None:
    return None if metadata is None else json.dumps(metadata)


async def create_store(pool: asyncpg.Pool[Any], *, unique_slugs: bool = False) -> dict[int, Row]:
    """The table with ``COUNT`` memories (each with its slug, unique if asked); their content and
    metadata by key."""
    await pool.execute(STORE)
    if unique_slugs:
        await pool.execute("ALTER TABLE memories ADD CONSTRAINT memories_slug_key UNIQUE (slug)")
    start = {i: (f"memory {i}", metadata_of(i)) for i in range(1, COUNT + 1)}
    await pool.execute(
        "INSERT INTO memories (id, content, metadata, slug) "
        "SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::text[])",
        list(start),
        [content for content, _ in start.values()],
        [encoded(metadata) for _, metadata in start.values()],
        [f"m{i}" for i in start],
    )
    await pool.execute("SELECT setval('memories_id_seq', $1)", COUNT)
    return start


async def stored(
    pool: asyncpg.Pool[Any] | asyncpg.Connection[Any], table: str = "memories"
) -> dict[int, Row]:
    records = await pool.fetch(f'SELECT id, content, metadata::text AS m FROM "{table}"')
    return {r["id"]: (r["content"], None if r["m"] is None else json.loads(r["m"])) for r in records}


async def slugs(pool: asyncpg.Pool[Any]) -> dict[int, str | None]:
    return {r["id"]: r["slug"] for r in await pool.fetch("SELECT id, slug FROM memories")}


class Application:
    """The application's connection: every write it makes is recorded, so that what each memory
    last held is known (``written``: content and metadata by key, None once deleted)."""

    def __init__(self, conn: asyncpg.Connection[Any], start: dict[int, Row]) -> None:
        self.conn = conn
        self.written: dict[int, Row | None] = dict(start)
        self.writes = 0

    async def insert(self, content: str, metadata: Metadata, key: int | None = None) -> int:
        if key is None:
            new = await self.conn.fetchval(
                "INSERT INTO memories (content, metadata) VALUES ($1, $2::jsonb) RETURNING id",
                content,
                encoded(metadata),
            )
        else:
            new = await self.conn.fetchval(
                "INSERT INTO memories (id, content, metadata) VALUES ($1, $2, $3::jsonb) RETURNING id",
                key,
                content,
                encoded(metadata),
            )
        self.written[new] = (content, metadata)
        self.writes += 1
        return int(new)

    async def update(self, key: int, metadata: Metadata, content: str | None = None) -> None:
        before = self.written[key]
        assert before is not None, key
        content = before[0] if content is None else content
        updated = await self.conn.fetchval(
            "UPDATE memories SET content = $2, metadata = $3::jsonb WHERE id = $1 RETURNING id",
            key,
            content,
            encoded(metadata),
        )
        assert updated == key
        self.written[key] = (content, metadata)
        self.writes += 1

    async def edit(self, key: int, content: str) -> None:
        """Change the content only: the metadata stays as it is in the table."""
        before = self.written[key]
        assert before is not None, key
        assert (
            await self.conn.fetchval(
                "UPDATE memories SET content = $2 WHERE id = $1 RETURNING id", key, content
            )
            == key
        )
        self.written[key] = (content, before[1])
        self.writes += 1

    async def delete(self, key: int) -> None:
        assert await self.conn.fetchval("DELETE FROM memories WHERE id = $1 RETURNING id", key) == key
        self.written[key] = None
        self.writes += 1

    async def rekey(self, key: int, new: int) -> None:
        """Change a memory's key."""
        assert (
            await self.conn.fetchval("UPDATE memories SET id = $2 WHERE id = $1 RETURNING id", key, new)
            == new
        )
        self.written[new], self.written[key] = self.written[key], None
        self.writes += 1

    async def bulk(self, first: int, last: int, mood: str) -> int:
        """One statement rewriting the metadata of every memory from ``first`` to ``last``."""
        records = await self.conn.fetch(
            "UPDATE memories SET metadata = jsonb_build_object('n', id, 'mood', $3::text) "
            "WHERE id BETWEEN $1 AND $2 RETURNING id, content, metadata::text AS m",
            first,
            last,
            mood,
        )
        for r in records:
            self.written[r["id"]] = (r["content"], json.loads(r["m"]))
        self.writes += len(records)
        return len(records)


async def until(probe: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait (at most ``WAIT_SECONDS``) until ``probe()`` is true."""
    with anyio.move_on_after(WAIT_SECONDS):
        while not await probe():  # noqa: ASYNC110 - polls the server's state
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"waited {WAIT_SECONDS:g} s, and still not: {what}")


class Rewrite:
    """The rewrite running in a task, its phases held by gates the test opens."""

    def __init__(self, control: asyncpg.Connection[Any], original: int) -> None:
        self.control = control
        self.original = original
        self.results: list[MigrationResult] = []
        self.shadow = ""

    async def _waiting_at(self, gate: int) -> bool:
        waiting = await self.control.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = $1 AND objid = 0 AND objsubid = 2 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            gate,
        )
        return bool(waiting)

    async def copy_stopped(self) -> None:
        """Wait until the copy has reached memory HELD; then name the shadow."""
        await until(lambda: self._waiting_at(COPY_GATE), f"the copy waits at memory {HELD}")
        self.shadow = await self.control.fetchval(
            "SELECT relname::text FROM pg_class WHERE relname LIKE 'bm\\_new\\_%' AND relkind = 'r'"
        )
        assert self.shadow

    async def in_shadow(self, key: int) -> bool:
        """Whether the copy has committed memory ``key`` into the shadow."""
        return bool(await self.control.fetchval(f'SELECT count(*) FROM "{self.shadow}" WHERE id = $1', key))

    async def open_copy(self) -> None:
        await self.control.execute("SELECT pg_advisory_unlock($1, 0)", COPY_GATE)

    async def close_copy(self) -> None:
        """Close the copy's gate again: whatever writes memory HELD into the shadow next (the
        replay) waits there."""
        await self.control.execute("SELECT pg_advisory_lock($1, 0)", COPY_GATE)

    async def replay_stopped(self) -> None:
        await until(lambda: self._waiting_at(COPY_GATE), f"the replay waits at memory {HELD}")

    async def indexes_stopped(self) -> None:
        await until(lambda: self._waiting_at(INDEX_GATE), f"the index build waits at memory {HELD}")

    async def open_indexes(self) -> None:
        await self.control.execute("SELECT pg_advisory_unlock($1, 0)", INDEX_GATE)

    async def swap_waiting(self) -> None:
        """Wait until the swap waits for the table's lock (held by the application's transaction)."""

        async def waiting() -> bool:
            return bool(
                await self.control.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE relation = $1 AND mode = 'AccessExclusiveLock' "
                    "AND NOT granted "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    self.original,
                )
            )

        await until(waiting, "the swap waits for the table's lock")

    async def logged(self) -> int:
        """The changes in the forward change log, not replayed yet."""
        log = await self.control.fetchval(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname LIKE 'rewrite\\_log\\_%' AND c.relkind = 'r'"
        )
        assert log is not None
        count: int = await self.control.fetchval(f"SELECT count(*) FROM {log}")
        return count


@contextlib.asynccontextmanager
async def gated(
    dsn: str, run: Callable[[], Awaitable[list[MigrationResult]]]
) -> AsyncIterator[tuple[Rewrite, asyncpg.Connection[Any]]]:
    """Run the rewrite ``run`` starts (up to the swap) in a task, the copy and the gated index build
    held at memory HELD until the test opens them; yield it with the application's own connection."""
    control = await asyncpg.connect(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET application.writer = 'on'")
        await control.execute(
            "SELECT pg_advisory_lock($1, 0), pg_advisory_lock($2, 0)", COPY_GATE, INDEX_GATE
        )
        rewrite = Rewrite(control, await control.fetchval("SELECT 'memories'::regclass::oid"))

        async def running() -> None:
            rewrite.results = await run()

        async with anyio.create_task_group() as group:
            group.start_soon(running)
            yield rewrite, conn
            await control.execute("SELECT pg_advisory_unlock_all()")
    finally:
        await conn.close()
        await control.close()


def swapped(rewrite: Rewrite) -> None:
    assert [r.status for r in rewrite.results] == [MigrationStatus.RUNNING], rewrite.results


# -- the store a worker process rewrites (workers/rewrite_toy), for the fault tests ----------------

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
#: The config of a runner resuming in the test's own process.
TOY_CONFIG = MigrationConfig(batch_size=BATCH, checkpoint_frequency=BATCH, concurrency=2)

TOY_STORE = """
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
TOY_ROWS_SQL = """
INSERT INTO memories (content, metadata, embedding, created_at)
SELECT CASE WHEN i % 3 = 0 THEN 'a sad memory ' ELSE 'a happy memory ' END || i,
       CASE WHEN i % 10 = 0 THEN jsonb_build_object('n', i, 'keep', true) ELSE jsonb_build_object('n', i) END,
       ARRAY[i % 7, 1, i % 5 + 1]::real[]::vector,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'
  FROM generate_series(1, $1::int) AS i
"""

#: A memory as the test compares it: content, metadata, embedding (text), created_at (text).
ToyRow = tuple[str, dict[str, Any], str | None, str]

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

    rows: dict[int, ToyRow]
    oid: int
    layout: Layout


def transformed(content: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata the rewrite gives a memory: a sentiment label, unless it is marked ``keep``."""
    return metadata if metadata.get("keep") else {**metadata, "sentiment": sentiment(content)}


def rewritten(rows: dict[int, ToyRow]) -> dict[int, ToyRow]:
    """``rows`` as the rewrite must leave them: each transformed, nothing else changed."""
    return {
        key: (content, transformed(content, metadata), embedding, created)
        for key, (content, metadata, embedding, created) in rows.items()
    }


async def rows_of(pool: asyncpg.Pool[Any], table: str = "memories") -> dict[int, ToyRow]:
    records = await pool.fetch(
        f'SELECT id, content, metadata::text AS m, embedding::text AS e, created_at::text AS c FROM "{table}"'
    )
    return {r["id"]: (r["content"], json.loads(r["m"]), r["e"], r["c"]) for r in records}


async def oid_of(pool: asyncpg.Pool[Any], table: str = "memories") -> int | None:
    oid: int | None = await pool.fetchval("SELECT to_regclass($1)::oid", f'"{table}"')
    return oid


async def layout_of(pool: asyncpg.Pool[Any], oid: int) -> Layout:
    row = await pool.fetchrow(_LAYOUT, oid)
    assert row is not None
    return Layout(tuple(row[0]), tuple(row[1] or ()), tuple(row[2] or ()))


async def create_toy_store(pool: asyncpg.Pool[Any]) -> Store:
    await pool.execute(TOY_STORE)
    await pool.execute(TOY_ROWS_SQL, ROWS)
    oid = await oid_of(pool)
    assert oid is not None
    return Store(await rows_of(pool), oid, await layout_of(pool, oid))


async def relations(pool: asyncpg.Pool[Any], prefix: str, kinds: str = "r") -> list[str]:
    """The relations of the kinds ``kinds`` named ``prefix…`` in the tables' or brainmigrate's schema."""
    rows = await pool.fetch(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('public', 'brainmigrate') AND starts_with(c.relname, $1) "
        'AND c.relkind = ANY($2::text[]::"char"[]) ORDER BY 1',
        prefix,
        list(kinds),
    )
    return [row[0] for row in rows]


async def only_relation(pool: asyncpg.Pool[Any], prefix: str) -> str:
    found = await relations(pool, prefix)
    assert len(found) == 1, found
    return found[0]


async def user_triggers(pool: asyncpg.Pool[Any]) -> list[tuple[str, str]]:
    """The user triggers of the database: (table, trigger)."""
    rows = await pool.fetch(
        "SELECT tgrelid::regclass::text, tgname::text FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
    )
    return [(row[0], row[1]) for row in rows]


async def capture_functions(pool: asyncpg.Pool[Any]) -> list[str]:
    rows = await pool.fetch(
        "SELECT proname::text FROM pg_proc WHERE pronamespace = 'brainmigrate'::regnamespace "
        "AND starts_with(proname, 'rewrite_') ORDER BY 1"
    )
    return [row[0] for row in rows]


async def nothing_of_the_rewrite_left(pool: asyncpg.Pool[Any]) -> None:
    """No shadow, old table or index of theirs, no capture trigger or function, no change log."""
    left = {
        "tables and indexes": await relations(pool, "bm_", "rip"),
        "change logs": await relations(pool, "rewrite_", "rS"),
        "triggers": await user_triggers(pool),
        "functions": await capture_functions(pool),
    }
    assert left == {what: [] for what in left}


def capture_installed(triggers: list[tuple[str, str]], table: str) -> bool:
    names = {trigger for on, trigger in triggers if on == table}
    return any(t.startswith("bm_capture_") for t in names) and any(t.startswith("bm_notrunc_") for t in names)


async def start_rewrite_worker(
    dsn: str, *options: str, migrations: str = MIGRATIONS
) -> asyncio.subprocess.Process:
    """A worker process running the rewrite of ``migrations`` with ``options``."""
    return await start_role_worker(
        "rewrite_worker.py",
        dsn,
        migrations,
        f"--batch-size={BATCH}",
        f"--application-name={WORKER_NAME}",
        *options,
    )


async def kill_worker(pool: asyncpg.Pool[Any], worker: asyncio.subprocess.Process) -> None:
    """SIGKILL the worker, then end what is left of it on the server."""
    assert await sigkill(worker) == -signal.SIGKILL
    await end_sessions_named(pool, WORKER_NAME)


async def worker_waiting(pool: asyncpg.Pool[Any], query_prefix: str) -> bool:
    """Whether a session of the worker waits for a lock in a statement starting with ``query_prefix``."""
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = $1 AND wait_event_type = 'Lock' AND starts_with(query, $2)",
            WORKER_NAME,
            query_prefix,
        )
    )


async def waiting_for(pool: asyncpg.Pool[Any], table: str, application_name: str = WORKER_NAME) -> bool:
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


async def step_history(pool: asyncpg.Pool[Any]) -> list[tuple[str, str, str]]:
    rows = await pool.fetch(
        "SELECT migration_id, operation, status FROM brainmigrate.migration_history ORDER BY attempt_id"
    )
    return [(row[0], row[1], row[2]) for row in rows]


async def hybrid_runs(pool: asyncpg.Pool[Any]) -> list[tuple[str, str | None]]:
    rows = await pool.fetch("SELECT phase, error FROM brainmigrate.hybrid_runs ORDER BY run_id")
    return [(row[0], row[1]) for row in rows]


async def checkpointed(pool: asyncpg.Pool[Any]) -> list[tuple[str, int, int]]:
    """For each data step, the rows its checkpoints account for (processed or skipped) and those
    that failed."""
    counts = await pool.fetch(
        "SELECT migration_id, sum(processed + skipped) AS rows, sum(failed) AS failed "
        "FROM brainmigrate.data_chunks GROUP BY migration_id ORDER BY migration_id"
    )
    return [(row[0], row[1], row[2]) for row in counts]


def toy_migrator(pool: asyncpg.Pool[Any], migrations: str = MIGRATIONS) -> Migrator:
    return Migrator(pool, migrations_dir(migrations), config=TOY_CONFIG)


async def resume_to_contract(
    pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch, *, migrations: str = MIGRATIONS
) -> None:
    """A new runner in this process carries the rewrite (of ``migrations``) on, to READY_TO_CONTRACT."""
    monkeypatch.setenv(DELAY_VARIABLE, "0")
    with anyio.fail_after(60):
        results = await toy_migrator(pool, migrations).run_pending()
    assert [(r.migration_id, r.status) for r in results] == [(REWRITE, MigrationStatus.RUNNING)]


async def next_key(pool: asyncpg.Pool[Any]) -> int:
    """The id a new memory gets (the row is inserted, and deleted again)."""
    key: int = await pool.fetchval("INSERT INTO memories (content) VALUES ('a new memory') RETURNING id")
    await pool.execute("DELETE FROM memories WHERE id = $1", key)
    return key


async def assert_swapped_in(
    pool: asyncpg.Pool[Any],
    store: Store,
    *,
    expected: dict[int, ToyRow] | None = None,
    old_rows: dict[int, ToyRow] | None = None,
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
    new_oid = await oid_of(pool)
    assert new_oid is not None and new_oid != store.oid
    after = await rows_of(pool)
    want = rewritten(store.rows) if expected is None else expected
    assert after.keys() == want.keys()
    wrong = [key for key in want if after[key] != want[key]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {[(k, after[k], want[k]) for k in wrong[:3]]}"
    assert await layout_of(pool, new_oid) == store.layout
    assert await pool.fetchval(
        "SELECT bool_and(indisvalid AND indisready) FROM pg_index WHERE indrelid = $1", new_oid
    )
    old = await only_relation(pool, "bm_old_")
    assert await oid_of(pool, old) == store.oid  # the original, under another name
    assert await rows_of(pool, old) == (store.rows if old_rows is None else old_rows)
    assert await relations(pool, "bm_new_") == []

    history = await step_history(pool)
    applied = [row[0] for row in history if row[1:] == ("apply", "completed")]
    assert applied == list(TO_CONTRACT)  # each once, in order
    assert [row for row in history if row[1:] != ("apply", "completed")] == (others or [])
    assert await hybrid_runs(pool) == [("ready_to_contract", None)]
    migrator = toy_migrator(pool, migrations)
    assert await migrator.hybrid_phase(REWRITE) is HybridPhase.READY_TO_CONTRACT
    assert await next_key(pool) == next_id

    with anyio.fail_after(30):
        result = await migrator.contract(REWRITE)
    assert result.status is MigrationStatus.COMPLETED
    assert await migrator.hybrid_phase(REWRITE) is HybridPhase.COMPLETED
    await nothing_of_the_rewrite_left(pool)
    assert await oid_of(pool) == new_oid
    assert await rows_of(pool) == after
    assert await layout_of(pool, new_oid) == store.layout
    assert await next_key(pool) == next_id + 1
    assert (await step_history(pool))[-2:] == [
        (DROP_OLD, "apply", "completed"),
        (REWRITE, "apply", "completed"),
    ]
    return new_oid


@contextlib.asynccontextmanager
async def holding(pool: asyncpg.Pool[Any], *statements: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A transaction of the test, open (after ``statements``) until the block ends, rolled back;
    its connection."""
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        try:
            for statement in statements:
                await conn.execute(statement)
            yield conn
        finally:
            await transaction.rollback()


async def shadow_created(pool: asyncpg.Pool[Any]) -> str:
    """The shadow's name, once the step creating it has committed."""

    async def created() -> bool:
        return await applied(pool, SHADOW)

    await wait_until(created, within=30, what="the shadow to be created")
    return await only_relation(pool, "bm_new_")


# -- the kill sequences, and the ends, that more than one fault test file runs -------------------


async def runner_killed_while_the_swap_waits(
    dsn: str, pool: asyncpg.Pool[Any], *, migrations: str = MIGRATIONS
) -> tuple[Store, int]:
    """A runner of ``migrations`` is killed while the swap's LOCK TABLE waits behind this test's
    ACCESS SHARE lock: nothing is half renamed (the original keeps its name and every row, the
    shadow its own, the capture goes on). Returns the store and the shadow's oid."""
    store = await create_toy_store(pool)
    # ACCESS SHARE lets every step before the swap go on (the capture trigger's creation too).
    async with holding(pool, "LOCK TABLE memories IN ACCESS SHARE MODE"):
        worker = await start_rewrite_worker(dsn, migrations=migrations)
        try:
            await wait_until(
                lambda: worker_waiting(pool, "LOCK TABLE"), within=40, what="the swap to wait for the table"
            )
            seen = await toy_migrator(pool, migrations).hybrid_status(REWRITE)
            shadow = await only_relation(pool, "bm_new_")
            shadow_oid = await oid_of(pool, shadow)
            await kill_worker(pool, worker)
            assert await oid_of(pool) == store.oid
        finally:
            await stop(worker)

    assert (seen.phase, seen.current_step) == (HybridPhase.CUTTING_OVER, SWAP)
    status = await toy_migrator(pool, migrations).hybrid_status(REWRITE)
    assert (status.phase, status.steps_done) == (HybridPhase.CUTTING_OVER, (SHADOW, COPY, FILL, INDEXES))
    assert await oid_of(pool) == store.oid
    assert await rows_of(pool) == store.rows
    assert await layout_of(pool, store.oid) == store.layout
    assert shadow_oid is not None and await oid_of(pool, shadow) == shadow_oid
    assert await relations(pool, "bm_old") == []
    assert capture_installed(await user_triggers(pool), "memories")
    assert await rows_of(pool, shadow) == rewritten(store.rows)
    return store, shadow_oid


@attrs.frozen
class Written:
    """What the application wrote to the swapped-in table: an edit, a deletion and an insert."""

    edited: int
    deleted: int
    added: int
    added_row: ToyRow


async def write_after_the_swap(pool: asyncpg.Pool[Any]) -> Written:
    """The application edits memory 7, deletes memory 8 and adds one, in the swapped-in table."""
    await pool.execute("UPDATE memories SET content = 'a sad edit after the swap' WHERE id = 7")
    await pool.execute("DELETE FROM memories WHERE id = 8")
    row = await pool.fetchrow(
        "INSERT INTO memories (content) VALUES ('added after the swap') "
        "RETURNING id, metadata::text AS m, embedding::text AS e, created_at::text AS c"
    )
    assert row is not None
    return Written(7, 8, row["id"], ("added after the swap", json.loads(row["m"]), row["e"], row["c"]))


async def rollback_killed_while_the_swap_back_waits(
    dsn: str, pool: asyncpg.Pool[Any], *, migrations: str = MIGRATIONS
) -> None:
    """A rollback (by a worker of ``migrations``) is killed while its swap back waits behind this
    test's ACCESS SHARE lock on the table."""
    worker = await start_rewrite_worker(dsn, f"--rollback={REWRITE}", migrations=migrations)
    try:
        async with holding(pool, "LOCK TABLE memories IN ACCESS SHARE MODE"):
            await wait_until(
                lambda: worker_waiting(pool, "LOCK TABLE"),
                within=40,
                what="the swap back to wait for the table",
            )
            seen = await toy_migrator(pool, migrations).hybrid_status(REWRITE)
            await kill_worker(pool, worker)
    finally:
        await stop(worker)
    assert (seen.phase, seen.current_step) == (HybridPhase.COMPENSATING, SWAP)


async def roll_back_into_the_original(
    pool: asyncpg.Pool[Any],
    store: Store,
    want: dict[int, ToyRow],
    *,
    next_id: int,
    migrations: str = MIGRATIONS,
) -> None:
    """The rollback, run in this process (after one killed while its swap back waited, if any),
    puts the original back under its name holding ``want``, with its layout, the sequence going
    on from ``next_id``, and leaves nothing of the rewrite; each step applied and rolled back once."""
    migrator = toy_migrator(pool, migrations)
    with anyio.fail_after(60):
        results = await migrator.rollback(REWRITE)

    assert [(r.migration_id, r.status) for r in results] == [(REWRITE, MigrationStatus.ROLLED_BACK)]
    assert await oid_of(pool) == store.oid
    after = await rows_of(pool)
    assert after.keys() == want.keys()
    wrong = [key for key in want if after[key] != want[key]]
    assert not wrong, f"{len(wrong)} rows differ, e.g. {[(k, after[k], want[k]) for k in wrong[:3]]}"
    assert await layout_of(pool, store.oid) == store.layout
    assert await next_key(pool) == next_id
    await nothing_of_the_rewrite_left(pool)
    assert await migrator.status(REWRITE) is MigrationStatus.ROLLED_BACK
    assert await migrator.hybrid_phase(REWRITE) is HybridPhase.ROLLED_BACK
    # Each step applied once, then each rolled back once, last first: the swap back by this
    # rollback only (a killed one's transaction left nothing).
    assert await step_history(pool) == [
        *((step, "apply", "completed") for step in TO_CONTRACT),
        *((step, "rollback", "completed") for step in reversed(TO_CONTRACT)),
    ]
    assert [phase for phase, _ in await hybrid_runs(pool)] == ["rolled_back"]
