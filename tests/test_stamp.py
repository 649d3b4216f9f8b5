"""``stamp``: a migration recorded as applied without running it, audited as its own operation."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from brainmigrate import (
    DirtyMigrationError,
    MigrationExecutionError,
    MigrationNotFoundError,
    MigrationOperation,
    MigrationStateError,
    MigrationStatus,
    Migrator,
)
from helpers import create_table, schema_migration, snapshot, table_exists
from test_cli import FAIL, HYBRID, MIGRATIONS, SCHEMA, TAG, cli, run

pytestmark = pytest.mark.anyio


def chain() -> list[type[Any]]:
    """accounts <- notes <- tags, each creating one table."""
    return [
        create_table("accounts_001", "accounts"),
        create_table("notes_002", "notes", dependencies=["accounts_001"]),
        create_table("tags_003", "tags", dependencies=["notes_002"]),
    ]


async def test_a_stamped_migration_counts_as_applied_and_is_never_run(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await brainmigrate_pool.execute("CREATE TABLE accounts (id int PRIMARY KEY, note text)")  # by hand
    migrator = Migrator(brainmigrate_pool, chain())

    [record] = await migrator.stamp("accounts_001", actor="dba", reason="created by hand during the outage")

    assert (record.migration_id, record.operation, record.status, record.applied_after) == (
        "accounts_001",
        MigrationOperation.STAMP,
        "completed",
        True,
    )
    assert (record.actor, record.reason) == ("dba", "created by hand during the outage")
    assert await migrator.status("accounts_001") is MigrationStatus.COMPLETED
    assert [meta.id for meta in await migrator.pending()] == ["notes_002", "tags_003"]

    results = await migrator.run_pending()  # CREATE TABLE accounts again would fail

    assert [result.migration_id for result in results] == ["notes_002", "tags_003"]
    history = [(r.migration_id, r.operation) for r in await migrator.history()]
    assert history == [
        ("accounts_001", MigrationOperation.STAMP),
        ("notes_002", MigrationOperation.APPLY),
        ("tags_003", MigrationOperation.APPLY),
    ]


async def test_stamp_records_the_dependencies_not_applied_yet_in_order_in_one_go(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.execute("accounts_001")

    records = await migrator.stamp("tags_003", reason="restored from a dump")

    assert [(r.migration_id, r.operation) for r in records] == [
        ("notes_002", MigrationOperation.STAMP),
        ("tags_003", MigrationOperation.STAMP),
    ]
    assert [r.reason for r in records] == [
        "a dependency of 'tags_003': restored from a dump",
        "restored from a dump",
    ]
    assert {r.actor for r in records} == {getpass.getuser()}  # the operating-system user by default
    assert await migrator.pending() == []
    assert not await table_exists(brainmigrate_pool, "notes")  # nothing ran


async def test_a_stamped_migration_rolls_back_like_an_applied_one(
    brainmigrate_pool: asyncpg.Pool[Any],
) -> None:
    await brainmigrate_pool.execute("CREATE TABLE accounts (id int PRIMARY KEY, note text)")
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.stamp("accounts_001")

    [result] = await migrator.rollback("accounts_001")

    assert result.status is MigrationStatus.ROLLED_BACK
    assert not await table_exists(brainmigrate_pool, "accounts")
    assert await migrator.status("accounts_001") is MigrationStatus.ROLLED_BACK
    await migrator.run_pending()  # and runs again as pending
    assert await table_exists(brainmigrate_pool, "accounts")


# -- refused, with nothing written -----------------------------------------------------------------


async def test_stamp_of_an_unknown_id_is_refused(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.execute("accounts_001")
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationNotFoundError) as caught:
        await migrator.stamp("notes_02")

    assert str(caught.value) == (
        "no migration with id 'notes_02'; did you mean 'notes_002'? `await migrator.pending()` lists the ids"
    )
    assert await snapshot(brainmigrate_pool) == before


async def test_stamp_of_an_applied_migration_is_refused(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    migrator = Migrator(brainmigrate_pool, chain())
    await migrator.execute("accounts_001")
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationStateError) as caught:
        await migrator.stamp("accounts_001", reason="twice")

    assert caught.value.migration_id == "accounts_001"
    assert str(caught.value) == "migration 'accounts_001' is already applied, so there is nothing to stamp"
    assert await snapshot(brainmigrate_pool) == before


async def test_stamp_while_a_migration_is_dirty_is_refused(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    """A non-transactional migration that failed midway, its rollback failing too, is dirty."""
    broken = schema_migration(
        "broken_001",
        ["CREATE TABLE half (id int)", "SELECT 1/0"],
        ["SELECT 1/0"],
        transactional=False,
    )
    migrator = Migrator(
        brainmigrate_pool, [broken, create_table("after_002", "after", dependencies=["broken_001"])]
    )
    with pytest.raises(MigrationExecutionError):
        await migrator.run_pending()
    assert await migrator.status("broken_001") is MigrationStatus.DIRTY
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(DirtyMigrationError) as caught:
        await migrator.stamp("after_002")

    assert "migration 'broken_001' is dirty" in str(caught.value)
    assert "resolve('broken_001', applied=True)" in str(caught.value)
    assert await snapshot(brainmigrate_pool) == before


async def test_stamp_of_a_data_migration_stopped_midway_is_refused(
    brainmigrate_pool: asyncpg.Pool[Any], migrations: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrator = Migrator(brainmigrate_pool, migrations)
    await migrator.execute(SCHEMA)
    monkeypatch.setenv(FAIL, "1")
    with pytest.raises(MigrationExecutionError):
        await migrator.execute(TAG)
    monkeypatch.delenv(FAIL)
    assert await migrator.status(TAG) is MigrationStatus.FAILED
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationStateError) as caught:
        await migrator.stamp(HYBRID)

    assert caught.value.migration_id == HYBRID
    assert str(caught.value) == (
        f"cannot stamp migration {TAG!r} (a dependency of {HYBRID!r}): a run of it stopped midway "
        "(failed), leaving part of its work done; resume it with execute(), or undo that part with "
        "rollback(), first. Nothing was written"
    )
    assert await snapshot(brainmigrate_pool) == before


async def test_stamp_with_an_empty_reason_or_actor_is_refused(brainmigrate_pool: asyncpg.Pool[Any]) -> None:
    from brainmigrate import ConfigError

    migrator = Migrator(brainmigrate_pool, chain())
    before = await snapshot(brainmigrate_pool)
    with pytest.raises(ConfigError, match="reason must be a non-empty string or None"):
        await migrator.stamp("accounts_001", reason=" ")
    with pytest.raises(ConfigError, match="actor must be a non-empty string or None"):
        await migrator.stamp("accounts_001", actor="")
    assert await snapshot(brainmigrate_pool) == before


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import textwrap

    directory = tmp_path / "migrations"
    directory.mkdir()
    for name, text in MIGRATIONS.items():
        (directory / name).write_text(textwrap.dedent(text))
    for name in ("BRAINMIGRATE_DSN", "BRAINMIGRATE_MIGRATIONS", "BRAINMIGRATE_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return directory


def test_the_stamp_verb(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]

    code, out, err = run(capsys, *common, "stamp", TAG, "--reason", "restored from a dump", "--actor", "dba")
    assert code == 0, err
    assert out.splitlines() == [f"{SCHEMA}: stamped (attempt 1)", f"{TAG}: stamped (attempt 2)"]

    code, out, err = run(capsys, *common, "--json", "history")
    assert code == 0, err
    rows = [(r["migration_id"], r["operation"], r["actor"], r["reason"]) for r in json.loads(out)]
    assert rows == [
        (SCHEMA, "stamp", "dba", f"a dependency of {TAG!r}: restored from a dump"),
        (TAG, "stamp", "dba", "restored from a dump"),
    ]

    code, out, err = run(capsys, *common, "stamp", TAG)
    assert code == 1
    assert f"migration {TAG!r} is already applied" in err

    code, out, err = run(capsys, *common, "stamp", "nope")
    assert code == 1
    assert "no migration with id 'nope'" in err


def test_stamp_as_a_subprocess_in_the_schema_the_environment_names(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]

    stamped = cli(*common, "--json", "stamp", SCHEMA, env={"BRAINMIGRATE_SCHEMA": "audit"})
    assert stamped.returncode == 0, stamped.stderr
    [record] = json.loads(stamped.stdout)
    assert (record["migration_id"], record["operation"], record["actor"]) == (
        SCHEMA,
        "stamp",
        getpass.getuser(),
    )

    code, out, err = run(capsys, *common, "--schema", "audit", "--json", "history")
    assert code == 0, err
    assert [r["operation"] for r in json.loads(out)] == ["stamp"]
    code, out, err = run(capsys, *common, "--json", "history")  # the default schema holds nothing
    assert code == 0, err
    assert json.loads(out) == []


def test_the_schema_comes_from_the_flag_the_environment_or_pyproject(
    brainmigrate_database: str,
    migrations: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]
    (tmp_path / "pyproject.toml").write_text('[tool.brainmigrate]\nschema = "from_pyproject"\n')
    assert run(capsys, *common, "stamp", SCHEMA)[0] == 0
    monkeypatch.setenv("BRAINMIGRATE_SCHEMA", "from_environment")  # wins over pyproject
    assert run(capsys, *common, "stamp", SCHEMA)[0] == 0
    assert run(capsys, *common, "--schema", "from_flag", "stamp", SCHEMA)[0] == 0  # wins over both

    for schema in ("from_pyproject", "from_environment", "from_flag"):
        code, out, err = run(capsys, *common, "--schema", schema, "--json", "history")
        assert code == 0, err
        assert [r["migration_id"] for r in json.loads(out)] == [SCHEMA], schema

    (tmp_path / "pyproject.toml").write_text("[tool.brainmigrate]\nschema = 7\n")
    monkeypatch.delenv("BRAINMIGRATE_SCHEMA")
    code, _, err = run(capsys, *common, "history")
    assert code == 3
    assert "[tool.brainmigrate] schema in pyproject.toml must be a non-empty string" in err


def test_abandon_records_the_actor_given(
    brainmigrate_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["--dsn", brainmigrate_database, "--migrations", str(migrations)]
    assert run(capsys, *common, "upgrade")[0] == 0  # the manual hybrid waits for its contract

    code, out, err = run(
        capsys, *common, "--json", "abandon", HYBRID, "--reason", "superseded", "--actor", "ops"
    )
    assert code == 0, err
    assert (json.loads(out)["actor"], json.loads(out)["reason"]) == ("ops", "superseded")
