"""A dry run of a re-embedding: every transactional phase tried in one rolled-back transaction,
a sample of the new vectors reported, nothing written."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from brainmigrate import MigrationConfig, MigrationStatus, Migrator
from brainmigrate.testing import fingerprint
from reembed_support import REEMBED, create_store, reembed, toy_vector

pytestmark = pytest.mark.anyio


async def test_a_dry_run_of_a_reembedding_reports_new_vectors_and_writes_nothing(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 120)
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)
    migrator = Migrator(brainmigrate_pool, [reembed()])

    [result] = await migrator.run_pending(config=MigrationConfig(dry_run=True, dry_run_sample=10))

    assert result.migration_id == REEMBED and result.status is MigrationStatus.COMPLETED
    assert result.changes, "the sample's new vectors are reported"
    texts = dict(await brainmigrate_pool.fetch("SELECT id, content FROM memories"))
    vectors = [change for change in result.changes if change.column == "embedding_next"]
    assert vectors and {change.column for change in result.changes} == {
        "embedding_next",
        "embedding_next_md5",
    }
    for change in vectors:
        assert change.before is None
        assert change.after == pytest.approx(toy_vector(texts[change.key]), abs=1e-6)
    async with brainmigrate_pool.acquire() as conn:
        assert await fingerprint(conn) == before
    assert await migrator.embedding_model(table="memories", column="embedding") is None
    assert await migrator.hybrid_phase(REEMBED) is None
