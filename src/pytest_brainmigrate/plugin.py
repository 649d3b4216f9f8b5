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
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from brainmigrate._errors import DatabaseUnavailableError
from brainmigrate.embedded import EmbeddedPostgres
from brainmigrate.testing import ChecksReport, DatabaseFactory, SampleData

from .checks import MIGRATIONS_INI, SINGLE_HEAD_INI, cached_report, checks_items

T = TypeVar("T")
DSN_ENV = "BRAINMIGRATE_TEST_DSN"
#: How long the session's first connection to a given server may take.
CONNECT_TIMEOUT = 10.0
POOL_CLOSE_TIMEOUT_INI = "brainmigrate_pool_close_timeout"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("brainmigrate")
    group.addoption(
        "--brainmigrate-dsn",
        default=None,
        help=f"PostgreSQL server for brainmigrate fixtures (default: ${DSN_ENV}, else an embedded server)",
    )
    group.addoption(
        "--brainmigrate-checks",
        action="store_true",
        default=False,
        help="also run brainmigrate's standard checks over the project's migrations "
        f"(the {MIGRATIONS_INI} ini setting, else [tool.brainmigrate] migrations)",
    )
    parser.addini(
        MIGRATIONS_INI,
        "The migrations the standard checks look at: a package, module or directory (default: "
        "$BRAINMIGRATE_MIGRATIONS, else [tool.brainmigrate] migrations in pyproject.toml)",
        default="",
    )
    parser.addini(
        SINGLE_HEAD_INI,
        "Whether several heads fail the standard checks' test_heads (default: false; conflicts "
        "between branches always do)",
        type="bool",
        default=False,
    )
    parser.addini(
        POOL_CLOSE_TIMEOUT_INI,
        "Seconds brainmigrate_pool waits after a test for its connections to be released before it "
        "terminates them (default: 10)",
        default="10",
    )


def _run(function: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private event loop in another thread.

    Sync fixtures use this so they never touch the event loop that runs the tests.
    """

    async def main() -> T:
        return await function()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(asyncio.run, main()).result()


def _shown(dsn: str) -> str:
    """``dsn`` without its password, for messages."""
    try:
        parts = urlsplit(dsn)
        if parts.password is None:
            return dsn
        netloc = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:***@" if parts.username else ":***@"
        return parts._replace(netloc=user + netloc).geturl()
    except ValueError:
        return "(a DSN that is not a URI)"


async def _check_server(dsn: str, source: str) -> None:
    """Connect once to the server named by ``source``; a typed error saying what to do if that fails."""
    try:
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        if source == f"${DSN_ENV}":
            remedy = f"it accepts this connection, or unset {DSN_ENV} to use an embedded server"
        else:
            remedy = (
                "it accepts this connection, or leave out --brainmigrate-dsn (and unset "
                f"{DSN_ENV}) to use an embedded server"
            )
        error = DatabaseUnavailableError(
            _shown(dsn), f"{type(exc).__name__}: {exc}", origin=f"the DSN given by {source}", remedy=remedy
        )
        raise error from exc
    await conn.close()


@pytest.fixture(scope="session")
def brainmigrate_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """The DSN of the PostgreSQL server the tests use (its maintenance database).

    A server given by the option or the environment is connected to once first; if that fails,
    every test using it errors with a :class:`~brainmigrate.DatabaseUnavailableError` saying why.
    """
    option = pytestconfig.getoption("brainmigrate_dsn")
    dsn = option or os.environ.get(DSN_ENV)
    if dsn:
        source = "--brainmigrate-dsn" if option else f"${DSN_ENV}"
        _run(lambda: _check_server(dsn, source))
        yield dsn
        return
    with EmbeddedPostgres() as server:
        yield server.dsn()


@pytest.fixture(scope="session")
def _brainmigrate_databases(brainmigrate_dsn: str) -> Iterator[DatabaseFactory]:
    factory = DatabaseFactory(brainmigrate_dsn)
    yield factory
    _run(factory.close)


class _Databases:
    """Fresh databases for the tests, one made ahead while the last test's database is dropped.

    Creating a database is most of a test's fixed cost; making the next test's copy of the template
    at the same time as the last one is dropped, between the two tests, saves most of one of them.
    Nothing runs while a test does. The copy made ahead is as fresh as one made when asked (the
    template never changes); it is dropped with the others when the session ends.
    """

    def __init__(self, factory: DatabaseFactory) -> None:
        self.factory = factory
        self._ahead: str | None = None

    def take(self) -> str:
        """The DSN of a fresh database: the one made ahead, else a new one."""
        dsn, self._ahead = self._ahead, None
        return dsn if dsn is not None else _run(self.factory.create)

    def drop(self, dsn: str) -> None:
        """Drop ``dsn`` and meanwhile make the next test's database (unless one is waiting).

        The drop's failure is raised; the next database's only leaves none made ahead, so that the
        next test's own attempt says what is wrong.
        """

        async def drop_and_make() -> str | None:
            if self._ahead is not None:
                await self.factory.drop(dsn)
                return self._ahead
            made, dropped = await asyncio.gather(
                self.factory.create(), self.factory.drop(dsn), return_exceptions=True
            )
            for outcome in (dropped, made):
                if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                    raise outcome
            if isinstance(dropped, BaseException):
                raise dropped
            return made if isinstance(made, str) else None

        self._ahead = _run(drop_and_make)


@pytest.fixture(scope="session")
def _brainmigrate_fresh(_brainmigrate_databases: DatabaseFactory) -> _Databases:
    return _Databases(_brainmigrate_databases)


@pytest.fixture
def brainmigrate_database(_brainmigrate_fresh: _Databases) -> Iterator[str]:
    """The DSN of a fresh, empty database, dropped after the test."""
    dsn = _brainmigrate_fresh.take()
    yield dsn
    _brainmigrate_fresh.drop(dsn)


@pytest.fixture
async def brainmigrate_pool(
    brainmigrate_database: str, pytestconfig: pytest.Config
) -> AsyncIterator[asyncpg.Pool[Any]]:
    """An asyncpg pool on ``brainmigrate_database``, closed after the test.

    Closing waits for connections the test still holds, up to ``brainmigrate_pool_close_timeout``
    seconds (an ini option, 10 by default); then it terminates them, with a warning.
    """
    timeout = float(pytestconfig.getini(POOL_CLOSE_TIMEOUT_INI))
    pool = await asyncpg.create_pool(brainmigrate_database, min_size=1, max_size=5)
    try:
        yield pool
    finally:
        with anyio.move_on_after(timeout) as scope:
            await pool.close()
        if scope.cancelled_caught:
            pool.terminate()
            warnings.warn(
                f"brainmigrate_pool: a connection was still acquired {timeout:g} s after the test "
                "ended, so the pool was terminated; release every connection you acquire "
                "(async with pool.acquire() as conn: ...)",
                stacklevel=1,
            )


@pytest.fixture
def brainmigrate_sample_data() -> SampleData | None:
    """Rows the standard checks put in place for the data checks; none by default.

    Override it with an async callable taking a connection, run (in a transaction) just before the
    first data, memory or structure migration, or with a mapping of migration ids to such callables,
    each run just before its migration. See "The standard checks" in the testing guide.
    """
    return None


@pytest.fixture
def brainmigrate_checks(
    request: pytest.FixtureRequest,
    _brainmigrate_databases: DatabaseFactory,
    brainmigrate_sample_data: SampleData | None,
) -> ChecksReport:
    """The standard checks' report (a :class:`~brainmigrate.testing.ChecksReport`) over the
    configured migrations (or those of the requesting ``StandardChecks`` class), from one walk per
    run over one throwaway database."""
    return cached_report(request, _brainmigrate_databases, brainmigrate_sample_data, _run)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    """``--brainmigrate-checks``: add the standard checks' tests (before -k and -m select)."""
    if config.getoption("brainmigrate_checks"):
        items.extend(checks_items(session))


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
