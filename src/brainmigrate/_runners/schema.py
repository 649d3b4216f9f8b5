"""The runner of SQL and Python migrations: each runs through the five stages (validate, prepare,
execute, verify, commit), in one transaction or statement by statement, recording each attempt.

The runner and its transactional path live here; the stages both paths share are in
:mod:`.stages`, the statement-by-statement path in :mod:`.statements`, and the writing of failed
attempts to history in :mod:`.recording`. It knows nothing of the data engine; dry runs are
orchestrated above it (:mod:`.dry_run`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import attrs
from opentelemetry.trace import StatusCode

from .._errors import (
    BrainMigrateError,
    IrreversibleMigrationError,
    MigrationExecutionError,
)
from .._ledger import sql as _sql
from .._ledger.history import Attempt, HistoryLedger
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.metadata import MigrationStatus
from .._model.migration import DatabaseSchemaMigration, Migration, transaction_control_refusal
from .._model.results import MigrationResult
from .._model.states import AttemptStatus, MigrationOperation
from .._model.types import Connection, is_usable
from .._runtime import telemetry as telemetry
from .._runtime.retry import retrying
from .._runtime.steps import now
from .._runtime.translate import execution_error, is_own_failure, reason, translate
from .base import Reversal, Sample, ended
from .recording import note_unrecorded, record_failure
from .stages import Progress, execute, statements_of, validate_stage, verify_stage
from .statements import run_statement_by_statement
from .transactions import left_transaction, roll_back

logger = logging.getLogger("brainmigrate")

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK


class _TransactionEscaped(MigrationExecutionError):
    """A migration ended (or replaced) the transaction brainmigrate ran it in."""


def _escaped(migration_id: str, operation: MigrationOperation, then: str | None) -> _TransactionEscaped:
    done = "applied" if operation == APPLY else "rolled back"
    failed = f" It then failed: {then}." if then else ""
    return _TransactionEscaped(
        f"migration {migration_id!r} ended the transaction brainmigrate ran it in (with COMMIT, ROLLBACK, "
        "PREPARE TRANSACTION or the like, such as conn.execute('COMMIT') in up()), so it could not be "
        f"{done} atomically: PostgreSQL already committed or undid what it had done by then, and ran what "
        f"came after outside that transaction.{failed} It is marked dirty in history, not {done}: inspect "
        "the database, finish or undo its changes by hand, then call "
        f"`await migrator.resolve({migration_id!r}, applied=True)` (or applied=False). Leave transaction "
        "control to brainmigrate (conn.transaction() gives a savepoint), or set transactional = False",
        migration_id=migration_id,
    )


async def _check_still_ours(
    session: RunnerSession,
    conn: Connection,
    xact: int,
    migration_id: str,
    operation: MigrationOperation,
    progress: Progress,
) -> None:
    """Before recording and committing: the authoritative check that the transaction brainmigrate
    opened is still in progress. COMMIT, ROLLBACK or PREPARE TRANSACTION leave none; COMMIT AND
    CHAIN, or BEGIN after them, another one.

    With it, the rest of the transaction is made to run as the pool's session (not as a role the
    migration switched to): reset to it when the session can be, which then needs no reset after
    the commit; a transaction found not to be brainmigrate's is rolled back."""
    if is_usable(conn) and not conn.is_in_transaction():
        ours = False
    elif session.resets_before_commit:
        ours = await session.reset_before_commit(conn, xact)
    else:
        ours = await session.act_as_runner(conn) == xact
    if not ours:
        progress.escaped = True
        raise _escaped(migration_id, operation, None)


@attrs.frozen
class SchemaRunner:
    """Applies or reverses one SQL or Python migration on a runner session's connection, recording
    each attempt (the :class:`~.base.Runner` of the ``sql`` and ``python`` kinds)."""

    ledger: HistoryLedger

    async def describe(self, migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
        return await statements_of(migration, operation)

    async def apply(
        self,
        migration: Migration,
        checksum: str,
        config: MigrationConfig,
        session: RunnerSession,
        *,
        resume: bool,
    ) -> MigrationResult:
        return await self.run(migration, checksum, APPLY, config, session)

    async def check_reversible(self, migration: Migration, checksum: str, session: RunnerSession) -> Reversal:
        meta = migration.metadata
        if not meta.reversible:
            raise IrreversibleMigrationError(meta.id)
        if isinstance(migration, DatabaseSchemaMigration) and not await statements_of(migration, ROLLBACK):
            raise IrreversibleMigrationError(
                meta.id, reason="it declares reversible=True but has no rollback statements"
            )

        async def reverse(config: MigrationConfig, session: RunnerSession) -> MigrationResult:
            return await self.run(migration, checksum, ROLLBACK, config, session)

        return reverse

    async def dry_run(
        self,
        conn: Connection,
        migration: Migration,
        operation: MigrationOperation,
        config: MigrationConfig,
        statements: tuple[str, ...],
    ) -> Sample:
        progress = Progress()
        try:
            await execute(migration, statements, operation, conn, progress)
        except Exception as exc:
            error = self._translate(exc, migration, statements, operation, progress, config)
            if error is None or error is exc:
                raise
            raise error from exc
        return Sample()

    async def stopped_midway(self, conn: Connection, migration: Migration) -> bool:
        return False  # a dirty attempt is resolved by hand, never rolled back

    async def live_workers(self, conn: Connection, migration: Migration) -> int:
        return 0  # a schema migration runs under the runner lock, on no worker

    async def run(
        self,
        migration: Migration,
        checksum: str,
        operation: MigrationOperation,
        config: MigrationConfig,
        session: RunnerSession,
    ) -> MigrationResult:
        """Apply (``MigrationOperation.APPLY``) or reverse (``ROLLBACK``) ``migration``, or raise.

        The runner lock is checked in the statement that writes the history row, before anything is
        committed, so a runner that lost its lock stops. A transactional migration's SQL that would
        end its transaction is refused before anything runs; one that ended it all the same (Python
        code running COMMIT) is found before the commit and recorded dirty, never completed.
        """
        meta = migration.metadata
        span_name = telemetry.SPAN_MIGRATION if operation == APPLY else telemetry.SPAN_ROLLBACK
        with telemetry.migration_span(span_name, meta.id, meta.migration_type, False) as span:
            statements = await statements_of(migration, operation)
            refusal = transaction_control_refusal(migration, statements, rollback=operation != APPLY)
            if refusal is not None:
                raise refusal
            started = now()
            attempt = Attempt(
                migration_id=meta.id,
                name=meta.name,
                migration_type=meta.migration_type,
                version=meta.version,
                checksum=checksum,
                operation=operation,
                status=AttemptStatus.RUNNING,
                applied_after=None,
                started_at=started,
                statement_count=len(statements),
            )
            progress = Progress()
            attempts = 0
            try:
                with anyio.fail_after(config.timeout_seconds):
                    if migration.transactional:
                        async for retry in retrying(config.retry):
                            with retry:
                                attempts += 1
                                span.set_attribute(telemetry.ATTR_ATTEMPT, attempts)
                                progress = Progress()
                                await self._run_in_transaction(
                                    migration, statements, operation, config, attempt, progress, session
                                )
                    else:
                        attempts = 1
                        await run_statement_by_statement(
                            self.ledger, migration, statements, operation, config, attempt, progress, session
                        )
            except BaseException as exc:
                span.set_attribute(telemetry.ATTR_STATUS, MigrationStatus.FAILED.value)
                error = self._translate(exc, migration, statements, operation, progress, config)
                if error is None:
                    raise
                if progress.escaped and not isinstance(error, _TransactionEscaped):  # after a timeout
                    error = _escaped(
                        meta.id,
                        operation,
                        f"it did not finish within timeout_seconds={config.timeout_seconds:g}",
                    )
                if migration.transactional:
                    await record_failure(self.ledger, session, attempt, error, progress)
                if progress.recording_error is not None:
                    note_unrecorded(self.ledger, error, progress.recording_error, migration)
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, str(error))
                if error is exc:
                    raise
                raise error from exc
            finished = now()
            status = MigrationStatus.COMPLETED if operation == APPLY else MigrationStatus.ROLLED_BACK
            span.set_attribute(telemetry.ATTR_STATUS, status.value)
            logger.info(
                "%s %s in %.3f s",
                "applied" if operation == APPLY else "rolled back",
                meta.id,
                (finished - started).total_seconds(),
            )
            return ended(
                meta,
                operation,
                status,
                started,
                finished,
                statements=statements,
                postconditions_passed=progress.postconditions_passed,
                attempts=attempts,
            )

    async def _run_in_transaction(
        self,
        migration: Migration,
        statements: Sequence[str],
        operation: MigrationOperation,
        config: MigrationConfig,
        attempt: Attempt,
        progress: Progress,
        session: RunnerSession,
    ) -> None:
        meta = migration.metadata
        conn = await session.work_connection()
        await validate_stage(migration, operation, config, conn)
        transaction = conn.transaction()
        with telemetry.stage_span(telemetry.STAGE_PREPARE, meta.id):
            await transaction.start()
        xact: int | None = None
        try:
            xact = int(await conn.fetchval(_sql.CURRENT_XACT))
            with telemetry.stage_span(telemetry.STAGE_EXECUTE, meta.id):
                await execute(migration, statements, operation, conn, progress)
            await verify_stage(migration, operation, config, conn, progress)
            with telemetry.stage_span(telemetry.STAGE_COMMIT, meta.id):
                await _check_still_ours(session, conn, xact, meta.id, operation, progress)
                completed = attrs.evolve(
                    attempt,
                    status=AttemptStatus.COMPLETED,
                    applied_after=operation == APPLY,
                    finished_at=now(),
                )
                with progress.writing("its completed row"):
                    await self.ledger.insert(conn, completed, session.lock)
                progress.committing = True
                await transaction.commit()
                session.committed(conn)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if xact is not None and not progress.committing and not progress.escaped:
                    progress.escaped = await left_transaction(conn, xact, after_failure=True)
                await roll_back(conn, transaction, committing=progress.committing)
            if progress.escaped and isinstance(exc, Exception) and not isinstance(exc, _TransactionEscaped):
                raise _escaped(meta.id, operation, reason(exc)) from exc  # never retried
            raise

    def _translate(
        self,
        exc: BaseException,
        migration: Migration,
        statements: Sequence[str],
        operation: MigrationOperation,
        progress: Progress,
        config: MigrationConfig,
    ) -> BrainMigrateError | None:
        """The public error for a failure, or None for what must propagate as it is (cancellation)."""
        meta = migration.metadata
        undone = (
            "the database is as it was before it"
            if migration.transactional
            else "see its history row for what was done and undone"
        )
        if progress.history_write is not None and is_own_failure(exc):  # brainmigrate's own write failed
            verb = "apply" if operation == APPLY else "roll back"
            table = f"{self.ledger.schema}.{_sql.HISTORY_TABLE}"
            if migration.transactional:
                consequence = "the migration was rolled back, so the database is as it was before it"
            elif progress.statement_index is None:
                consequence = "nothing of it ran"
            else:
                consequence = undone
            return execution_error(
                f"could not {verb} migration {meta.id!r}: writing {progress.history_write} to the history "
                f"table {table} failed: {reason(exc)}; {consequence}. Check that table (was it altered by "
                "hand?) and that the database user can insert into and update it, then run again",
                exc,
                migration_id=meta.id,
                statement_index=None if migration.transactional else progress.statement_index,
            )
        return translate(
            exc,
            migration_id=meta.id,
            operation=operation,
            undone=undone,
            timeout_seconds=config.timeout_seconds,
            statements=statements,
            statement_index=progress.statement_index,
            committing=progress.committing,
        )
