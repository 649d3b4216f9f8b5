"""Application writes racing a re-embedding's switch: a text removed since it was embedded, and a
table written faster than the model embeds (the switch is put off, nothing compensated)."""

from __future__ import annotations

import contextlib
from typing import Any

import anyio
import asyncpg
import pytest

from brainmigrate import HybridPhase, MigrationConfig, Migrator, TableLockTimeout
from reembed_support import REEMBED, columns, create_store, reembed, toy_vector, vectors

pytestmark = pytest.mark.anyio

CONFIG = MigrationConfig(batch_size=50, checkpoint_frequency=50, concurrency=2)


async def test_a_memory_whose_text_was_removed_during_the_backfill_has_no_new_vector(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    await create_store(brainmigrate_pool, 600)
    application = await asyncpg.connect(brainmigrate_database)
    cleared: list[int] = []
    one_at_a_time = anyio.Lock()  # embed is called concurrently; the connection takes one query

    async def embed(texts: list[str]) -> list[list[float]]:
        async with one_at_a_time:
            await clear_one()
        return [toy_vector(text) for text in texts]

    async def clear_one() -> None:
        if not cleared:
            key = await application.fetchval("SELECT min(id) FROM memories WHERE embedding_next IS NOT NULL")
            if key is not None:
                await application.execute("UPDATE memories SET content = NULL WHERE id = $1", key)
                cleared.append(key)

    migrator = Migrator(brainmigrate_pool, [reembed(embed=embed)], config=CONFIG)
    try:
        await migrator.run_pending()
    finally:
        await application.close()

    assert cleared and await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    new = await vectors(brainmigrate_pool)
    assert cleared[0] not in new
    texts = dict(await brainmigrate_pool.fetch("SELECT id, content FROM memories WHERE content IS NOT NULL"))
    assert new.keys() == texts.keys()
    assert all(new[key] == pytest.approx(toy_vector(texts[key]), abs=1e-6) for key in texts)


async def test_a_table_written_faster_than_the_model_embeds_puts_the_switch_off_without_compensating(
    brainmigrate_pool: asyncpg.Pool[Any], brainmigrate_database: str
) -> None:
    """Each embed call of the cutover edits 300 more memories: more than the switch embeds under
    its lock, every try. The switch is put off (TableLockTimeout saying why), nothing is switched
    or compensated, and once the writes stop the next run switches."""
    await create_store(brainmigrate_pool, 600)
    application = await asyncpg.connect(brainmigrate_database)
    await application.execute("SET lock_timeout = '100ms'")
    writing = [False]
    edits = [0]
    one_at_a_time = anyio.Lock()

    async def embed(texts: list[str]) -> list[list[float]]:
        async with one_at_a_time:
            await edit_many()
        return [toy_vector(text) for text in texts]

    async def edit_many() -> None:
        if writing[0]:
            edits[0] += 1
            with contextlib.suppress(asyncpg.LockNotAvailableError):  # the switch holds the table
                await application.execute(
                    "UPDATE memories SET content = content || ' (edited ' || $1::int || ')' "
                    "WHERE id IN (SELECT id FROM memories ORDER BY random() LIMIT 300 "
                    "FOR UPDATE SKIP LOCKED)",
                    edits[0],
                )

    migration = reembed(embed=embed, cutover_attempts=2, catch_up_passes=2)
    migrator = Migrator(brainmigrate_pool, [migration], config=CONFIG)
    # Up to the cutover: stop once the index is built (the cutover step then runs on its own).
    original = migration.validate_backfill

    async def start_writing(self: Any, conn: Any) -> bool:
        result: bool = await original(self, conn)
        writing[0] = True
        async with one_at_a_time:
            await edit_many()  # the first edits; then each embed call makes more
        return result

    migration.validate_backfill = start_writing  # type: ignore[method-assign]
    try:
        with pytest.raises(TableLockTimeout) as caught:
            await migrator.run_pending()
    finally:
        writing[0] = False

    error = caught.value
    assert error.tries == 2
    assert "written faster than the model embeds them" in str(error)
    assert "nothing was compensated" in str(error)
    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.CUTTING_OVER
    shape = await columns(brainmigrate_pool)
    assert shape["embedding"] == "vector(8)" and shape["embedding_next"] == "vector(12)"

    try:
        await migrator.run_pending()
    finally:
        await application.close()

    assert await migrator.hybrid_phase(REEMBED) is HybridPhase.READY_TO_CONTRACT
    texts = dict(await brainmigrate_pool.fetch("SELECT id, content FROM memories"))
    new = await vectors(brainmigrate_pool)
    assert all(new[key] == pytest.approx(toy_vector(texts[key]), abs=1e-6) for key in texts)
