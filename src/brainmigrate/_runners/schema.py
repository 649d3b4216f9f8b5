"""The runner of SQL and Python migrations: each runs through the five stages (validate, prepare,
execute, verify, commit), in one transaction or statement by statement, recording each attempt.

It knows nothing of the data engine; dry runs are orchestrated above it (:mod:`.dry_run`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager

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
from .._runtime.steps import GateRefused, now, run_gate
from .._runtime.translate import execution_error, is_own_failure, reason, translate
from .base import Reversal, Sample, ended
from .transactions import left_transaction, roll_back

logger = logging.getLogger("brainmigrate")

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK


async def statements_of(migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
    """The SQL a schema migration runs for ``operation``; empty for Python migrations."""
    if not isinstance(migration, DatabaseSchemaMigration):
        return ()
    if operation == APPLY:
        return tuple(await migration.get_forward_statements())
    return tuple(await migration.get_rollback_statements())


@attrs.define
class _Progress:
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
    progress: _Progress,
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
        progress = _Progress()
        try:
            await _execute(migration, statements, operation, conn, progress)
        except Exception as exc:
            error = self._translate(exc, migration, statements, operation, progress, config)
            if error is None or error is exc:
                raise
            raise error from exc
        return Sample()

    async def stopped_midway(self, conn: Connection, migration: Migration) -> bool:
        return False  # a dirty attempt is resolved by hand, never rolled back

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
            progress = _Progress()
            attempts = 0
            try:
                with anyio.fail_after(config.timeout_seconds):
                    if migration.transactional:
                        async for retry in retrying(config.retry):
                            with retry:
                                attempts += 1
                                span.set_attribute(telemetry.ATTR_ATTEMPT, attempts)
                                progress = _Progress()
                                await self._run_in_transaction(
                                    migration, statements, operation, config, attempt, progress, session
                                )
                    else:
                        attempts = 1
                        await self._run_statement_by_statement(
                            migration, statements, operation, config, attempt, progress, session
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
                    await self._record_failure(session, attempt, error, progress)
                if progress.recording_error is not None:
                    self._note_unrecorded(error, progress.recording_error, migration)
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
        progress: _Progress,
        session: RunnerSession,
    ) -> None:
        meta = migration.metadata
        conn = await session.work_connection()
        await _validate_stage(migration, operation, config, conn)
        transaction = conn.transaction()
        with telemetry.stage_span(telemetry.STAGE_PREPARE, meta.id):
            await transaction.start()
        xact: int | None = None
        try:
            xact = int(await conn.fetchval(_sql.CURRENT_XACT))
            with telemetry.stage_span(telemetry.STAGE_EXECUTE, meta.id):
                await _execute(migration, statements, operation, conn, progress)
            await _verify_stage(migration, operation, config, conn, progress)
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

    async def _run_statement_by_statement(
        self,
        migration: Migration,
        statements: Sequence[str],
        operation: MigrationOperation,
        config: MigrationConfig,
        attempt: Attempt,
        progress: _Progress,
        session: RunnerSession,
    ) -> None:
        """Run statements one by one outside a transaction, leaving a dirty mark until done.

        On failure, a reversible migration's rollback statements are run (with ``enable_rollback``);
        when that cannot be done, the attempt stays dirty so the next run stops and asks.
        """
        meta = migration.metadata
        lock = session.lock
        conn = await session.work_connection()
        await _validate_stage(migration, operation, config, conn)
        with telemetry.stage_span(telemetry.STAGE_PREPARE, meta.id), progress.writing("its running row"):
            async with _as_runner(session, conn):
                attempt_id = await self.ledger.insert(conn, attrs.evolve(attempt, statement_index=0), lock)
        try:
            with telemetry.stage_span(telemetry.STAGE_EXECUTE, meta.id):
                for index, statement in enumerate(statements):
                    progress.statement_index = index
                    with progress.writing(f"its progress (statement {index + 1} of {len(statements)})"):
                        async with _as_runner(session, conn):
                            await self.ledger.mark_statement(conn, attempt_id, index, lock)
                    await conn.execute(statement)
                if not isinstance(migration, DatabaseSchemaMigration):
                    progress.statement_index = 0
                    await _execute(migration, statements, operation, conn, progress)
            await _verify_stage(migration, operation, config, conn, progress)
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
                        await self.ledger.finish(conn, attempt_id, completed, lock)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                try:
                    await self._settle_interrupted(
                        migration, session, attempt, attempt_id, progress, config, exc
                    )
                except Exception as record_exc:  # never in place of the failure itself
                    progress.recording_error = record_exc
            raise

    async def _settle_interrupted(
        self,
        migration: Migration,
        session: RunnerSession,
        attempt: Attempt,
        attempt_id: int,
        progress: _Progress,
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
                    await _execute(migration, undo, ROLLBACK, conn, _Progress())
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
        await self._finish_failed(
            await session.work_connection(), attempt_id, attempt, status, note, exc, progress
        )

    async def _finish_failed(
        self,
        conn: Connection,
        attempt_id: int,
        attempt: Attempt,
        status: AttemptStatus,
        note: str,
        exc: BaseException,
        progress: _Progress,
    ) -> None:
        await self.ledger.finish(
            conn,
            attempt_id,
            attrs.evolve(
                attempt,
                status=status,
                applied_after=None,
                finished_at=now(),
                statement_index=progress.statement_index,
                error=note,
                sqlstate=getattr(exc, "sqlstate", None),
            ),
        )

    async def _record_failure(
        self, session: RunnerSession, attempt: Attempt, error: BrainMigrateError, progress: _Progress
    ) -> None:
        """Write a transactional migration's failed attempt (dirty when it ended its transaction).

        When that write fails too, why is kept in ``progress.recording_error``, never raised in
        place of ``error``.
        """
        cause = error.__cause__
        with anyio.CancelScope(shield=True):
            failed = attrs.evolve(
                attempt,
                status=AttemptStatus.DIRTY if progress.escaped else AttemptStatus.FAILED,
                finished_at=now(),
                statement_index=progress.statement_index,
                error=str(error),
                sqlstate=getattr(error, "sqlstate", None) or getattr(cause, "sqlstate", None),
            )
            try:
                conn = await session.work_connection()
                await self.ledger.insert(conn, failed)
            except Exception as exc:
                progress.recording_error = exc

    def _note_unrecorded(self, error: BrainMigrateError, recording: Exception, migration: Migration) -> None:
        """Say in ``error`` that it could not be recorded in history, why, and what to do.

        The message says so (or, for an error whose arguments are not one message, a note), and
        the recording error is kept as ``error.recording_error``.
        """
        table = f"{self.ledger.schema}.{_sql.HISTORY_TABLE}"
        note = (
            f"this failure could not be recorded in the history table {table}: {reason(recording)}. "
            "Check that table (was it altered by hand?) and that the database user can insert into "
            "and update it"
        )
        if not migration.transactional:
            note += "; until then its history row may still say 'running', so the next run reports it dirty"
        if len(error.args) == 1 and isinstance(error.args[0], str):
            error.args = (f"{error.args[0]}; {note}",)
        else:
            error.add_note(note)
        error.recording_error = recording

    def _translate(
        self,
        exc: BaseException,
        migration: Migration,
        statements: Sequence[str],
        operation: MigrationOperation,
        progress: _Progress,
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


async def _execute(
    migration: Migration,
    statements: Sequence[str],
    operation: MigrationOperation,
    conn: Connection,
    progress: _Progress,
) -> None:
    if isinstance(migration, DatabaseSchemaMigration):
        for index, statement in enumerate(statements):
            progress.statement_index = index
            await conn.execute(statement)
    elif operation == APPLY:
        await migration.up(conn)
    else:
        await migration.down(conn)


async def _validate_stage(
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


async def _verify_stage(
    migration: Migration,
    operation: MigrationOperation,
    config: MigrationConfig,
    conn: Connection,
    progress: _Progress,
) -> None:
    """Stage 4: the postcondition gate, before committing (when applying, with validate_after)."""
    if operation == APPLY and config.validate_after:
        with telemetry.stage_span(telemetry.STAGE_VERIFY, migration.metadata.id):
            progress.postconditions_passed = False
            await run_gate(migration.validate_postconditions, conn, "postconditions", migration.metadata.id)
            progress.postconditions_passed = True
