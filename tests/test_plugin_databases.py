"""The test tooling: throwaway databases, the pytest plugin, the embedded server, packaging.

Inner pytest runs are subprocesses, as in test_plugin.py; they get this session's server through
``--brainmigrate-dsn`` unless the embedded server or the environment is the point.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import asyncpg
import pytest

from brainmigrate import ConfigError
from brainmigrate._databases import DatabaseFactory, dsn_with_database
from brainmigrate._model.sqltext import quote_ident
from brainmigrate.embedded import EmbeddedPostgres
from pytest_brainmigrate.plugin import DSN_ENV

ROOT = Path(__file__).resolve().parents[1]


def run_inner(pytester: pytest.Pytester, *args: str, timeout: float = 120) -> pytest.RunResult:
    """Run pytest in a subprocess in pytester's directory, with the options every inner run needs
    (and without the plugins these runs do not use, whose loading takes most of a run's time)."""
    return pytester.runpytest_subprocess(
        *("-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest"),
        *("-o", "asyncio_default_fixture_loop_scope=function"),
        *args,
        timeout=timeout,
    )


def database_name(dsn: str) -> str:
    """The database a DSN names."""
    return urlsplit(dsn).path.lstrip("/")


async def database_oid(admin_dsn: str, name: str) -> int | None:
    """The oid of the database ``name`` on the server, or None when there is none."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        oid: int | None = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = $1", name)
    finally:
        await conn.close()
    return oid


async def existing_databases(admin_dsn: str, names: list[str]) -> list[str]:
    """Which of ``names`` exist on the server."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", names)
    finally:
        await conn.close()
    return sorted(row["datname"] for row in rows)


@pytest.fixture
async def foreign_databases(brainmigrate_dsn: str) -> AsyncIterator[list[str]]:
    """Names to create databases under that no factory made; the test's own cleanup drops them."""
    names: list[str] = []
    yield names
    conn = await asyncpg.connect(brainmigrate_dsn)
    try:
        for name in names:
            await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


async def create_foreign(admin_dsn: str, names: list[str], name: str) -> int:
    """Create an empty database ``name`` as someone else would (no factory), and return its oid."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        names.append(name)
        await conn.execute(f"CREATE DATABASE {quote_ident(name)} TEMPLATE template0")
    finally:
        await conn.close()
    oid = await database_oid(admin_dsn, name)
    assert oid is not None
    return oid


# --- DatabaseFactory never drops a database it did not create ------------------------------------


@pytest.mark.anyio
async def test_two_factories_in_one_process_keep_their_own_templates(brainmigrate_dsn: str) -> None:
    """Two runs with the same pid (CI containers) get distinct templates; closing one spares the other's."""
    first = DatabaseFactory(brainmigrate_dsn)
    second = DatabaseFactory(brainmigrate_dsn)
    try:
        first_db = await first.create()
        first_template = await database_oid(brainmigrate_dsn, first.template)
        second_db = await second.create()
        await second.drop(first_db)
        await second.drop(second_db)
        await second.close()

        assert first.template != second.template
        assert await database_oid(brainmigrate_dsn, first.template) == first_template
        assert await database_oid(brainmigrate_dsn, database_name(first_db)) is not None
        another = await first.create()  # the first run goes on from its template
        await first.drop(another)
        await first.drop(first_db)
    finally:
        await first.close()
        await second.close()
    assert await existing_databases(brainmigrate_dsn, [first.template, second.template]) == []


@pytest.mark.anyio
async def test_factory_never_drops_a_database_that_has_its_template_name(
    brainmigrate_dsn: str, foreign_databases: list[str]
) -> None:
    """A database already under the template's name is not replaced: creating fails, the database stays."""
    factory = DatabaseFactory(brainmigrate_dsn)
    oid = await create_foreign(brainmigrate_dsn, foreign_databases, factory.template)
    try:
        with pytest.raises(asyncpg.DuplicateDatabaseError):
            await factory.create()
    finally:
        await factory.close()

    assert await database_oid(brainmigrate_dsn, factory.template) == oid


@pytest.mark.anyio
async def test_factory_drop_leaves_a_database_without_its_mark(
    brainmigrate_dsn: str, foreign_databases: list[str]
) -> None:
    """drop() of a database the factory did not create, even one named like its own, does nothing."""
    factory = DatabaseFactory(brainmigrate_dsn)
    try:
        own = await factory.create()
        lookalike = f"{factory.prefix}_0123456789"
        foreign_oid = await create_foreign(brainmigrate_dsn, foreign_databases, "brainmigrate_foreign_db")
        lookalike_oid = await create_foreign(brainmigrate_dsn, foreign_databases, lookalike)

        await factory.drop(dsn_with_database(brainmigrate_dsn, "brainmigrate_foreign_db"))
        await factory.drop(dsn_with_database(brainmigrate_dsn, lookalike))
        await factory.drop(own)
    finally:
        await factory.close()

    assert await database_oid(brainmigrate_dsn, "brainmigrate_foreign_db") == foreign_oid
    assert await database_oid(brainmigrate_dsn, lookalike) == lookalike_oid
    assert await existing_databases(brainmigrate_dsn, [database_name(own), factory.template]) == []


@pytest.mark.anyio
async def test_factory_databases_carry_its_mark(brainmigrate_dsn: str) -> None:
    """The template and each database are marked with a comment naming the factory's own token."""
    factory = DatabaseFactory(brainmigrate_dsn)
    try:
        dsn = await factory.create()
        conn = await asyncpg.connect(brainmigrate_dsn)
        try:
            marks = await conn.fetch(
                "SELECT datname, shobj_description(oid, 'pg_database') AS mark FROM pg_database"
                " WHERE datname = ANY($1::text[])",
                [factory.template, database_name(dsn)],
            )
        finally:
            await conn.close()
        await factory.drop(dsn)
    finally:
        await factory.close()

    assert len(marks) == 2
    assert {row["mark"] for row in marks} == {factory.marker}
    assert factory.marker.startswith("brainmigrate-test:")
    assert factory.marker != DatabaseFactory(brainmigrate_dsn).marker


# --- brainmigrate_pool's teardown is bounded ----------------------------------------------------


def test_pool_teardown_ends_when_a_test_keeps_a_connection(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """A connection never released does not hang teardown, under anyio or pytest-asyncio: the pool is
    terminated with a warning, and the database is dropped."""
    pytester.makepyfile(
        """
        from pathlib import Path
        from urllib.parse import urlsplit

        import pytest

        async def keep_a_connection(database, pool):
            with Path("databases.txt").open("a") as names:
                names.write(urlsplit(database).path.lstrip("/") + "\\n")
            conn = await pool.acquire()
            assert await conn.fetchval("SELECT 1") == 1

        @pytest.mark.anyio
        async def test_under_anyio(brainmigrate_database, brainmigrate_pool):
            await keep_a_connection(brainmigrate_database, brainmigrate_pool)

        @pytest.mark.asyncio
        async def test_under_pytest_asyncio(brainmigrate_database, brainmigrate_pool):
            await keep_a_connection(brainmigrate_database, brainmigrate_pool)
        """
    )

    result = run_inner(
        pytester,
        f"--brainmigrate-dsn={brainmigrate_dsn}",
        "-o",
        "brainmigrate_pool_close_timeout=1",
        timeout=60,
    )

    result.assert_outcomes(passed=2, warnings=2)
    result.stdout.fnmatch_lines(["*brainmigrate_pool: a connection was still acquired 1 s after the test*"])
    databases = (pytester.path / "databases.txt").read_text().split()
    assert len(databases) == 2
    assert asyncio.run(existing_databases(brainmigrate_dsn, databases)) == []


# --- an unreachable server is a typed error saying what to do -----------------------------------

UNREACHABLE_TEST = """
from pathlib import Path

import pytest

from brainmigrate import BrainMigrateError

def test_server(request):
    with pytest.raises(BrainMigrateError) as info:
        request.getfixturevalue("brainmigrate_dsn")
    Path("error.txt").write_text(f"{type(info.value).__name__}: {info.value}")

def test_database(brainmigrate_database):
    pass
"""


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local TCP port that refuses connections: bound, never listening, while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_unreachable_server_from_environment(
    pytester: pytest.Pytester, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused $BRAINMIGRATE_TEST_DSN is a BrainMigrateError naming the server, the variable, the remedy."""
    monkeypatch.setenv(DSN_ENV, f"postgresql://postgres:secret@127.0.0.1:{closed_port}/postgres")
    pytester.makepyfile(UNREACHABLE_TEST)

    result = run_inner(pytester, timeout=60)

    result.assert_outcomes(passed=1, errors=1)
    message = (pytester.path / "error.txt").read_text()
    assert message.startswith(
        f"DatabaseUnavailableError: could not connect to the database server at "
        f"postgresql://postgres:***@127.0.0.1:{closed_port}/postgres ("
    )
    assert "secret" not in message
    assert "those of the DSN given by $BRAINMIGRATE_TEST_DSN" in message
    assert "unset BRAINMIGRATE_TEST_DSN to use an embedded server" in message
    result.stdout.fnmatch_lines(["E * could not connect to the database server at *"])


def test_unreachable_server_from_option(
    pytester: pytest.Pytester, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused --brainmigrate-dsn is a BrainMigrateError naming the server and the option."""
    monkeypatch.delenv(DSN_ENV, raising=False)
    pytester.makepyfile(UNREACHABLE_TEST)

    result = run_inner(pytester, f"--brainmigrate-dsn=postgresql://postgres@127.0.0.1:{closed_port}/postgres")

    result.assert_outcomes(passed=1, errors=1)
    message = (pytester.path / "error.txt").read_text()
    assert message.startswith("DatabaseUnavailableError: ")
    assert f"server at postgresql://postgres@127.0.0.1:{closed_port}/postgres (" in message
    assert "those of the DSN given by --brainmigrate-dsn" in message
    assert "Check that PostgreSQL is running" in message
    assert "leave out --brainmigrate-dsn" in message


# --- EmbeddedPostgres starts without blocking the event loop ------------------------------------


@pytest.mark.anyio
async def test_embedded_async_start_leaves_the_event_loop_running() -> None:
    """While astart() initialises the server, other tasks on the loop keep running (a 10 ms ticker ticks)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    server = EmbeddedPostgres()
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ticker)
            await server.astart()
            tasks.cancel_scope.cancel()
        ticks_during_start = ticks
        conn = await asyncpg.connect(server.dsn())
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        await server.astop()

    # Initialising a server takes the better part of a second; a blocked loop would not tick at all.
    assert ticks_during_start >= 5


@pytest.mark.anyio
async def test_embedded_async_with_starts_and_deletes_the_server() -> None:
    """`async with EmbeddedPostgres()` gives a running server and deletes its files on leaving."""
    async with EmbeddedPostgres() as server:
        conn = await asyncpg.connect(server.dsn())
        try:
            data_directory = Path(await conn.fetchval("SHOW data_directory"))
        finally:
            await conn.close()
        assert await anyio.Path(data_directory).is_dir()

    assert data_directory.parent.name.startswith("brainmigrate-pg-")
    assert not data_directory.parent.exists()


@pytest.mark.anyio
async def test_embedded_settings_are_the_servers_parameters_when_it_serves() -> None:
    """`EmbeddedPostgres(settings)` serves with them, quotes and backslashes in values kept."""
    async with EmbeddedPostgres({"wal_level": "logical", "cluster_name": "it's a \\ test"}) as server:
        conn = await asyncpg.connect(server.dsn())
        try:
            assert await conn.fetchval("SHOW wal_level") == "logical"
            assert await conn.fetchval("SHOW cluster_name") == "it's a \\ test"
        finally:
            await conn.close()


@pytest.mark.parametrize("name", ["wal level", "1st", "work_mem; fsync", "", "a.b.c", "work_mem\n"])
def test_an_embedded_setting_whose_name_is_not_a_parameters_is_refused_before_any_server_starts(
    name: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        EmbeddedPostgres({name: "1"})

    assert type(raised.value) is ConfigError
    assert f"EmbeddedPostgres: {name!r} is not a server parameter's name" in str(raised.value)
    assert "check the settings' keys" in str(raised.value)


@pytest.mark.parametrize("value", ["logical\nfsync = off", "logical\r"])
def test_an_embedded_setting_spanning_lines_is_refused_before_any_server_starts(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        EmbeddedPostgres({"wal_level": value})

    assert f"the setting wal_level must be a text on one line, not {value!r}" in str(raised.value)


@pytest.mark.anyio
async def test_an_embedded_setting_the_server_refuses_stops_it_and_deletes_its_files() -> None:
    server = EmbeddedPostgres({"wal_level": "bogus"})

    with pytest.raises(ConfigError) as raised:
        await server.astart()

    message = str(raised.value)
    assert "EmbeddedPostgres: the server would not start with the settings wal_level='bogus'" in message
    assert 'invalid value for parameter "wal_level": "bogus"' in message
    found = re.search(r'"([^"]+)/data/postgresql\.auto\.conf"', message)
    assert found is not None
    assert not await anyio.Path(found.group(1)).exists()
    with pytest.raises(RuntimeError, match="is not started"):
        server.dsn()


# --- pytest is not needed at run time -----------------------------------------------------------


def test_pytest_is_not_a_runtime_dependency() -> None:
    """An application's production install does not get pytest: it is in the test and pytest extras only."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[; ]", requirement)[0] for requirement in project["dependencies"]]

    assert "pytest" not in names
    assert any(
        requirement.startswith("pytest>") for requirement in project["optional-dependencies"]["pytest"]
    )
    assert project["entry-points"]["pytest11"] == {"brainmigrate": "pytest_brainmigrate.plugin"}


def test_package_and_testing_helpers_import_without_pytest() -> None:
    """brainmigrate, its testing helpers and its embedded server import while pytest cannot be imported."""
    code = (
        "import sys; sys.modules['pytest'] = None; "
        "import brainmigrate, brainmigrate.testing, brainmigrate.embedded; "
        "assert 'pytest' not in {name.split('.')[0] for name, module in sys.modules.items() if module}; "
        "print(brainmigrate.testing.assert_reversible.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "assert_reversible"
