"""Fuzzing ``run_pending`` with drawn migrations against the real server.

Hypothesis draws one schema migration: its id (odd unicode, long, NUL, control characters, not a
string), version, ``reversible`` (any object) and forward statements (valid DDL, invalid SQL,
COMMIT/ROLLBACK, duplicated tables, session settings, and shapes that are not a list of strings).
Whatever is drawn, ``await Migrator(pool, [cls]).run_pending()`` must either

(a) succeed and apply the migration exactly once: one completed ``apply`` row in the history and
    nothing else, every table it creates exists, and a second run applies nothing; or
(b) raise a :class:`BrainMigrateError` and leave the database unchanged.

"Unchanged" means: the fingerprint of the user's schemas and data (``brainmigrate.testing.
fingerprint``, which leaves out brainmigrate's own schema) is equal to the one taken before, and
the history holds no row other than ``failed`` attempts (no ``completed``, ``running`` or ``dirty``
row): a failed attempt may be recorded, a success or a dirty mark may not.

In both cases every connection the pool hands out afterwards is as a fresh one: same
``current_user``, ``search_path``, ``lock_timeout`` and ``statement_timeout``, no open transaction.
(And, tested apart at the end: a session setting one migration makes does not reach the next.)

Besides (a) and (b): input that is malformed is never silently accepted. A run can only succeed
when the forward statements are a list (or tuple) of strings, and when none of them ends the
migration's transaction (COMMIT, ROLLBACK, END, ABORT: those would make a partial failure stick);
a plainly valid migration (simple id, distinct CREATE TABLE statements) always succeeds.

The database (one per test, from ``brainmigrate_database``) is shared by the examples, so each
example resets it itself: it drops every user schema (brainmigrate's included) and recreates an
empty ``public`` before drawing its fingerprint, and uses its own pool. That is why the
function-scoped-fixture health check is suppressed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import attrs
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from brainmigrate import (
    BrainMigrateError,
    DatabaseSchemaMigration,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate._model.sqltext import quote_ident
from brainmigrate.testing import fingerprint
from helpers import schema_migration

#: Seconds one run_pending may take before the example counts as hung.
RUN_TIMEOUT = 60


@attrs.frozen
class Drawn:
    """One fuzzed migration, printed as the falsifying example when a property fails."""

    migration_id: Any
    forward: Any
    version: Any = "1.0.0"
    reversible: Any = True


def migration_class(case: Drawn) -> type[DatabaseSchemaMigration]:
    """A schema migration that returns the drawn values exactly as drawn."""

    class Fuzzed(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=case.migration_id,
                name="fuzzed migration",
                version=case.version,
                migration_type=MigrationType.DATABASE_SCHEMA,
                reversible=case.reversible,
            )

        async def get_forward_statements(self) -> Any:
            forward = case.forward
            return list(forward) if isinstance(forward, list) else forward

        async def get_rollback_statements(self) -> list[str]:
            return ["SELECT 1"]  # not drawn: only applying is fuzzed

    return Fuzzed


# -- strategies -------------------------------------------------------------------------------

table = st.integers(0, 3)  # few names, so tables are often created twice
INVALID = [
    "SELEC 1",
    "CREATE TABLE",
    "ALTER TABLE missing ADD COLUMN x int",
    "SELECT 1/0",
    "SELECT 'unterminated",
    "SELECT 'a\x00b'",
    "RELEASE SAVEPOINT nowhere",
    "VACUUM",
]
TRANSACTION_CONTROL = [
    "COMMIT",
    "ROLLBACK",
    "END",
    "ABORT",
    "commit;",
    "  Commit\n",
    "COMMIT AND CHAIN",
    "CREATE TABLE t_8 (id int); COMMIT",
    "SELECT 1; ROLLBACK; SELECT 2",
    "BEGIN",
    "START TRANSACTION",
    "SAVEPOINT s",
]
SESSION = [
    "SET search_path TO pg_catalog",
    "SET search_path TO s_0",
    "SET ROLE pg_read_all_data",
    "RESET ROLE",
    "RESET ALL",
]
HARMLESS = ["", "   ", "-- nothing to do", "SELECT 1", "SELECT 1;"]
NON_STRINGS = [None, 42, 1.5, b"CREATE TABLE t_9 (id int)", ["CREATE TABLE t_9 (id int)"], object()]

plain_statements = st.one_of(
    table.map(lambda n: f"CREATE TABLE t_{n} (id int)"),
    table.map(lambda n: f"INSERT INTO t_{n} VALUES ({n})"),
    table.map(lambda n: f"CREATE SCHEMA s_{n}"),
    st.sampled_from(HARMLESS),
)
odd_statements = st.one_of(
    st.sampled_from(INVALID),
    st.sampled_from(TRANSACTION_CONTROL),
    st.sampled_from(SESSION),
    st.sampled_from(NON_STRINGS),
)


@st.composite
def statement_lists(draw: st.DrawFn, max_size: int = 4) -> list[Any]:
    """Mostly plain DDL, with up to two odd statements slipped in anywhere."""
    statements = draw(st.lists(plain_statements, max_size=max_size))
    for _ in range(draw(st.integers(0, 2))):
        statements.insert(draw(st.integers(0, len(statements))), draw(odd_statements))
    return statements


forward_statements = st.one_of(
    statement_lists(),
    statement_lists(max_size=2).map(tuple),
    # A bare string (a common slip for a one-statement list), or no list at all.
    st.sampled_from(["CREATE TABLE t_0 (id int)", "", "   ", "SELECT 1", "COMMIT"]),
    st.sampled_from([None, 42, b"CREATE TABLE t_0 (id int)"]),
)
plain_ids = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
migration_ids = st.one_of(
    st.sampled_from(
        [
            "m001",
            "2026_01_01_add_memories",
            "a\x00b",
            "\x00",
            "",
            " ",
            " padded ",
            "line\nbreak",
            "\x1b[31mred",
            "zero\u200bwidth",
            "\udc80",
            "é" * 40,
            "😀" * 70,
            "x" * 255,
            "x" * 256,
            "记忆" * 50,
            "quote'\"back\\slash",
        ]
    ),
    st.text(max_size=30),
    st.text(st.characters(codec="utf-8"), min_size=50, max_size=150),
    st.sampled_from([None, 42, b"m001", ("m001",)]),
)
versions = st.one_of(
    st.sampled_from(["1.0.0", "2.10", "1.0rc1", "", " ", "v\x00", "\udc80", "1.0\n"]),
    st.text(max_size=10),
    st.sampled_from([None, 1.0, 2]),
)
reversibles = st.one_of(st.sampled_from([None, 0, 1, "no", "", []]), st.builds(object))


@st.composite
def drawn_migrations(draw: st.DrawFn) -> Drawn:
    """A migration whose metadata is plain, or odd in one field (so that most draws get as far as
    running their statements)."""
    odd = draw(st.sampled_from([None, None, "migration_id", "version", "reversible"]))
    return Drawn(
        migration_id=draw(migration_ids) if odd == "migration_id" else draw(plain_ids),
        forward=draw(forward_statements),
        version=draw(versions) if odd == "version" else draw(st.sampled_from(["1.0.0", "2.10", "1.0rc1"])),
        reversible=draw(reversibles) if odd == "reversible" else draw(st.booleans()),
    )


# -- what the drawn input promises ------------------------------------------------------------

_ENDS_TRANSACTION = re.compile(r"^\s*(COMMIT|ROLLBACK|END|ABORT)\b(?!\s+TO\b)", re.IGNORECASE)
_CREATES_TABLE = re.compile(r"CREATE TABLE (t_\d+)")
_PLAIN_ID = re.compile(r"[A-Za-z0-9_]{1,60}")
_PLAIN_CREATE = re.compile(r"CREATE TABLE t_\d+ \(id int\)")


def _parts(case: Drawn) -> list[str]:
    """Every statement of the drawn list, split at semicolons (none of ours quotes one)."""
    if not isinstance(case.forward, list | tuple):
        return []
    return [part for s in case.forward if isinstance(s, str) for part in s.split(";")]


def well_formed(case: Drawn) -> bool:
    """Statements that may be applied at all: a list of strings none of which ends the transaction."""
    return (
        isinstance(case.forward, list | tuple)
        and all(isinstance(s, str) for s in case.forward)
        and not any(_ENDS_TRANSACTION.match(part) for part in _parts(case))
    )


def plainly_valid(case: Drawn) -> bool:
    """A migration nothing is wrong with: it must apply."""
    return (
        isinstance(case.migration_id, str)
        and _PLAIN_ID.fullmatch(case.migration_id) is not None
        and case.version in ("1.0.0", "2.10", "1.0rc1")
        and isinstance(case.reversible, bool)
        and isinstance(case.forward, list)
        and all(isinstance(s, str) and _PLAIN_CREATE.fullmatch(s) for s in case.forward)
        and len(set(case.forward)) == len(case.forward)
    )


def created_tables(case: Drawn) -> set[str]:
    return {match for part in _parts(case) for match in _CREATES_TABLE.findall(part)}


# -- the database -----------------------------------------------------------------------------

_SESSION_STATE = """
SELECT current_user, current_setting('search_path'), current_setting('lock_timeout'),
       current_setting('statement_timeout')
"""


async def reset(conn: asyncpg.Connection[Any]) -> None:
    """Drop every user schema (brainmigrate's too) and recreate an empty ``public``."""
    schemas = await conn.fetch(
        "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
    )
    for row in schemas:
        await conn.execute(f"DROP SCHEMA {quote_ident(row['nspname'])} CASCADE")
    await conn.execute(
        "CREATE SCHEMA public AUTHORIZATION pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC"
    )


async def history(conn: asyncpg.Connection[Any]) -> list[dict[str, Any]]:
    if not await conn.fetchval("SELECT to_regclass('brainmigrate.migration_history') IS NOT NULL"):
        return []
    rows = await conn.fetch(
        "SELECT migration_id, operation, status FROM brainmigrate.migration_history ORDER BY attempt_id"
    )
    return [dict(row) for row in rows]


async def table_exists(conn: asyncpg.Connection[Any], name: str) -> bool:
    """In any schema: a drawn ``SET search_path`` may have sent it elsewhere."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_class WHERE relname = $1 AND relkind = 'r')", name
        )
    )


@asynccontextmanager
async def every_connection(pool: asyncpg.Pool[Any]) -> AsyncIterator[list[Any]]:
    """All of the pool's connections at once (a leaked one makes this time out)."""
    held: list[Any] = []
    try:
        for _ in range(pool.get_max_size()):
            held.append(await pool.acquire(timeout=10))
        yield held
    finally:
        for conn in held:
            await pool.release(conn)


async def run(migrator: Migrator) -> list[Any] | BrainMigrateError:
    """run_pending's results, or the BrainMigrateError it raised; any other error propagates."""
    try:
        return await asyncio.wait_for(migrator.run_pending(), RUN_TIMEOUT)
    except BrainMigrateError as exc:
        return exc
    except BaseException as exc:
        exc.add_note(f"run_pending raised {type(exc).__name__}, not a BrainMigrateError")
        raise


async def scenario(dsn: str, case: Drawn) -> None:
    inspector = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    try:
        await reset(inspector)
        async with every_connection(pool) as fresh:
            expected_session = [tuple(await conn.fetchrow(_SESSION_STATE)) for conn in fresh]
        before = await fingerprint(inspector)
        cls = migration_class(case)

        outcome = await run(Migrator(pool, [cls]))
        event(f"outcome: {type(outcome).__name__ if isinstance(outcome, BaseException) else 'applied'}")

        after = await fingerprint(inspector)
        rows = await history(inspector)
        if isinstance(outcome, BrainMigrateError):
            assert not plainly_valid(case), f"a valid migration was refused: {outcome!r}"
            assert before.diff(after) == [], f"failed with {outcome!r} but changed the database"
            assert [row for row in rows if row["status"] != "failed"] == [], f"failed with {outcome!r}"
        else:
            assert well_formed(case), "malformed statements were accepted"
            assert [(case.migration_id, MigrationStatus.COMPLETED)] == [
                (result.migration_id, result.status) for result in outcome
            ]
            assert [{"migration_id": case.migration_id, "operation": "apply", "status": "completed"}] == rows
            missing = [
                name for name in sorted(created_tables(case)) if not await table_exists(inspector, name)
            ]
            assert missing == [], "tables the applied migration created are gone"
            again = await run(Migrator(pool, [cls]))
            assert again == []
            assert after.diff(await fingerprint(inspector)) == []
            assert rows == await history(inspector)

        async with every_connection(pool) as returned:
            assert expected_session == [tuple(await conn.fetchrow(_SESSION_STATE)) for conn in returned]
            assert [conn.is_in_transaction() for conn in returned] == [False, False]
    finally:
        try:
            await asyncio.wait_for(pool.close(), 10)
        except TimeoutError:
            pool.terminate()
        await inspector.close()


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@example(case=Drawn("m\x00id", ["CREATE TABLE t_0 (id int)"]))
@example(case=Drawn("bare", "CREATE TABLE t_0 (id int)"))
@example(case=Drawn("blank", "   "))
@example(case=Drawn("holes", ["CREATE TABLE t_0 (id int)", None]))
@example(case=Drawn("number", [42]))
@example(case=Drawn("commit", ["CREATE TABLE t_0 (id int)", "COMMIT", "SELEC 1"]))
@example(case=Drawn("rollback", ["CREATE TABLE t_0 (id int)", "ROLLBACK", "CREATE TABLE t_1 (id int)"]))
@example(case=Drawn("role", ["CREATE TABLE t_0 (id int)", "COMMIT", "SET ROLE pg_read_all_data"]))
@example(case=Drawn("\udc80", ["CREATE TABLE t_0 (id int)"]))
@example(case=Drawn("twice", ["CREATE TABLE t_0 (id int)", "CREATE TABLE t_0 (id int)"]))
@example(case=Drawn("ok", ["CREATE TABLE t_0 (id int)", "CREATE TABLE t_1 (id int)"], reversible=False))
@given(case=drawn_migrations())
def test_run_pending_applies_once_or_fails_cleanly(brainmigrate_database: str, case: Drawn) -> None:
    """Any drawn migration is applied exactly once, or refused with a BrainMigrateError and the
    database as it was; connections go back to the pool as fresh ones."""
    asyncio.run(scenario(brainmigrate_database, case))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("setting", "probe"),
    [
        pytest.param("SET search_path TO elsewhere", "SELECT current_schema()", id="search_path"),
        pytest.param(
            "SET TIME ZONE 'Pacific/Kiritimati'", "SELECT current_setting('TimeZone')", id="timezone"
        ),
    ],
)
async def test_a_session_setting_made_by_one_migration_does_not_reach_the_next(
    brainmigrate_pool: Any, setting: str, probe: str
) -> None:
    """Each migration starts from the pool's session defaults: a plain SET in one migration does not
    change what the next one does, so running them in one call or in two gives the same database."""
    expected = ("public", await brainmigrate_pool.fetchval(probe))
    first = schema_migration("first", ["CREATE SCHEMA elsewhere", setting], version="1.0")
    second = schema_migration(
        "second", [f"CREATE TABLE seen AS {probe} AS value"], dependencies=["first"], version="1.1"
    )

    await Migrator(brainmigrate_pool, [first, second]).run_pending()

    schema = await brainmigrate_pool.fetchval(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relname = 'seen'"
    )
    value = await brainmigrate_pool.fetchval(f"SELECT value FROM {quote_ident(schema)}.seen")
    assert expected == (schema, value)
