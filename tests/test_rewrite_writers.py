"""A structure migration run as an online rewrite while the application writes to its table.

The application inserts, updates, deletes, re-inserts and re-keys memories while the copy runs
(before and after the copy has reached them), while the shadow's indexes are built, while a batch
of the replay is being written, and inside the last transaction the swap waits for; after the swap
every memory is the migration's operations applied to what was last written to it (computed here
in Python), and nothing deleted comes back. Unique values moved between memories, identity
columns renumbered, JSON and SQL nulls, a filtered source and the expected shape come through as
they would in place. Swapping back before contract gives the original table what the application
wrote since the swap, as it was written. TRUNCATE is refused while a rewrite captures the table.

Each phase is held on the server, not by sleeping: the table's CHECK constraint and one of its
expression indexes call a function that, for memory ``HELD``, waits for an advisory lock the test
holds. The copy into the shadow and the build of that index on the shadow therefore stop at
``HELD`` until the test lets them go, while the application's own connection passes freely.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import asyncpg
import pytest

import rewrite_support
from brainmigrate import (
    DataSource,
    HybridPhase,
    MemoryStructureMigration,
    MigrationMetadata,
    MigrationResult,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate import structure as s
from brainmigrate._rewrite.replay import REPLAY_LAG
from rewrite_support import (
    CONFIG,
    COUNT,
    HELD,
    Metadata,
    Rewrite,
    Row,
    create_store,
    gated,
    metadata_of,
    reverse_logged,
    slugs,
    stored,
    swapped,
    the_old_table,
)
from test_rewrite import tables

pytestmark = pytest.mark.anyio

MIGRATION = "restructure_001"


def restructured(metadata: Metadata) -> Metadata:
    """What the migration's operations make of ``metadata``, computed here in Python: ``n``
    renamed ``number``, ``schema_version`` 2 where absent, ``mood`` moved to ``analysis.mood``
    (unless ``analysis`` is there and not an object). Anything but an object is left as it is."""
    if not isinstance(metadata, dict):
        return metadata
    document = copy.deepcopy(metadata)
    if "n" in document:
        document["number"] = document.pop("n")
    document.setdefault("schema_version", 2)
    if "mood" in document:
        if "analysis" not in document:
            document["analysis"] = {"mood": document.pop("mood")}
        elif isinstance(document["analysis"], dict):
            document["analysis"]["mood"] = document.pop("mood")
    return document


#: Metadata the application writes, of every shape the operations meet.
VARIANTS: list[Metadata] = [
    {"n": -1, "mood": "joyful"},
    {"mood": "sad", "analysis": {"score": 3}},
    {"mood": "stuck", "analysis": "flat"},  # analysis is no object: mood stays where it is
    {"n": None, "schema_version": 7},
    {"mood": "calm", "analysis": {}},
    {},
    None,  # SQL NULL
    [1, 2, 3],
    "just text",
    {"n": {"nested": True}, "mood": ["a", "b"]},
]


def variant(i: int) -> Metadata:
    return copy.deepcopy(VARIANTS[i % len(VARIANTS)])


def restructuring(migration_id: str = MIGRATION, **attributes: Any) -> type[MemoryStructureMigration]:
    class Restructure(MemoryStructureMigration):
        strategy: ClassVar[Any] = "rewrite"

        def operations(self) -> list[s.Operation]:
            return [s.rename("n", "number"), s.add("schema_version", 2), s.move("mood", "analysis.mood")]

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id,
                name="number, schema version, nested mood",
                version="1.0.0",
                migration_type=MigrationType.MEMORY_STRUCTURE,
                reversible=True,
            )

    for name, value in attributes.items():
        setattr(Restructure, name, value)
    return Restructure


class Application(rewrite_support.Application):
    """The application's connection, knowing what the migration makes of what it wrote."""

    def expected(self) -> dict[int, Row]:
        """Every memory not deleted, restructured from what was last written to it."""
        return {key: (row[0], restructured(row[1])) for key, row in self.written.items() if row is not None}


@contextlib.asynccontextmanager
async def gated_rewrite(
    pool: asyncpg.Pool[Any],
    dsn: str,
    start: dict[int, Row],
    migration: type[MemoryStructureMigration] | None = None,
) -> AsyncIterator[tuple[Rewrite, Application]]:
    """Run ``migration`` (up to the swap) in a task, the copy and the gated index build held at
    memory HELD until the test opens them; the application writes on a connection of its own."""
    migrator = Migrator(pool, [migration or restructuring()])

    async def run() -> list[MigrationResult]:
        return await migrator.run_pending(config=CONFIG)

    async with gated(dsn, run) as (rewrite, conn):
        yield rewrite, Application(conn, start)


async def test_every_memory_written_during_a_structure_rewrite_ends_restructured_from_its_last_write(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await rewrite.copy_stopped()
        assert await rewrite.in_shadow(10) and not await rewrite.in_shadow(2_000)
        # While the copy is under way: memories it has copied, memories of the range it is
        # copying (before and after HELD) and memories it has not reached.
        for i, key in enumerate([10, 1_450, 1_550, 2_000, 2_999]):
            await app.update(key, variant(i))
        await app.edit(11, "edited while the copy ran")
        for key in (20, 1_460, 1_560, 2_100):
            await app.delete(key)
        for key in (30, 2_200):  # deleted, and inserted again under the same key
            await app.delete(key)
            await app.insert(f"memory {key} again", variant(key), key=key)
        await app.rekey(40, 5_000)  # a copied memory takes a new key
        await app.rekey(2_300, 5_001)  # so does one not copied yet
        await app.rekey(50, 2_100)  # a copied memory takes a freed key the copy has not reached
        await app.rekey(2_400, 20)  # and the other way round
        inserted = [await app.insert(f"inserted {i}", variant(i)) for i in range(3)]
        await rewrite.open_copy()

        await rewrite.indexes_stopped()
        # While the shadow's indexes are built: more changes than the replay leaves for the swap.
        assert await app.bulk(500, 1_700, "bulk") > REPLAY_LAG
        await app.update(inserted[0], variant(4))
        await app.update(5_000, variant(5))
        await app.delete(inserted[1])
        await app.delete(60)
        await app.insert("memory 60 again", variant(6), key=60)
        await app.rekey(70, 5_002)
        await app.insert("inserted while the indexes were built", variant(8))
        await rewrite.open_indexes()

        # The swap waits for the application's last transaction, which goes on writing.
        async with app.conn.transaction():
            await app.update(80, variant(9))
            await rewrite.swap_waiting()
            await app.update(2_500, variant(0))
            await app.update(60, variant(1))
            await app.delete(90)
            await app.rekey(2_600, 5_003)
            await app.insert("inserted as the swap waited", variant(2))
    swapped(rewrite)

    assert await stored(brainmigrate_pool) == app.expected()
    migrator = Migrator(brainmigrate_pool, [restructuring()])
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.READY_TO_CONTRACT
    await migrator.contract(MIGRATION)
    assert await stored(brainmigrate_pool) == app.expected()
    assert [t for t in await tables(brainmigrate_pool) if t.startswith("bm_")] == []


def hot(write: int) -> Metadata:
    """The metadata of the ``write``-th write of a hot memory: each one its own (every seventh
    SQL NULL, every eleventh no object)."""
    if write % 7 == 0:
        return None
    if write % 11 == 0:
        return [write]
    return {"n": write, "mood": f"mood {write}"}


async def test_memories_written_hundreds_of_times_during_the_copy_and_the_replay_end_as_last_written(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    # Copied already, the one the copy stops at, one in the range the copy is in, and one the copy
    # has not reached.
    memories = (5, HELD, 1_550, 2_800)
    write = 0

    async def write_each(times: int) -> None:
        nonlocal write
        for _ in range(times):
            for key in memories:
                write += 1
                await app.update(key, hot(write))

    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await rewrite.copy_stopped()
        await write_each(100)
        await rewrite.open_copy()
        await rewrite.indexes_stopped()
        await rewrite.close_copy()
        await write_each(300)
        assert app.writes > REPLAY_LAG
        await rewrite.open_indexes()
        # A batch of the replay has taken its changes and waits to write memory HELD: the
        # memories are written again meanwhile.
        await rewrite.replay_stopped()
        await write_each(50)
        await rewrite.open_copy()
        async with app.conn.transaction():
            await write_each(1)
            await rewrite.swap_waiting()
            # The replay after the index build left at most REPLAY_LAG changes to the swap.
            assert await rewrite.logged() <= REPLAY_LAG
            await write_each(21)
    swapped(rewrite)

    after = await stored(brainmigrate_pool)
    assert after == app.expected()
    assert [after[key][1] for key in memories] == [restructured(hot(write - 3 + i)) for i in range(4)]
    assert after[1_550][1] == {
        "number": write - 1,
        "schema_version": 2,
        "analysis": {"mood": f"mood {write - 1}"},
    }


@pytest.mark.parametrize("swap_back", ["replay", "instant"])
async def test_rolling_back_after_the_swap_gives_the_original_the_applications_writes_since_as_written(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str, swap_back: str
) -> None:
    start = await create_store(brainmigrate_pool)
    original = await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid")
    migrator = Migrator(brainmigrate_pool, [restructuring(rewrite_swap_back=swap_back)])
    await migrator.run_pending(config=CONFIG)
    assert await migrator.hybrid_phase(MIGRATION) is HybridPhase.READY_TO_CONTRACT
    rewritten = await stored(brainmigrate_pool)
    assert rewritten == {key: (content, restructured(m)) for key, (content, m) in start.items()}

    # The application writes to the rewritten table, in its new shape or not.
    conn = await asyncpg.connect(brainmigrate_database)
    try:
        app = Application(conn, rewritten)
        await app.edit(7, "edited after the swap")  # its metadata stays restructured
        await app.update(8, {"n": 8, "mood": "written in the old shape"})
        await app.update(12, None)
        await app.delete(9)
        await app.rekey(10, 6_000)
        added = await app.insert("added after the swap", {"number": 1, "schema_version": 2})
    finally:
        await conn.close()
    assert added == COUNT + 1
    expected = dict(start)
    del expected[9], expected[10]
    expected[7] = ("edited after the swap", restructured(metadata_of(7)))
    expected[8] = (start[8][0], {"n": 8, "mood": "written in the old shape"})
    expected[12] = (start[12][0], None)
    expected[6_000] = (start[10][0], restructured(metadata_of(10)))
    expected[added] = ("added after the swap", {"number": 1, "schema_version": 2})
    if swap_back == "instant":
        # Every write is in the original already, as written; nothing is left to replay.
        assert await stored(brainmigrate_pool, await the_old_table(brainmigrate_pool)) == expected
        assert await reverse_logged(brainmigrate_pool) == 0
    else:
        assert await reverse_logged(brainmigrate_pool) == 7

    await migrator.rollback(MIGRATION)

    assert await migrator.status(MIGRATION) is MigrationStatus.ROLLED_BACK
    assert await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid") == original
    assert await stored(brainmigrate_pool) == expected
    # Nothing of the rewrite is left: no shadow, no old table, no capture, no change log.
    assert await tables(brainmigrate_pool) == ["memories"]
    assert (
        await brainmigrate_pool.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'memories'::regclass AND NOT tgisinternal"
        )
        == []
    )
    assert (
        await brainmigrate_pool.fetch(
            "SELECT relname FROM pg_class WHERE relname LIKE 'rewrite\\_%' OR relname LIKE 'bm\\_%'"
        )
        == []
    )
    assert await brainmigrate_pool.fetch("SELECT proname FROM pg_proc WHERE proname LIKE 'rewrite\\_%'") == []
    # The key sequence goes on after what was inserted into the rewritten table.
    assert (
        await brainmigrate_pool.fetchval(
            "INSERT INTO memories (content) VALUES ('after the rollback') RETURNING id"
        )
        == added + 1
    )


async def test_truncate_is_refused_while_the_rewrite_captures_the_table_and_changes_nothing(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    message = (
        f'"public"."memories" is being rewritten by migration {MIGRATION!r}, which captures its changes: '
        "TRUNCATE it after the migration has finished (contract), or roll the migration back first"
    )

    async def truncate_refused(conn: asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]) -> None:
        with pytest.raises(asyncpg.ObjectInUseError) as refused:
            await conn.execute("TRUNCATE memories")
        assert refused.value.args[0] == message
        assert await conn.fetchval("SELECT count(*) FROM memories") == COUNT

    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await app.conn.execute("SET lock_timeout = '10s'")
        await rewrite.copy_stopped()
        await rewrite.open_copy()
        await rewrite.indexes_stopped()  # the original is captured, and not locked by the rewrite
        await truncate_refused(app.conn)
        await rewrite.open_indexes()
    swapped(rewrite)

    async with brainmigrate_pool.acquire() as conn:
        await truncate_refused(conn)  # the rewritten table is captured, for the swap back
    assert await stored(brainmigrate_pool) == app.expected()
    await Migrator(brainmigrate_pool, [restructuring()]).contract(MIGRATION)
    await brainmigrate_pool.execute("TRUNCATE memories")
    assert await brainmigrate_pool.fetchval("SELECT count(*) FROM memories") == 0


@pytest.mark.parametrize("not_null", [False, True], ids=["nullable", "not-null"])
async def test_a_memory_whose_metadata_is_json_null_or_sql_null_keeps_it_through_a_structure_rewrite(
    brainmigrate_pool: asyncpg.Pool[Any], not_null: bool
) -> None:
    start = await create_store(brainmigrate_pool)
    await brainmigrate_pool.execute("UPDATE memories SET metadata = 'null'::jsonb WHERE id = 100")
    expected: dict[int, tuple[bool, str | None]] = {100: (False, "null")}
    if not_null:
        await brainmigrate_pool.execute("ALTER TABLE memories ALTER COLUMN metadata SET NOT NULL")
    else:
        await brainmigrate_pool.execute("UPDATE memories SET metadata = NULL WHERE id = 101")
        expected[101] = (True, None)
    migrator = Migrator(brainmigrate_pool, [restructuring()])

    results = await migrator.run_pending(config=CONFIG)

    assert [r.status for r in results] == [MigrationStatus.RUNNING]
    nulls = {
        r["id"]: (r["sql_null"], r["m"])
        for r in await brainmigrate_pool.fetch(
            "SELECT id, metadata IS NULL AS sql_null, metadata::text AS m FROM memories "
            "WHERE id = ANY($1::bigint[])",
            list(expected),
        )
    }
    assert nulls == expected
    after = await stored(brainmigrate_pool)
    assert after[102] == (start[102][0], restructured(metadata_of(102)))


async def test_unique_values_moved_to_other_memories_during_the_copy_are_no_duplicates_in_the_rewritten_table(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool, unique_slugs=True)
    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await rewrite.copy_stopped()
        assert await rewrite.in_shadow(40) and await rewrite.in_shadow(60)
        await app.rekey(40, 5_000)  # a copied memory takes a new key, and its slug with it
        # A copied memory's slug goes to one the copy has not reached.
        await app.conn.execute("UPDATE memories SET slug = 'renamed' WHERE id = 60")
        await app.conn.execute("UPDATE memories SET slug = 'm60' WHERE id = 2900")
        await rewrite.open_copy()
        await rewrite.open_indexes()
    swapped(rewrite)

    assert await stored(brainmigrate_pool) == app.expected()
    expected = {key: f"m{key}" for key in start if key != 40}
    expected.update({5_000: "m40", 60: "renamed", 2_900: "m60"})
    assert await slugs(brainmigrate_pool) == expected


async def test_unique_values_exchanged_between_memories_as_the_swap_waits_are_replayed(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool, unique_slugs=True)
    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await rewrite.copy_stopped()
        await rewrite.open_copy()
        await rewrite.open_indexes()
        async with app.conn.transaction():
            await app.conn.execute("UPDATE memories SET slug = 'moving' WHERE id = 100")
            await rewrite.swap_waiting()
            await app.conn.execute("UPDATE memories SET slug = 'm100' WHERE id = 200")
            await app.conn.execute("UPDATE memories SET slug = 'm200' WHERE id = 100")
    swapped(rewrite)

    assert await stored(brainmigrate_pool) == app.expected()
    after = await slugs(brainmigrate_pool)
    assert (after[100], after[200]) == ("m200", "m100")
    assert all(after[key] == f"m{key}" for key in start if key not in (100, 200))


@pytest.mark.parametrize("swap_back", ["replay", "instant"])
async def test_unique_values_exchanged_after_the_swap_go_back_to_the_original_on_rollback(
    brainmigrate_pool: asyncpg.Pool[Any], swap_back: str
) -> None:
    start = await create_store(brainmigrate_pool, unique_slugs=True)
    migrator = Migrator(brainmigrate_pool, [restructuring(rewrite_swap_back=swap_back)])
    await migrator.run_pending(config=CONFIG)
    async with brainmigrate_pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE memories SET slug = 'moving' WHERE id = 100")
        await conn.execute("UPDATE memories SET slug = 'm100' WHERE id = 200")
        await conn.execute("UPDATE memories SET slug = 'm200' WHERE id = 100")

    await migrator.rollback(MIGRATION)

    assert await migrator.status(MIGRATION) is MigrationStatus.ROLLED_BACK
    after = await slugs(brainmigrate_pool)
    assert (after[100], after[200]) == ("m200", "m100")
    assert all(after[key] == f"m{key}" for key in start if key not in (100, 200))


@pytest.mark.parametrize("strategy", ["in_place", "rewrite"])
async def test_a_structure_migration_not_leaving_the_expected_shape_is_refused_and_changes_nothing(
    brainmigrate_pool: asyncpg.Pool[Any], strategy: str
) -> None:
    start = await create_store(brainmigrate_pool)
    await brainmigrate_pool.execute('UPDATE memories SET metadata = \'{"n": "one hundred"}\' WHERE id = 100')
    start[100] = (start[100][0], {"n": "one hundred"})

    class Expecting(restructuring()):  # type: ignore[misc]
        expected: ClassVar[dict[str, str]] = {"number": "number", "schema_version": "number"}
        keep_before_images = True  # in place, memories having schema_version already are no refusal

    Expecting.strategy = strategy

    with pytest.raises(MigrationValidationError, match="does not leave the expected shape") as refused:
        await Migrator(brainmigrate_pool, [Expecting]).run_pending(config=CONFIG)

    assert "number" in str(refused.value)
    assert await stored(brainmigrate_pool) == start
    assert await tables(brainmigrate_pool) == ["memories"]


async def test_memories_exchanging_their_keys_as_the_swap_waits_keep_their_content_under_the_new_keys(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await rewrite.copy_stopped()
        # A memory the copy has copied and one it has not reached exchange their keys.
        await app.rekey(300, -2)
        await app.rekey(2_800, 300)
        await app.rekey(-2, 2_800)
        await rewrite.open_copy()
        await rewrite.open_indexes()
        async with app.conn.transaction():
            await app.rekey(100, -1)
            await rewrite.swap_waiting()
            await app.rekey(200, 100)
            await app.rekey(-1, 200)
    swapped(rewrite)

    assert await stored(brainmigrate_pool) == app.expected()
    after = await slugs(brainmigrate_pool)
    assert [after[key] for key in (100, 200, 300, 2_800)] == ["m200", "m100", "m2800", "m300"]
    assert -1 not in after and -2 not in after


async def test_an_identity_column_set_to_its_default_during_the_copy_has_its_new_value_in_the_rewritten_table(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    await brainmigrate_pool.execute(
        "ALTER TABLE memories ADD COLUMN serial_no bigint GENERATED ALWAYS AS IDENTITY"
    )
    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start) as (rewrite, app):
        await rewrite.copy_stopped()
        # A copied memory and one the copy has not reached are numbered again.
        renumbered = await app.conn.fetch(
            "UPDATE memories SET serial_no = DEFAULT WHERE id IN (10, 2000) RETURNING id, serial_no"
        )
        await rewrite.open_copy()
        await rewrite.open_indexes()
    swapped(rewrite)

    numbers = dict(
        await brainmigrate_pool.fetch("SELECT id, serial_no FROM memories WHERE id IN (10, 11, 2000)")
    )
    assert {r["id"]: r["serial_no"] for r in renumbered} == {10: numbers[10], 2_000: numbers[2_000]}
    assert numbers[10] > COUNT and numbers[11] == 11
    assert await stored(brainmigrate_pool) == app.expected()


def filtered(where: str) -> type[MemoryStructureMigration]:
    """The migration, restricted to the memories ``where`` selects."""

    class Filtered(restructuring()):  # type: ignore[misc]
        source = DataSource(table="memories", key="id", where=where)

    return Filtered


async def test_a_filtered_structure_rewrite_restructures_the_memories_its_filter_selects_as_last_written(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    start = await create_store(brainmigrate_pool)
    migration = filtered("content NOT LIKE 'left alone%'")
    async with gated_rewrite(brainmigrate_pool, brainmigrate_database, start, migration) as (rewrite, app):
        await rewrite.copy_stopped()
        await app.edit(10, "left alone: edited after it was copied")
        await app.edit(2_000, "left alone: edited before it was copied")
        await app.insert("left alone, inserted", {"n": 1, "mood": "kept"})
        await rewrite.open_copy()
        await rewrite.indexes_stopped()
        await app.edit(20, "left alone: edited as the indexes were built")
        await rewrite.open_indexes()
    swapped(rewrite)

    def expected(row: Row | None) -> Row | None:
        if row is None:
            return None
        content, metadata = row
        return (content, metadata if content.startswith("left alone") else restructured(metadata))

    assert await stored(brainmigrate_pool) == {key: expected(row) for key, row in app.written.items() if row}
    assert (await stored(brainmigrate_pool))[10][1] == metadata_of(10)
