"""Runs one migration through the five stages: validate, prepare, execute, verify, commit."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import attrs
from opentelemetry.trace import StatusCode

from .._engine.runner import DataRunner
from .._errors import (
    BrainMigrateError,
    MigrationExecutionError,
    MigrationValidationError,
)
from .._ledger import sql as _sql
from .._ledger.history import Attempt, HistoryLedger
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.metadata import MigrationStatus
from .._model.migration import DatabaseSchemaMigration, Migration, transaction_control_refusal
from .._model.results import ItemChange, MigrationResult
from .._model.types import Connection, is_usable
from .._runtime import telemetry as telemetry
from .._runtime.retry import retrying

logger = logging.getLogger("brainmigrate")

APPLY = "apply"
ROLLBACK = "rollback"


def now() -> datetime:
    return datetime.now(UTC)


def _first_line(statement: str) -> str:
    text = statement.strip()
    return text.splitlines()[0] if text else ""


def _reason(exc: BaseException) -> str:
    """What went wrong, for messages: ``[sqlstate] message (detail: ..., hint: ...)`` for PostgreSQL."""
    if not isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    # str() of an asyncpg error already appends DETAIL and HINT lines: take the message alone.
    reason = f"[{getattr(exc, 'sqlstate', None)}] {getattr(exc, 'message', None) or exc}"
    for extra in ("detail", "hint"):
        value = getattr(exc, extra, None)
        if value:
            reason += f" ({extra}: {value})"
    return reason


async def statements_of(migration: Migration, operation: str) -> tuple[str, ...]:
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


class _GateRefused(MigrationValidationError):
    """A validation hook returned False."""


class _TransactionEscaped(MigrationExecutionError):
    """A migration ended (or replaced) the transaction brainmigrate ran it in."""


def _escaped(migration_id: str, operation: str, then: str | None) -> _TransactionEscaped:
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


def _dry_run_escaped(migration_id: str) -> MigrationExecutionError:
    return MigrationExecutionError(
        f"dry run of migration {migration_id!r} ended the dry-run transaction (with COMMIT, ROLLBACK, "
        "RELEASE SAVEPOINT or the like, such as conn.execute('COMMIT') in up()), so what it and the "
        "migrations before it in this dry run did may have been committed, although a dry run must "
        "change nothing. Inspect the database and undo such changes by hand; leave transaction control "
        "to brainmigrate (conn.transaction() gives a savepoint)",
        migration_id=migration_id,
    )


async def _left_transaction(conn: Connection, xact: int, *, after_failure: bool = False) -> bool:
    """Whether the transaction brainmigrate opened (id ``xact``) is no longer the one in progress.

    After a failure the answer is best effort: an aborted transaction answers no query, and is
    taken to be brainmigrate's.
    """
    if not is_usable(conn):
        return False
    if not conn.is_in_transaction():
        return True
    if not after_failure:
        return bool(await conn.fetchval(_sql.CURRENT_XACT) != xact)
    try:
        return bool(await conn.fetchval(_sql.CURRENT_XACT) != xact)
    except Exception:
        return False


async def _roll_back(conn: Connection, transaction: Any, *, committing: bool = False) -> None:
    """End brainmigrate's transaction after a failure, never letting any of it commit.

    After a failed COMMIT the server has ended it already (and asyncpg refuses rollback()); when
    rolling back fails, closing the connection makes the server roll back.
    """
    if not is_usable(conn):
        return
    try:
        if not committing:
            await transaction.rollback()
        elif conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except Exception as exc:
        logger.warning("could not roll back a migration's transaction, closing its connection: %s", exc)
        conn.terminate()


async def _check_still_ours(
    conn: Connection, xact: int, migration_id: str, operation: str, progress: _Progress
) -> None:
    """Before recording and committing: the authoritative check that the transaction brainmigrate
    opened is still in progress. COMMIT, ROLLBACK or PREPARE TRANSACTION leave none; COMMIT AND
    CHAIN, or BEGIN after them, another one."""
    if await _left_transaction(conn, xact):
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
class MigrationExecutor:
    """Applies or reverses one migration on a runner session's connection, recording each attempt.

    Data migrations are run by the :class:`DataRunner`; the executor only dry-runs them.
    """

    ledger: HistoryLedger
    data: DataRunner

    async def run(
        self,
        migration: Migration,
        checksum: str,
        operation: str,
        config: MigrationConfig,
        session: RunnerSession,
    ) -> MigrationResult:
        """Apply (``operation="apply"``) or reverse (``"rollback"``) ``migration``, or raise.

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
                status="running",
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
            return MigrationResult(
                migration_id=meta.id,
                name=meta.name,
                migration_type=meta.migration_type,
                operation=operation,
                status=status,
                started_at=started,
                finished_at=finished,
                duration_seconds=(finished - started).total_seconds(),
                statements=statements,
                postconditions_passed=progress.postconditions_passed,
                attempts=attempts,
            )

    async def _run_in_transaction(
        self,
        migration: Migration,
        statements: Sequence[str],
        operation: str,
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
                await _check_still_ours(conn, xact, meta.id, operation, progress)
                completed = attrs.evolve(
                    attempt, status="completed", applied_after=operation == APPLY, finished_at=now()
                )
                with progress.writing("its completed row"):
                    await session.act_as_runner(conn)  # not as a role the migration switched to
                    await self.ledger.insert(conn, completed, session.lock)
                progress.committing = True
                await transaction.commit()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                if xact is not None and not progress.committing and not progress.escaped:
                    progress.escaped = await _left_transaction(conn, xact, after_failure=True)
                await _roll_back(conn, transaction, committing=progress.committing)
            if progress.escaped and isinstance(exc, Exception) and not isinstance(exc, _TransactionEscaped):
                raise _escaped(meta.id, operation, _reason(exc)) from exc  # never retried
            raise

    async def _run_statement_by_statement(
        self,
        migration: Migration,
        statements: Sequence[str],
        operation: str,
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
                    status="completed",
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
        status = "failed"
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
                    status = "dirty"
                    note += f"; reversing failed too: {type(undo_exc).__name__}: {undo_exc}"
            else:  # the failed statement itself may have left work behind (an INVALID index)
                status = "dirty"
        elif attempt.operation == ROLLBACK and started_any:
            status = "dirty"
        await self._finish_failed(
            await session.work_connection(), attempt_id, attempt, status, note, exc, progress
        )

    async def _finish_failed(
        self,
        conn: Connection,
        attempt_id: int,
        attempt: Attempt,
        status: str,
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
                status="dirty" if progress.escaped else "failed",
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
            f"this failure could not be recorded in the history table {table}: {_reason(recording)}. "
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
        operation: str,
        progress: _Progress,
        config: MigrationConfig,
    ) -> BrainMigrateError | None:
        """The public error for a failure, or None for what must propagate as it is (cancellation)."""
        meta = migration.metadata
        verb = "apply" if operation == APPLY else "roll back"
        undone = (
            "the database is as it was before it"
            if migration.transactional
            else "see its history row for what was done and undone"
        )
        if isinstance(exc, BrainMigrateError):
            return exc
        # The server's statement_timeout is set to timeout_seconds too; whichever fires first.
        server_timeout = isinstance(exc, asyncpg.QueryCanceledError) and "statement timeout" in str(exc)
        if isinstance(exc, TimeoutError) or server_timeout:
            server = f" (the server: {_reason(exc)})" if server_timeout else ""
            return MigrationExecutionError(
                f"could not {verb} migration {meta.id!r} within timeout_seconds={config.timeout_seconds:g}"
                f"{server}; {undone}. Raise MigrationConfig(timeout_seconds=...) or make it faster",
                migration_id=meta.id,
                statement_index=progress.statement_index,
                sqlstate=getattr(exc, "sqlstate", None),
            )
        if not isinstance(exc, Exception):
            return None
        sqlstate = getattr(exc, "sqlstate", None)
        reason = _reason(exc)
        if progress.history_write is not None:  # brainmigrate's own write failed
            table = f"{self.ledger.schema}.{_sql.HISTORY_TABLE}"
            if migration.transactional:
                consequence = "the migration was rolled back, so the database is as it was before it"
            elif progress.statement_index is None:
                consequence = "nothing of it ran"
            else:
                consequence = undone
            return MigrationExecutionError(
                f"could not {verb} migration {meta.id!r}: writing {progress.history_write} to the history "
                f"table {table} failed: {reason}; {consequence}. Check that table (was it altered by "
                "hand?) and that the database user can insert into and update it, then run again",
                migration_id=meta.id,
                statement_index=None if migration.transactional else progress.statement_index,
                sqlstate=sqlstate,
            )
        where = ""
        statement = None
        statement_index = progress.statement_index
        if progress.committing:
            where, statement_index = " when committing it", None
        elif statement_index is not None and statement_index < len(statements):
            statement = statements[statement_index]
            where = f" at statement {statement_index + 1} of {len(statements)} ({_first_line(statement)!r})"
        return MigrationExecutionError(
            f"could not {verb} migration {meta.id!r}{where}: {reason}; {undone}. "
            "Fix the migration and run it again",
            migration_id=meta.id,
            statement_index=statement_index,
            statement=statement,
            sqlstate=sqlstate,
        )

    async def dry_run(
        self, plan: Sequence[tuple[Migration, str]], config: MigrationConfig, session: RunnerSession
    ) -> list[MigrationResult]:
        """Run ``(migration, operation)`` pairs in one transaction that is rolled back.

        Each migration runs in a savepoint; the run stops at the first failure, which is reported in
        its result rather than raised. Non-transactional migrations cannot run inside a transaction:
        they are reported with their statements and marked skipped. Each migration starts from the
        pool's session, and one that ended the dry-run transaction (Python code running COMMIT)
        raises a MigrationExecutionError saying so.
        """
        results: list[MigrationResult] = []
        conn = await session.work_connection()
        transaction = conn.transaction()
        await transaction.start()
        try:
            xact = int(await conn.fetchval(_sql.CURRENT_XACT))
            for index, (migration, operation) in enumerate(plan):
                if index:
                    await self._reset_for_dry_run(session, conn, migration)
                result = await self._dry_run_one(conn, migration, operation, config, xact)
                results.append(result)
                if result.status is MigrationStatus.FAILED:
                    break
        finally:
            with anyio.CancelScope(shield=True):
                await _roll_back(conn, transaction)
        return results

    async def _reset_for_dry_run(
        self, session: RunnerSession, conn: Connection, migration: Migration
    ) -> None:
        """Inside the dry-run transaction (so rolled back with it): the pool's session again."""
        try:
            await session.reset(conn)
        except Exception as exc:
            raise MigrationExecutionError(
                f"could not reset the session before the dry run of migration {migration.metadata.id!r}: "
                f"{_reason(exc)}; nothing of the dry run is kept. Run it again",
                migration_id=migration.metadata.id,
                sqlstate=getattr(exc, "sqlstate", None),
            ) from exc

    async def _dry_run_one(
        self, conn: Connection, migration: Migration, operation: str, config: MigrationConfig, xact: int
    ) -> MigrationResult:
        meta = migration.metadata
        span_name = telemetry.SPAN_MIGRATION if operation == APPLY else telemetry.SPAN_ROLLBACK
        with telemetry.migration_span(span_name, meta.id, meta.migration_type, True) as span:
            statements = await statements_of(migration, operation)
            started = now()
            progress = _Progress()
            status = MigrationStatus.COMPLETED if operation == APPLY else MigrationStatus.ROLLED_BACK
            error: str | None = None
            data_counts = (0, 0, 0)
            changes: list[ItemChange] = []
            refusal = transaction_control_refusal(migration, statements, rollback=operation != APPLY)
            if refusal is not None:
                status, error = MigrationStatus.FAILED, str(refusal)
            elif not migration.transactional:
                status = MigrationStatus.SKIPPED
                error = "not executed: a non-transactional migration cannot run inside a dry-run transaction"
            else:
                savepoint = conn.transaction()
                await savepoint.start()
                try:
                    if operation == APPLY and config.validate_before:
                        await run_gate(migration.validate_preconditions, conn, "preconditions", meta.id)
                    if isinstance(migration, DataMigration):
                        data_counts, changes = await self._sample_data(conn, migration, operation, config)
                    else:
                        await _execute(migration, statements, operation, conn, progress)
                    if operation == APPLY and config.validate_after:
                        progress.postconditions_passed = await _passes(migration, conn)
                        if not progress.postconditions_passed:
                            status = MigrationStatus.FAILED
                            error = "postconditions failed"
                except Exception as exc:
                    translated = self._translate(exc, migration, statements, operation, progress, config)
                    status, error = MigrationStatus.FAILED, str(translated)
                # Releasing the savepoint keeps its work until the outer transaction is rolled back.
                await _end_dry_run_savepoint(
                    conn, savepoint, xact, meta.id, keep=status is not MigrationStatus.FAILED
                )
            span.set_attribute(telemetry.ATTR_STATUS, status.value)
            finished = now()
            return MigrationResult(
                migration_id=meta.id,
                name=meta.name,
                migration_type=meta.migration_type,
                operation=operation,
                status=status,
                dry_run=True,
                started_at=started,
                finished_at=finished,
                duration_seconds=(finished - started).total_seconds(),
                statements=statements,
                postconditions_passed=progress.postconditions_passed,
                error=error,
                items_processed=data_counts[0],
                items_skipped=data_counts[1],
                items_failed=data_counts[2],
                changes=tuple(changes),
            )

    async def _sample_data(
        self, conn: Connection, migration: DataMigration, operation: str, config: MigrationConfig
    ) -> tuple[tuple[int, int, int], list[ItemChange]]:
        """A data migration's dry run: transform a sample (or check it can be reversed); write nothing."""
        plan = await self.data.plan(conn, migration, "")
        if operation != APPLY:
            await self.data.check_reversible(conn, plan)
            return (0, 0, 0), []
        counts, changes = await self.data.sample(conn, plan, config)
        return (counts.processed, counts.skipped, counts.failed), changes


async def _end_dry_run_savepoint(
    conn: Connection, savepoint: Any, xact: int, migration_id: str, *, keep: bool
) -> None:
    """Release (``keep``) or roll back a dry-run migration's savepoint, once sure the dry-run
    transaction is still the one in progress and the savepoint still there."""
    try:
        escaped = await _left_transaction(conn, xact, after_failure=True)
        if not escaped:
            await (savepoint.commit() if keep else savepoint.rollback())
    except Exception as exc:
        if not is_usable(conn):
            raise MigrationExecutionError(
                f"the dry run of migration {migration_id!r} lost its connection ({_reason(exc)}); nothing "
                "of the dry run is kept. Run it again",
                migration_id=migration_id,
            ) from exc
        raise _dry_run_escaped(migration_id) from exc  # a migration released or rolled back past it
    if escaped:
        raise _dry_run_escaped(migration_id)


async def _passes(migration: Migration, conn: Connection) -> bool:
    """The postcondition gate's answer, with an exception counting as False."""
    try:
        return await migration.validate_postconditions(conn) is not False
    except Exception:
        logger.exception("postconditions of %s raised during a dry run", migration.metadata.id)
        return False


async def _execute(
    migration: Migration, statements: Sequence[str], operation: str, conn: Connection, progress: _Progress
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
    migration: Migration, operation: str, config: MigrationConfig, conn: Connection
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
                raise _GateRefused(
                    f"preconditions of migration {migration.metadata.id!r} left a transaction open (they "
                    "ran BEGIN without COMMIT); it was rolled back and the migration was not applied. "
                    "Let validate_preconditions only read",
                    migration_id=migration.metadata.id,
                )


async def _verify_stage(
    migration: Migration, operation: str, config: MigrationConfig, conn: Connection, progress: _Progress
) -> None:
    """Stage 4: the postcondition gate, before committing (when applying, with validate_after)."""
    if operation == APPLY and config.validate_after:
        with telemetry.stage_span(telemetry.STAGE_VERIFY, migration.metadata.id):
            progress.postconditions_passed = False
            await run_gate(migration.validate_postconditions, conn, "postconditions", migration.metadata.id)
            progress.postconditions_passed = True


async def run_gate(hook: Any, conn: Connection, what: str, migration_id: str) -> None:
    """Run a validation hook; False or an exception refuses the migration."""
    try:
        passed = await hook(conn)
    except BrainMigrateError:
        raise
    except Exception as exc:
        raise _GateRefused(
            f"{what} of migration {migration_id!r} raised {type(exc).__name__}: {exc}; it was not applied",
            migration_id=migration_id,
        ) from exc
    if passed is False:
        raise _GateRefused(
            f"{what} of migration {migration_id!r} failed (validate_{what} returned False); "
            "it was not applied",
            migration_id=migration_id,
        )
