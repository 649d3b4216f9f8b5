"""The stages a SQL or Python migration runs through, shared by both paths of the schema runner:
the SQL it runs, running it (execute), the precondition and postcondition gates (validate, verify),
and where an attempt got to.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs

from .._model.config import MigrationConfig
from .._model.migration import DatabaseSchemaMigration, Migration
from .._model.states import MigrationOperation
from .._model.types import Connection
from .._runtime import telemetry as telemetry
from .._runtime.steps import GateRefused, run_gate

APPLY = MigrationOperation.APPLY


async def statements_of(migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
    """The SQL a schema migration runs for ``operation``; empty for Python migrations."""
    if not isinstance(migration, DatabaseSchemaMigration):
        return ()
    if operation == APPLY:
        return tuple(await migration.get_forward_statements())
    return tuple(await migration.get_rollback_statements())


@attrs.define
class Progress:
    """Where an attempt got to, for error messages and the history row."""

    statement_index: int | None = None
    postconditions_passed: bool | None = None
    #: The history row brainmigrate is writing (named for the error, left set if writing fails).
    history_write: str | None = None
    #: Whether the COMMIT was sent (a failure then is the commit's).
    committing: bool = False
    #: Whether the migration ended the transaction brainmigrate ran it in.
    escaped: bool = False
    #: Why the failure could not be recorded in history, when it could not.
    recording_error: Exception | None = None

    @contextmanager
    def writing(self, what: str) -> Iterator[None]:
        self.history_write = what
        yield
        self.history_write = None


async def execute(
    migration: Migration,
    statements: Sequence[str],
    operation: MigrationOperation,
    conn: Connection,
    progress: Progress,
) -> None:
    if isinstance(migration, DatabaseSchemaMigration):
        for index, statement in enumerate(statements):
            progress.statement_index = index
            await conn.execute(statement)
    elif operation == APPLY:
        await migration.up(conn)
    else:
        await migration.down(conn)


async def validate_stage(
    migration: Migration, operation: MigrationOperation, config: MigrationConfig, conn: Connection
) -> None:
    """Stage 1: the precondition gate, before anything changes (when applying, with validate_before).

    It runs outside any transaction; one it leaves open (it ran BEGIN) is rolled back and refuses the
    migration, which would otherwise run, and be recorded, inside it.
    """
    if operation == APPLY and config.validate_before:
        with telemetry.stage_span(telemetry.STAGE_VALIDATE, migration.metadata.id):
            await run_gate(migration.validate_preconditions, conn, "preconditions", migration.metadata.id)
            if conn.is_in_transaction():
                await conn.execute("ROLLBACK")
                raise GateRefused(
                    f"preconditions of migration {migration.metadata.id!r} left a transaction open (they "
                    "ran BEGIN without COMMIT); it was rolled back and the migration was not applied. "
                    "Let validate_preconditions only read",
                    migration_id=migration.metadata.id,
                )


async def verify_stage(
    migration: Migration,
    operation: MigrationOperation,
    config: MigrationConfig,
    conn: Connection,
    progress: Progress,
) -> None:
    """Stage 4: the postcondition gate, before committing (when applying, with validate_after)."""
    if operation == APPLY and config.validate_after:
        with telemetry.stage_span(telemetry.STAGE_VERIFY, migration.metadata.id):
            progress.postconditions_passed = False
            await run_gate(migration.validate_postconditions, conn, "postconditions", migration.metadata.id)
            progress.postconditions_passed = True
