"""pytest fixtures: a PostgreSQL server, a fresh database per test, and an asyncpg pool on it.

The server is the one named by ``--brainmigrate-dsn`` or ``$BRAINMIGRATE_TEST_DSN``; with neither,
an embedded PostgreSQL (``brainmigrate[embedded]``) is started once per test session.

``brainmigrate_pool`` is async; it works in tests run by anyio's pytest plugin and by
pytest-asyncio (strict or auto mode). Don't mix pytest-asyncio's auto mode with
``@pytest.mark.anyio`` tests in one suite: both plugins would then try to run the same test.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest

from brainmigrate._databases import DatabaseFactory
from brainmigrate.embedded import EmbeddedPostgres

T = TypeVar("T")
DSN_ENV = "BRAINMIGRATE_TEST_DSN"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("brainmigrate")
    group.addoption(
        "--brainmigrate-dsn",
        default=None,
        help=f"PostgreSQL server for brainmigrate fixtures (default: ${DSN_ENV}, else an embedded server)",
    )


def _run(function: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private event loop in another thread.

    Sync fixtures use this so they never touch the event loop that runs the tests.
    """

    async def main() -> T:
        return await function()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, main()).result()


@pytest.fixture(scope="session")
def brainmigrate_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """The DSN of the PostgreSQL server the tests use (its maintenance database)."""
    dsn = pytestconfig.getoption("brainmigrate_dsn") or os.environ.get(DSN_ENV)
    if dsn:
        yield dsn
        return
    with EmbeddedPostgres() as server:
        yield server.dsn()


@pytest.fixture(scope="session")
def _brainmigrate_databases(brainmigrate_dsn: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(brainmigrate_dsn)
    yield factory
    _run(factory.close)


@pytest.fixture
def brainmigrate_database(_brainmigrate_databases: DatabaseFactory) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    dsn = _run(_brainmigrate_databases.create)
    yield dsn
    _run(lambda: _brainmigrate_databases.drop(dsn))


@pytest.fixture
async def brainmigrate_pool(brainmigrate_database: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """An asyncpg pool on ``brainmigrate_database``, closed after the test."""
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


_ASYNC_FIXTURES = frozenset({"brainmigrate_pool"})


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    """Let pytest-asyncio run our async fixtures in its tests, even in strict mode.

    In tests run by anyio's plugin (which request ``anyio_backend``) anyio runs them instead. The
    mark stays until the fixture is torn down: pytest-asyncio checks it again when the test runs,
    and in strict mode warns about (and will later refuse) async fixtures without it.
    """
    if fixturedef.argname not in _ASYNC_FIXTURES or "anyio_backend" in request.fixturenames:
        return (yield)
    func = fixturedef.func
    func._force_asyncio_fixture = True
    request.addfinalizer(lambda: vars(func).pop("_force_asyncio_fixture", None))
    return (yield)
