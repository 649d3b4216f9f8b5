"""What depends on a rewritten table moves with the swap: the views reading it (their owner,
grants, comments, options and the views on them kept), other tables' foreign keys (moved NOT
VALID, validated by the next step, actions and deferrability kept), the publications listing it
(column lists and row filters kept); a rollback moves them back to the original, and the table's
own foreign keys with them. The swap locks the referencing tables before the table, as a write to
them does. What the migrator's role could not move (another role's referencing table, view or
publication) is refused before anything is created, and so is what refers to the table by OID
and would stay on the old table (routines with SQL-standard bodies, uses of its row type,
extended statistics, another table's policy, materialized views through views), and a logical
replication slot in the database (on a server of its own with ``wal_level = logical``).

Each test runs full rewrites through ``Migrator.run_pending`` on a database of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import asyncpg
import pytest

from brainmigrate import (
    BulkMemoryItem,
    HybridPhase,
    MigrationStatus,
    MigrationValidationError,
    Migrator,
)
from brainmigrate.embedded import EmbeddedPostgres
from helpers import snapshot
from rewrite_support import enrichment, sentiment
from workers.harness import wait_until

pytestmark = pytest.mark.anyio

ROWS = 60

STORE = """
CREATE TABLE memories (
    id        bigserial PRIMARY KEY,
    content   text NOT NULL,
    metadata  jsonb NOT NULL DEFAULT '{{}}',
    parent_id bigint,
    CONSTRAINT memories_parent FOREIGN KEY (parent_id) REFERENCES memories (id)
);
INSERT INTO memories (content, metadata, parent_id)
SELECT CASE WHEN i % 3 = 0 THEN 'a sad memory ' ELSE 'a happy memory ' END || i,
       jsonb_build_object('n', i), CASE WHEN i > 1 THEN i - 1 END
  FROM generate_series(1, {rows}) AS i;
"""

VIEWS = """
CREATE VIEW recent AS SELECT id, content, metadata FROM memories WHERE id > 10;
CREATE VIEW recent_sentiment AS SELECT id, metadata ->> 'sentiment' AS sentiment FROM recent;
CREATE VIEW guarded WITH (security_barrier = true, security_invoker = true)
    AS SELECT id, metadata FROM memories WHERE id % 2 = 0;
CREATE VIEW short_ids AS SELECT id, content FROM memories WHERE id < 1000 WITH LOCAL CHECK OPTION;
GRANT SELECT ON guarded TO {reader};
COMMENT ON VIEW guarded IS 'the even memories, for the reader';
"""

KEYS = """
CREATE TABLE links (
    id        bigserial PRIMARY KEY,
    memory_id bigint NOT NULL REFERENCES memories (id) ON DELETE CASCADE ON UPDATE RESTRICT
);
CREATE TABLE notes (
    memory_id bigint,
    CONSTRAINT notes_memory FOREIGN KEY (memory_id) REFERENCES memories (id)
        ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED
);
COMMENT ON CONSTRAINT notes_memory ON notes IS 'a note may outlive its memory';
INSERT INTO links (memory_id) SELECT i FROM generate_series(1, {rows}) AS i;
INSERT INTO notes SELECT i FROM generate_series(1, {rows}, 2) AS i;
"""


Enrich = enrichment()


@asynccontextmanager
async def temporary_role(pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """A role with a unique name (roles are cluster-wide), dropped with what it owns afterwards."""
    role = f"bm_dep_{uuid.uuid4().hex[:12]}"
    await pool.execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        yield role
    finally:
        await pool.execute(f'DROP OWNED BY "{role}"')
        await pool.execute(f'DROP ROLE "{role}"')


async def oid_of(pool: asyncpg.Pool[Any], name: str) -> int:
    oid: int | None = await pool.fetchval("SELECT to_regclass($1)::oid", name)
    assert oid is not None, f"no relation {name}"
    return oid


async def old_table(pool: asyncpg.Pool[Any]) -> str:
    names = await pool.fetch(
        "SELECT relname::text FROM pg_class WHERE relname LIKE 'bm\\_old\\_%' AND relkind = 'r'"
    )
    assert len(names) == 1
    return f'"{names[0][0]}"'


async def leftovers(pool: asyncpg.Pool[Any]) -> list[str]:
    """The rewrite's tables, left anywhere in the database."""
    return [
        r[0]
        for r in await pool.fetch(
            "SELECT relname::text FROM pg_class WHERE relname LIKE 'bm\\_%' AND relkind = 'r' ORDER BY 1"
        )
    ]


async def viewers(pool: asyncpg.Pool[Any], oid: int) -> list[str]:
    """The views whose query reads relation ``oid`` directly."""
    return [
        r[0]
        for r in await pool.fetch(
            "SELECT DISTINCT r.ev_class::regclass::text FROM pg_depend d "
            "JOIN pg_rewrite r ON r.oid = d.objid "
            "WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1 AND r.ev_class <> $1 ORDER BY 1",
            oid,
        )
    ]


async def dependents(pool: asyncpg.Pool[Any], oid: int) -> list[str]:
    """Everything of other relations that depends on relation ``oid`` (views, foreign keys,
    publication memberships)."""
    return [
        r[0]
        for r in await pool.fetch(
            "SELECT pg_describe_object(d.classid, d.objid, d.objsubid) FROM pg_depend d "
            "WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = $1"
            "  AND (d.deptype = 'n' OR d.classid = 'pg_publication_rel'::regclass)"
            "  AND NOT (d.classid = 'pg_rewrite'::regclass"
            "           AND (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid) = $1)"
            "  AND NOT (d.classid = 'pg_constraint'::regclass"
            "           AND (SELECT conrelid FROM pg_constraint WHERE oid = d.objid) = $1)"
            " ORDER BY 1",
            oid,
        )
    ]


async def view_facts(pool: asyncpg.Pool[Any]) -> dict[str, tuple[Any, ...]]:
    """Each view's oid, owner, grants, comment and options."""
    rows = await pool.fetch(
        "SELECT c.relname::text, c.oid, pg_get_userbyid(c.relowner), c.relacl::text[], "
        "       obj_description(c.oid, 'pg_class'), c.reloptions "
        "  FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace"
    )
    return {r[0]: tuple(r[1:]) for r in rows}


async def keys(pool: asyncpg.Pool[Any]) -> dict[str, tuple[Any, ...]]:
    """Every foreign key referencing the memories in place or the old table: its table, the
    table it references, definition, validation, deferrability and comment."""
    rows = await pool.fetch(
        "SELECT conname::text, conrelid::regclass::text, confrelid, pg_get_constraintdef(oid), "
        "       convalidated, condeferrable, condeferred, obj_description(oid, 'pg_constraint') "
        "  FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace ORDER BY 1, 2"
    )
    return {f"{r[0]} on {r[1]}": tuple(r[2:]) for r in rows}


async def sentiments(pool: asyncpg.Pool[Any], relation: str) -> dict[int, str | None]:
    return {
        r[0]: r[1]
        for r in await pool.fetch(f"SELECT id, metadata ->> 'sentiment' FROM {relation} ORDER BY id")
    }


async def store_with_views(pool: asyncpg.Pool[Any], reader: str) -> None:
    await pool.execute(STORE.format(rows=ROWS))
    await pool.execute(VIEWS.format(reader=f'"{reader}"'))


async def test_the_views_read_the_rewritten_table_after_the_swap_and_keep_their_grants_and_comments(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    async with temporary_role(pool) as reader:
        await store_with_views(pool, reader)
        original = await oid_of(pool, "memories")
        facts = await view_facts(pool)
        migrator = Migrator(pool, [Enrich])

        await migrator.run_pending()

        assert await migrator.hybrid_phase("enrich_001") is HybridPhase.READY_TO_CONTRACT
        rewritten = await oid_of(pool, "memories")
        assert rewritten != original
        contents = {r[0]: r[1] for r in await pool.fetch("SELECT id, content FROM memories")}
        assert await sentiments(pool, "recent") == {
            key: sentiment(text) for key, text in contents.items() if key > 10
        }
        assert dict(await pool.fetch("SELECT id, sentiment FROM recent_sentiment")) == {
            key: sentiment(text) for key, text in contents.items() if key > 10
        }
        assert await sentiments(pool, "guarded") == {
            key: sentiment(text) for key, text in contents.items() if key % 2 == 0
        }
        assert await viewers(pool, rewritten) == ["guarded", "recent", "short_ids"]
        assert await viewers(pool, await oid_of(pool, "recent")) == ["recent_sentiment"]
        old = await old_table(pool)
        assert await dependents(pool, await oid_of(pool, old)) == []
        # Replaced, not created again: the same views, owner, grants, comment and options.
        assert await view_facts(pool) == facts
        assert facts["guarded"][4] == ["security_barrier=true", "security_invoker=true"]
        assert facts["short_ids"][4] == ["check_option=local"]
        assert await pool.fetchval("SELECT has_table_privilege($1, 'guarded', 'SELECT')", reader)
        with pytest.raises(asyncpg.WithCheckOptionViolationError):
            await pool.execute("INSERT INTO short_ids (id, content) VALUES (5000, 'too far')")

        await migrator.contract("enrich_001")

        assert await migrator.status("enrich_001") is MigrationStatus.COMPLETED
        assert await leftovers(pool) == []
        assert await pool.fetchval("SELECT count(sentiment) FROM recent_sentiment") == ROWS - 10
        assert await view_facts(pool) == facts


async def test_after_a_rollback_the_views_read_the_original_again(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    async with temporary_role(pool) as reader:
        await store_with_views(pool, reader)
        original = await oid_of(pool, "memories")
        facts = await view_facts(pool)
        migrator = Migrator(pool, [Enrich])
        await migrator.run_pending()
        assert set((await sentiments(pool, "recent")).values()) == {"positive", "negative"}

        await migrator.rollback("enrich_001")

        assert await migrator.status("enrich_001") is MigrationStatus.ROLLED_BACK
        assert await oid_of(pool, "memories") == original
        assert await viewers(pool, original) == ["guarded", "recent", "short_ids"]
        assert set((await sentiments(pool, "recent")).values()) == {None}
        assert set((await sentiments(pool, "guarded")).values()) == {None}
        assert await view_facts(pool) == facts
        assert await leftovers(pool) == []


async def test_other_tables_foreign_keys_move_to_the_rewritten_table_and_are_validated(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    await pool.execute(STORE.format(rows=ROWS))
    await pool.execute(KEYS.format(rows=ROWS))
    original = await oid_of(pool, "memories")
    before = await keys(pool)
    migrator = Migrator(pool, [Enrich])

    await migrator.run_pending()

    rewritten = await oid_of(pool, "memories")
    after = await keys(pool)
    old = (await old_table(pool)).strip('"')
    moved = {name: facts for name, facts in after.items() if not name.endswith(f"on {old}")}
    # The same constraints, by name and definition, validated, now referencing the rewritten table
    # (the table's own key to its parent included).
    assert moved == {name: (rewritten, *facts[1:]) for name, facts in before.items()}
    assert all(facts[2] for facts in moved.values())
    assert before["notes_memory on notes"][3:] == (True, True, "a note may outlive its memory")
    assert "ON DELETE CASCADE" in before["links_memory_id_fkey on links"][1]
    assert await dependents(pool, await oid_of(pool, f'"{old}"')) == []
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO links (memory_id) VALUES ($1)", ROWS + 100)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO memories (content, parent_id) VALUES ('orphan', $1)", ROWS + 100)
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await conn.execute("INSERT INTO notes VALUES ($1)", ROWS + 100)  # checked at the commit
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await transaction.commit()
    await pool.execute("UPDATE memories SET parent_id = NULL WHERE parent_id = 5")
    await pool.execute("DELETE FROM memories WHERE id = 5")
    assert await pool.fetchval("SELECT count(*) FROM links WHERE memory_id = 5") == 0
    assert await pool.fetchval("SELECT count(*) FROM notes WHERE memory_id IS NULL") == 1

    await migrator.rollback("enrich_001")

    assert await oid_of(pool, "memories") == original
    assert await keys(pool) == before
    assert await leftovers(pool) == []
    assert await pool.fetchval("SELECT count(*) FROM links") == ROWS - 1  # what was written stays
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await pool.execute("INSERT INTO links (memory_id) VALUES (5)")


async def test_contract_drops_the_original_once_the_foreign_keys_have_moved(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    await pool.execute(STORE.format(rows=ROWS))
    await pool.execute(KEYS.format(rows=ROWS))
    migrator = Migrator(pool, [Enrich])
    await migrator.run_pending()

    await migrator.contract("enrich_001")

    assert await leftovers(pool) == []
    rewritten = await oid_of(pool, "memories")
    assert {facts[0] for facts in (await keys(pool)).values()} == {rewritten}
    await pool.execute("DELETE FROM memories WHERE id = $1", ROWS)
    assert await pool.fetchval("SELECT count(*) FROM links WHERE memory_id = $1", ROWS) == 0


async def test_a_write_to_a_referencing_table_under_way_holds_the_swap_back_without_a_deadlock(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    pool = brainmigrate_pool
    await pool.execute(STORE.format(rows=ROWS))
    await pool.execute(KEYS.format(rows=ROWS))
    migrator = Migrator(pool, [Enrich])
    waiting = (
        "SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 'links'::regclass "
        "AND mode = 'AccessExclusiveLock' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )
    application = await asyncpg.connect(brainmigrate_database)
    try:
        transaction = application.transaction()
        await transaction.start()
        await application.execute("INSERT INTO links (memory_id) VALUES (1)")
        async with anyio.create_task_group() as group:
            group.start_soon(migrator.run_pending)
            with anyio.fail_after(120):
                while not await pool.fetchval(waiting):  # noqa: ASYNC110 - polls the server
                    await anyio.sleep(0.05)
            # The swap waits for the referencing table before it locks the memories, so this
            # write's check of its memory goes through.
            await application.execute("INSERT INTO links (memory_id) VALUES (2)")
            await transaction.commit()
    finally:
        await application.close()

    assert await migrator.hybrid_phase("enrich_001") is HybridPhase.READY_TO_CONTRACT
    assert await pool.fetchval("SELECT count(*) FROM links") == ROWS + 2
    assert await pool.fetchval(
        "SELECT confrelid = 'memories'::regclass AND convalidated FROM pg_constraint "
        "WHERE conname = 'links_memory_id_fkey'"
    )


class EnrichOnceLetThrough(Enrich):
    """Enrich, whose copy waits at its first memory until the test lets it through."""

    reached: ClassVar[anyio.Event]
    let_through: ClassVar[anyio.Event]

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        if not self.let_through.is_set():
            self.reached.set()
            await self.let_through.wait()
        return await super().transform_memory(memory)


async def test_a_deadlock_with_the_application_ends_the_swaps_try_and_the_next_try_swaps(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    # The application updates a memory, then writes a link to it, in one transaction; between the
    # two the swap, holding the referencing tables, asks for the memories'. Neither can go on: the
    # server ends the swap's try (the application's deadlock timeout is the longer), and the swap
    # tries again once the application has committed.
    pool = brainmigrate_pool
    await pool.execute(STORE.format(rows=ROWS))
    await pool.execute(KEYS.format(rows=ROWS))
    EnrichOnceLetThrough.reached, EnrichOnceLetThrough.let_through = anyio.Event(), anyio.Event()
    migrator = Migrator(pool, [EnrichOnceLetThrough])
    swap_waits = (
        "SELECT EXISTS (SELECT FROM pg_locks WHERE relation = 'memories'::regclass "
        "AND mode = 'AccessExclusiveLock' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))"
    )
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    await pool.execute("SELECT pg_stat_clear_snapshot()")
    before = await pool.fetchval(deadlocks)
    application = await asyncpg.connect(brainmigrate_database)
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(migrator.run_pending)
            with anyio.fail_after(120):
                await EnrichOnceLetThrough.reached.wait()  # the copy has begun: writes are captured
                transaction = application.transaction()
                await transaction.start()
                await application.execute("SET LOCAL deadlock_timeout = '10min'")
                await application.execute("UPDATE memories SET content = content || ' (edited)' WHERE id = 3")
                EnrichOnceLetThrough.let_through.set()
                while not await pool.fetchval(swap_waits):  # noqa: ASYNC110 - polls the server
                    await anyio.sleep(0.01)
                # Waits for the swap's lock on links, until the server ends the swap's try.
                await application.execute("INSERT INTO links (memory_id) VALUES (3)")
            await transaction.commit()
    finally:
        await application.close()

    async def counted() -> int | None:
        await pool.execute("SELECT pg_stat_clear_snapshot()")
        seen: int = await pool.fetchval(deadlocks)
        return seen if seen > before else None

    assert await wait_until(counted, within=30, what="the deadlock counted") == before + 1
    assert await migrator.hybrid_phase("enrich_001") is HybridPhase.READY_TO_CONTRACT
    assert await pool.fetchval("SELECT count(*) FROM links WHERE memory_id = 3") == 2
    edited = await pool.fetchrow("SELECT content, metadata ->> 'sentiment' AS s FROM memories WHERE id = 3")
    assert tuple(edited) == ("a sad memory 3 (edited)", "negative")  # replayed into the copy
    assert await pool.fetchval(
        "SELECT confrelid = 'memories'::regclass AND convalidated FROM pg_constraint "
        "WHERE conname = 'links_memory_id_fkey'"
    )


PUBLISHED = """
SELECT p.pubname::text, pr.prrelid,
       ARRAY(SELECT a.attname::text FROM unnest(pr.prattrs::int2[]) AS x(n)
               JOIN pg_attribute a ON a.attrelid = pr.prrelid AND a.attnum = x.n ORDER BY 1),
       pg_get_expr(pr.prqual, pr.prrelid)
  FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
 ORDER BY 1
"""


async def test_the_publications_listing_the_table_list_the_rewritten_one_then_the_original_again(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    pool = brainmigrate_pool
    await pool.execute(STORE.format(rows=ROWS))
    await pool.execute(
        "CREATE PUBLICATION listed FOR TABLE memories;"
        "CREATE PUBLICATION filtered FOR TABLE memories (id, content, metadata) WHERE (id > 10);"
        "CREATE PUBLICATION whole_schema FOR TABLES IN SCHEMA public;"
        "CREATE PUBLICATION everything FOR ALL TABLES"
    )
    original = await oid_of(pool, "memories")
    migrator = Migrator(pool, [Enrich])

    await migrator.run_pending()

    rewritten = await oid_of(pool, "memories")
    assert [tuple(r) for r in await pool.fetch(PUBLISHED)] == [
        ("filtered", rewritten, ["content", "id", "metadata"], "(id > 10)"),
        ("listed", rewritten, [], None),
    ]
    # The publications of a schema or of every table follow the table's name by themselves.
    published_query = (
        "SELECT pubname::text FROM pg_publication_tables WHERE schemaname = 'public' "
        "AND tablename = 'memories' ORDER BY 1"
    )
    published = await pool.fetch(published_query)
    assert [r[0] for r in published] == ["everything", "filtered", "listed", "whole_schema"]

    await migrator.rollback("enrich_001")

    assert [tuple(r) for r in await pool.fetch(PUBLISHED)] == [
        ("filtered", original, ["content", "id", "metadata"], "(id > 10)"),
        ("listed", original, [], None),
    ]
    assert await pool.fetch(published_query) == published
    assert await leftovers(pool) == []


@asynccontextmanager
async def pool_as(dsn: str, role: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3, server_settings={"role": role})
    try:
        yield pool
    finally:
        await pool.close()


#: What another role owns, depending on the memories (the role is ``{other}``).
OTHERS = {
    "foreign key": (
        "CREATE TABLE links (memory_id bigint REFERENCES memories (id)); ALTER TABLE links OWNER TO {other}",
        "foreign keys of tables the current role does not own reference public.memories "
        "(links_memory_id_fkey on public.links)",
    ),
    "view": (
        "CREATE VIEW theirs AS SELECT id FROM memories; ALTER VIEW theirs OWNER TO {other}",
        "views the current role does not own read public.memories (public.theirs)",
    ),
    "publication": (
        "CREATE PUBLICATION theirs FOR TABLE memories; ALTER PUBLICATION theirs OWNER TO {other}",
        "publications the current role does not own list public.memories (theirs)",
    ),
}


@pytest.mark.parametrize("kind", list(OTHERS))
async def test_what_another_role_owns_on_the_table_is_refused_before_anything_is_created(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str, kind: str
) -> None:
    admin = brainmigrate_pool
    setup, message = OTHERS[kind]
    async with temporary_role(admin) as migrator_role, temporary_role(admin) as other:
        database = await admin.fetchval("SELECT current_database()")
        await admin.execute(
            f'GRANT CREATE ON DATABASE "{database}" TO "{migrator_role}", "{other}";'
            f'GRANT ALL ON SCHEMA public TO "{migrator_role}", "{other}"'
        )
        async with admin.acquire() as conn:
            await conn.execute(f'SET ROLE "{migrator_role}"')
            await conn.execute(STORE.format(rows=ROWS))
            await conn.execute("RESET ROLE")
        await admin.execute(setup.format(other=f'"{other}"'))
        before = await sentiments(admin, "memories")
        async with pool_as(brainmigrate_database, migrator_role) as pool:
            with pytest.raises(MigrationValidationError) as raised:
                await Migrator(pool, [Enrich]).run_pending()

        assert type(raised.value) is MigrationValidationError
        assert raised.value.migration_id == "enrich_001"
        assert message in str(raised.value) and "Nothing was created" in str(raised.value)
        assert await sentiments(admin, "memories") == before
        assert await leftovers(admin) == []
        assert (
            await admin.fetchval(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'memories'::regclass AND NOT tgisinternal"
            )
            == 0
        )
        assert (
            await admin.fetchval(
                "SELECT count(*) FROM pg_class WHERE relname LIKE 'rewrite\\_%' OR relname LIKE 'bm\\_%'"
            )
            == 0
        )


async def own_triggers(pool: asyncpg.Pool[Any]) -> list[str]:
    """The triggers on the memories that are not the server's own (a capture's, say)."""
    return [
        r[0]
        for r in await pool.fetch(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = 'memories'::regclass AND NOT tgisinternal"
        )
    ]


#: What refers to the table by OID, and would go on referring to the old one after the swap.
BY_OID = {
    "function with a SQL-standard body": (
        "CREATE FUNCTION counted() RETURNS bigint LANGUAGE sql"
        " BEGIN ATOMIC SELECT count(*) FROM memories; END",
        "functions or procedures with SQL-standard bodies read or write public.memories "
        "(function public.counted()); their bodies refer to the table itself, not its name",
    ),
    "column of its row type": (
        "CREATE TABLE archive (kept memories)",
        "other objects use the row type of public.memories (column kept of table public.archive); "
        "that type stays the old table's after the swap",
    ),
    "materialized view through a view": (
        "CREATE VIEW recent AS SELECT id FROM memories WHERE id > 10;"
        "CREATE MATERIALIZED VIEW recent_count AS SELECT count(*) FROM recent",
        "materialized views depend on public.memories (public.recent_count); their rows were computed "
        "from the old table",
    ),
    "extended statistics": (
        "CREATE STATISTICS memories_content_parent ON content, parent_id FROM memories",
        "public.memories has extended statistics (statistics object public.memories_content_parent), "
        "which the swap does not carry over",
    ),
    "policy of another table": (
        "CREATE TABLE seen (id bigint);"
        "CREATE POLICY seen_memories ON seen USING (id IN (SELECT id FROM memories))",
        "other objects depend on public.memories itself (policy seen_memories on table public.seen), and "
        "would go on depending on the old table after the swap",
    ),
}


@pytest.mark.parametrize("kind", list(BY_OID))
async def test_what_refers_to_the_table_by_oid_is_refused_before_anything_is_created(
    brainmigrate_pool: asyncpg.Pool[Any], kind: str
) -> None:
    setup, message = BY_OID[kind]
    await brainmigrate_pool.execute(STORE.format(rows=ROWS))
    await brainmigrate_pool.execute(setup)
    before, _ = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as raised:
        await Migrator(brainmigrate_pool, [Enrich]).run_pending()

    assert type(raised.value) is MigrationValidationError
    assert raised.value.migration_id == "enrich_001"
    assert message in str(raised.value) and "Nothing was created" in str(raised.value)
    after, history = await snapshot(brainmigrate_pool)
    assert after == before
    assert history and {row["status"] for row in history} == {"failed"}  # the refused step, as such
    assert await leftovers(brainmigrate_pool) == []
    assert await own_triggers(brainmigrate_pool) == []


async def test_a_logical_replication_slot_in_the_database_is_refused_before_anything_is_created() -> None:
    """On a server of its own with ``wal_level = logical``, where a logical slot can be created."""
    async with EmbeddedPostgres({"wal_level": "logical"}) as server:
        pool = await asyncpg.create_pool(server.dsn(), min_size=1, max_size=4)
        try:
            await pool.execute(STORE.format(rows=ROWS))
            await pool.execute("SELECT pg_create_logical_replication_slot('subscriber', 'pgoutput')")
            try:
                before, _ = await snapshot(pool)

                with pytest.raises(MigrationValidationError) as raised:
                    await Migrator(pool, [Enrich]).run_pending()

                assert type(raised.value) is MigrationValidationError
                assert raised.value.migration_id == "enrich_001"
                assert (
                    "this database has logical replication slots (subscriber), whose subscribers would "
                    "see the copy's writes as the application's"
                ) in str(raised.value)
                assert "Nothing was created" in str(raised.value)
                after, history = await snapshot(pool)
                assert after == before
                assert history and {row["status"] for row in history} == {"failed"}
                assert await leftovers(pool) == []
                assert await own_triggers(pool) == []
            finally:
                await pool.execute("SELECT pg_drop_replication_slot('subscriber')")
            assert await pool.fetchval("SELECT count(*) FROM pg_replication_slots") == 0
        finally:
            await pool.close()
