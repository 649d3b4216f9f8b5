"""What is loaded is checked before anything runs: ids, metadata, statements, hooks, names, results."""

from __future__ import annotations

import enum
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from brainmigrate import (
    AttemptStatus,
    ConfigError,
    DatabaseSchemaMigration,
    HistoryRecord,
    Migration,
    MigrationMetadata,
    MigrationNotFoundError,
    MigrationOperation,
    MigrationResult,
    MigrationStatus,
    MigrationType,
    MigrationValidationError,
    Migrator,
    MissingDependencyError,
)
from brainmigrate._catalog.graph import MigrationGraph
from brainmigrate._catalog.loader import load_migrations
from brainmigrate._model.sqltext import quote_ident
from data_support import memory_migration, server_side_migration
from helpers import PythonMigration, create_table, schema_migration, snapshot, table_exists

HISTORY = "brainmigrate.migration_history"


def metadata_migration(**fields: Any) -> type[Migration]:
    """A Python migration whose ``_get_metadata()`` builds MigrationMetadata from ``fields``."""
    arguments: dict[str, Any] = {
        "id": "meta_001",
        "name": "meta",
        "version": "1.0",
        "migration_type": MigrationType.DATABASE_SCHEMA,
        **fields,
    }

    class MetaMigration(Migration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(**arguments)

    return MetaMigration


async def refused_at_load(pool: Any, migrations: list[Any]) -> MigrationValidationError:
    """The MigrationValidationError that run_pending() raises, checking it wrote nothing."""
    before = await snapshot(pool)

    with pytest.raises(MigrationValidationError) as caught:
        await Migrator(pool, migrations).run_pending()

    assert await snapshot(pool) == before
    assert not await table_exists(pool, HISTORY)
    return caught.value


# -- 1. migration ids --------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("migration_id", "problem"),
    [
        pytest.param("a\0b", "control character", id="nul"),
        pytest.param("x" * 3000, "3000 bytes", id="too-long"),
        pytest.param("line\nbreak", "control character", id="newline"),
        pytest.param("", "must not be empty", id="empty"),
        pytest.param(" padded ", "leading or trailing whitespace", id="padded"),
        pytest.param("zero\u200bwidth", "invisible", id="zero-width-space"),
    ],
)
async def test_a_malformed_id_is_refused_before_the_database_is_touched(
    brainmigrate_pool: Any, migration_id: str, problem: str
) -> None:
    """An id that the history table cannot hold faithfully is a MigrationValidationError at load."""

    class OddId(DatabaseSchemaMigration):
        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=migration_id, name="odd", version="1", migration_type=MigrationType.DATABASE_SCHEMA
            )

        async def get_forward_statements(self) -> list[str]:
            return ["CREATE TABLE made (id int)"]

    error = await refused_at_load(brainmigrate_pool, [OddId])

    assert "OddId._get_metadata() failed: MigrationMetadata.id" in str(error)
    assert problem in str(error)


@pytest.mark.parametrize(
    "dependency",
    [
        pytest.param("dep\0", id="nul"),
        pytest.param("d" * 256, id="too-long"),
        pytest.param("dep ", id="trailing-space"),
        pytest.param("", id="empty"),
        pytest.param(7, id="not-a-string"),
    ],
)
def test_a_malformed_dependency_id_is_refused(dependency: Any) -> None:
    """Dependency ids follow the rules of ids; the error names the class and the field."""
    migration = metadata_migration(dependencies=["fine", dependency])

    with pytest.raises(MigrationValidationError) as caught:
        _ = migration().metadata

    assert "MetaMigration._get_metadata() failed: MigrationMetadata.dependencies" in str(caught.value)


def test_an_id_of_255_bytes_is_accepted_and_one_of_256_refused() -> None:
    """The limit is counted in UTF-8 bytes: 127 two-byte characters and one ASCII one fit."""
    longest = "é" * 127 + "x"
    too_long = "é" * 128

    accepted = metadata_migration(id=longest)().metadata.id
    with pytest.raises(MigrationValidationError, match="256 bytes in UTF-8; at most 255"):
        _ = metadata_migration(id=too_long)().metadata

    assert longest == accepted


# -- 2. statements of the wrong shape, hooks that are not async --------------------------------


def returning(value: Any, method: str = "get_forward_statements") -> type[DatabaseSchemaMigration]:
    """A schema migration ``shape_001`` whose ``method`` returns ``value``."""
    base = schema_migration("shape_001", ["CREATE TABLE made (id int)"], ["DROP TABLE made"])

    async def statements(self: Any) -> Any:
        return value

    return type("ShapeMigration", (base,), {method: statements})


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("migration", "method", "problem"),
    [
        pytest.param(returning(None), "get_forward_statements", "got NoneType", id="none"),
        pytest.param(
            returning("CREATE TABLE made (id int)"),
            "get_forward_statements",
            "return a list of statements",
            id="bare-string",
        ),
        pytest.param(
            returning(["CREATE TABLE made (id int)", 42]),
            "get_forward_statements",
            "statement 2 is int",
            id="non-string-item",
        ),
        pytest.param(
            returning(["CREATE TABLE made (id int)", "  "]),
            "get_forward_statements",
            "statement 2 is empty",
            id="empty-item",
        ),
        pytest.param(
            returning(["CREATE TABLE made (id int)", "-- nothing to do\n/* at all */"]),
            "get_forward_statements",
            "statement 2 holds no SQL, only comments or semicolons",
            id="comments-only",
        ),
        pytest.param(
            returning(["CREATE TABLE made (id int)\0"]),
            "get_forward_statements",
            "NUL",
            id="nul-in-statement",
        ),
        pytest.param(
            returning(iter(["CREATE TABLE made (id int)"])),
            "get_forward_statements",
            "got list_iterator",
            id="iterator",
        ),
        pytest.param(
            returning("DROP TABLE made", "get_rollback_statements"),
            "get_rollback_statements",
            "return a list of statements",
            id="rollback-bare-string",
        ),
        pytest.param(
            returning([None], "get_rollback_statements"),
            "get_rollback_statements",
            "statement 1 is NoneType",
            id="rollback-non-string-item",
        ),
    ],
)
async def test_statements_of_the_wrong_shape_are_refused_at_load(
    brainmigrate_pool: Any, migration: type[Migration], method: str, problem: str
) -> None:
    """Only a list (or tuple) of non-empty strings is run; anything else names the migration and method."""
    error = await refused_at_load(brainmigrate_pool, [migration])

    assert "migration 'shape_001'" in str(error)
    assert f"{method}()" in str(error)
    assert problem in str(error)
    assert error.migration_id == "shape_001"


def plain(base: type[Migration], method: str) -> type[Migration]:
    """``base`` with ``method`` overridden by a plain (not async) function."""

    def hook(self: Any, *args: Any) -> Any:
        return ["SELECT 1"] if "statements" in method else True

    return type("PlainHook", (base,), {method: hook})


SCHEMA = schema_migration("plain_001", ["CREATE TABLE made (id int)"], ["DROP TABLE made"])
MEMORY = memory_migration()
SERVER_SIDE = server_side_migration()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("base", "migration_id", "method"),
    [
        pytest.param(SCHEMA, "plain_001", "get_forward_statements", id="forward"),
        pytest.param(SCHEMA, "plain_001", "get_rollback_statements", id="rollback"),
        pytest.param(SCHEMA, "plain_001", "validate_preconditions", id="pre"),
        pytest.param(SCHEMA, "plain_001", "validate_postconditions", id="post"),
        pytest.param(PythonMigration, "python_001", "up", id="up"),
        pytest.param(PythonMigration, "python_001", "down", id="down"),
        pytest.param(MEMORY, "tag_memories_001", "transform_memory", id="transform-memory"),
        pytest.param(MEMORY, "tag_memories_001", "transform_batch", id="transform-batch"),
        pytest.param(SERVER_SIDE, "score_memories_001", "get_batch_statement", id="batch-statement"),
        pytest.param(SERVER_SIDE, "score_memories_001", "transform_row", id="transform-row"),
    ],
)
async def test_a_hook_that_is_not_async_is_refused_at_load(
    brainmigrate_pool: Any, base: type[Migration], migration_id: str, method: str
) -> None:
    """A hook written with ``def`` instead of ``async def`` is named when the catalog loads."""
    before = await snapshot(brainmigrate_pool)
    migrator = Migrator(brainmigrate_pool, [plain(base, method)])

    with pytest.raises(MigrationValidationError) as caught:
        await migrator.status(migration_id)

    assert f"migration {migration_id!r}" in str(caught.value)
    assert f"{method}() must be declared `async def {method}(...)`" in str(caught.value)
    assert migration_id == caught.value.migration_id
    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.anyio
async def test_a_hook_wrapped_by_a_decorator_of_an_async_method_is_accepted(brainmigrate_pool: Any) -> None:
    """A plain wrapper that keeps ``__wrapped__`` (functools.wraps) around an async hook still loads."""
    import functools

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            return fn(*args)

        return wrapper

    base = schema_migration("wrapped_001", ["CREATE TABLE wrapped (id int)"])

    class Wrapped(base):  # type: ignore[valid-type,misc]
        @logged
        async def validate_preconditions(self, conn: Any) -> bool:
            return True

    results = await Migrator(brainmigrate_pool, [Wrapped]).run_pending()

    assert [result.status for result in results] == ["completed"]


@pytest.mark.anyio
async def test_transactional_must_be_a_boolean(brainmigrate_pool: Any) -> None:
    """``transactional = "no"`` would be truthy; it is refused at load naming the class attribute."""
    migration = schema_migration("flag_001", ["SELECT 1"])
    migration.transactional = "no"  # type: ignore[assignment]

    error = await refused_at_load(brainmigrate_pool, [migration])

    assert "migration 'flag_001'" in str(error)
    assert "transactional must be True or False, got 'no'" in str(error)


# -- 3. metadata fields of the wrong type ------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"reversible": "no"}, "MigrationMetadata.reversible must be True or False, got 'no'",
                     id="reversible-str"),
        pytest.param({"reversible": 1}, "MigrationMetadata.reversible must be True or False, got 1",
                     id="reversible-int"),
        pytest.param({"version": 2}, "MigrationMetadata.version must be a string such as '2.0.0', got int 2",
                     id="version-int"),
        pytest.param({"version": "1.0\0"}, "MigrationMetadata.version must not contain control characters",
                     id="version-nul"),
        pytest.param({"name": None}, "MigrationMetadata.name must be a string, got NoneType", id="name-none"),
        pytest.param({"name": "a\0b"}, "MigrationMetadata.name must not contain NUL", id="name-nul"),
        pytest.param({"description": None}, "MigrationMetadata.description must be a string",
                     id="description"),
        pytest.param({"author": 3}, "MigrationMetadata.author must be a string", id="author"),
        pytest.param({"created_at": "2026-01-01"}, "MigrationMetadata.created_at must be a datetime or None",
                     id="created-at-str"),
        pytest.param({"checksum": 5}, "MigrationMetadata.checksum must be a string or None", id="checksum"),
        pytest.param({"dependencies": None}, "MigrationMetadata.dependencies must be a list of migration ids",
                     id="dependencies-none"),
        pytest.param({"dependencies": "other"}, "not a string", id="dependencies-str"),
        pytest.param({"migration_type": "schema"}, "unknown migration type 'schema'", id="migration-type"),
        pytest.param({"id": 12}, "MigrationMetadata.id must be a string, got int 12", id="id-int"),
    ],
)  # fmt: skip
def test_metadata_fields_of_the_wrong_type_name_the_class_and_field(
    fields: dict[str, Any], message: str
) -> None:
    """A wrong field is a MigrationValidationError naming the migration class and the field."""
    migration = metadata_migration(**fields)

    with pytest.raises(MigrationValidationError) as caught:
        _ = migration().metadata

    assert "MetaMigration._get_metadata() failed: " in str(caught.value)
    assert message in str(caught.value)


def test_valid_metadata_keeps_its_values() -> None:
    """Accepted values come through unchanged: booleans, strings, datetimes, dependency tuples."""
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    metadata = metadata_migration(
        reversible=False, description="d", author="a", created_at=stamp, checksum="c", dependencies=["x"]
    )().metadata

    actual = (
        metadata.reversible,
        metadata.description,
        metadata.author,
        metadata.created_at,
        metadata.dependencies,
    )

    assert (False, "d", "a", stamp, ("x",)) == actual


# -- 4. identifier limits in bytes, reserved schemas -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("schema", "message"),
    [
        pytest.param("é" * 33, "66 bytes in UTF-8", id="66-bytes-33-characters"),
        pytest.param("x" * 64, "64 bytes in UTF-8", id="64-ascii"),
        pytest.param("pg_mine", "reserved", id="pg-prefix"),
        pytest.param("pg_catalog", "reserved", id="pg-catalog"),
        pytest.param("pg_toast", "reserved", id="pg-toast"),
        pytest.param("information_schema", "reserved", id="information-schema"),
        pytest.param("", "1 to 63 bytes", id="empty"),
        pytest.param("a\0b", "NUL", id="nul"),
    ],
)
async def test_a_schema_name_postgresql_would_truncate_or_refuse_is_a_config_error(
    brainmigrate_pool: Any, schema: str, message: str
) -> None:
    """Over 63 bytes PostgreSQL truncates the name silently; pg_* names it refuses. Both fail up front."""
    with pytest.raises(ConfigError) as caught:
        Migrator(brainmigrate_pool, [create_table("a", "a")], schema=schema)

    assert message in str(caught.value)
    assert "schema" in str(caught.value)


@pytest.mark.anyio
async def test_a_schema_name_of_63_bytes_is_used_whole(brainmigrate_pool: Any) -> None:
    """A name of exactly 63 UTF-8 bytes (32 characters) holds the history, untruncated."""
    schema = "é" * 31 + "x"

    await Migrator(brainmigrate_pool, [create_table("a", "a")], schema=schema).run_pending()
    schemas = await brainmigrate_pool.fetchval(
        "SELECT array_agg(nspname::text) FROM pg_namespace WHERE nspname LIKE 'é%'"
    )

    assert [schema] == schemas


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("a\0b", "NUL", id="nul"),
        pytest.param("x" * 64, "64 bytes", id="64-ascii"),
        pytest.param("é" * 32, "64 bytes", id="64-bytes-32-characters"),
        pytest.param("\ud800", "not valid Unicode", id="lone-surrogate"),
    ],
)
def test_quote_ident_refuses_names_postgresql_cannot_hold(name: str, message: str) -> None:
    """quote_ident raises ValueError for an empty name, a NUL, or more than 63 bytes of UTF-8."""
    with pytest.raises(ValueError, match=message):
        quote_ident(name)


def test_quote_ident_accepts_63_bytes() -> None:
    """63 bytes is PostgreSQL's limit (NAMEDATALEN - 1), and quote_ident doubles embedded quotes."""
    expected = ('"' + "x" * 63 + '"', '"' + "é" * 31 + 'x"', '"my""schema"')

    actual = (quote_ident("x" * 63), quote_ident("é" * 31 + "x"), quote_ident('my"schema'))

    assert expected == actual


# -- 5. suggestions for unknown ids ------------------------------------------------------------


@pytest.mark.anyio
async def test_an_unknown_id_suggests_the_closest_known_one(brainmigrate_pool: Any) -> None:
    """A typo in an id is answered with the id that was probably meant."""
    migrator = Migrator(brainmigrate_pool, [create_table("add_users_001", "users")])
    before = await snapshot(brainmigrate_pool)

    with pytest.raises(MigrationNotFoundError) as caught:
        await migrator.execute("add_user_001")

    assert str(caught.value).startswith("no migration with id 'add_user_001'")
    assert "did you mean 'add_users_001'?" in str(caught.value)
    assert caught.value.suggestions == ("add_users_001",)
    assert await snapshot(brainmigrate_pool) == before


@pytest.mark.anyio
async def test_an_unknown_id_like_no_known_one_suggests_nothing(brainmigrate_pool: Any) -> None:
    """Without a close id, the message points at pending() only."""
    migrator = Migrator(brainmigrate_pool, [create_table("add_users_001", "users")])

    with pytest.raises(MigrationNotFoundError) as caught:
        await migrator.status("zzz")

    assert str(caught.value) == "no migration with id 'zzz'; `await migrator.pending()` lists the ids"
    assert caught.value.suggestions == ()


def graph_of(*metas: MigrationMetadata) -> MigrationGraph:
    return MigrationGraph.build((m, f"module.{m.id}") for m in metas)


def meta(migration_id: str, *dependencies: str) -> MigrationMetadata:
    return MigrationMetadata(
        id=migration_id,
        name=migration_id,
        version="1",
        migration_type=MigrationType.DATABASE_SCHEMA,
        dependencies=list(dependencies),
    )


def test_a_missing_dependency_suggests_the_closest_known_id() -> None:
    """A misspelt dependency names the id that was probably meant, keeping the message's start."""
    with pytest.raises(MissingDependencyError) as caught:
        graph_of(meta("add_users_001"), meta("add_posts_002", "add_user_001"))

    assert str(caught.value).startswith(
        "migration 'add_posts_002' depends on 'add_user_001', which is not a known migration"
    )
    assert "did you mean 'add_users_001'?" in str(caught.value)
    assert caught.value.suggestions == ("add_users_001",)
    assert (caught.value.migration_id, caught.value.missing) == ("add_posts_002", "add_user_001")


def test_a_missing_dependency_like_no_known_id_suggests_nothing() -> None:
    """Without a close id, the message says to check the id or add the migration."""
    with pytest.raises(MissingDependencyError) as caught:
        graph_of(meta("add_users_001"), meta("b", "qqq"))

    expected = (
        "migration 'b' depends on 'qqq', which is not a known migration; "
        "check the id or add the missing migration"
    )
    assert expected == str(caught.value)
    assert caught.value.suggestions == ()


# -- 7. a source that yields no migrations -----------------------------------------------------


def test_an_importable_module_without_migrations_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """``migrations="json"`` imports fine and holds nothing: the warning names it and what was searched."""
    caplog.set_level(logging.WARNING, logger="brainmigrate")

    loaded = load_migrations("json", None)

    assert loaded == []
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "brainmigrate" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "no migrations found in package 'json'" in warnings[0]
    assert "json.decoder" in warnings[0]


def test_an_empty_package_logs_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty package directory imported by name is reported, not silently taken as 'nothing to do'."""
    name = f"empty_migrations_{tmp_path.name.replace('-', '_')}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    caplog.set_level(logging.WARNING, logger="brainmigrate")

    loaded = load_migrations(name, None)

    assert loaded == []
    expected = (
        f"no migrations found in package {name!r} (searched {name}, no submodules); "
        "a migration is a concrete Migration subclass defined in one of them"
    )
    assert [expected] == [r.getMessage() for r in caplog.records if r.name == "brainmigrate"]


def test_an_empty_directory_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A directory with no .py files is reported with the path searched."""
    caplog.set_level(logging.WARNING, logger="brainmigrate")

    loaded = load_migrations(tmp_path, None)

    assert loaded == []
    expected = (
        f"no migrations found in directory {str(tmp_path)!r} (searched 0 .py files); "
        "a migration is a concrete Migration subclass defined in one of them"
    )
    assert [expected] == [r.getMessage() for r in caplog.records if r.name == "brainmigrate"]


def test_a_source_with_migrations_logs_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A list of migrations is loaded without any warning."""
    caplog.set_level(logging.WARNING, logger="brainmigrate")

    loaded = load_migrations([create_table("a", "a")], None)

    assert len(loaded) == 1
    assert [r for r in caplog.records if r.name == "brainmigrate"] == []


# -- 6. results and history records: short strings, enums -------------------------------------


def result(**fields: Any) -> MigrationResult:
    arguments: dict[str, Any] = {
        "migration_id": "add_users_001",
        "name": "add users",
        "migration_type": MigrationType.DATABASE_SCHEMA,
        "operation": "apply",
        "status": MigrationStatus.COMPLETED,
        "duration_seconds": 0.0123,
        "statements": ("CREATE TABLE users (id int)",) * 50,
        **fields,
    }
    return MigrationResult(**arguments)


def record(**fields: Any) -> HistoryRecord:
    arguments: dict[str, Any] = {
        "attempt_id": 12,
        "migration_id": "add_users_001",
        "name": "add users",
        "migration_type": MigrationType.DATABASE_SCHEMA,
        "version": "1.0",
        "checksum": "c" * 64,
        "operation": "apply",
        "status": "completed",
        "applied_after": True,
        "started_at": datetime(2026, 12, 1, 19, 4, 5, tzinfo=UTC),
        "finished_at": datetime(2026, 12, 1, 19, 4, 5, 12000, tzinfo=UTC),
        "duration_ms": 12.0,
        "statement_index": None,
        "statement_count": 1,
        "error": None,
        "sqlstate": None,
        "hostname": "host",
        "pid": 1,
        "db_user": "postgres",
        **fields,
    }
    return HistoryRecord(**arguments)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, "add_users_001 apply completed in 0.012 s", id="completed"),
        pytest.param(
            {"status": MigrationStatus.FAILED, "error": "relation exists\nDETAIL: more"},
            "add_users_001 apply failed in 0.012 s: relation exists",
            id="failed-first-line",
        ),
        pytest.param(
            {"operation": "rollback", "status": MigrationStatus.ROLLED_BACK, "dry_run": True},
            "add_users_001 rollback rolled_back in 0.012 s (dry run)",
            id="dry-rollback",
        ),
        pytest.param(
            {"items_processed": 10, "items_skipped": 2, "items_failed": 1},
            "add_users_001 apply completed in 0.012 s: 10 written, 2 skipped, 1 failed",
            id="data-counts",
        ),
    ],
)
def test_a_result_prints_as_one_short_line(fields: dict[str, Any], expected: str) -> None:
    """str() of a result names id, operation, status and duration; never its statements."""
    actual = str(result(**fields))

    assert expected == actual


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {}, "#12 add_users_001 apply completed 2026-12-01 19:04:05+00:00 (12 ms)", id="completed"
        ),
        pytest.param(
            {"status": "failed", "applied_after": None, "error": "boom\nsecond line", "sqlstate": "42P07"},
            "#12 add_users_001 apply failed 2026-12-01 19:04:05+00:00 (12 ms): boom",
            id="failed-first-line",
        ),
        pytest.param(
            {"status": "running", "finished_at": None, "duration_ms": None},
            "#12 add_users_001 apply running 2026-12-01 19:04:05+00:00",
            id="running",
        ),
    ],
)
def test_a_history_record_prints_as_one_short_line(fields: dict[str, Any], expected: str) -> None:
    """str() of a history record names attempt, id, operation, status, start and duration."""
    actual = str(record(**fields))

    assert expected == actual


def test_history_records_and_results_carry_enums_that_equal_their_strings() -> None:
    """Status and operation are StrEnums: typed, and still equal to the strings they were."""
    attempt = record(status="dirty", operation="resolve")
    run = result(operation="rollback")

    actual = (attempt.status, attempt.operation, run.operation)

    assert actual == (AttemptStatus.DIRTY, MigrationOperation.RESOLVE, MigrationOperation.ROLLBACK)
    assert actual == ("dirty", "resolve", "rollback")
    assert all(isinstance(value, enum.Enum) for value in actual)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": "done"}, id="unknown-status"),
        pytest.param({"operation": "upgrade"}, id="unknown-operation"),
    ],
)
def test_a_history_record_refuses_unknown_values(fields: dict[str, Any]) -> None:
    """A status or operation outside the enum is a ValueError, as the history table's CHECK says."""
    with pytest.raises(ValueError, match="is not a valid"):
        record(**fields)


@pytest.mark.anyio
async def test_history_read_back_is_typed_and_printable(brainmigrate_pool: Any) -> None:
    """Records read from the table carry enums; their str() is one line without the SQL."""
    migrator = Migrator(brainmigrate_pool, [create_table("add_users_001", "users")])
    [applied] = await migrator.run_pending()

    [attempt] = await migrator.history()

    assert (attempt.status, attempt.operation) == (AttemptStatus.COMPLETED, MigrationOperation.APPLY)
    assert MigrationOperation.APPLY is applied.operation
    assert str(attempt).startswith(f"#{attempt.attempt_id} add_users_001 apply completed ")
    assert "CREATE TABLE" not in str(applied)
