"""The non-transactional path of the schema runner: statements run one by one outside a
transaction, under a dirty mark in history until done, and compensated (or left dirty) on failure.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import attrs

from .._ledger.history import Attempt, HistoryLedger
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.migration import DatabaseSchemaMigration, Migration
from .._model.states import AttemptStatus, MigrationOperation
from .._model.types import Connection
from .._runtime import telemetry as telemetry
from .._runtime.steps import now
from .recording import finish_failed
from .stages import Progress, execute, statements_of, validate_stage, verify_stage

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK


@asynccontextmanager
async def _as_runner(session: RunnerSession, conn: Connection) -> AsyncIterator[None]:
    """For brainmigrate's own writes between a non-transactional migration's statements: a short
    transaction acting as the pool's session, whatever the statements switched the session to."""
    if conn.is_in_transaction():  # the migration opened one itself: the write joins it
        yield
        return
    async with conn.transaction():
        await session.act_as_runner(conn)
        yield


async def run_statement_by_statement(
    ledger: HistoryLedger,
    migration: Migration,
    statements: Sequence[str],
    operation: MigrationOperation,
    config: MigrationConfig,
    attempt: Attempt,
    progress: Progress,
    session: RunnerSession,
) -> None:
    """Run statements one by one outside a transaction, leaving a dirty mark until done.

    On failure, a reversible migration's rollback statements are run (with ``enable_rollback``);
    when that cannot be done, the attempt stays dirty so the next run stops and asks.
    """
    meta = migration.metadata
    lock = session.lock
    conn = await session.work_connection()
    await validate_stage(migration, operation, config, conn)
    with telemetry.stage_span(telemetry.STAGE_PREPARE, meta.id), progress.writing("its running row"):
        async with _as_runner(session, conn):
            attempt_id = await ledger.insert(conn, attrs.evolve(attempt, statement_index=0), lock)
    try:
        with telemetry.stage_span(telemetry.STAGE_EXECUTE, meta.id):
            for index, statement in enumerate(statements):
                progress.statement_index = index
                with progress.writing(f"its progress (statement {index + 1} of {len(statements)})"):
                    async with _as_runner(session, conn):
                        await ledger.mark_statement(conn, attempt_id, index, lock)
                await conn.execute(statement)
            if not isinstance(migration, DatabaseSchemaMigration):
                progress.statement_index = 0
                await execute(migration, statements, operation, conn, progress)
        await verify_stage(migration, operation, config, conn, progress)
        with telemetry.stage_span(telemetry.STAGE_COMMIT, meta.id):
            completed = attrs.evolve(
                attempt,
                status=AttemptStatus.COMPLETED,
                applied_after=operation == APPLY,
                finished_at=now(),
                statement_index=progress.statement_index,
            )
            with progress.writing("its completed row"):
                async with _as_runner(session, conn):
                    await ledger.finish(conn, attempt_id, completed, lock)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            try:
                await settle_interrupted(
                    ledger, migration, session, attempt, attempt_id, progress, config, exc
                )
            except Exception as record_exc:  # never in place of the failure itself
                progress.recording_error = record_exc
        raise


async def settle_interrupted(
    ledger: HistoryLedger,
    migration: Migration,
    session: RunnerSession,
    attempt: Attempt,
    attempt_id: int,
    progress: Progress,
    config: MigrationConfig,
    exc: BaseException,
) -> None:
    """After a non-transactional failure: compensate if possible, else leave the attempt dirty."""
    meta = migration.metadata
    conn = await session.work_connection()
    status = AttemptStatus.FAILED
    note = f"{type(exc).__name__}: {exc}"
    started_any = progress.statement_index is not None
    if started_any and attempt.operation == APPLY:
        if meta.reversible and config.enable_rollback:
            try:
                undo = await statements_of(migration, ROLLBACK)
                await execute(migration, undo, ROLLBACK, conn, Progress())
                note += (
                    "; completed statements were reversed with the rollback statements"
                    if isinstance(migration, DatabaseSchemaMigration)
                    else "; its work was reversed with down()"
                )
            except Exception as undo_exc:  # the database is in an unknown state now
                status = AttemptStatus.DIRTY
                note += f"; reversing failed too: {type(undo_exc).__name__}: {undo_exc}"
        else:  # the failed statement itself may have left work behind (an INVALID index)
            status = AttemptStatus.DIRTY
    elif attempt.operation == ROLLBACK and started_any:
        status = AttemptStatus.DIRTY
    await finish_failed(
        ledger, await session.work_connection(), attempt_id, attempt, status, note, exc, progress
    )
