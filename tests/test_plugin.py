"""The pytest plugin, exercised through inner pytest runs.

Inner runs are subprocesses: an in-process run would share this process's id, and with it the
names of the databases (and the template) this session's own fixtures use. They get this session's
server through ``--brainmigrate-dsn`` so they do not start their own, except where that is the point.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from pytest_brainmigrate.plugin import DSN_ENV

MIGRATION = """
from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, Migrator


class CreateNotes(DatabaseSchemaMigration):
    def _get_metadata(self):
        return MigrationMetadata(
            id="create_notes", name="Create notes", version="1.0.0", migration_type="database_schema"
        )

    async def get_forward_statements(self):
        return ["CREATE TABLE notes (id int PRIMARY KEY, body text)"]

    async def get_rollback_statements(self):
        return ["DROP TABLE notes"]


async def migrate_and_check(pool):
    results = await Migrator(pool, [CreateNotes]).run_pending()
    assert [r.status for r in results] == ["completed"]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT to_regclass('notes') IS NOT NULL")
"""


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run pytest in a subprocess in pytester's directory, with the options every inner run needs
    (and without the plugins these runs do not use, whose loading takes most of a run's time)."""
    return pytester.runpytest_subprocess(
        *("-p", "no:cacheprovider", "-p", "no:schemathesis", "-p", "no:hypothesispytest"),
        *("-o", "asyncio_default_fixture_loop_scope=function"),
        *args,
        timeout=120,
    )


def existing_databases(admin_dsn: str, names: list[str]) -> list[str]:
    """Which of ``names`` exist on the server, asked from its maintenance database."""

    async def query() -> list[str]:
        conn = await asyncpg.connect(admin_dsn)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", names)
        finally:
            await conn.close()
        return sorted(row["datname"] for row in rows)

    return asyncio.run(query())


def test_pool_under_anyio(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """Under anyio's plugin, a test using brainmigrate_pool runs a migration."""
    pytester.makepyfile(migration=MIGRATION)
    pytester.makepyfile(
        """
        import pytest
        from migration import migrate_and_check

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        @pytest.mark.anyio
        async def test_migrate(brainmigrate_pool):
            await migrate_and_check(brainmigrate_pool)
        """
    )

    result = run_inner(pytester, f"--brainmigrate-dsn={brainmigrate_dsn}", "-W", "error")

    result.assert_outcomes(passed=1)


def test_pool_under_pytest_asyncio_strict_mode(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """In pytest-asyncio's strict mode, marked tests get the pool without a warning, next to anyio tests."""
    pytester.makepyfile(migration=MIGRATION)
    pytester.makepyfile(
        """
        import pytest
        from migration import migrate_and_check

        @pytest.mark.asyncio
        async def test_migrate(brainmigrate_pool):
            await migrate_and_check(brainmigrate_pool)

        @pytest.mark.anyio
        async def test_migrate_under_anyio(brainmigrate_pool):
            await migrate_and_check(brainmigrate_pool)

        @pytest.mark.asyncio
        async def test_migrate_again(brainmigrate_pool):
            await migrate_and_check(brainmigrate_pool)
        """
    )

    result = run_inner(
        pytester, f"--brainmigrate-dsn={brainmigrate_dsn}", "-o", "asyncio_mode=strict", "-W", "error"
    )

    result.assert_outcomes(passed=3)


def test_pool_under_pytest_asyncio_auto_mode(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """In pytest-asyncio's auto mode, an unmarked async test gets the pool."""
    pytester.makepyfile(migration=MIGRATION)
    pytester.makepyfile(
        """
        from migration import migrate_and_check

        async def test_migrate(brainmigrate_pool):
            await migrate_and_check(brainmigrate_pool)
        """
    )

    result = run_inner(
        pytester, f"--brainmigrate-dsn={brainmigrate_dsn}", "-o", "asyncio_mode=auto", "-W", "error"
    )

    result.assert_outcomes(passed=1)


def test_each_test_gets_a_fresh_database_dropped_afterwards(
    pytester: pytest.Pytester, brainmigrate_dsn: str
) -> None:
    """Two tests get two empty databases; both, and their template, are gone after the run."""
    pytester.makepyfile(
        """
        from pathlib import Path
        from urllib.parse import urlsplit

        import asyncpg
        import pytest

        pytestmark = pytest.mark.anyio

        @pytest.fixture
        def anyio_backend():
            return "asyncio"

        def record(dsn):
            with Path("databases.txt").open("a") as names:
                names.write(urlsplit(dsn).path.lstrip("/") + "\\n")

        async def test_first(brainmigrate_database):
            record(brainmigrate_database)
            conn = await asyncpg.connect(brainmigrate_database)
            try:
                await conn.execute("CREATE TABLE notes (id int)")
            finally:
                await conn.close()

        async def test_second(brainmigrate_database):
            record(brainmigrate_database)
            conn = await asyncpg.connect(brainmigrate_database)
            try:
                assert await conn.fetchval("SELECT to_regclass('notes')") is None
            finally:
                await conn.close()
        """
    )

    result = run_inner(pytester, f"--brainmigrate-dsn={brainmigrate_dsn}", "-W", "error")

    result.assert_outcomes(passed=2)
    names = (pytester.path / "databases.txt").read_text().split()
    template = names[0].rsplit("_", 1)[0] + "_template"
    assert len(set(names)) == 2
    assert existing_databases(brainmigrate_dsn, [*names, template]) == []


def test_dsn_option_wins_over_environment(
    pytester: pytest.Pytester, brainmigrate_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--brainmigrate-dsn names the server even when the environment names another."""
    monkeypatch.setenv(DSN_ENV, "postgresql://nobody@127.0.0.1:1/nowhere")
    pytester.makepyfile(
        f"""
        def test_dsn(brainmigrate_dsn, brainmigrate_database):
            assert brainmigrate_dsn == {brainmigrate_dsn!r}
        """
    )

    result = run_inner(pytester, f"--brainmigrate-dsn={brainmigrate_dsn}", "-W", "error")

    result.assert_outcomes(passed=1)


def test_dsn_from_environment(
    pytester: pytest.Pytester, brainmigrate_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the option, $BRAINMIGRATE_TEST_DSN names the server."""
    monkeypatch.setenv(DSN_ENV, brainmigrate_dsn)
    pytester.makepyfile(
        f"""
        def test_dsn(brainmigrate_dsn):
            assert brainmigrate_dsn == {brainmigrate_dsn!r}
        """
    )

    result = run_inner(pytester, "-W", "error")

    result.assert_outcomes(passed=1)


def test_embedded_server_without_dsn(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no DSN at all, an embedded server is started for the session and deleted after it."""
    monkeypatch.delenv(DSN_ENV, raising=False)
    pytester.makepyfile(
        """
        from pathlib import Path

        import pytest

        @pytest.mark.anyio
        async def test_server(brainmigrate_pool):
            async with brainmigrate_pool.acquire() as conn:
                Path("data_directory.txt").write_text(await conn.fetchval("SHOW data_directory"))
        """
    )

    result = run_inner(pytester)

    result.assert_outcomes(passed=1)
    data_directory = Path((pytester.path / "data_directory.txt").read_text())
    assert data_directory.parent.name.startswith("brainmigrate-pg-")
    assert not data_directory.exists()


def test_assert_reversible_failure_shows_the_diff(pytester: pytest.Pytester, brainmigrate_dsn: str) -> None:
    """assert_reversible in a test fails that test with the migration's name and the diff."""
    pytester.makepyfile(
        """
        import pytest
        from brainmigrate import DatabaseSchemaMigration, MigrationMetadata
        from brainmigrate.testing import assert_reversible

        class AddNotesIndex(DatabaseSchemaMigration):
            def _get_metadata(self):
                return MigrationMetadata(
                    id="add_notes_index", name="Add notes index", version="1.0.0",
                    migration_type="database_schema",
                )

            async def get_forward_statements(self):
                return [
                    "CREATE TABLE notes (id int, body text)",
                    "CREATE INDEX notes_body_idx ON notes (body)",
                ]

            async def get_rollback_statements(self):
                return ["ALTER TABLE notes RENAME TO notes_old", "ALTER TABLE notes_old RENAME TO notes"]

        @pytest.mark.anyio
        async def test_reversible(brainmigrate_pool):
            await assert_reversible(brainmigrate_pool, [AddNotesIndex])
        """
    )

    result = run_inner(pytester, f"--brainmigrate-dsn={brainmigrate_dsn}")

    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * AssertionError: migration 'add_notes_index' is not reversible: after rollback the database "
            "differs from before it *",
            "E * + table public.notes",
            "E * + column public.notes.body: text, position 2",
            "E * + column public.notes.id: integer, position 1",
            "E * + index public.notes_body_idx: "
            "CREATE INDEX notes_body_idx ON public.notes USING btree (body)",
            "E * + data public.notes: 0 rows, md5 d41d8cd98f00b204e9800998ecf8427e",
        ]
    )
