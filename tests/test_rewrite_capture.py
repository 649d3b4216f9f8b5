"""The change capture and row copying of an online rewrite: every write on a captured table logs
its keys, TRUNCATE is refused, and a shadow filled by key ranges while the application writes,
then caught up by replaying the log, ends holding exactly the original's rows, transformed."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from brainmigrate._engine.table import TableShape
from brainmigrate._model.items import DataSource
from brainmigrate._model.types import Connection
from brainmigrate._rewrite import capture, copy
from brainmigrate._rewrite.capture import Direction
from brainmigrate._rewrite.names import RewriteNames

pytestmark = pytest.mark.anyio

MIGRATION = "rewrite_notes"
NAMES = RewriteNames(MIGRATION, "public", "notes", "bm_history")
TABLE = NAMES.qualified_table
SHADOW = NAMES.in_table_schema(NAMES.shadow)
OLD = NAMES.in_table_schema(NAMES.old)
#: The transform of the copy: titles upper-cased, a version put into the jsonb.
EXPRESSIONS = {"title": "upper(t.title)", "meta": """t.meta || '{"v": 2}'"""}
#: The original's rows, transformed as the shadow must hold them.
EXPECTED = """
SELECT id, upper(title) AS title, meta || '{"v": 2}' AS meta, embedding::text, serial_no, title_len
  FROM public.notes ORDER BY id
"""
SHADOW_ROWS = f"SELECT id, title, meta, embedding::text, serial_no, title_len FROM {SHADOW} ORDER BY id"
ROWS = "SELECT id, title, meta, embedding::text, serial_no, title_len FROM {} ORDER BY id"


async def create_notes(pool: asyncpg.Pool[Any], rows: int) -> None:
    """``public.notes`` with a jsonb, a vector, an identity ALWAYS and a generated column, and
    ``rows`` rows; the history schema; the shadow, empty, as the shadow's creation makes it."""
    await pool.execute("CREATE EXTENSION IF NOT EXISTS vector")
    await pool.execute(f"""
        CREATE SCHEMA bm_history;
        CREATE TABLE public.notes (
            id bigint PRIMARY KEY,
            title text NOT NULL,
            meta jsonb NOT NULL DEFAULT '{{}}',
            embedding vector(3),
            serial_no bigint GENERATED ALWAYS AS IDENTITY,
            title_len integer GENERATED ALWAYS AS (length(title)) STORED);
        INSERT INTO public.notes (id, title, meta, embedding)
        SELECT i, 'note ' || i, jsonb_build_object('n', i), ARRAY[i, i * 0.5, -i]::real[]::vector
          FROM generate_series(1, {rows}) AS i;
        CREATE TABLE {SHADOW} (LIKE public.notes INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY);
        ALTER TABLE {SHADOW} ADD PRIMARY KEY (id);
    """)


async def install(
    conn: asyncpg.Connection[Any] | asyncpg.Pool[Any], direction: Direction, table: str
) -> None:
    await capture.install_capture(
        conn,  # type: ignore[arg-type]
        NAMES,
        direction=direction,
        table=table,
        key="id",
        key_type="bigint",
        migration_id=MIGRATION,
    )


async def logged(pool: asyncpg.Pool[Any], direction: Direction = Direction.FORWARD) -> list[int]:
    log = NAMES.in_history_schema(capture.log_name(NAMES, direction))
    return [row[0] for row in await pool.fetch(f'SELECT "key" FROM {log} ORDER BY seq')]


def forward_apply(conn: Connection, keys: list[Any]) -> Awaitable[int]:
    return copy.apply_keys(conn, source=TABLE, target=SHADOW, key="id", keys=keys, expressions=EXPRESSIONS)


async def fill(pool: asyncpg.Pool[Any], first: int, last: int) -> int:
    async with pool.acquire() as conn:
        return await copy.fill_range(
            conn, source=TABLE, target=SHADOW, key="id", first=first, last=last, expressions=EXPRESSIONS
        )


# -- the capture ----------------------------------------------------------------------------------


async def test_the_capture_logs_the_key_of_each_insert_update_and_delete_and_both_keys_of_a_key_change(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    await create_notes(pool, 0)
    await install(pool, Direction.FORWARD, TABLE)

    await pool.execute("INSERT INTO public.notes (id, title) VALUES (1, 'a'), (2, 'b')")
    await pool.execute("UPDATE public.notes SET title = 'c' WHERE id = 1")
    await pool.execute("UPDATE public.notes SET id = 20 WHERE id = 2")
    await pool.execute("DELETE FROM public.notes WHERE id = 1")

    assert await logged(pool) == [1, 2, 1, 20, 2, 1]
    async with pool.acquire() as conn:
        assert await capture.lag(conn, NAMES, Direction.FORWARD) == 6


async def test_truncate_of_a_captured_table_is_refused_with_a_message_naming_the_migration(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    await create_notes(pool, 10)
    await install(pool, Direction.FORWARD, TABLE)

    with pytest.raises(asyncpg.ObjectInUseError) as caught:
        await pool.execute("TRUNCATE public.notes")

    message = str(caught.value)
    assert repr(MIGRATION) in message
    assert "TRUNCATE it after the migration has finished" in message
    assert "roll the migration back" in message
    assert await pool.fetchval("SELECT count(*) FROM public.notes") == 10


async def test_installing_twice_is_harmless_and_removing_twice_leaves_nothing_behind(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    await create_notes(pool, 0)
    await install(pool, Direction.FORWARD, TABLE)
    await install(pool, Direction.FORWARD, TABLE)

    triggers = "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'public.notes'::regclass ORDER BY 1"
    assert [r[0] for r in await pool.fetch(triggers)] == sorted(capture.capture_triggers(NAMES))
    await pool.execute("INSERT INTO public.notes (id, title) VALUES (1, 'a')")
    assert await logged(pool) == [1]

    async with pool.acquire() as conn:
        await capture.remove_capture(conn, NAMES, Direction.FORWARD)
        await capture.remove_capture(conn, NAMES, Direction.FORWARD)

    assert await pool.fetch(triggers) == []
    assert (
        await pool.fetchval("SELECT count(*) FROM pg_proc WHERE pronamespace = 'bm_history'::regnamespace")
        == 0
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM pg_class WHERE relnamespace = 'bm_history'::regnamespace")
        == 0
    )
    await pool.execute("INSERT INTO public.notes (id, title) VALUES (2, 'b')")
    await pool.execute("TRUNCATE public.notes")


# -- the copy under writes ------------------------------------------------------------------------


class Writer:
    """The application: inserts, updates (of the copied columns), deletes and key changes, in
    small transactions, until told to stop; counts what it did."""

    def __init__(self, dsn: str, rows: int) -> None:
        self.dsn = dsn
        self.rows = rows
        self.next_id = 100_000
        self.random = random.Random(7)
        self.done = {"insert": 0, "update": 0, "delete": 0, "key": 0}
        self.stop = anyio.Event()
        self.progress = anyio.Condition()

    @property
    def total(self) -> int:
        return sum(self.done.values())

    async def wait_for(self, more: int) -> None:
        """Return once the writer has done ``more`` more writes."""
        target = self.total + more
        async with self.progress:
            while self.total < target:
                await self.progress.wait()

    def _some_id(self) -> int:
        return self.random.randint(1, self.rows)

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self.stop.is_set():
                kind = self.random.choice(("insert", "update", "update", "delete", "key"))
                async with conn.transaction():
                    if kind == "insert":
                        self.next_id += 1
                        await conn.execute(
                            "INSERT INTO public.notes (id, title, meta, embedding) "
                            "VALUES ($1, $2, jsonb_build_object('new', $1::bigint), '[1,2,3]')",
                            self.next_id,
                            f"inserted {self.next_id}",
                        )
                    elif kind == "update":
                        await conn.execute(
                            "UPDATE public.notes SET title = title || ' edited', "
                            "meta = meta || jsonb_build_object('edits', $2::int) WHERE id = $1",
                            self._some_id(),
                            self.total,
                        )
                    elif kind == "delete":
                        await conn.execute("DELETE FROM public.notes WHERE id = $1", self._some_id())
                    else:
                        self.next_id += 1
                        await conn.execute(
                            "UPDATE public.notes SET id = $2 WHERE id = $1", self._some_id(), self.next_id
                        )
                self.done[kind] += 1
                async with self.progress:
                    self.progress.notify_all()
        finally:
            await conn.close()


async def test_a_shadow_filled_by_ranges_and_replayed_while_the_table_is_written_ends_equal_to_it_transformed(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """3,000 rows filled in ranges of 300, the writer making at least 30 writes before each range;
    then the log replayed while it still writes; then, the writer stopped and the table locked,
    the log drained: the shadow holds each row of the original once, transformed, and no other."""
    pool = brainmigrate_pool
    rows = 3_000
    await create_notes(pool, rows)
    await install(pool, Direction.FORWARD, TABLE)
    writer = Writer(brainmigrate_database, rows)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(writer.run)
        copied = 0
        for first in range(1, rows + 1, 300):
            await writer.wait_for(30)
            copied += await fill(pool, first, first + 299)
        async with pool.acquire() as conn:
            await writer.wait_for(30)
            await capture.replay(conn, NAMES, Direction.FORWARD, forward_apply, batch=100, until_lag=10)
            await writer.wait_for(30)
        writer.stop.set()

    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE public.notes IN ACCESS EXCLUSIVE MODE")
        await capture.replay(conn, NAMES, Direction.FORWARD, forward_apply, batch=100, until_lag=0)
        assert await capture.lag(conn, NAMES, Direction.FORWARD) == 0

    assert min(writer.done.values()) > 0, writer.done
    assert copied > 0
    expected = [tuple(r) for r in await pool.fetch(EXPECTED)]
    assert [tuple(r) for r in await pool.fetch(SHADOW_ROWS)] == expected
    assert len(expected) == await pool.fetchval("SELECT count(*) FROM public.notes")


# -- the overlay write ------------------------------------------------------------------------------


async def test_the_overlay_write_takes_the_written_columns_from_the_batch_and_the_others_from_the_original(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """Title, jsonb meta and vector from the batch; the identity ALWAYS column's value from the
    original row; the generated column computed from the new title; a key the original lacks
    not written. Written again, the rows are updated in place."""
    pool = brainmigrate_pool
    await create_notes(pool, 5)
    async with pool.acquire() as conn:
        shape = await TableShape.read(conn, DataSource(table="notes", key="id", schema="public"), MIGRATION)
        written = [shape.columns["title"], shape.columns["meta"], shape.columns["embedding"]]

        async def write(batch: list[tuple[int, dict[str, Any]]]) -> int:
            return await copy.write_overlay(
                conn, source=TABLE, target=SHADOW, key=shape.key, written=written, rows=batch
            )

        first: list[tuple[int, dict[str, Any]]] = [
            (2, {"title": "two", "meta": {"tags": ["x"]}, "embedding": [0.5, 1.5, 2.5]}),
            (4, {"title": "four!", "meta": {"n": None}, "embedding": None}),
            (99, {"title": "missing", "meta": {}, "embedding": [1.0, 1.0, 1.0]}),
        ]
        assert await write(first) == 2
        serials = {r[0]: r[1] for r in await pool.fetch("SELECT id, serial_no FROM public.notes")}
        assert [tuple(r) for r in await pool.fetch(SHADOW_ROWS)] == [
            (2, "two", json.dumps({"tags": ["x"]}), "[0.5,1.5,2.5]", serials[2], 3),
            (4, "four!", json.dumps({"n": None}), None, serials[4], 5),
        ]

        assert await write([(2, {"title": "deux", "meta": [1, 2], "embedding": [3.0, 2.0, 1.0]})]) == 1
        row = await pool.fetchrow(
            f"SELECT title, meta, embedding::text, serial_no, title_len FROM {SHADOW} WHERE id = 2"
        )
        assert tuple(row) == ("deux", "[1, 2]", "[3,2,1]", serials[2], 4)  # type: ignore[arg-type]

        # The statement as the shadow's batch writer builds it (identity columns not named).
        statement = copy.overlay_statement(
            source=TABLE,
            target=SHADOW,
            key=shape.key,
            columns=await copy.insertable_columns(conn, SHADOW),
            written=[shape.columns["title"]],
            overriding=await copy.has_identity_always(conn, SHADOW),
        )
        await conn.execute(statement, [4, 5], ["FOUR", "FIVE"])
        assert [tuple(r) for r in await pool.fetch(f"SELECT id, title, meta FROM {SHADOW} ORDER BY id")] == [
            (2, "deux", "[1, 2]"),
            (4, "FOUR", json.dumps({"n": None})),
            (5, "FIVE", json.dumps({"n": 5})),
        ]


async def test_an_expression_for_a_column_the_copy_does_not_write_is_refused() -> None:
    with pytest.raises(ValueError, match="'title_len', which the copy does not write"):
        copy.fill_statement(
            source=TABLE,
            target=SHADOW,
            key="id",
            columns=("id", "title"),
            overriding=False,
            expressions={"title_len": "1"},
        )


# -- the reverse direction and concurrent replayers -------------------------------------------------


async def test_changes_on_the_new_table_are_replayed_back_into_the_old_one_exactly(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """After the swap the rewritten table logs into the reverse log; replayed with the roles
    reversed, the old table ends holding what the application wrote, as it wrote it."""
    pool = brainmigrate_pool
    await create_notes(pool, 50)
    await pool.execute(f"""
        CREATE TABLE {OLD} (LIKE public.notes INCLUDING DEFAULTS INCLUDING GENERATED INCLUDING IDENTITY);
        ALTER TABLE {OLD} ADD PRIMARY KEY (id);
        INSERT INTO {OLD} (id, title, meta, embedding, serial_no) OVERRIDING SYSTEM VALUE
        SELECT id, title, meta, embedding, serial_no FROM public.notes;
    """)
    await install(pool, Direction.REVERSE, TABLE)
    await pool.execute("INSERT INTO public.notes (id, title) VALUES (1000, 'new')")
    await pool.execute("UPDATE public.notes SET title = 'Edited', meta = '{\"e\": 1}' WHERE id < 10")
    await pool.execute("UPDATE public.notes SET id = id + 500 WHERE id BETWEEN 20 AND 25")
    await pool.execute("DELETE FROM public.notes WHERE id BETWEEN 30 AND 40")

    changed = set(await logged(pool, Direction.REVERSE))

    def backward(conn: Connection, keys: list[Any]) -> Awaitable[int]:
        return copy.apply_keys(conn, source=TABLE, target=OLD, key="id", keys=keys)

    async with pool.acquire() as conn:
        replayed = await capture.replay(conn, NAMES, Direction.REVERSE, backward, batch=7, until_lag=0)

    assert replayed == len(changed)
    assert await logged(pool, Direction.REVERSE) == []
    assert [tuple(r) for r in await pool.fetch(ROWS.format(OLD))] == [
        tuple(r) for r in await pool.fetch(ROWS.format(TABLE))
    ]


async def test_two_concurrent_replayers_apply_every_logged_key_exactly_once(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """1,200 keys logged once each; two replayers on their own connections drain the log in
    batches of 25: together they apply each key once, none twice, and leave the log empty."""
    pool = brainmigrate_pool
    await create_notes(pool, 0)
    await install(pool, Direction.FORWARD, TABLE)
    await pool.execute(
        "INSERT INTO public.notes (id, title) SELECT i, 'n' || i FROM generate_series(1, 1200) AS i"
    )
    keys = await logged(pool)
    applied: list[list[int]] = [[], []]

    def applier(mine: list[int]) -> Callable[[Connection, list[Any]], Awaitable[int]]:
        async def apply(conn: Connection, batch: list[Any]) -> int:
            mine.extend(batch)
            await anyio.lowlevel.checkpoint()
            return await forward_apply(conn, batch)

        return apply

    async def replayer(mine: list[int]) -> None:
        conn = await asyncpg.connect(brainmigrate_database)
        try:
            await capture.replay(conn, NAMES, Direction.FORWARD, applier(mine), batch=25, until_lag=0)
        finally:
            await conn.close()

    async with anyio.create_task_group() as tasks:
        for mine in applied:
            tasks.start_soon(replayer, mine)

    together = applied[0] + applied[1]
    assert sorted(together) == sorted(keys) == list(range(1, 1201))
    assert await logged(pool) == []
    assert [tuple(r) for r in await pool.fetch(SHADOW_ROWS)] == [tuple(r) for r in await pool.fetch(EXPECTED)]
