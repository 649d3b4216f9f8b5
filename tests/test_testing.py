"""brainmigrate.testing: database fingerprints and the stairway reversibility check, on a real server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from brainmigrate import DatabaseSchemaMigration, Migration, MigrationMetadata, Migrator
from brainmigrate._model.types import Connection
from brainmigrate.testing import Fingerprint, assert_reversible, fingerprint

pytestmark = pytest.mark.anyio

EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


class SqlMigration(DatabaseSchemaMigration):
    """A schema migration built from its statements, so each test can declare its own."""

    def __init__(
        self,
        migration_id: str,
        forward: Sequence[str],
        rollback: Sequence[str] = (),
        *,
        dependencies: Sequence[str] = (),
        reversible: bool = True,
    ) -> None:
        super().__init__()
        self._id = migration_id
        self._forward = list(forward)
        self._rollback = list(rollback)
        self._dependencies = tuple(dependencies)
        self._reversible = reversible

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=self._id,
            name=self._id.replace("_", " "),
            version="1.0.0",
            migration_type="database_schema",
            dependencies=self._dependencies,
            reversible=self._reversible,
        )

    async def get_forward_statements(self) -> list[str]:
        return self._forward

    async def get_rollback_statements(self) -> list[str]:
        return self._rollback


CREATE_MEMORIES = SqlMigration(
    "create_memories",
    [
        "CREATE TABLE memories (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id int, body text)",
        "CREATE INDEX memories_body_idx ON memories (body)",
    ],
    ["DROP TABLE memories"],
)


class SeedMemoryKinds(Migration):
    """A Python data migration; ``forget_rows`` makes its rollback leave the seeded rows behind."""

    forget_rows = False

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="seed_memory_kinds",
            name="Seed memory kinds",
            version="1.1.0",
            migration_type="database_data",
            dependencies=["create_memory_kinds"],
        )

    async def up(self, conn: Connection) -> None:
        await conn.executemany(
            "INSERT INTO memory_kinds (id, label) VALUES ($1, $2)", [(1, "episodic"), (2, "semantic")]
        )

    async def down(self, conn: Connection) -> None:
        if not self.forget_rows:
            await conn.execute("DELETE FROM memory_kinds WHERE id IN (1, 2)")


class SeedMemoryKindsForgetful(SeedMemoryKinds):
    forget_rows = True


CREATE_MEMORY_KINDS = SqlMigration(
    "create_memory_kinds",
    ["CREATE TABLE memory_kinds (id int PRIMARY KEY, label text NOT NULL)"],
    ["DROP TABLE memory_kinds"],
)


async def _fingerprint(pool: asyncpg.Pool[Any]) -> Fingerprint:
    async with pool.acquire() as conn:
        return await fingerprint(conn)


async def test_reversible_migrations_pass_and_end_applied(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """A set of correct migrations passes, each applied, rolled back and applied again, in run order."""
    migrations = [
        CREATE_MEMORIES,
        SqlMigration(
            "add_mood",
            [
                "CREATE TYPE mood AS ENUM ('calm', 'tense')",
                "ALTER TABLE memories ADD COLUMN mood mood DEFAULT 'calm'",
                "CREATE VIEW calm_memories AS SELECT id, body FROM memories WHERE mood = 'calm'",
                "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
                "CREATE TRIGGER memories_touch BEFORE UPDATE ON memories "
                "FOR EACH ROW EXECUTE FUNCTION touch()",
            ],
            [
                "DROP TRIGGER memories_touch ON memories",
                "DROP FUNCTION touch()",
                "DROP VIEW calm_memories",
                "ALTER TABLE memories DROP COLUMN mood",
                "DROP TYPE mood",
            ],
            dependencies=["create_memories"],
        ),
        CREATE_MEMORY_KINDS,
        SeedMemoryKinds(),
    ]

    await assert_reversible(brainmigrate_pool, migrations)

    migrator = Migrator(brainmigrate_pool, migrations)
    expected = [
        (mid, operation)
        for mid in ("create_memories", "add_mood", "create_memory_kinds", "seed_memory_kinds")
        for operation in ("apply", "rollback", "apply")
    ]
    assert expected == [(record.migration_id, record.operation) for record in await migrator.history()]
    assert await migrator.pending() == []


async def test_rollback_leaving_an_index_fails_naming_migration_and_index(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """A rollback that forgets an index fails with a diff line naming the migration and the index."""
    leaky = SqlMigration(
        "add_memory_lookup",
        [
            "ALTER TABLE memories ADD COLUMN kind text",
            "CREATE INDEX memories_user_idx ON memories (user_id)",
        ],
        ["ALTER TABLE memories DROP COLUMN kind"],
        dependencies=["create_memories"],
    )

    with pytest.raises(AssertionError) as caught:
        await assert_reversible(brainmigrate_pool, [CREATE_MEMORIES, leaky])

    expected = (
        "migration 'add_memory_lookup' is not reversible: after rollback the database differs from "
        "before it (+ only after the rollback, - only before it):\n"
        "  + index public.memories_user_idx: "
        "CREATE INDEX memories_user_idx ON public.memories USING btree (user_id)"
    )
    assert expected == str(caught.value)


async def test_rollback_leaving_seeded_rows_fails_naming_the_table(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """A data migration whose rollback keeps its rows fails with a data diff naming the table."""
    migrations = [CREATE_MEMORY_KINDS, SeedMemoryKindsForgetful()]

    with pytest.raises(AssertionError) as caught:
        await assert_reversible(brainmigrate_pool, migrations)

    left_behind = [
        line for line in (await _fingerprint(brainmigrate_pool)).lines() if line.startswith("data")
    ]
    expected = (
        "migration 'seed_memory_kinds' is not reversible: after rollback the database differs from "
        "before it (+ only after the rollback, - only before it):\n"
        f"  - data public.memory_kinds: 0 rows, md5 {EMPTY_MD5}\n"
        f"  + {left_behind[0]}"
    )
    expected_rows = ["data public.memory_kinds: 2 rows"]
    assert expected_rows == [line.split(", md5")[0] for line in left_behind]
    assert expected == str(caught.value)


async def test_failing_rollback_is_reported_as_not_reversible(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """A rollback that raises fails the check with the migration's name and the database error."""
    broken = SqlMigration("broken_rollback", ["CREATE TABLE notes (id int)"], ["DROP TABLE no_such_table"])

    with pytest.raises(AssertionError) as caught:
        await assert_reversible(brainmigrate_pool, [broken])

    message = str(caught.value)
    assert message.startswith("migration 'broken_rollback' is not reversible: its rollback failed: ")
    assert "no_such_table" in message


async def test_irreversible_migration_is_applied_and_later_ones_still_checked(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    """An irreversible migration is applied unchecked; the migrations after it are still checked."""
    irreversible = SqlMigration("create_notes", ["CREATE TABLE notes (id int)"], reversible=False)
    leaky = SqlMigration(
        "add_notes_body",
        ["ALTER TABLE notes ADD COLUMN body text"],
        ["SELECT 1"],  # a rollback that forgets to drop the column
        dependencies=["create_notes"],
    )

    with pytest.raises(AssertionError) as caught:
        await assert_reversible(brainmigrate_pool, [irreversible, leaky])

    expected = (
        "migration 'add_notes_body' is not reversible: after rollback the database differs from "
        "before it (+ only after the rollback, - only before it):\n"
        "  + column public.notes.body: text, position 2"
    )
    assert expected == str(caught.value)
    history = await Migrator(brainmigrate_pool, [irreversible, leaky]).history()
    expected_operations = ["apply"]
    assert expected_operations == [r.operation for r in history if r.migration_id == "create_notes"]


async def test_fingerprint_equal_when_nothing_changed(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """Two fingerprints of an unchanged database are equal and their diff is empty."""
    async with brainmigrate_pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'a')"
        )
        first = await fingerprint(conn)

        second = await fingerprint(conn)

    assert first == second
    assert first.diff(second) == []


async def fingerprints_around(
    pool: asyncpg.Pool[Any], setup: str, change: str
) -> tuple[Fingerprint, Fingerprint]:
    """The database's fingerprints after the SQL ``setup``, and after ``change`` then."""
    async with pool.acquire() as conn:
        await conn.execute(setup)
        before = await fingerprint(conn)
        await conn.execute(change)
        return before, await fingerprint(conn)


async def test_fingerprint_differs_when_a_row_changes(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """Changing one value changes the table's data entry, and only it."""
    before, after = await fingerprints_around(
        brainmigrate_pool,
        "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'a')",
        "UPDATE notes SET body = 'b' WHERE id = 1",
    )

    expected = ["- data public.notes: 1 row", "+ data public.notes: 1 row"]
    assert before != after
    assert expected == [line.split(", md5")[0] for line in before.diff(after)]


async def test_fingerprint_ignores_row_order(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """The same rows written in another physical order give the same fingerprint."""
    before, after = await fingerprints_around(
        brainmigrate_pool,
        "CREATE TABLE notes (id int, body text); INSERT INTO notes VALUES (1, 'a'), (2, 'b')",
        "TRUNCATE notes; INSERT INTO notes VALUES (2, 'b'), (1, 'a')",
    )

    assert before == after


async def test_fingerprint_leaves_out_the_history_schema(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """Objects and rows in the excluded schemas (brainmigrate's by default) are not fingerprinted."""
    async with brainmigrate_pool.acquire() as conn:
        before = await fingerprint(conn)
        other_before = await fingerprint(conn, exclude_schemas=("ledger",))

        await conn.execute(
            "CREATE SCHEMA brainmigrate; CREATE TABLE brainmigrate.t (id int);"
            "INSERT INTO brainmigrate.t VALUES (1);"
            "CREATE SCHEMA ledger; CREATE TABLE ledger.t (id int); INSERT INTO ledger.t VALUES (1)"
        )
        after = await fingerprint(conn)
        other_after = await fingerprint(conn, exclude_schemas=("ledger",))

    expected = ["+ schema ledger", "+ table ledger.t", "+ column ledger.t.id", "+ data ledger.t"]
    assert expected == [line.split(":")[0] for line in before.diff(after)]
    expected_other = [
        "+ schema brainmigrate",
        "+ table brainmigrate.t",
        "+ column brainmigrate.t.id",
        "+ data brainmigrate.t",
    ]
    assert expected_other == [line.split(":")[0] for line in other_before.diff(other_after)]


BASE = """
CREATE TABLE notes (id int, body text);
CREATE TYPE mood AS ENUM ('calm');
CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(
            "CREATE INDEX notes_body_idx ON notes (body)",
            ["+ index public.notes_body_idx: CREATE INDEX notes_body_idx ON public.notes USING btree (body)"],
            id="index",
        ),
        pytest.param(
            "ALTER TABLE notes ALTER COLUMN id TYPE bigint",
            ["- column public.notes.id: integer, position 1", "+ column public.notes.id: bigint, position 1"],
            id="column-type",
        ),
        pytest.param(
            "ALTER TABLE notes ALTER COLUMN body SET DEFAULT 'x'",
            [
                "- column public.notes.body: text, position 2",
                "+ column public.notes.body: text default 'x'::text, position 2",
            ],
            id="column-default",
        ),
        pytest.param(
            "ALTER TABLE notes DROP COLUMN id; ALTER TABLE notes ADD COLUMN id int",
            [
                "- column public.notes.body: text, position 2",
                "+ column public.notes.body: text, position 1",
                "- column public.notes.id: integer, position 1",
                "+ column public.notes.id: integer, position 2",
            ],
            id="column-order",
        ),
        pytest.param(
            "ALTER TABLE notes ADD CONSTRAINT notes_id_positive CHECK (id > 0)",
            ["+ constraint public.notes.notes_id_positive: CHECK ((id > 0))"],
            id="constraint",
        ),
        pytest.param(
            "ALTER TYPE mood ADD VALUE 'tense'",
            ["- enum type public.mood: 'calm'", "+ enum type public.mood: 'calm', 'tense'"],
            id="enum-label",
        ),
        pytest.param(
            "CREATE SEQUENCE note_numbers START 10",
            [
                "+ sequence public.note_numbers: "
                "bigint start 10 increment 1 min 1 max 9223372036854775807 cache 1"
            ],
            id="sequence",
        ),
        pytest.param(
            "CREATE SCHEMA archive",
            ["+ schema archive"],
            id="schema",
        ),
        pytest.param(
            "CREATE TRIGGER notes_touch BEFORE UPDATE ON notes FOR EACH ROW EXECUTE FUNCTION touch()",
            [
                "+ trigger public.notes.notes_touch: CREATE TRIGGER notes_touch BEFORE UPDATE "
                "ON public.notes FOR EACH ROW EXECUTE FUNCTION touch()"
            ],
            id="trigger",
        ),
    ],
)
async def test_fingerprint_diff_names_each_kind_of_change(
    brainmigrate_pool: asyncpg.Pool[Any], change: str, expected: list[str]
) -> None:
    """Each kind of schema change shows up as readable - / + lines naming the object."""
    before, after = await fingerprints_around(brainmigrate_pool, BASE, change)

    assert expected == before.diff(after)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param("CREATE VIEW note_ids AS SELECT id FROM notes", ["+ view public.note_ids"], id="view"),
        pytest.param(
            "CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql "
            "AS $$ BEGIN RETURN OLD; END $$",
            ["- function public.touch()", "+ function public.touch()"],
            id="function-body",
        ),
        pytest.param(
            "CREATE EXTENSION citext",
            ["+ extension citext"],
            id="extension",
        ),
    ],
)
async def test_fingerprint_diff_names_views_functions_and_extensions(
    brainmigrate_pool: asyncpg.Pool[Any], change: str, expected: list[str]
) -> None:
    """Views, function bodies and extensions are fingerprinted (their text varies by server version)."""
    before, after = await fingerprints_around(brainmigrate_pool, BASE, change)

    assert expected == [line.split(":")[0] for line in before.diff(after)]
