"""An instant swap back (``rewrite_swap_back = "instant"``): after the swap, each statement the
application runs on the rewritten table is written to the original too, so a rollback has
nothing left to copy; a statement the original cannot take is logged and copied by the rollback."""

from __future__ import annotations

from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import MigrationStatus, Migrator
from rewrite_support import reverse_logged, the_old_table
from test_rewrite import create_store, enrichment, rows, tables

pytestmark = pytest.mark.anyio

INSTANT = enrichment(rewrite_swap_back="instant")


async def contents(pool: asyncpg.Pool[Any], table: str = "memories") -> dict[int, str]:
    return {r[0]: r[1] for r in await pool.fetch(f'SELECT id, content FROM "{table}"')}


async def test_multi_row_statements_key_changes_and_transactions_reach_the_original_at_once(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 100)
    migrator = Migrator(brainmigrate_pool, [INSTANT])
    await migrator.run_pending()
    old = await the_old_table(brainmigrate_pool)

    await brainmigrate_pool.execute("UPDATE memories SET content = content || ' (seen)' WHERE id <= 10")
    await brainmigrate_pool.execute("UPDATE memories SET id = id + 1000 WHERE id IN (20, 11)")
    await brainmigrate_pool.execute("DELETE FROM memories WHERE id BETWEEN 40 AND 44")
    await brainmigrate_pool.execute(
        "INSERT INTO memories (content) SELECT 'added ' || i FROM generate_series(1, 3) AS i"
    )
    async with brainmigrate_pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE memories SET content = 'in a transaction' WHERE id = 50")
        await conn.execute("DELETE FROM memories WHERE id = 51")

    assert await contents(brainmigrate_pool, old) == await contents(brainmigrate_pool)
    assert await reverse_logged(brainmigrate_pool) == 0

    await migrator.rollback("enrich_001")

    assert await migrator.status("enrich_001") is MigrationStatus.ROLLED_BACK
    restored = await rows(brainmigrate_pool)
    # Rows the application wrote come back as written (labelled by the rewrite), the rest as before.
    written = {*range(1, 11), 1011, 1020, 50}
    assert {key for key, (_, metadata, _) in restored.items() if "sentiment" in metadata} == written
    assert restored[1011][0] == "a happy memory 11" and restored[1020][0] == "a happy memory 20"
    assert not {11, 20} & restored.keys()
    assert restored[5][0] == "a happy memory 5 (seen)" and restored[50][0] == "in a transaction"
    assert not {40, 41, 42, 43, 44, 51} & restored.keys()
    assert len(restored) == 100 - 6 + 3
    assert [t for t in await tables(brainmigrate_pool) if t.startswith("bm_")] == []


async def test_a_write_the_original_refuses_succeeds_is_logged_and_the_rollback_copies_it(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    migrator = Migrator(brainmigrate_pool, [INSTANT])
    await migrator.run_pending()
    old = await the_old_table(brainmigrate_pool)
    # The original (and only it) now refuses one content: the mirror of that statement fails.
    await brainmigrate_pool.execute(
        f"ALTER TABLE \"{old}\" ADD CONSTRAINT refused CHECK (content <> 'only the new table') NOT VALID"
    )

    added = await brainmigrate_pool.fetchval(
        "INSERT INTO memories (content) VALUES ('only the new table') RETURNING id"
    )
    await brainmigrate_pool.execute("UPDATE memories SET content = 'mirrored' WHERE id = 3")

    assert (await contents(brainmigrate_pool))[added] == "only the new table"
    assert added not in await contents(brainmigrate_pool, old)
    assert (await contents(brainmigrate_pool, old))[3] == "mirrored"
    assert await reverse_logged(brainmigrate_pool) == 1
    await brainmigrate_pool.execute(f'ALTER TABLE "{old}" DROP CONSTRAINT refused')

    await migrator.rollback("enrich_001")

    restored = await contents(brainmigrate_pool)
    assert restored[added] == "only the new table" and restored[3] == "mirrored"
    assert len(restored) == 51


async def test_contract_takes_the_mirror_off_with_the_original(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    await create_store(brainmigrate_pool, 30)
    migrator = Migrator(brainmigrate_pool, [INSTANT])
    await migrator.run_pending()
    triggers = "SELECT tgname FROM pg_trigger WHERE tgrelid = 'memories'::regclass AND NOT tgisinternal"
    assert sorted(r[0][:11] for r in await brainmigrate_pool.fetch(triggers)) == [
        "bm_mirror_d",
        "bm_mirror_i",
        "bm_mirror_u",
        "bm_notrunc_",
    ]

    await migrator.contract("enrich_001")

    assert await brainmigrate_pool.fetch(triggers) == []
    assert await brainmigrate_pool.fetch("SELECT proname FROM pg_proc WHERE proname LIKE 'rewrite\\_%'") == []
    assert [t for t in await tables(brainmigrate_pool) if t.startswith("bm_")] == []
    await brainmigrate_pool.execute("UPDATE memories SET content = 'after contract' WHERE id = 1")
    assert (await contents(brainmigrate_pool))[1] == "after contract"


async def test_an_application_writing_through_the_swap_leaves_both_tables_with_the_same_rows(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """Inserts, edits and deletes run one after another on their own connection before, during
    and after the swap: the original then holds every row the rewritten table holds, with the
    same content, and has nothing left to replay."""
    await create_store(brainmigrate_pool, 2_000)
    original = await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid")
    written: list[int] = []  # the oid of the table each write landed in
    stopping = anyio.Event()

    async def application() -> None:
        conn = await asyncpg.connect(brainmigrate_database)
        try:
            i = 0
            while not stopping.is_set() or sum(oid != original for oid in written) < 30:
                i += 1
                key = (i * 37) % 2_000 + 1
                if i % 4 == 0:
                    oid = await conn.fetchval("DELETE FROM memories WHERE id = $1 RETURNING tableoid", key)
                elif i % 4 == 1:
                    oid = await conn.fetchval(
                        "INSERT INTO memories (content) VALUES ($1) RETURNING tableoid", f"insert {i}"
                    )
                else:
                    oid = await conn.fetchval(
                        "UPDATE memories SET content = $2 WHERE id = $1 RETURNING tableoid", key, f"edit {i}"
                    )
                if oid is not None:
                    written.append(oid)
        finally:
            await conn.close()

    migrator = Migrator(brainmigrate_pool, [INSTANT])
    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            group.start_soon(application)
            await migrator.run_pending()
            stopping.set()

    assert sum(oid == original for oid in written) > 0 and sum(oid != original for oid in written) >= 30
    old = await the_old_table(brainmigrate_pool)
    assert await contents(brainmigrate_pool, old) == await contents(brainmigrate_pool)
    assert await reverse_logged(brainmigrate_pool) == 0
    current = await contents(brainmigrate_pool)

    await migrator.rollback("enrich_001")

    assert await brainmigrate_pool.fetchval("SELECT 'memories'::regclass::oid") == original
    assert await contents(brainmigrate_pool) == current
