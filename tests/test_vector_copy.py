"""A backfill's vectors sent in binary: pgvector's binary input through COPY, read back exactly as
the text input would have written them; bad vectors refused before anything is sent; the write in
the transaction of its checkpoint, so a worker whose lease was taken over commits nothing."""

from __future__ import annotations

import asyncio
import math
import struct
import uuid
from typing import Any

import anyio
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brainmigrate import HybridPhase, MigrationConfig, MigrationValidationError, Migrator
from brainmigrate._engine.entries import Entry
from brainmigrate._engine.table import TableShape
from brainmigrate._model.items import DataSource
from brainmigrate._reembed.vector_copy import KEY_FIELDS, VectorCodec, VectorCopyWriter, copy_payload
from brainmigrate.testing import fingerprint
from helpers import snapshot
from reembed_support import REEMBED, create_store, reembed, texts, toy_vector, vector_text, vectors

pytestmark = pytest.mark.anyio

BACKFILL = f"{REEMBED}/backfill"
CONFIG = MigrationConfig(batch_size=50, checkpoint_frequency=50, concurrency=2)

#: Values each element type holds exactly (so that what is read back is what was sent).
ELEMENTS = {
    "vector": st.floats(width=32, allow_nan=False, allow_infinity=False),
    "halfvec": st.floats(width=16, allow_nan=False, allow_infinity=False),
}
#: Key types the writer packs, with values of each.
KEYS = {
    "uuid": st.uuids(),
    "bigint": st.integers(-(2**63), 2**63 - 1),
    "integer": st.integers(-(2**31), 2**31 - 1),
    "smallint": st.integers(-(2**15), 2**15 - 1),
    "text": st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=20),
}
TYPE_NAMES = {"uuid": "uuid", "bigint": "int8", "integer": "int4", "smallint": "int2", "text": "text"}


@st.composite
def batches(draw: st.DrawFn) -> tuple[str, str, int, list[tuple[Any, list[float], uuid.UUID | None]]]:
    """A column type, a key type, dimensions, and rows of distinct keys with a vector and a hash."""
    kind = draw(st.sampled_from(sorted(ELEMENTS)))
    key_type = draw(st.sampled_from(sorted(KEYS)))
    dimensions = draw(st.integers(1, 24))
    keys = draw(st.lists(KEYS[key_type], min_size=1, max_size=6, unique=True))
    rows = [
        (
            key,
            draw(st.lists(ELEMENTS[kind], min_size=dimensions, max_size=dimensions)),
            draw(st.none() | st.uuids()),
        )
        for key in keys
    ]
    return kind, key_type, dimensions, rows


async def _round_trip(
    dsn: str, kind: str, key_type: str, dimensions: int, rows: list[tuple[Any, list[float], uuid.UUID | None]]
) -> None:
    codec = VectorCodec(kind=kind, dimensions=dimensions)
    key_field = KEY_FIELDS[TYPE_NAMES[key_type]]
    packed = [
        struct.pack(">h", 3)
        + key_field(key)
        + codec.field(vector)
        + (struct.pack(">i", -1) if md5 is None else struct.pack(">i", 16) + md5.bytes)
        for key, vector, md5 in rows
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        async with conn.transaction():
            column = f"{kind}({dimensions})"
            await conn.execute(
                f"CREATE TEMPORARY TABLE copied (k {key_type}, v {column}, h uuid) ON COMMIT DROP"
            )
            await conn.copy_to_table("copied", source=memoryview(copy_payload(packed)), format="binary")
            read = {
                row["k"]: (row["v"], row["as_text"], row["h"])
                for row in await conn.fetch("SELECT k, v::real[] AS v, v::text AS as_text, h FROM copied")
            }
            spelled = {
                key: await conn.fetchval(f"SELECT $1::text::{column}::text", vector_text(vector))
                for key, vector, _ in rows
            }
        expected = {key: (vector, spelled[key], md5) for key, vector, md5 in rows}
        assert expected == read
    finally:
        await conn.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=batches())
def test_a_vector_copied_in_binary_reads_back_as_the_values_sent_and_as_its_text_input_would(
    brainmigrate_database: str, batch: tuple[str, str, int, list[tuple[Any, list[float], uuid.UUID | None]]]
) -> None:
    """Rows of a key (uuid, integers, text), a vector or halfvec of any dimensions and a hash, packed
    and COPYed in binary, read back: each key, its elements (as real[]) and its hash are the ones
    sent, and its text is the text the same values written as pgvector's text input have."""
    kind, key_type, dimensions, rows = batch

    asyncio.run(_round_trip(brainmigrate_database, kind, key_type, dimensions, rows))


@pytest.mark.parametrize(
    ("kind", "values", "reason"),
    [
        pytest.param("vector", [1.0, math.nan], "holds NaN or infinity", id="nan"),
        pytest.param("vector", [math.inf, 1.0], "holds NaN or infinity", id="infinity"),
        pytest.param("halfvec", [-math.inf, 1.0], "holds NaN or infinity", id="halfvec-infinity"),
        pytest.param("vector", [1e39, 1.0], "beyond what vector stores", id="beyond-float4"),
        pytest.param("halfvec", [70000.0, 1.0], "beyond what halfvec stores", id="beyond-float2"),
        pytest.param("vector", [1.0], "has 1 dimensions, not 2", id="dimensions"),
        pytest.param("vector", [1.0, "2"], "holds something other than numbers", id="text"),
    ],
)
def test_a_vector_the_column_cannot_take_is_refused_by_the_codec(
    kind: str, values: list[Any], reason: str
) -> None:
    """NaN, infinities, values beyond the element type's range, the wrong dimensions or a value
    that is not a number: the codec refuses the vector, saying which."""
    codec = VectorCodec(kind=kind, dimensions=2)

    with pytest.raises(ValueError, match=reason):
        codec.field(values)


@pytest.mark.parametrize(
    ("column_type", "bad", "reason"),
    [
        pytest.param("vector(3)", [0.5, math.nan, 0.5], "holds NaN or infinity", id="nan"),
        pytest.param("vector(3)", [0.5, -math.inf, 0.5], "holds NaN or infinity", id="infinity"),
        pytest.param(
            "halfvec(3)",
            [0.5, 1e6, 0.5],
            r"holds a value beyond what halfvec stores \(±65,504\)",
            id="halfvec-range",
        ),
    ],
)
async def test_a_batch_holding_a_vector_the_column_cannot_take_is_refused_before_anything_is_sent(
    brainmigrate_pool: asyncpg.Pool[Any], column_type: str, bad: list[float], reason: str
) -> None:
    """The writer of a batch whose second vector holds NaN, an infinity or a value beyond halfvec's
    range raises MigrationValidationError naming the memory and what is wrong, and the table is
    as it was: no row of the batch is written."""
    await brainmigrate_pool.execute(
        "CREATE EXTENSION IF NOT EXISTS vector; CREATE TABLE memories (id bigint PRIMARY KEY, "
        f"content text, embedding_next {column_type}, embedding_next_md5 uuid); "
        "INSERT INTO memories (id, content) SELECT i, 'memory ' || i FROM generate_series(1, 3) AS i"
    )
    async with brainmigrate_pool.acquire() as conn:
        shape = await TableShape.read(conn, DataSource(table="memories", key="id"), REEMBED)
        writer = VectorCopyWriter.of(REEMBED, shape, "embedding_next", "embedding_next_md5")
        assert writer is not None
        entries = [
            Entry(key, {"embedding_next": vector, "embedding_next_md5": uuid.uuid4()})
            for key, vector in ((1, [0.5, 0.5, 0.5]), (2, bad), (3, [0.25, 0.25, 0.25]))
        ]
        writer.encode(entries)
        before = await fingerprint(conn)

        with pytest.raises(MigrationValidationError, match=f"of memory 2 {reason}; nothing of this batch"):
            await writer.write(conn, entries)

        assert await fingerprint(conn) == before
        assert await conn.fetchval("SELECT count(*) FROM memories WHERE embedding_next IS NOT NULL") == 0


async def test_the_backfill_writes_its_vectors_through_binary_copy(brainmigrate_database: str) -> None:
    """A re-embedding's backfill writes each batch from the temporary table its vectors are
    COPYed into, never as text; every memory ends with its vector and nothing is left behind."""
    statements: list[str] = []

    async def log(conn: asyncpg.Connection[Any]) -> None:
        conn.add_query_logger(lambda record: statements.append(record.query))

    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=4, init=log)
    try:
        await create_store(pool, 300)
        migrator = Migrator(pool, [reembed()], config=CONFIG)

        await migrator.run_pending()

        assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
        held = await texts(pool)
        new = await vectors(pool)
        assert new.keys() == held.keys()
        assert all(new[key] == pytest.approx(toy_vector(held[key]), abs=1e-6) for key in held)
        staged = [
            s for s in statements if s.startswith('WITH s AS (DELETE FROM pg_temp."brainmigrate_vectors_')
        ]
        assert len(staged) == 300 // CONFIG.batch_size
        assert not [s for s in statements if "unnest(" in s and "embedding_next" in s]
        assert (
            await pool.fetchval("SELECT count(*) FROM pg_class WHERE relname LIKE 'brainmigrate_vectors_%'")
            == 0
        )
    finally:
        await pool.close()


async def test_a_worker_whose_lease_was_taken_over_commits_none_of_its_binary_writes(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """While the backfill runs, another owner takes its chunk over: the group the worker was
    writing is rolled back with its checkpoint (the memories written are exactly those the
    chunk's checkpoint covers). Once the other owner lets go, the next run writes the rest,
    each memory once, with its vector."""
    pool = brainmigrate_pool
    await create_store(pool, 600)
    other = await asyncpg.connect(brainmigrate_database)
    calls = [0]
    one_at_a_time = anyio.Lock()

    async def embed(texts: list[str]) -> list[list[float]]:
        async with one_at_a_time:
            calls[0] += 1
            if calls[0] == 5:  # after a few commits, in the middle of the chunk
                await other.execute(
                    "UPDATE brainmigrate.data_chunks SET lease_owner = gen_random_uuid(), "
                    "lease_expires_at = clock_timestamp() + interval '1 hour' "
                    "WHERE migration_id = $1 AND NOT done",
                    BACKFILL,
                )
        return [toy_vector(text) for text in texts]

    migration = reembed(embed=embed)
    try:
        await Migrator(pool, [migration], config=CONFIG).run_pending()
    finally:
        await other.close()

    chunks = await pool.fetch(
        "SELECT cursor_key, processed FROM brainmigrate.data_chunks WHERE migration_id = $1 AND NOT done",
        BACKFILL,
    )
    assert len(chunks) == 1 and chunks[0]["cursor_key"] is not None
    written = await vectors(pool, "embedding_next")
    assert sorted(written) == list(range(1, int(chunks[0]["cursor_key"]) + 1))
    assert len(written) == chunks[0]["processed"]

    await pool.execute(
        "UPDATE brainmigrate.data_chunks SET lease_owner = NULL, lease_expires_at = NULL "
        "WHERE migration_id = $1",
        BACKFILL,
    )
    migrator = Migrator(pool, [reembed()], config=CONFIG)
    await migrator.run_pending()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    held = await texts(pool)
    new = await vectors(pool)
    assert new.keys() == held.keys()
    assert all(new[key] == pytest.approx(toy_vector(held[key]), abs=1e-6) for key in held)


async def _toast_target(pool: asyncpg.Pool[Any]) -> list[str] | None:
    options: list[str] | None = await pool.fetchval(
        "SELECT reloptions FROM pg_class WHERE oid = 'memories'::regclass"
    )
    return options


@pytest.mark.parametrize("then", ["contract", "rollback"])
async def test_the_table_has_the_toast_target_of_two_vectors_a_row_until_contract_or_rollback(
    brainmigrate_pool: asyncpg.Pool[Any], then: str
) -> None:
    """From expand to contract the table has toast_tuple_target = 128 (a row's version with both
    vectors keeps them out of line, so that it fits on its page); contract, or a rollback, gives
    the table its storage options back."""
    pool = brainmigrate_pool
    await create_store(pool, 120)
    migrator = Migrator(pool, [reembed()], config=CONFIG)

    await migrator.run_pending()
    during = await _toast_target(pool)
    if then == "contract":
        await migrator.contract(REEMBED)
    else:
        await migrator.rollback(REEMBED)

    assert during == ["toast_tuple_target=128"]
    assert await _toast_target(pool) is None


async def test_a_table_with_a_toast_target_of_its_own_keeps_it(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """A table whose toast_tuple_target was set by its owner keeps that target through the whole
    re-embedding (it is never changed, nor reset at contract)."""
    pool = brainmigrate_pool
    await create_store(pool, 120)
    await pool.execute("ALTER TABLE memories SET (toast_tuple_target = 4000)")
    migrator = Migrator(pool, [reembed()], config=CONFIG)

    await migrator.run_pending()
    during = await _toast_target(pool)
    await migrator.contract(REEMBED)

    assert during == ["toast_tuple_target=4000"]
    assert await _toast_target(pool) == ["toast_tuple_target=4000"]


@pytest.mark.parametrize(
    ("key_type", "vector_type", "packed"),
    [
        pytest.param("bigint", "vector(3)", True, id="bigint-vector"),
        pytest.param("uuid", "halfvec(3)", True, id="uuid-halfvec"),
        pytest.param("numeric", "vector(3)", False, id="numeric-key"),
        pytest.param("timestamptz", "vector(3)", False, id="timestamp-key"),
        pytest.param("bigint", "vector", False, id="undeclared-dimensions"),
    ],
)
async def test_only_keys_and_vectors_of_the_types_it_packs_are_written_in_binary(
    brainmigrate_pool: asyncpg.Pool[Any], key_type: str, vector_type: str, packed: bool
) -> None:
    """The binary writer takes a table whose key is a uuid, an integer or text and whose new column
    is a vector or halfvec of declared dimensions; for any other, there is none, and the engine
    writes the batch UPDATE with text."""
    await brainmigrate_pool.execute(
        f"CREATE EXTENSION IF NOT EXISTS vector; CREATE TABLE memories (id {key_type} PRIMARY KEY, "
        f"content text, embedding_next {vector_type}, embedding_next_md5 uuid)"
    )
    async with brainmigrate_pool.acquire() as conn:
        shape = await TableShape.read(conn, DataSource(table="memories", key="id"), REEMBED)

    writer = VectorCopyWriter.of(REEMBED, shape, "embedding_next", "embedding_next_md5")

    assert (writer is not None) is packed


@pytest.mark.parametrize(
    ("target", "during"),
    [
        pytest.param(None, None, id="left-alone"),
        pytest.param(512, ["toast_tuple_target=512"], id="chosen"),
    ],
)
async def test_the_toast_target_is_the_migrations_to_choose(
    brainmigrate_pool: asyncpg.Pool[Any], target: int | None, during: list[str] | None
) -> None:
    """``toast_tuple_target = None`` leaves the table's storage options alone; another value is
    the one the table has until contract, which gives the table its options back."""
    pool = brainmigrate_pool
    await create_store(pool, 120)
    migrator = Migrator(pool, [reembed(toast_tuple_target=target)], config=CONFIG)

    await migrator.run_pending()
    seen = await _toast_target(pool)
    await migrator.contract(REEMBED)

    assert seen == during
    assert await _toast_target(pool) is None


@pytest.mark.parametrize("target", [64, 9000, True, "128"], ids=["too-small", "too-large", "bool", "text"])
async def test_a_toast_target_postgresql_cannot_take_is_refused_before_anything_is_written(
    brainmigrate_pool: asyncpg.Pool[Any], target: object
) -> None:
    """A ``toast_tuple_target`` outside PostgreSQL's 128 to 8,160 is refused when the migration
    is loaded, naming the attribute, and the database is left as it was."""
    pool = brainmigrate_pool
    await create_store(pool, 20)
    before = await snapshot(pool)

    with pytest.raises(MigrationValidationError, match=r"toast_tuple_target must be None or an int from 128"):
        await Migrator(pool, [reembed(toast_tuple_target=target)], config=CONFIG).run_pending()

    assert await snapshot(pool) == before
