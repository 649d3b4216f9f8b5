"""What a migration costs in round trips on the work connection: its session is reset inside its
transaction, in the statement that checks the transaction is still brainmigrate's, so nothing is
sent between its COMMIT and the next migration's BEGIN; and that reset still puts the session back:
a migration that changed search_path (or masked the change with SET LOCAL until its commit) does
not pass it on to the next one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from brainmigrate import Migrator
from helpers import create_table, schema_migration

pytestmark = pytest.mark.anyio

RESET = "RESET SESSION AUTHORIZATION"


@asynccontextmanager
async def logged_pool(database: str) -> AsyncIterator[tuple[asyncpg.Pool[Any], list[str]]]:
    """A pool whose connections log every query they send, in order."""
    log: list[str] = []

    async def init(conn: Any) -> None:
        conn.add_query_logger(lambda record: log.append(record.query.strip()))

    pool = await asyncpg.create_pool(database, min_size=1, max_size=2, init=init)
    try:
        yield pool, log
    finally:
        await pool.close()


def between(log: list[str], first: str, second: str) -> list[str]:
    """The queries logged after the first that starts with ``first`` and before ``second``."""
    start = next(i for i, query in enumerate(log) if query.startswith(first))
    end = next(i for i, query in enumerate(log) if i > start and query.startswith(second))
    return log[start + 1 : end]


async def test_a_migration_that_leaves_the_session_alone_is_followed_by_no_reset(
    brainmigrate_database: str,
) -> None:
    """From one migration's statement to the next one's: the reset, the transaction check with
    the timeouts, the history row, COMMIT, then straight away BEGIN and the next transaction's id."""
    async with logged_pool(brainmigrate_database) as (pool, log):
        migrations = [create_table(f"m{i}", f"t{i}", version=f"1.{i}") for i in range(3)]

        await Migrator(pool, migrations).run_pending()

        queries = between(log, "CREATE TABLE t1", "CREATE TABLE t2")
        assert len(queries) == 6, queries
        assert [query for query in queries if RESET in query] == [queries[0]]
        assert queries[1].startswith(
            "SELECT pg_catalog.txid_current(), pg_catalog.set_config('lock_timeout', $1"
        )
        assert queries[2].startswith('INSERT INTO "brainmigrate".migration_history')
        assert queries[3:5] == ["COMMIT;", "BEGIN;"]


@pytest.mark.parametrize("transactional", [pytest.param(True, id="tx"), pytest.param(False, id="no-tx")])
@pytest.mark.parametrize(
    "change",
    [
        pytest.param(["SET search_path = pg_catalog"], id="search-path"),
        # Seen by no check inside the transaction: SET LOCAL hides the session's value until COMMIT.
        pytest.param(["SET search_path = pg_catalog", "SET LOCAL search_path = public"], id="masked"),
    ],
)
async def test_a_migration_that_changes_search_path_is_still_followed_by_a_reset(
    brainmigrate_database: str, transactional: bool, change: list[str]
) -> None:
    async with logged_pool(brainmigrate_database) as (pool, log):
        migrations = [
            schema_migration("changer", [*change, "SELECT 1"], transactional=transactional, version="1"),
            create_table("next", "t_next", version="2"),
        ]

        await Migrator(pool, migrations).run_pending()

        assert any(RESET in query for query in between(log, "SELECT 1", "CREATE TABLE t_next"))
        assert await pool.fetchval("SELECT to_regclass('public.t_next') IS NOT NULL")
