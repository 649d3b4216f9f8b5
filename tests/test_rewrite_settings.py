"""A rewrite's settings: the strategy and its knobs are checked before anything runs, and the
copy's indexes are built with the declared ``maintenance_work_mem`` and parallel workers."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from brainmigrate import BrainMigrateError, MigrationValidationError, Migrator
from brainmigrate._model.data import MAINTENANCE_WORK_MEM_KB, memory_kb
from helpers import snapshot
from test_rewrite import create_store, enrichment, rows

pytestmark = pytest.mark.anyio

#: An index whose expression, while an index is built on it, refuses settings other than the
#: ones in ``expected_build`` (naming those it saw), so that a build with others fails.
REPORTING_INDEX = """
CREATE TABLE expected_build (settings text NOT NULL);
INSERT INTO expected_build VALUES ('any');
CREATE FUNCTION build_settings(id bigint) RETURNS bigint LANGUAGE plpgsql IMMUTABLE
    SET search_path FROM CURRENT AS $$
DECLARE
    seen text := 'maintenance_work_mem=' || current_setting('maintenance_work_mem')
        || ' workers=' || current_setting('max_parallel_maintenance_workers');
    wanted text := (SELECT settings FROM expected_build);
BEGIN
    IF wanted <> 'any' AND seen <> wanted
       AND EXISTS (SELECT 1 FROM pg_stat_progress_create_index WHERE pid = pg_backend_pid()) THEN
        RAISE EXCEPTION 'the index was built with %', seen;
    END IF;
    RETURN id;
END $$;
CREATE INDEX memories_reported_idx ON memories (build_settings(id)) WHERE id = 1;
"""


async def built_with(pool: asyncpg.Pool[Any], settings: str) -> None:
    """Make the reporting index's builds refuse any settings but ``settings``."""
    await pool.execute("UPDATE expected_build SET settings = $1", settings)


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        ("strategy", "sideways", "strategy must be one of 'in_place', 'rewrite', 'auto', got 'sideways'"),
        ("rewrite_contract_mode", "later", "rewrite_contract_mode must be 'auto' or 'manual', got 'later'"),
        ("rewrite_min_rows", -1, "rewrite_min_rows must be a non-negative int, got -1"),
        ("rewrite_min_rows", True, "rewrite_min_rows must be a non-negative int, got True"),
        ("rewrite_maintenance_work_mem", "512", "rewrite_maintenance_work_mem must be a size from 1MB"),
        ("rewrite_maintenance_work_mem", "512mb", "got '512mb'"),
        ("rewrite_maintenance_work_mem", "1.5GB", "got '1.5GB'"),
        ("rewrite_maintenance_work_mem", "512kB", "from 1MB to 2047GB"),
        ("rewrite_maintenance_work_mem", "2048GB", "from 1MB to 2047GB"),
        ("rewrite_maintenance_work_mem", 512, "got 512"),
        ("rewrite_parallel_workers", -1, "rewrite_parallel_workers must be None (the server's setting)"),
        ("rewrite_parallel_workers", 1025, "an int from 0 to 1024, got 1025"),
        ("rewrite_parallel_workers", "4", "got '4'"),
        ("rewrite_parallel_workers", False, "got False"),
        ("rewrite_swap_back", "later", "rewrite_swap_back must be 'replay' or 'instant', got 'later'"),
    ],
)
async def test_a_bad_rewrite_setting_is_refused_naming_it_and_nothing_is_written(
    brainmigrate_pool: asyncpg.Pool[Any], attribute: str, value: Any, message: str
) -> None:
    await create_store(brainmigrate_pool, 20)
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [enrichment("enrich_bad", **{attribute: value})])

    with pytest.raises(MigrationValidationError, match=re.escape(message)) as raised:
        await migrator.run_pending()

    assert "data migration 'enrich_bad'" in str(raised.value)
    assert await snapshot(brainmigrate_pool) == before


async def test_the_copys_indexes_are_built_with_the_declared_memory_and_workers(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 200)
    await brainmigrate_pool.execute(REPORTING_INDEX)
    before = await rows(brainmigrate_pool)
    await built_with(brainmigrate_pool, "maintenance_work_mem=96MB workers=0")
    migration = enrichment(rewrite_maintenance_work_mem="96MB", rewrite_parallel_workers=0)

    await Migrator(brainmigrate_pool, [migration]).run_pending()

    after = await rows(brainmigrate_pool)
    assert after.keys() == before.keys()
    assert {after[k][1]["sentiment"] for k in after} == {"positive", "negative"}
    assert (
        await brainmigrate_pool.fetchval(
            "SELECT count(*) FROM pg_indexes "
            "WHERE tablename = 'memories' AND indexname = 'memories_reported_idx'"
        )
        == 1
    )


async def test_a_build_with_other_settings_than_declared_would_be_seen(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await create_store(brainmigrate_pool, 50)
    await brainmigrate_pool.execute(REPORTING_INDEX)
    await built_with(brainmigrate_pool, "maintenance_work_mem=96MB workers=0")
    migration = enrichment(rewrite_maintenance_work_mem="80MB", rewrite_parallel_workers=0)

    with pytest.raises(
        BrainMigrateError,
        match="the index was built with maintenance_work_mem=80MB workers=0",
    ):
        await Migrator(brainmigrate_pool, [migration]).run_pending()


async def test_a_session_setting_larger_than_the_declared_one_is_kept(brainmigrate_database: str) -> None:
    pool = await asyncpg.create_pool(
        brainmigrate_database,
        min_size=1,
        max_size=4,
        server_settings={"maintenance_work_mem": "1GB", "max_parallel_maintenance_workers": "1"},
    )
    try:
        await create_store(pool, 50)
        await pool.execute(REPORTING_INDEX)
        await built_with(pool, "maintenance_work_mem=1GB workers=1")

        await Migrator(pool, [enrichment(rewrite_maintenance_work_mem="64MB")]).run_pending()

        assert await pool.fetchval("SELECT count(*) FROM memories WHERE metadata ? 'sentiment'") == 50
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW maintenance_work_mem") == "1GB"
    finally:
        await pool.close()


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["kB", "MB", "GB", "TB"]), st.booleans())
def test_a_size_reads_as_postgresql_reads_it(number: int, unit: str, spaced: bool) -> None:
    text = f"{number}{' ' if spaced else ''}{unit}"
    factor = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}[unit]

    assert memory_kb(text) == number * factor


@given(st.text(max_size=12))
def test_anything_but_a_whole_number_and_a_unit_is_not_a_size(text: str) -> None:
    if re.fullmatch(r"[0-9]{1,13}\s*(kB|MB|GB|TB)", text):
        return
    assert memory_kb(text) is None


def test_the_bounds_are_postgresqls() -> None:
    assert (memory_kb("1MB"), memory_kb("2147483647kB")) == MAINTENANCE_WORK_MEM_KB
