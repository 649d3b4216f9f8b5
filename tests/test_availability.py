"""Availability: runners sharing a small pool, and a database server that cannot be reached."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from brainmigrate import (
    BrainMigrateError,
    DatabaseUnavailableError,
    MigrationConfig,
    MigrationLockTimeout,
    Migrator,
    PoolExhaustedError,
)
from brainmigrate._ledger.lock import lock_key
from data_support import create_memories, memory_migration, tagged_count
from helpers import create_table, table_exists

pytestmark = pytest.mark.anyio

RUNNERS = 8
RUNNER_KEY = lock_key("brainmigrate")
SCHEMA_IDS = ["avail_001", "avail_002", "avail_003", "avail_004"]
MEMORIES = 300


def _schema_migrations() -> list[Any]:
    migrations = []
    previous: list[str] = []
    for mid in SCHEMA_IDS:
        migrations.append(create_table(mid, f"table_{mid}", dependencies=previous))
        previous = [mid]
    return migrations


async def _run_concurrently(calls: list[Callable[[], Awaitable[Any]]]) -> list[str]:
    """Run every call at once; each one's outcome: "ok", or the name of the error it raised."""
    outcomes = [""] * len(calls)

    async def one(index: int) -> None:
        try:
            await calls[index]()
            outcomes[index] = "ok"
        except Exception as exc:
            outcomes[index] = f"{type(exc).__name__}: {exc}"

    async with anyio.create_task_group() as group:
        for index in range(len(calls)):
            group.start_soon(one, index)
    return outcomes


async def _completed_applies(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    """Per migration id, the history rows recording a completed apply."""
    rows = await pool.fetch(
        "SELECT migration_id, count(*) AS n FROM brainmigrate.migration_history "
        "WHERE operation = 'apply' AND status = 'completed' GROUP BY migration_id"
    )
    return {row["migration_id"]: row["n"] for row in rows}


# -- runners sharing one small pool --------------------------------------------------------------


async def test_eight_runners_on_a_pool_of_four_all_succeed_and_apply_each_migration_once(
    brainmigrate_database: str,
) -> None:
    """Runners waiting for the lock don't starve the holder of the connection its work needs."""
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=4)
    try:
        migrations = _schema_migrations()
        config = MigrationConfig(lock_wait_seconds=15)
        calls = [Migrator(pool, migrations, config=config).run_pending for _ in range(RUNNERS)]

        outcomes = await _run_concurrently(calls)

        expected_outcomes = ["ok"] * RUNNERS
        assert expected_outcomes == outcomes
        expected_applies = {mid: 1 for mid in SCHEMA_IDS}
        assert expected_applies == await _completed_applies(pool)
        assert all([await table_exists(pool, f"table_{mid}") for mid in SCHEMA_IDS])
    finally:
        await pool.close()


async def test_eight_runners_with_a_parallel_data_migration_on_a_pool_of_four_all_succeed(
    brainmigrate_database: str,
) -> None:
    """With a data migration (two workers per runner) in the plan, every runner still succeeds."""
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await create_memories(conn, MEMORIES)
        tag = memory_migration("tag_001", dependencies=[SCHEMA_IDS[1]])
        after = create_table("after_tag_001", "after_tag", dependencies=["tag_001"])
        migrations = [*_schema_migrations(), tag, after]
        config = MigrationConfig(
            lock_wait_seconds=15,
            parallel_execution=True,
            max_workers=2,
            batch_size=25,
            checkpoint_frequency=25,
        )
        calls = [Migrator(pool, migrations, config=config).run_pending for _ in range(RUNNERS)]

        outcomes = await _run_concurrently(calls)

        expected_outcomes = ["ok"] * RUNNERS
        assert expected_outcomes == outcomes
        expected_applies = {mid: 1 for mid in [*SCHEMA_IDS, "tag_001", "after_tag_001"]}
        assert expected_applies == await _completed_applies(pool)
        expected_tagged = MEMORIES
        assert expected_tagged == await tagged_count(pool)
        assert await table_exists(pool, "after_tag")
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _small_pool_and_the_lock_held_elsewhere(
    dsn: str,
) -> AsyncIterator[tuple[asyncpg.Pool[Any], asyncpg.Connection[Any]]]:
    """A pool of two connections, and a connection of its own holding the runners' lock."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    holder = await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", RUNNER_KEY)
        yield pool, holder
    finally:
        await holder.close()
        await pool.close()


async def test_a_runner_waiting_for_the_lock_leaves_the_pool_to_the_application(
    brainmigrate_database: str,
) -> None:
    """While a runner waits for a lock held elsewhere, it pins none of the pool's connections."""
    async with _small_pool_and_the_lock_held_elsewhere(brainmigrate_database) as (pool, holder):
        migrator = Migrator(pool, [create_table("a", "a")], config=MigrationConfig(lock_wait_seconds=15))
        outcome: list[str] = []

        async def run() -> None:
            try:
                await migrator.run_pending()
                outcome.append("ok")
            except Exception as exc:
                outcome.append(f"{type(exc).__name__}: {exc}")

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await anyio.sleep(0.3)  # the runner is polling for the lock now
            taken: list[bool] = []
            try:
                async with pool.acquire(timeout=2) as first, pool.acquire(timeout=2) as second:
                    taken = [await first.fetchval("SELECT true"), await second.fetchval("SELECT true")]
            except TimeoutError:
                taken = [False]
            await holder.execute("SELECT pg_advisory_unlock($1)", RUNNER_KEY)

        expected_taken, expected_outcome = [True, True], ["ok"]
        assert expected_taken == taken
        assert expected_outcome == outcome
        assert await table_exists(pool, "a")


async def test_the_lock_held_elsewhere_while_the_pool_is_busy_still_times_out_as_a_lock_timeout(
    brainmigrate_database: str,
) -> None:
    """A runner that saw the lock held reports MigrationLockTimeout, even if the pool was busy at the end."""
    async with _small_pool_and_the_lock_held_elsewhere(brainmigrate_database) as (pool, _):
        migrator = Migrator(pool, [create_table("a", "a")], config=MigrationConfig(lock_wait_seconds=0.6))
        raised: list[BaseException] = []

        async def run() -> None:
            try:
                await migrator.run_pending()
            except BrainMigrateError as exc:
                raised.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await anyio.sleep(0.2)
            async with pool.acquire(), pool.acquire():  # the application takes every connection
                await anyio.sleep(0.8)

        expected_errors: list[type[BaseException]] = [MigrationLockTimeout]
        assert expected_errors == [type(exc) for exc in raised]
        assert not await table_exists(pool, "a")


async def test_a_pool_held_entirely_by_the_application_is_reported_as_exhausted(
    brainmigrate_database: str,
) -> None:
    """With every connection taken before the runner starts, the run fails with PoolExhaustedError."""
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=2, max_size=2)
    try:
        migrator = Migrator(pool, [create_table("a", "a")], config=MigrationConfig(lock_wait_seconds=0.3))
        async with pool.acquire(), pool.acquire():
            with pytest.raises(PoolExhaustedError) as raised:
                await migrator.run_pending()

        expected_seconds = 0.3
        assert expected_seconds == raised.value.seconds
        assert not await table_exists(pool, "brainmigrate.migration_history")
    finally:
        await pool.close()


# -- a server that cannot be reached ---------------------------------------------------------------


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _with(dsn: str, *, user: str | None = None, database: str | None = None) -> str:
    """``dsn`` with another user or database."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rpartition('@')[2]}"
    path = parts.path if database is None else f"/{database}"
    return urlunsplit(parts._replace(netloc=netloc, path=path))


CALLS: dict[str, Callable[[Migrator], Awaitable[Any]]] = {
    "run_pending": lambda m: m.run_pending(),
    "pending": lambda m: m.pending(),
    "history": lambda m: m.history(),
    "status": lambda m: m.status("a"),
    "validate": lambda m: m.validate("a"),
    "execute": lambda m: m.execute("a"),
    "rollback": lambda m: m.rollback("a"),
    "failed_items": lambda m: m.failed_items("a"),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_a_server_refusing_connections_gives_a_typed_error_naming_it(call: str) -> None:
    """Nothing listening at the pool's address: DatabaseUnavailableError naming host:port, and what to do."""
    port = _closed_port()
    pool = await asyncpg.create_pool(
        f"postgresql://postgres:s3cret@127.0.0.1:{port}/postgres", min_size=0, max_size=2
    )
    try:
        migrator = Migrator(pool, [create_table("a", "a")], config=MigrationConfig(lock_wait_seconds=5))

        with pytest.raises(DatabaseUnavailableError) as raised:
            await CALLS[call](migrator)

        error = raised.value
        message = str(error)
        assert isinstance(error, BrainMigrateError)
        assert isinstance(error, ConnectionError)
        expected_server = f"127.0.0.1:{port}"
        assert isinstance(error.__cause__, OSError)
        assert expected_server == error.server
        assert expected_server in message
        assert "pool" in message
        assert "running" in message
        assert "s3cret" not in message
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("change", "driver_error", "named"),
    [
        pytest.param(
            {"database": "no_such_db_xyz"}, asyncpg.InvalidCatalogNameError, "no_such_db_xyz", id="db"
        ),
        pytest.param(
            {"user": "no_such_role_xyz"},
            asyncpg.InvalidAuthorizationSpecificationError,
            "no_such_role_xyz",
            id="role",
        ),
    ],
)
@pytest.mark.parametrize("call", ["run_pending", "pending", "history", "status"])
async def test_a_server_rejecting_the_connection_gives_a_typed_error(
    brainmigrate_database: str,
    call: str,
    change: dict[str, str],
    driver_error: type[BaseException],
    named: str,
) -> None:
    """An unknown database or role: DatabaseUnavailableError naming the server, chained to the driver's."""
    dsn = _with(brainmigrate_database, **change)
    server = urlsplit(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    try:
        migrator = Migrator(pool, [create_table("a", "a")], config=MigrationConfig(lock_wait_seconds=5))

        with pytest.raises(DatabaseUnavailableError) as raised:
            await CALLS[call](migrator)

        message = str(raised.value)
        socket_directory = parse_qs(server.query).get("host", [""])[0]  # the embedded server's socket
        expected_server = (
            f"{socket_directory}/.s.PGSQL.{server.port or 5432}"
            if socket_directory
            else f"{server.hostname}:{server.port or 5432}"
        )
        assert type(raised.value.__cause__) is driver_error
        assert expected_server == raised.value.server
        assert expected_server in message
        assert named in message
        assert "DSN" in message
    finally:
        await pool.close()


async def test_a_connection_taken_in_the_last_moment_of_a_wait_is_given_back_whole(
    brainmigrate_database: str,
) -> None:
    """asyncpg bounds giving a connection back by the timeout it was taken with, so a lock poll
    that took its connection in the last millisecond of its wait used to fail with a bare
    TimeoutError while resetting it; brainmigrate gives connections back on a bound of its own."""
    from brainmigrate._ledger.connect import acquire, release

    pool = await asyncpg.create_pool(brainmigrate_database, min_size=2, max_size=2)
    try:
        bare = await pool.acquire(timeout=1e-6)
        with pytest.raises(TimeoutError):
            await pool.release(bare)  # what the driver does on its own
        for _ in range(20):
            conn = await acquire(pool, 1e-6)
            await release(pool, conn)
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()
