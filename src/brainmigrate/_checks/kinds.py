"""Whether every migration declares its kind correctly: its class runs the ``migration_type`` it
declares, and a SQL migration's statements are of the type it declares. Nothing touches a database."""

from __future__ import annotations

from collections.abc import Sequence

from .._errors import BrainMigrateError, MigrationValidationError
from .._model.metadata import MigrationType
from .._model.migration import DatabaseSchemaMigration, Migration, _check_kind
from .._review.statements import Access, parse_sql
from .report import Check, CheckOutcome


async def kind_outcomes(migrations: Sequence[Migration]) -> list[CheckOutcome]:
    """One outcome per migration, in the order given."""
    outcomes: list[CheckOutcome] = []
    for migration in migrations:
        problem = _class_problem(migration)
        if problem is None:
            problem = await _statements_problem(migration)
        outcomes.append(CheckOutcome(check=Check.KINDS, migration_id=migration.metadata.id, problem=problem))
    return outcomes


def _class_problem(migration: Migration) -> str | None:
    try:
        _check_kind(migration)
    except MigrationValidationError as exc:
        return f"migration {migration.metadata.id!r} declares the wrong kind: {exc}"
    return None


async def _statements_problem(migration: Migration) -> str | None:
    """A SQL migration declaring DATABASE_SCHEMA that only writes rows, or DATABASE_DATA that only
    changes definitions; statements the reader does not recognise count for neither."""
    if not isinstance(migration, DatabaseSchemaMigration):
        return None
    declared = migration.metadata.migration_type
    if declared not in (MigrationType.DATABASE_SCHEMA, MigrationType.DATABASE_DATA):
        return None
    try:
        texts = await migration.get_forward_statements()
    except (BrainMigrateError, TypeError, ValueError):
        return None  # the upgrade check reports a migration whose statements cannot be read
    accesses = {
        touch.access for text in texts for statement in parse_sql(text) for touch in statement.touches
    }
    mid = migration.metadata.id
    if (
        declared is MigrationType.DATABASE_SCHEMA
        and Access.WRITE in accesses
        and Access.DEFINE not in accesses
    ):
        return (
            f"migration {mid!r} declares migration_type=MigrationType.DATABASE_SCHEMA, but its "
            "statements only change rows (INSERT, UPDATE, DELETE), no definitions: declare "
            "MigrationType.DATABASE_DATA, so run_pending(migration_type=...) and the data checks "
            "treat it as the data migration it is"
        )
    if declared is MigrationType.DATABASE_DATA and Access.DEFINE in accesses and Access.WRITE not in accesses:
        return (
            f"migration {mid!r} declares migration_type=MigrationType.DATABASE_DATA, but its statements "
            "only change definitions (CREATE, ALTER, DROP), no rows: declare "
            "MigrationType.DATABASE_SCHEMA, so run_pending(migration_type=...) selects it with the "
            "schema changes"
        )
    return None
