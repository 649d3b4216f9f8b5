"""Runs one migration through the five stages: validate, prepare, execute, verify, commit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import attrs
from opentelemetry.trace import StatusCode

from . import _telemetry as telemetry
from ._config import MigrationConfig
from ._data import DataMigration
from ._datarun import DataRunner
from ._errors import (
    BrainMigrateError,
    MigrationExecutionError,
    MigrationValidationError,
)
from ._history import Attempt, HistoryLedger
from ._metadata import MigrationStatus
from ._migration import DatabaseSchemaMigration, Migration
from ._results import ItemChange, MigrationResult
from ._retry import retrying
from ._session import RunnerSession
from ._types import Connection, is_usable

logger = logging.getLogger("brainmigrate")

APPLY = "apply"
ROLLBACK = "rollback"


def now() -> datetime:
    return datetime.now(UTC)


def _first_line(statement: str) -> str:
    text = statement.strip()
    return text.splitlines()[0] if text else ""


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


class _GateRefused(MigrationValidationError):
    """A validation hook returned False."""


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
        committed, so a runner that lost its lock stops.
        """
        meta = migration.metadata
        span_name = telemetry.SPAN_MIGRATION if operation == APPLY else telemetry.SPAN_ROLLBACK
        with telemetry.migration_span(span_name, meta.id, meta.migration_type, False) as span:
            statements = await statements_of(migration, operation)
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
                if migration.transactional:
                    await self._record_failure(session, attempt, error, progress)
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
        try:
            with telemetry.stage_span(telemetry.STAGE_EXECUTE, meta.id):
                await _execute(migration, statements, operation, conn, progress)
            await _verify_stage(migration, operation, config, conn, progress)
            with telemetry.stage_span(telemetry.STAGE_COMMIT, meta.id):
                completed = attrs.evolve(
                    attempt, status="completed", applied_after=operation == APPLY, finished_at=now()
                )
                await self.ledger.insert(conn, completed, session.lock)
                await transaction.commit()
        except BaseException:
            with anyio.CancelScope(shield=True):
                if is_usable(conn):
                    await transaction.rollback()
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
        with telemetry.stage_span(telemetry.STAGE_PREPARE, meta.id):
            attempt_id = await self.ledger.insert(conn, attrs.evolve(attempt, statement_index=0), lock)
        try:
            with telemetry.stage_span(telemetry.STAGE_EXECUTE, meta.id):
                for index, statement in enumerate(statements):
                    progress.statement_index = index
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
                await self.ledger.finish(conn, attempt_id, completed, lock)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._settle_interrupted(migration, session, attempt, attempt_id, progress, config, exc)
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
        cause = error.__cause__
        with anyio.CancelScope(shield=True):
            conn = await session.work_connection()
            failed = attrs.evolve(
                attempt,
                status="failed",
                finished_at=now(),
                statement_index=progress.statement_index,
                error=str(error),
                sqlstate=getattr(error, "sqlstate", None) or getattr(cause, "sqlstate", None),
            )
            await self.ledger.insert(conn, failed)

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
        if isinstance(exc, TimeoutError):
            return MigrationExecutionError(
                f"could not {verb} migration {meta.id!r} within timeout_seconds={config.timeout_seconds:g}; "
                f"{undone}. Raise MigrationConfig(timeout_seconds=...) or make the migration faster",
                migration_id=meta.id,
                statement_index=progress.statement_index,
            )
        if not isinstance(exc, Exception):
            return None
        where = ""
        statement = None
        if progress.statement_index is not None and progress.statement_index < len(statements):
            statement = statements[progress.statement_index]
            where = (
                f" at statement {progress.statement_index + 1} of {len(statements)} "
                f"({_first_line(statement)!r})"
            )
        sqlstate = getattr(exc, "sqlstate", None)
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, asyncpg.PostgresError):
            reason = f"[{sqlstate}] {exc}"
            for extra in ("detail", "hint"):
                value = getattr(exc, extra, None)
                if value:
                    reason += f" ({extra}: {value})"
        return MigrationExecutionError(
            f"could not {verb} migration {meta.id!r}{where}: {reason}; {undone}. "
            "Fix the migration and run it again",
            migration_id=meta.id,
            statement_index=progress.statement_index,
            statement=statement,
            sqlstate=sqlstate,
        )

    async def dry_run(
        self, plan: Sequence[tuple[Migration, str]], config: MigrationConfig, session: RunnerSession
    ) -> list[MigrationResult]:
        """Run ``(migration, operation)`` pairs in one transaction that is rolled back.

        Each migration runs in a savepoint; the run stops at the first failure, which is reported in
        its result rather than raised. Non-transactional migrations cannot run inside a transaction:
        they are reported with their statements and marked skipped.
        """
        results: list[MigrationResult] = []
        conn = await session.work_connection()
        transaction = conn.transaction()
        await transaction.start()
        try:
            for migration, operation in plan:
                result = await self._dry_run_one(conn, migration, operation, config)
                results.append(result)
                if result.status is MigrationStatus.FAILED:
                    break
        finally:
            with anyio.CancelScope(shield=True):
                await transaction.rollback()
        return results

    async def _dry_run_one(
        self, conn: Connection, migration: Migration, operation: str, config: MigrationConfig
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
            if not migration.transactional:
                status = MigrationStatus.SKIPPED
                error = "not executed: a non-transactional migration cannot run inside a dry-run transaction"
            else:
                savepoint = conn.transaction()
                await savepoint.start()
                try:
                    if isinstance(migration, DataMigration):
                        data_counts, changes = await self._sample_data(conn, migration, operation, config)
                    else:
                        if operation == APPLY and config.validate_before:
                            await run_gate(migration.validate_preconditions, conn, "preconditions", meta.id)
                        await _execute(migration, statements, operation, conn, progress)
                    if operation == APPLY and config.validate_after:
                        progress.postconditions_passed = await _passes(migration, conn)
                        if not progress.postconditions_passed:
                            status = MigrationStatus.FAILED
                            error = "postconditions failed"
                except Exception as exc:
                    translated = self._translate(exc, migration, statements, operation, progress, config)
                    status, error = MigrationStatus.FAILED, str(translated)
                    await savepoint.rollback()
                else:
                    if status is MigrationStatus.FAILED:
                        await savepoint.rollback()
                    else:  # releases the savepoint; the outer transaction is rolled back in the end
                        await savepoint.commit()
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
    """Stage 1: the precondition gate, before anything changes (when applying, with validate_before)."""
    if operation == APPLY and config.validate_before:
        with telemetry.stage_span(telemetry.STAGE_VALIDATE, migration.metadata.id):
            await run_gate(migration.validate_preconditions, conn, "preconditions", migration.metadata.id)


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
