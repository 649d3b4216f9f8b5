"""What the rewrite tests share: the enrichment migration they run as a rewrite, and the table
an online rewrite runs on while the application writes to it, the application's recorded writes and
the gates that hold each of the rewrite's phases on the server, not by sleeping.

The table's CHECK constraint and one of its expression indexes call a function that, for memory
``HELD``, waits for an advisory lock the test holds: the copy into the shadow and the build of that
index on the shadow stop at ``HELD`` until the test lets them go, while the application's own
connection passes freely.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import anyio
import asyncpg

from brainmigrate import (
    BulkMemoryItem,
    MemoryDataMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationResult,
    MigrationStatus,
    MigrationType,
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
