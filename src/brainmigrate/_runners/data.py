"""The runner of data migrations: a run's lifecycle around the data engine.

Under the runner lock a run is claimed (started, resumed or joined); its batches run without the
lock, on the engine's workers; then, under the lock again, it is settled: recorded as applied once
its postconditions pass, or failed (and reversed, with ``enable_rollback``), or left resumable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

import anyio
import attrs
from opentelemetry.trace import StatusCode

from .._engine.batches import Counts
from .._engine.plan import RunPlan
from .._engine.reverse import restore_in_ranges
from .._engine.runner import DataRunner, Outcome
from .._errors import (
    BrainMigrateError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationStateError,
    MigrationValidationError,
)
from .._ledger.history import Attempt, HistoryLedger
from .._ledger.session import RunnerSession, runner_session
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.items import Progress, ProgressCallback
from .._model.metadata import MigrationMetadata, MigrationStatus
from .._model.migration import Migration
from .._model.results import MigrationResult
from .._model.states import (
    ACTIVE_RUN_STATUSES,
    RUN_TRANSITIONS,
    AttemptStatus,
    MigrationOperation,
    RunStatus,
    allowed_sources,
)
from .._model.types import Connection, Pool
from .._runtime import telemetry as telemetry
from .._runtime.retry import is_recoverable
from .._runtime.steps import now, run_gate
from .._runtime.translate import data_error, translate
from .base import Deferred, Reversal, Sample, ended, not_run

logger = logging.getLogger("brainmigrate")

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK

#: Statuses of a run whose failed items can be retried.
_RETRYABLE = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


def _data(migration: Migration) -> DataMigration:
    assert isinstance(migration, DataMigration), "the data runner runs data migrations only"
    return migration


@attrs.frozen
class DataMigrationRunner:
    """The :class:`~.base.Runner` of the ``data`` kind."""

    pool: Pool
    ledger: HistoryLedger
    engine: DataRunner
    on_progress: ProgressCallback | None = None

    @property
    def schema(self) -> str:
        return self.ledger.schema

    # -- the runner protocol --------------------------------------------------------------------

    async def describe(self, migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
        return ()

    async def apply(
        self,
        migration: Migration,
        checksum: str,
        config: MigrationConfig,
        session: RunnerSession,
        *,
        resume: bool,
    ) -> MigrationResult | Deferred:
        """Claim a run; its work is returned, to run once the lock is released."""
        migration = _data(migration)
        claim = await self.engine.claim(
            await session.work_connection(),
            migration,
            checksum,
            config,
            resume_paused=resume,
            before_start=self._preconditions(migration, config),
        )
        plan = claim.plan
        if claim.kind == "work" and plan is not None:

            async def work() -> MigrationResult:
                return await self._run(plan, config)

            return work
        status = MigrationStatus.CANCELLED if claim.kind == "paused" else MigrationStatus.RUNNING
        logger.info("data migration %s: %s", migration.metadata.id, claim.note)
        return not_run(migration.metadata, status, claim.note)

    async def check_reversible(self, migration: Migration, checksum: str, session: RunnerSession) -> Reversal:
        migration = _data(migration)
        if not migration.metadata.reversible:
            raise IrreversibleMigrationError(migration.metadata.id)
        conn = await session.work_connection()
        plan = await self.engine.plan(conn, migration, checksum)
        await self.engine.check_reversible(conn, plan)

        async def reverse(config: MigrationConfig, session: RunnerSession) -> MigrationResult:
            return await self._rollback(plan, config, session)

        return reverse

    async def dry_run(
        self,
        conn: Connection,
        migration: Migration,
        operation: MigrationOperation,
        config: MigrationConfig,
        statements: tuple[str, ...],
    ) -> Sample:
        """Sample what the run would do (or check it can be reversed), writing nothing; a failure
        is raised as the public error."""
        try:
            return await self._dry_run(conn, _data(migration), operation, config)
        except Exception as exc:
            error = translate(
                exc,
                migration_id=migration.metadata.id,
                operation=operation,
                undone="the database is as it was before it",
                timeout_seconds=config.timeout_seconds,
            )
            if error is None or error is exc:
                raise
            raise error from exc

    async def _dry_run(
        self,
        conn: Connection,
        migration: DataMigration,
        operation: MigrationOperation,
        config: MigrationConfig,
    ) -> Sample:
        """Transform a sample (or check the run can be reversed)."""
        plan = await self.engine.plan(conn, migration, "")
        if operation != APPLY:
            await self.engine.check_reversible(conn, plan)
            return Sample()
        counts, changes, impact = await self.engine.sample(conn, plan, config)
        return Sample(counts.processed, counts.skipped, counts.failed, tuple(changes), write_impact=impact)

    async def live_workers(self, conn: Connection, migration: Migration) -> int:
        """The workers whose lease on the current run of ``migration`` is live."""
        return await self.engine.live_workers(conn, migration.metadata.id)

    async def stopped_midway(self, conn: Connection, migration: Migration) -> bool:
        """Whether its run stopped midway (failed, cancelled, or its workers all died)."""
        progress = await self.engine.progress(conn, migration.metadata.id)
        return progress is not None and (
            progress.status in (RunStatus.FAILED, RunStatus.CANCELLED)
            or (progress.status in ACTIVE_RUN_STATUSES and not progress.workers)
        )

    # -- retrying failed items --------------------------------------------------------------------

    async def retry_failed(
        self, migration: DataMigration, checksum: str, cfg: MigrationConfig
    ) -> MigrationResult:
        """Run the transform again over the items in the error ledger, and only those."""
        migration_id = migration.metadata.id
        started = now()
        async with runner_session(self.pool, self.schema, cfg) as session:
            conn = await session.work_connection()
            row = await self.engine.run_row(conn, migration_id)
            if row is None or row["status"] not in _RETRYABLE:
                raise MigrationStateError(
                    f"data migration {migration_id!r} has no finished or stopped run whose failed items "
                    "could be retried",
                    migration_id=migration_id,
                )
            plan = await self.engine.plan(conn, migration, checksum)
            counts = await self.engine.retry_failed(conn, plan, cfg)
        return _result(migration.metadata, APPLY, MigrationStatus.COMPLETED, started, counts)

    # -- a run's lifecycle ------------------------------------------------------------------------

    async def _run(self, plan: RunPlan, cfg: MigrationConfig) -> MigrationResult:
        """Work on a claimed data migration without the runner lock, then settle it under the lock."""
        meta = plan.migration.metadata
        started = now()
        with telemetry.migration_span(telemetry.SPAN_MIGRATION, meta.id, meta.migration_type, False) as span:
            try:
                outcome = await self.engine.work(self.pool, plan, cfg, self.on_progress)
            except BaseException as exc:
                error = data_error(exc, meta.id)
                if error is None:
                    raise
                with anyio.CancelScope(shield=True):
                    # After transient failures outlast the retries (the database is unreachable),
                    # reversing would fail or throw away hours of work: the run stays resumable.
                    error = await self._fail(plan, cfg, error, started, reverse=not is_recoverable(exc))
                span.set_attribute(telemetry.ATTR_STATUS, MigrationStatus.FAILED.value)
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, str(error))
                if error is exc:
                    raise
                raise error from exc
            async with runner_session(self.pool, self.schema, cfg) as session:
                result = await self._settle(session, plan, outcome, started, cfg)
            if isinstance(result, BrainMigrateError):  # the postconditions refused the finished run
                with anyio.CancelScope(shield=True):
                    refusal = await self._fail(plan, cfg, result, started)
                span.set_attribute(telemetry.ATTR_STATUS, MigrationStatus.FAILED.value)
                span.set_status(StatusCode.ERROR, str(refusal))
                raise refusal
            span.set_attribute(telemetry.ATTR_STATUS, result.status.value)
            return result

    def _preconditions(
        self, migration: Migration, cfg: MigrationConfig
    ) -> Callable[[Connection], Awaitable[None]] | None:
        """The precondition gate, run before a data migration's first batch (with validate_before)."""
        if not cfg.validate_before:
            return None

        async def gate(conn: Connection) -> None:
            await run_gate(migration.validate_preconditions, conn, "preconditions", migration.metadata.id)

        return gate

    async def _postconditions(self, conn: Connection, plan: RunPlan) -> None:
        """The postcondition gate of a finished run, inside the transaction that records it."""
        meta = plan.migration.metadata
        await run_gate(plan.migration.validate_postconditions, conn, "postconditions", meta.id)

    async def _settle(
        self, session: RunnerSession, plan: RunPlan, outcome: Outcome, started: datetime, cfg: MigrationConfig
    ) -> MigrationResult | BrainMigrateError:
        """Under the lock: record a finished run as applied, or report where it stands.

        A finished run must pass the postcondition gate (with validate_after); when it does not,
        the refusal is returned, to be handled once the lock is released.
        """
        meta = plan.migration.metadata
        conn = await session.work_connection()
        progress = await self.engine.progress(conn, meta.id)
        assert progress is not None
        status = MigrationStatus.RUNNING
        note: str | None = None
        if progress.status in (RunStatus.CANCELLING, RunStatus.CANCELLED):
            if progress.workers == 0:
                await self._set_status(conn, meta.id, RunStatus.CANCELLED)
            status, note = MigrationStatus.CANCELLED, "cancelled at a batch boundary; execute(id) resumes it"
        elif progress.status == RunStatus.FAILED:
            status, note = MigrationStatus.FAILED, progress.error or "failed in another worker"
        elif progress.status == RunStatus.COMPLETED:
            status = MigrationStatus.COMPLETED
        elif await self.engine.chunks_left(conn, meta.id):
            note = f"still running in {progress.workers} other worker(s)"
        else:
            async with conn.transaction():
                if cfg.validate_after:
                    try:
                        await self._postconditions(conn, plan)
                    except MigrationValidationError as refused:
                        return refused
                await session.act_as_runner(conn)  # not as a role the postconditions switched to
                await self.ledger.insert(
                    conn, _attempt(plan, AttemptStatus.COMPLETED, True, progress, started), session.lock
                )
                await self._set_status(conn, meta.id, RunStatus.COMPLETED)
            status = MigrationStatus.COMPLETED
            logger.info(
                "applied data migration %s: %d written, %d skipped, %d failed",
                meta.id,
                progress.processed,
                progress.skipped,
                progress.failed,
            )
        return _result(meta, APPLY, status, started, outcome.counts, note)

    async def _set_status(
        self, conn: Connection, migration_id: str, status: RunStatus, error: str | None = None
    ) -> str | None:
        """Move the run to ``status`` from any status the transition table allows it from."""
        allowed = allowed_sources(RUN_TRANSITIONS, status)
        return await self.engine.set_status(conn, migration_id, status, allowed, error)

    async def _fail(
        self,
        plan: RunPlan,
        cfg: MigrationConfig,
        error: BrainMigrateError,
        started: datetime,
        *,
        reverse: bool = True,
    ) -> BrainMigrateError:
        """After a failed run: reverse it (with ``enable_rollback``) or leave it resumable; record it."""
        meta = plan.migration.metadata
        message = str(error)
        async with runner_session(self.pool, self.schema, cfg) as session:
            conn = await session.work_connection()
            if await self._set_status(conn, meta.id, RunStatus.FAILED, message) is None:
                # The run ended meanwhile (another runner completed or reversed it, after this one
                # lost its lease): it is theirs, and left exactly as they left it.
                progress = await self.engine.progress(conn, meta.id)
                ended_as = progress.status.value if progress is not None else "gone"
                message += (
                    f"; meanwhile another runner took its work over and the run is {ended_as}, so "
                    "this runner left it as it is"
                )
                return _retyped(error, message, meta.id)
            if reverse and cfg.enable_rollback and plan.reverse is not None:
                if await self.engine.live_workers(conn, meta.id):
                    message += "; not reversed, because other workers are still running it"
                else:
                    try:
                        await self.engine.check_reversible(conn, plan)
                        async with conn.transaction():
                            restored = await self.engine.reverse(conn, plan, cfg)
                            await self.engine.discard(conn, plan, RunStatus.ROLLED_BACK, message)
                        message += f"; its writes were reversed ({restored} rows restored)"
                    except Exception as undo:
                        logger.exception("reversing data migration %s failed", meta.id)
                        message += f"; reversing it failed too ({type(undo).__name__}: {undo})"
            else:
                message += "; it can be resumed from its last checkpoint: run it again"
            progress = await self.engine.progress(conn, meta.id)
            failed = attrs.evolve(
                _attempt(plan, AttemptStatus.FAILED, None, progress, started), error=message
            )
            await self.ledger.insert(conn, failed)
        return _retyped(error, message, meta.id)

    async def _rollback(self, plan: RunPlan, cfg: MigrationConfig, session: RunnerSession) -> MigrationResult:
        """Restore what a data migration changed and record it, in one transaction (large
        before-image tables restored in key ranges first: see :func:`restore_in_ranges`)."""
        meta = plan.migration.metadata
        started = now()
        with telemetry.migration_span(telemetry.SPAN_ROLLBACK, meta.id, meta.migration_type, False):
            conn = await session.work_connection()
            restored = await restore_in_ranges(self.pool, conn, self.engine.state, plan, cfg)
            async with conn.transaction():
                restored += await self.engine.reverse(conn, plan, cfg)
                await self.engine.discard(conn, plan, RunStatus.ROLLED_BACK)
                attempt = attrs.evolve(
                    _attempt(plan, AttemptStatus.COMPLETED, False, None, started),
                    operation=ROLLBACK,
                    started_at=started,
                )
                await self.ledger.insert(conn, attempt, session.lock)
        logger.info("rolled back data migration %s: %d rows restored", meta.id, restored)
        return _result(meta, ROLLBACK, MigrationStatus.ROLLED_BACK, started, Counts(processed=restored))


def _attempt(
    plan: RunPlan, status: AttemptStatus, applied: bool | None, progress: Progress | None, started: datetime
) -> Attempt:
    meta = plan.migration.metadata
    error = None
    if progress is not None and progress.failed:
        error = f"{progress.failed} items failed; see Migrator.failed_items({meta.id!r})"
    return Attempt(
        migration_id=meta.id,
        name=meta.name,
        migration_type=meta.migration_type,
        version=meta.version,
        checksum=plan.checksum,
        operation=APPLY,
        status=status,
        applied_after=applied,
        started_at=progress.started_at if progress is not None else started,
        finished_at=now(),
        error=error,
    )


def _result(
    meta: MigrationMetadata,
    operation: MigrationOperation,
    status: MigrationStatus,
    started: datetime,
    counts: Counts,
    error: str | None = None,
) -> MigrationResult:
    """How a data migration's run (or rollback, or retry of failed items) ended, with its counts."""
    return ended(
        meta,
        operation,
        status,
        started,
        now(),
        error=error,
        items_processed=counts.processed,
        items_skipped=counts.skipped,
        items_failed=counts.failed,
    )


def _retyped(error: BrainMigrateError, message: str, migration_id: str) -> BrainMigrateError:
    """``error`` as the same kind of error, saying ``message``."""
    if isinstance(error, MigrationExecutionError):
        return MigrationExecutionError(
            message,
            migration_id=migration_id,
            statement_index=error.statement_index,
            statement=error.statement,
            sqlstate=error.sqlstate,
            detail=error.detail,
            hint=error.hint,
        )
    if isinstance(error, MigrationValidationError):
        return MigrationValidationError(message, migration_id=migration_id)
    return error
