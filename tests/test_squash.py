"""``squash``: one migration replacing an applied chain, so that databases that applied the chain and
fresh ones both end in the same schema."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from brainmigrate import (
    DependencyError,
    Migration,
    MigrationMetadata,
    MigrationOperation,
    MigrationStateError,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
)
from brainmigrate._operations import workbench
from brainmigrate.testing import DatabaseFactory, fingerprint
from helpers import create_table, snapshot
from test_cli import cli, run

pytestmark = pytest.mark.anyio

SQUASH = "accounts_001_squashed_index_003"


def _migration(mid: str, forward: list[str], rollback: list[str], dependencies: list[str]) -> str:
    return f"""
        from brainmigrate import DatabaseSchemaMigration, MigrationMetadata, MigrationType


        class M(DatabaseSchemaMigration):
            def _get_metadata(self):
                return MigrationMetadata(
                    id={mid!r}, name={mid!r}, version="1.0.{mid[-1]}",
                    migration_type=MigrationType.DATABASE_SCHEMA, dependencies={dependencies!r},
                )

            async def get_forward_statements(self):
                return {forward!r}

            async def get_rollback_statements(self):
                return {rollback!r}
    """


#: A chain of three (each notes in ``runs`` that it ran), and a migration depending on its last.
FILES = {
    "m001_accounts.py": _migration(
        "accounts_001",
        [
            "CREATE TABLE runs (migration text NOT NULL)",
            "INSERT INTO runs VALUES ('accounts_001')",
            "CREATE TABLE accounts (id int PRIMARY KEY)",
        ],
        ["DROP TABLE accounts", "DROP TABLE runs"],
        [],
    ),
    "m002_email.py": _migration(
        "email_002",
        ["INSERT INTO runs VALUES ('email_002')", "ALTER TABLE accounts ADD COLUMN email text"],
        ["ALTER TABLE accounts DROP COLUMN email", "DELETE FROM runs WHERE migration = 'email_002'"],
        ["accounts_001"],
    ),
    "m003_index.py": _migration(
        "index_003",
        [
            "INSERT INTO runs VALUES ('index_003')",
            """
            CREATE UNIQUE INDEX accounts_email_idx
                ON accounts (email)
            """,
        ],
        ["DROP INDEX accounts_email_idx", "DELETE FROM runs WHERE migration = 'index_003'"],
        ["email_002"],
    ),
    "m004_notes.py": _migration(
        "notes_004",
        ["CREATE TABLE notes (id int PRIMARY KEY, account int REFERENCES accounts)"],
        ["DROP TABLE notes"],
        ["index_003"],
    ),
}


@pytest.fixture
def migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in FILES.items():
        (directory / name).write_text(textwrap.dedent(text))
    for name in ("BRAINMIGRATE_DSN", "BRAINMIGRATE_MIGRATIONS", "BRAINMIGRATE_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return directory


@pytest.fixture
async def databases(brainmigrate_dsn: str) -> AsyncIterator[DatabaseFactory]:
    """More fresh databases, for the same migrations on several."""
    async with DatabaseFactory(brainmigrate_dsn) as factory:
        yield factory


@pytest.fixture
async def other_pool(databases: DatabaseFactory) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await asyncpg.create_pool(await databases.create(), min_size=1, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


def _files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


async def _runs(pool: asyncpg.Pool[Any]) -> list[str]:
    return [row[0] for row in await pool.fetch("SELECT migration FROM runs ORDER BY migration")]


async def _fingerprint(pool: asyncpg.Pool[Any]) -> Any:
    async with pool.acquire() as conn:
        return await fingerprint(conn)


# -- squashing an applied chain --------------------------------------------------------------------


async def test_the_squash_is_stamped_where_the_chain_was_applied_and_runs_where_it_was_not(
    brainmigrate_pool: asyncpg.Pool[Any], other_pool: asyncpg.Pool[Any], migrations: Path
) -> None:
    await Migrator(brainmigrate_pool, migrations).run_pending()

    path = await Migrator(brainmigrate_pool, migrations).squash("accounts_001", "index_003")

    assert path == migrations / f"{SQUASH}.py"
    text = path.read_text()
    assert 'replaces=["accounts_001", "email_002", "index_003"]' in text
    assert "dependencies=[]" in text

    # Where the chain was applied: the squash counts as applied, and is recorded so, never run.
    applied = Migrator(brainmigrate_pool, migrations)
    assert await applied.pending() == []
    assert await applied.status(SQUASH) is MigrationStatus.COMPLETED
    assert await applied.run_pending() == []
    [stamp] = [record for record in await applied.history() if record.migration_id == SQUASH]
    assert (stamp.operation, stamp.applied_after) == (MigrationOperation.STAMP, True)
    assert stamp.reason == "replaces accounts_001..index_003, all applied"
    assert await _runs(brainmigrate_pool) == ["accounts_001", "email_002", "index_003"]  # each once

    # A fresh database: the squash runs, in place of the chain, then what depended on the chain.
    fresh = Migrator(other_pool, migrations)
    assert [meta.id for meta in await fresh.pending()] == [SQUASH, "notes_004"]
    results = await fresh.run_pending()
    assert [(r.migration_id, r.status) for r in results] == [
        (SQUASH, MigrationStatus.COMPLETED),
        ("notes_004", MigrationStatus.COMPLETED),
    ]
    assert await _fingerprint(other_pool) == await _fingerprint(brainmigrate_pool)

    # Its rollback is the chain's, newest first.
    await fresh.rollback(SQUASH, cascade=True)
    assert await other_pool.fetchval("SELECT to_regclass('accounts')") is None


async def test_a_database_that_applied_part_of_the_chain_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any], other_pool: asyncpg.Pool[Any], migrations: Path
) -> None:
    await Migrator(brainmigrate_pool, migrations).run_pending()
    behind = Migrator(other_pool, migrations)
    await behind.execute("accounts_001")
    await behind.execute("email_002")
    await Migrator(brainmigrate_pool, migrations).squash("accounts_001", "index_003")
    before = await snapshot(other_pool)

    with pytest.raises(MigrationStateError) as caught:
        await Migrator(other_pool, migrations).run_pending()

    assert caught.value.migration_id == SQUASH
    assert str(caught.value) == (
        f"migration {SQUASH!r} squashes accounts_001, email_002, index_003, but this database applied "
        "only accounts_001, email_002 of them (not index_003), so the squash can neither run (part of "
        "it is applied) nor be recorded as applied. Apply the rest of the chain first, with the "
        f"migration files of a release before {SQUASH!r}, then run again. Nothing was changed"
    )
    assert await snapshot(other_pool) == before


async def test_the_written_migration_reads_back_as_the_chain(
    brainmigrate_pool: asyncpg.Pool[Any], migrations: Path
) -> None:
    await Migrator(brainmigrate_pool, migrations).run_pending()
    path = await Migrator(brainmigrate_pool, migrations).squash(
        "accounts_001", "email_002", migration_id="accounts_squashed"
    )
    namespace: dict[str, Any] = {"__name__": "written"}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    [squash] = [v for v in namespace.values() if isinstance(v, type) and v.__module__ == "written"]
    migration = squash()

    assert migration.metadata.replaces == ("accounts_001", "email_002")
    assert migration.metadata.version == "1.0.2"
    assert await migration.get_forward_statements() == [
        "CREATE TABLE runs (migration text NOT NULL)",
        "INSERT INTO runs VALUES ('accounts_001')",
        "CREATE TABLE accounts (id int PRIMARY KEY)",
        "INSERT INTO runs VALUES ('email_002')",
        "ALTER TABLE accounts ADD COLUMN email text",
    ]
    assert await migration.get_rollback_statements() == [
        "ALTER TABLE accounts DROP COLUMN email",
        "DELETE FROM runs WHERE migration = 'email_002'",
        "DROP TABLE accounts",
        "DROP TABLE runs",
    ]
    loaded = Migrator(brainmigrate_pool, migrations)
    # index_003 depended on email_002: it depends on the squash now.
    catalog = await workbench.load(loaded)
    assert catalog.graph.nodes["index_003"].dependencies == ("accounts_squashed",)


async def test_the_squash_depends_on_what_the_chain_depended_on_and_is_irreversible_if_one_was(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    source = [
        create_table("base_001", "base", version="1.0"),
        create_table("other_002", "other", version="1.1"),
        create_table("notes_003", "notes", version="1.2", dependencies=["base_001"]),
        create_table(
            "tags_004", "tags", version="1.3", dependencies=["notes_003", "other_002"], reversible=False
        ),
    ]
    migrator = Migrator(brainmigrate_pool, source)
    await migrator.run_pending()

    path = await migrator.squash("notes_003", "tags_004", directory=tmp_path, migration_id="notes_v2")

    assert path == tmp_path / "notes_v2.py"
    text = path.read_text()
    assert 'dependencies=["base_001", "other_002"]' in text
    assert "reversible=False" in text and "get_rollback_statements" not in text


def test_the_loader_hides_replaced_migrations_and_points_dependencies_at_the_squash() -> None:
    from brainmigrate._catalog.loader import load_migrations

    squash = _squash_class("accounts_v2", replaces=["accounts_001", "notes_002"])
    loaded = load_migrations(
        [
            create_table("accounts_001", "accounts"),
            create_table("notes_002", "notes", dependencies=["accounts_001"]),
            create_table("tags_003", "tags", dependencies=["notes_002", "accounts_001"]),
            squash,
        ],
        None,
    )

    assert {m.metadata.id: m.metadata.dependencies for m, _ in loaded} == {
        "tags_003": ("accounts_v2",),
        "accounts_v2": (),
    }


def test_a_migration_replaced_by_two_squashes_is_refused_when_loaded() -> None:
    from brainmigrate._catalog.loader import load_migrations

    with pytest.raises(MigrationValidationError) as caught:
        load_migrations(
            [_squash_class("one_v2", replaces=["one_001"]), _squash_class("two_v2", replaces=["one_001"])],
            None,
        )

    assert str(caught.value) == (
        "migrations 'one_v2' and 'two_v2' both replace 'one_001'; a migration is replaced by one squash "
        "only: remove it from one of the replaces lists"
    )


def _squash_class(mid: str, *, replaces: list[str]) -> type[Any]:
    from brainmigrate import DatabaseSchemaMigration

    class Squash(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=mid,
                name=mid,
                version="2.0",
                migration_type=MigrationType.DATABASE_SCHEMA,
                replaces=replaces,
            )

        async def get_forward_statements(self) -> list[str]:
            return ["SELECT 1"]

    Squash.__qualname__ = f"Squash_{mid}"
    return Squash


# -- refused, with nothing written -----------------------------------------------------------------


async def test_a_range_with_a_gap_is_refused(brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path) -> None:
    """``side_002`` runs between ``accounts_001`` and ``notes_003`` but is no part of their chain."""
    source = [
        create_table("accounts_001", "accounts", version="1.0"),
        create_table("side_002", "side", version="1.1"),
        create_table("notes_003", "notes", version="1.2", dependencies=["accounts_001"]),
    ]
    migrator = Migrator(brainmigrate_pool, source)
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(DependencyError) as caught:
        await migrator.squash("accounts_001", "notes_003", directory=tmp_path)

    assert caught.value.migration_id == "side_002"
    assert str(caught.value) == (
        "cannot squash 'accounts_001'..'notes_003': it has a gap: 'side_002' runs between them but is "
        "not on the chain of dependencies from 'accounts_001' to 'notes_003'; squash a range that "
        "'side_002' is not inside (one ending before it, or starting after it)"
    )
    assert _files(tmp_path) == []
    assert await snapshot(brainmigrate_pool) == before


async def test_a_range_that_branches_is_refused(brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path) -> None:
    source = [
        create_table("accounts_001", "accounts", version="1.0"),
        create_table("notes_002", "notes", version="1.1", dependencies=["accounts_001"]),
        create_table("tags_003", "tags", version="1.2", dependencies=["notes_002"]),
        create_table("links_004", "links", version="1.3", dependencies=["notes_002"]),
    ]
    migrator = Migrator(brainmigrate_pool, source)
    await migrator.run_pending()

    with pytest.raises(DependencyError) as caught:
        await migrator.squash("accounts_001", "tags_003", directory=tmp_path)

    assert str(caught.value) == (
        "cannot squash 'accounts_001'..'tags_003': it branches: 'links_004', outside the chain, "
        "depends on 'notes_002' inside it; squash a range ending at 'notes_002', or one that "
        "includes 'links_004'"
    )
    assert _files(tmp_path) == []


async def test_a_chain_with_an_unapplied_migration_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any], migrations: Path
) -> None:
    migrator = Migrator(brainmigrate_pool, migrations)
    await migrator.execute("accounts_001")
    await migrator.execute("email_002")
    before = await snapshot(brainmigrate_pool)
    files = _files(migrations)

    with pytest.raises(MigrationStateError) as caught:
        await migrator.squash("accounts_001", "index_003")

    assert caught.value.migration_id == "index_003"
    assert str(caught.value) == (
        "cannot squash 'accounts_001'..'index_003': 'index_003' is not applied on this database. "
        "Squash only migrations every database applied: run them first (run_pending()), or squash a "
        "shorter chain. Nothing was written"
    )
    assert _files(migrations) == files
    assert await snapshot(brainmigrate_pool) == before


class SeedSettings(Migration):
    """A Python migration, depending on the accounts table."""

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="seed_002",
            name="seed",
            version="1.1",
            migration_type=MigrationType.DATABASE_DATA,
            dependencies=["accounts_001"],
        )

    async def up(self, conn: Any) -> None:
        await conn.execute("INSERT INTO accounts VALUES (1, 'first')")

    async def down(self, conn: Any) -> None:
        await conn.execute("DELETE FROM accounts")


async def test_a_chain_with_a_python_migration_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any], tmp_path: Path
) -> None:
    migrator = Migrator(
        brainmigrate_pool, [create_table("accounts_001", "accounts", version="1.0"), SeedSettings]
    )
    await migrator.run_pending()
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.squash("accounts_001", "seed_002", directory=tmp_path)

    assert caught.value.migration_id == "seed_002"
    assert str(caught.value) == (
        "cannot squash 'seed_002': it is a python migration, and squash combines SQL schema migrations "
        "only (DatabaseSchemaMigration, forward and rollback statements). Squash a range that ends "
        "before 'seed_002' or starts after it, and keep 'seed_002' as it is"
    )
    assert _files(tmp_path) == []
    assert await snapshot(brainmigrate_pool) == before


# -- the command line ------------------------------------------------------------------------------


def test_the_squash_verb(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]
    assert run(capsys, *common, "upgrade")[0] == 0

    code, out, err = run(capsys, *common, "squash", "accounts_001", "index_003", "--id", "accounts_v2")
    assert code == 0, err
    assert out.strip() == f"wrote {migrations / 'accounts_v2.py'}: it replaces accounts_001..index_003"

    upgraded = cli(*common, "--json", "upgrade")  # another process: the squash is stamped, not run
    assert upgraded.returncode == 0, upgraded.stderr
    assert json.loads(upgraded.stdout) == []
    code, out, err = run(capsys, *common, "--json", "history")
    assert code == 0, err
    assert [(r["migration_id"], r["operation"]) for r in json.loads(out)][-1] == ("accounts_v2", "stamp")

    code, out, err = run(capsys, *common, "squash", "accounts_001", "notes_004")
    assert code == 1
    assert "no migration with id 'accounts_001'" in err  # replaced: hidden now
