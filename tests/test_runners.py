"""The runners: one per kind behind one protocol, one error translation, and the façade's options."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any, ClassVar

import pytest

import brainmigrate
from brainmigrate import (
    DatabaseDataMigration,
    DataSource,
    MigrationConfig,
    MigrationExecutionError,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate._runners.base import Runner
from brainmigrate._runners.data import DataMigrationRunner
from brainmigrate._runners.schema import SchemaRunner
from data_support import memory_migration, meta
from helpers import PythonMigration, create_table, history_rows, schema_migration, snapshot

pytestmark = pytest.mark.anyio

RUNNERS = Path(brainmigrate.__file__).parent / "_runners"

#: A failure that carries a DETAIL and a HINT, raised by PL/pgSQL.
RAISE_WITH_HINT = (
    "DO $$ BEGIN RAISE EXCEPTION 'memories are read-only today' "
    "USING ERRCODE = '42501', DETAIL = 'the store is frozen', HINT = 'run it again tomorrow'; END $$"
)


def test_the_migrator_picks_a_runner_by_kind(brainmigrate_pool: Any) -> None:
    """SQL and Python migrations go to the schema runner, data migrations to the data runner."""
    migrator = Migrator(brainmigrate_pool, [])
    schema = create_table("notes_001", "notes")()
    data = memory_migration()()

    assert isinstance(migrator._runners.of(schema), SchemaRunner)
    assert isinstance(migrator._runners.of(PythonMigration()), SchemaRunner)
    assert isinstance(migrator._runners.of(data), DataMigrationRunner)


def test_every_runner_follows_the_protocol() -> None:
    """Each runner has the protocol's methods, with the same parameters."""
    for name in ("describe", "apply", "check_reversible", "dry_run", "stopped_midway"):
        wanted = inspect.signature(getattr(Runner, name)).parameters.keys()
        for runner in (SchemaRunner, DataMigrationRunner):
            assert inspect.signature(getattr(runner, name)).parameters.keys() == wanted, (runner, name)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


#: The runners of kinds that run on the data engine.
ENGINE_RUNNERS = {"data.py", "structure.py"}


def test_only_the_runners_of_data_kinds_import_the_data_engine() -> None:
    """The schema runner, the protocol, the dry run and their helpers know nothing of the data
    engine; the data and structure runners drive it."""
    others = sorted(path.name for path in RUNNERS.glob("*.py") if path.name not in ENGINE_RUNNERS)
    assert {"schema.py", "base.py", "dry_run.py"} <= set(others)
    for name in others:
        assert not any(module.startswith("_engine") for module in _imports(RUNNERS / name)), name
    for name in ENGINE_RUNNERS:
        assert any(module.startswith("_engine") for module in _imports(RUNNERS / name)), name


async def test_a_failed_schema_statement_carries_sqlstate_detail_and_hint(brainmigrate_pool: Any) -> None:
    """A unique violation keeps its SQLSTATE and DETAIL as attributes and once each in the message."""
    migration = schema_migration(
        "dupes_001",
        ["CREATE TABLE dupes (a int UNIQUE)", "INSERT INTO dupes VALUES (1)", "INSERT INTO dupes VALUES (1)"],
    )
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationExecutionError) as caught:
        await Migrator(brainmigrate_pool, [migration]).run_pending()

    error = caught.value
    assert (error.sqlstate, error.detail, error.hint) == ("23505", "Key (a)=(1) already exists.", None)
    assert error.statement_index == 2
    message = str(error)
    assert message.count("Key (a)=(1) already exists.") == 1
    assert "(detail: Key (a)=(1) already exists.)" in message
    assert "DETAIL:" not in message
    assert (await snapshot(brainmigrate_pool))[0] == before[0]


async def test_a_failed_statement_keeps_its_hint(brainmigrate_pool: Any) -> None:
    """A HINT is kept as an attribute and in the message; the history row keeps the SQLSTATE."""
    migration = schema_migration("frozen_001", [RAISE_WITH_HINT])

    with pytest.raises(MigrationExecutionError) as caught:
        await Migrator(brainmigrate_pool, [migration]).run_pending()

    error = caught.value
    assert (error.sqlstate, error.detail, error.hint) == (
        "42501",
        "the store is frozen",
        "run it again tomorrow",
    )
    message = str(error)
    assert (
        "[42501] memories are read-only today (detail: the store is frozen) (hint: run it again tomorrow)"
        in (message)
    )
    assert "HINT:" not in message and "DETAIL:" not in message
    [row] = await history_rows(brainmigrate_pool)
    assert (row["status"], row["sqlstate"]) == ("failed", "42501")


async def test_a_failed_python_migration_carries_detail_and_hint(brainmigrate_pool: Any) -> None:
    """up() raising a PostgreSQL error gives the same attributes as a statement."""

    class Frozen(PythonMigration):
        async def up(self, conn: Any) -> None:
            await conn.execute(RAISE_WITH_HINT)

    with pytest.raises(MigrationExecutionError) as caught:
        await Migrator(brainmigrate_pool, [Frozen]).run_pending()

    assert (caught.value.detail, caught.value.hint) == ("the store is frozen", "run it again tomorrow")


class _Collide(DatabaseDataMigration):
    """A server-side batch that sets every row's ``a`` to 1, which a unique index refuses."""

    source: ClassVar[DataSource | None] = DataSource(table="pairs", key="id")

    def _get_metadata(self) -> MigrationMetadata:
        return meta("collide_001", migration_type=MigrationType.DATABASE_DATA, reversible=False)

    async def get_batch_statement(self) -> str | None:
        return "UPDATE pairs SET a = 1 WHERE id BETWEEN $1 AND $2"


async def test_a_failed_data_batch_carries_sqlstate_detail_and_hint(brainmigrate_pool: Any) -> None:
    """A data run's failed batch keeps the PostgreSQL error's fields, also after it is recorded."""
    await brainmigrate_pool.execute(
        "CREATE TABLE pairs (id int PRIMARY KEY, a int UNIQUE); INSERT INTO pairs VALUES (1, 1), (2, 2)"
    )

    with pytest.raises(MigrationExecutionError) as caught:
        await Migrator(brainmigrate_pool, [_Collide]).run_pending(config=MigrationConfig(batch_size=10))

    error = caught.value
    assert error.migration_id == "collide_001"
    assert (error.sqlstate, error.detail, error.hint) == ("23505", "Key (a)=(1) already exists.", None)
    message = str(error)
    assert message.startswith("data migration 'collide_001' failed: [23505] ")
    assert message.count("Key (a)=(1) already exists.") == 1
    assert "DETAIL:" not in message
    rows = [row for row in await history_rows(brainmigrate_pool) if row["migration_id"] == "collide_001"]
    assert [row["status"] for row in rows] == ["failed"]


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("execute", ("notes_001", MigrationConfig())),
        ("rollback", ("notes_001", MigrationConfig())),
        ("rollback", ("notes_001", True)),
        ("retry_failed", ("notes_001", MigrationConfig())),
        ("resolve", ("notes_001", True)),
    ],
)
async def test_options_are_keyword_only(brainmigrate_pool: Any, method: str, args: tuple[Any, ...]) -> None:
    """Only the migration id is positional; options are named."""
    migrator = Migrator(brainmigrate_pool, [create_table("notes_001", "notes")])

    with pytest.raises(TypeError):
        await getattr(migrator, method)(*args)


async def test_the_options_work_by_name(brainmigrate_pool: Any) -> None:
    """execute, rollback (cascade, config) and run_pending take their options by name."""
    base = create_table("notes_001", "notes")
    child = create_table("tags_001", "tags", dependencies=["notes_001"])
    migrator = Migrator(brainmigrate_pool, [base, child])

    dry, _ = await migrator.run_pending(MigrationType.DATABASE_SCHEMA, config=MigrationConfig(dry_run=True))
    applied = await migrator.execute("notes_001", config=MigrationConfig())
    await migrator.run_pending(config=MigrationConfig())
    undone = await migrator.rollback("notes_001", cascade=True, config=MigrationConfig())

    assert dry.dry_run and applied.status is MigrationStatus.COMPLETED
    assert [(r.migration_id, r.status) for r in undone] == [
        ("tags_001", MigrationStatus.ROLLED_BACK),
        ("notes_001", MigrationStatus.ROLLED_BACK),
    ]


def test_the_callback_and_source_types_are_exported() -> None:
    """ProgressCallback and MigrationSource, used in Migrator's signature, import from the root."""
    assert {"MigrationSource", "ProgressCallback"} <= set(brainmigrate.__all__)
    parameters = inspect.signature(Migrator).parameters
    assert parameters["migrations"].annotation == "MigrationSource | None"
    assert parameters["on_progress"].annotation == "ProgressCallback | None"
