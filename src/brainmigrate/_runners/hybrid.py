"""The runner of hybrid migrations: expand, backfill, validate and contract, step by step.

Each step runs through the runner of its own kind, exactly as it would on its own: a schema step
under the runner lock, a backfill step claimed under the lock, its batches run without it
(checkpointed, leased, resumable) and settled under it again. The hybrid's phase is kept in
``hybrid_runs``; each step's history row (written with the step's work, carrying the hybrid and the
phase) says which steps are done. Every move is one short hold of the runner lock that reads the
run as it stands, so a runner killed at any point leaves a run the next one carries on, and
runners of several processes never apply a step twice.

A failure before contract compensates: the completed steps are rolled back in reverse order.
Contract never starts unless validation passed, and once started it is never compensated, only
carried on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime

import anyio
import attrs
from opentelemetry.trace import StatusCode

from .._errors import (
    BrainMigrateError,
    HybridPhaseError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationLockLost,
    MigrationStateError,
    MigrationValidationError,
)
from .._ledger.connect import connection
from .._ledger.history import Attempt, HistoryLedger, MigrationState, hybrid_step
from .._ledger.hybrid import HybridLedger, HybridRun
from .._ledger.session import RunnerSession, runner_session
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration, HybridStep
from .._model.items import Progress
from .._model.metadata import MigrationStatus
from .._model.migration import Migration, MigrationKind
from .._model.results import ItemChange, MigrationResult
from .._model.states import (
    HYBRID_BEFORE_CONTRACT,
    HYBRID_ENDED,
    AttemptStatus,
    HybridPhase,
    MigrationOperation,
)
from .._model.types import Connection, Pool
from .._runtime import telemetry as telemetry
from .._runtime.retry import is_recoverable
from .._runtime.steps import now
from .._runtime.translate import reason
from .base import Deferred, Reversal, Runners, Sample, ended, not_run

logger = logging.getLogger("brainmigrate")

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK

#: The phase that follows a phase of steps once all its steps are done.
_AFTER = {
    HybridPhase.EXPANDING: HybridPhase.BACKFILLING,
    HybridPhase.BACKFILLING: HybridPhase.VALIDATING,
}


def _hybrid(migration: Migration) -> HybridMigration:
    assert isinstance(migration, HybridMigration), "the hybrid runner runs hybrid migrations only"
    return migration


def _applied(states: Mapping[str, MigrationState], step: HybridStep) -> bool:
    state = states.get(step.id)
    return state is not None and state.applied


def _amend(error: BrainMigrateError, note: str) -> None:
    """Add ``note`` to ``error``'s message (or, for an error whose arguments are not one message,
    as a note); the error stays the same object, its cause chained as it was."""
    if len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}; {note}",)
    else:
        error.add_note(note)


def ready_note(hybrid_id: str) -> str:
    return (
        f"hybrid {hybrid_id!r} is expanded, backfilled and validated, and waits at READY_TO_CONTRACT "
        f"(contract_mode='manual'): deploy the code that no longer needs the old layout, then "
        f"`await migrator.contract({hybrid_id!r})`"
    )


#: Work a move leaves to do without the runner lock (a backfill step's batches, the gate).
_Unlocked = Callable[[], Awaitable[None]]


def _stopped(hybrid_id: str, exc: BaseException) -> MigrationExecutionError:
    """The public error for a failure of brainmigrate's own bookkeeping of a hybrid (the driver's
    error, to be chained)."""
    return MigrationExecutionError(
        f"hybrid migration {hybrid_id!r} stopped: recording its progress failed ({reason(exc)}); its "
        "run is left as it stands, and the next run carries it on from there. Check the tables of "
        "brainmigrate's schema and the database user's privileges on them",
        migration_id=hybrid_id,
        sqlstate=getattr(exc, "sqlstate", None),
    )


class _Stop(Exception):
    """Internal: the drive ends with this result (the run stopped, paused, or was finished)."""

    def __init__(self, result: MigrationResult) -> None:
        super().__init__(result.error or result.status.value)
        self.result = result


@attrs.frozen
class HybridRunner:
    """The :class:`~.base.Runner` of the ``hybrid`` kind; ``steps`` runs the steps' kinds, and
    ``progress`` reads a data step's progress (the data engine's, which this runner knows only
    through it)."""

    pool: Pool
    ledger: HistoryLedger
    steps: Runners
    progress: Callable[[Connection, str], Awaitable[Progress | None]]

    @property
    def schema(self) -> str:
        return self.ledger.schema

    @property
    def runs(self) -> HybridLedger:
        return HybridLedger(self.schema)

    # -- the runner protocol --------------------------------------------------------------------

    async def describe(self, migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
        steps = _hybrid(migration).steps
        ordered = steps if operation == APPLY else tuple(reversed(steps))
        statements: list[str] = []
        for step in ordered:
            statements += await self.steps.of(step.migration).describe(step.migration, operation)
        return tuple(statements)

    async def apply(
        self,
        migration: Migration,
        checksum: str,
        config: MigrationConfig,
        session: RunnerSession,
        *,
        resume: bool,
    ) -> MigrationResult | Deferred:
        """Under the runner lock: start a run (or find the one to carry on); its phases are returned,
        to run step by step, each taking the lock as its kind needs."""
        hybrid = _hybrid(migration)
        meta = hybrid.metadata
        conn = await session.work_connection()
        run = await self.runs.latest(conn, meta.id)
        if run is None or run.phase in HYBRID_ENDED:
            run = await self.runs.start(conn, meta.id, checksum)
            logger.info("hybrid migration %s: started (expanding)", meta.id)
        elif run.phase is HybridPhase.FAILED:
            raise self._stuck(run)
        elif run.phase is HybridPhase.READY_TO_CONTRACT and type(hybrid).contract_mode == "manual":
            return not_run(meta, MigrationStatus.RUNNING, ready_note(meta.id))

        async def drive() -> MigrationResult:
            return await self._drive(hybrid, checksum, config, resume=resume, contract=False)

        return drive

    async def check_reversible(self, migration: Migration, checksum: str, session: RunnerSession) -> Reversal:
        """Refuse unless every step to undo can be undone; after contract started, every contract
        step must be reversible."""
        hybrid = _hybrid(migration)
        meta = hybrid.metadata
        if not meta.reversible:
            raise IrreversibleMigrationError(meta.id)
        conn = await session.work_connection()
        run = await self.runs.latest(conn, meta.id)
        if run is None or run.phase in HYBRID_ENDED:
            raise MigrationStateError(
                f"hybrid migration {meta.id!r} has no run to roll back", migration_id=meta.id
            )
        states = await self.ledger.states(session.lock.conn)
        contracted = run.phase in (HybridPhase.CONTRACTING, HybridPhase.COMPLETED)
        for step in reversed(hybrid.steps):
            runner = self.steps.of(step.migration)
            due = _applied(states, step) or await runner.stopped_midway(session.lock.conn, step.migration)
            if not due and not (contracted and step.phase is HybridPhase.CONTRACTING):
                continue
            try:
                await runner.check_reversible(step.migration, await step.migration.checksum(), session)
            except IrreversibleMigrationError as exc:
                if step.phase is HybridPhase.CONTRACTING:
                    why = (
                        f"its contract has started, and contract step {step.id!r} is not reversible "
                        f"({exc.reason}); a hybrid can be rolled back after contract only when every "
                        "contract step is"
                    )
                else:
                    why = f"its {step.attribute} step {step.id!r} is not reversible ({exc.reason})"
                raise IrreversibleMigrationError(meta.id, reason=why) from exc

        async def reverse(config: MigrationConfig, session: RunnerSession) -> MigrationResult:
            return await self._rollback(hybrid, checksum, config, session)

        return reverse

    async def dry_run(
        self,
        conn: Connection,
        migration: Migration,
        operation: MigrationOperation,
        config: MigrationConfig,
        statements: tuple[str, ...],
    ) -> Sample:
        """Each step's dry run in turn, inside the caller's savepoint (a backfill's sample writes
        nothing, so validation is not evaluated); non-transactional steps are left out."""
        hybrid = _hybrid(migration)
        if operation != APPLY:
            for step in hybrid.steps:
                if not step.migration.metadata.reversible:
                    raise IrreversibleMigrationError(
                        hybrid.metadata.id, reason=f"its {step.attribute} step {step.id!r} is not reversible"
                    )
            return Sample()
        processed = skipped = failed = 0
        changes: list[ItemChange] = []
        for step in hybrid.steps:
            if not step.migration.transactional:
                continue
            runner = self.steps.of(step.migration)
            sample = await runner.dry_run(
                conn, step.migration, APPLY, config, await runner.describe(step.migration, APPLY)
            )
            processed, skipped, failed = (
                processed + sample.processed,
                skipped + sample.skipped,
                failed + sample.failed,
            )
            changes += sample.changes
        return Sample(processed, skipped, failed, tuple(changes))

    async def stopped_midway(self, conn: Connection, migration: Migration) -> bool:
        """Whether a run of it is in progress or stopped before completing (a rollback undoes it)."""
        run = await self.runs.latest(conn, migration.metadata.id)
        return run is not None and run.phase not in (*HYBRID_ENDED, HybridPhase.COMPLETED)

    # -- contract, by hand -----------------------------------------------------------------------

    async def contract(
        self, migration: Migration, checksum: str, config: MigrationConfig, session: RunnerSession
    ) -> Deferred:
        """Under the runner lock: refuse unless the backfill is finished and validated; else the
        contract phase, to run step by step."""
        hybrid = _hybrid(migration)
        meta = hybrid.metadata
        conn = await session.work_connection()
        run = await self.runs.latest(conn, meta.id)
        if run is None or run.phase not in (HybridPhase.READY_TO_CONTRACT, HybridPhase.CONTRACTING):
            raise await self._not_ready(conn, hybrid, run)
        if run.phase is HybridPhase.READY_TO_CONTRACT:
            await self.runs.move(conn, run, HybridPhase.CONTRACTING, operation="contract")
            logger.info("hybrid migration %s: contracting", meta.id)

        async def drive() -> MigrationResult:
            return await self._drive(hybrid, checksum, config, resume=False, contract=True)

        return drive

    async def _not_ready(
        self, conn: Connection, hybrid: HybridMigration, run: HybridRun | None
    ) -> BrainMigrateError:
        """Why contract() is refused in the phase the run is in, and what to do."""
        hid = hybrid.metadata.id
        if run is None or run.phase in HYBRID_ENDED:
            return HybridPhaseError(
                f"cannot contract hybrid migration {hid!r}: it has not run its expand and backfill "
                f"yet{'' if run is None else f' (its last run was {run.phase.value})'}; "
                "`await migrator.run_pending()` (or execute(id)) runs them, then validates",
                migration_id=hid,
                phase=None if run is None else run.phase.value,
            )
        phase = run.phase
        if phase in (HybridPhase.EXPANDING, HybridPhase.BACKFILLING):
            where = ""
            if run.current_step is not None:
                where = f", at step {run.current_step!r}"
                progress = await self.progress(conn, run.current_step)
                if progress is not None and phase is HybridPhase.BACKFILLING:
                    total = "?" if progress.total is None else str(progress.total)
                    where += f" ({progress.processed} of {total} items, {progress.status.value})"
            return HybridPhaseError(
                f"cannot contract hybrid migration {hid!r}: its backfill is unfinished (phase "
                f"{phase.value}{where}); contract runs only once every backfill step is finished and "
                "validated. Let run_pending() (or execute(id)) finish it, then call contract() again",
                migration_id=hid,
                phase=phase.value,
            )
        if phase is HybridPhase.VALIDATING:
            return HybridPhaseError(
                f"cannot contract hybrid migration {hid!r}: its backfill has not passed validation "
                "yet (phase validating); run_pending() (or execute(id)) validates it, then call "
                "contract() again",
                migration_id=hid,
                phase=phase.value,
            )
        if phase is HybridPhase.COMPLETED:
            return HybridPhaseError(
                f"hybrid migration {hid!r} is already completed; there is nothing to contract",
                migration_id=hid,
                phase=phase.value,
            )
        return HybridPhaseError(
            f"cannot contract hybrid migration {hid!r}: it is {phase.value}"
            + (f" ({run.error})" if run.error else "")
            + "; contract follows a validated backfill only",
            migration_id=hid,
            phase=phase.value,
        )

    # -- the phases ------------------------------------------------------------------------------

    async def _drive(
        self, hybrid: HybridMigration, checksum: str, cfg: MigrationConfig, *, resume: bool, contract: bool
    ) -> MigrationResult:
        """Carry the run on, one move per hold of the runner lock, until it ends or stops."""
        meta = hybrid.metadata
        started = now()
        counts = [0, 0, 0]  # items processed, skipped, failed by this process's backfill
        with telemetry.migration_span(telemetry.SPAN_MIGRATION, meta.id, meta.migration_type, False) as span:
            try:
                while True:
                    async with runner_session(self.pool, self.schema, cfg) as session:
                        work = await self._advance(
                            session, hybrid, cfg, counts, resume=resume, contract=contract
                        )
                    if work is not None:
                        await work()
            except _Stop as stop:
                result = attrs.evolve(
                    stop.result,
                    started_at=started,
                    finished_at=now(),
                    duration_seconds=(now() - started).total_seconds(),
                    items_processed=counts[0],
                    items_skipped=counts[1],
                    items_failed=counts[2],
                )
                span.set_attribute(telemetry.ATTR_STATUS, result.status.value)
                return result
            except Exception as exc:
                error = exc if isinstance(exc, BrainMigrateError) else _stopped(meta.id, exc)
                span.set_attribute(telemetry.ATTR_STATUS, MigrationStatus.FAILED.value)
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, str(error))
                if error is exc:
                    raise
                raise error from exc

    async def _advance(
        self,
        session: RunnerSession,
        hybrid: HybridMigration,
        cfg: MigrationConfig,
        counts: list[int],
        *,
        resume: bool,
        contract: bool,
    ) -> _Unlocked | None:
        """Under the runner lock: read the run as it stands and make its next move. Returns a
        backfill step's batches or the gate, to run without the lock; raises _Stop when the drive
        ends here."""
        meta = hybrid.metadata
        conn = await session.work_connection()
        run = await self.runs.latest(conn, meta.id)
        if run is None:  # pragma: no cover - apply() started it under the lock
            raise MigrationStateError(f"hybrid migration {meta.id!r} has no run", migration_id=meta.id)
        phase = run.phase
        if phase in HYBRID_ENDED:
            status = (
                MigrationStatus.ROLLED_BACK if phase is HybridPhase.ROLLED_BACK else MigrationStatus.SKIPPED
            )
            note = f"hybrid {meta.id!r} was {phase.value} by another runner" + (
                f": {run.error}" if run.error else ""
            )
            raise _Stop(not_run(meta, status, note))
        if phase is HybridPhase.FAILED:
            raise self._stuck(run)
        if phase is HybridPhase.COMPLETED:
            raise _Stop(ended(meta, APPLY, MigrationStatus.COMPLETED, run.started_at, now()))
        if phase is HybridPhase.COMPENSATING:  # a compensation a killed runner left midway
            raise await self._compensate(
                session,
                hybrid,
                run,
                cfg,
                MigrationExecutionError(
                    f"hybrid migration {meta.id!r} was compensating when its runner stopped"
                    + (f" (after: {run.error})" if run.error else ""),
                    migration_id=meta.id,
                ),
            )
        states = await self.ledger.states(session.lock.conn)
        if phase is HybridPhase.VALIDATING:

            async def gate() -> None:
                await self._validate(hybrid, run, cfg, contract=contract)

            return gate
        if phase is HybridPhase.READY_TO_CONTRACT:
            if type(hybrid).contract_mode == "manual" and not contract:
                raise _Stop(not_run(meta, MigrationStatus.RUNNING, ready_note(meta.id)))
            await self.runs.move(conn, run, HybridPhase.CONTRACTING, operation="contract")
            return None
        # EXPANDING, BACKFILLING or CONTRACTING: the next step not applied, or the next phase.
        step = next((s for s in hybrid.steps_of(phase) if not _applied(states, s)), None)
        if step is None:
            if phase is HybridPhase.CONTRACTING:
                await self._complete(session, hybrid, run)
                raise _Stop(ended(meta, APPLY, MigrationStatus.COMPLETED, run.started_at, now()))
            moved = await self.runs.move(conn, run, _AFTER[phase], operation="advance")
            logger.info("hybrid migration %s: %s", meta.id, moved.phase.value)
            return None
        state = states.get(step.id)
        if state is not None and state.dirty:
            raise HybridPhaseError(
                f"step {step.id!r} of hybrid migration {meta.id!r} ({step.attribute}) is dirty: it was "
                "interrupted midway. Inspect the database, then `await migrator.resolve("
                f"{step.id!r}, applied=True)` (or applied=False) and run again",
                migration_id=meta.id,
                phase=phase.value,
            )
        await self.runs.at_step(conn, run, step.id)
        if run.error is not None:
            await self.runs.note_error(conn, run, None)
        runner = self.steps.of(step.migration)
        try:
            with hybrid_step(step.id, meta.id, phase.value):
                outcome = await runner.apply(
                    step.migration, await step.migration.checksum(), cfg, session, resume=resume
                )
        except (MigrationExecutionError, MigrationValidationError) as error:
            raise await self._step_failed(session, hybrid, run, step, error, cfg) from error.__cause__
        if not isinstance(outcome, MigrationResult):
            deferred = outcome

            async def batches() -> None:
                await self._backfill(hybrid, step, deferred, cfg, counts)

            return batches
        if outcome.status is not MigrationStatus.COMPLETED:
            raise _Stop(self._step_stopped(hybrid, step, outcome))
        return None

    async def _backfill(
        self,
        hybrid: HybridMigration,
        step: HybridStep,
        work: Deferred,
        cfg: MigrationConfig,
        counts: list[int],
    ) -> None:
        """A backfill step's batches, without the runner lock (its runner settles it under the lock)."""
        meta = hybrid.metadata
        try:
            with hybrid_step(step.id, meta.id, step.phase.value):
                result = await work()
        except (MigrationExecutionError, MigrationValidationError) as error:
            # Compensation is not shielded from cancellation: cancelled, the run stays
            # COMPENSATING, and the next runner finishes it.
            async with runner_session(self.pool, self.schema, cfg) as session:
                run = await self.runs.latest(await session.work_connection(), meta.id)
                assert run is not None
                failure = await self._step_failed(session, hybrid, run, step, error, cfg)
            raise failure from error.__cause__
        counts[0] += result.items_processed
        counts[1] += result.items_skipped
        counts[2] += result.items_failed
        if result.status is not MigrationStatus.COMPLETED:
            raise _Stop(self._step_stopped(hybrid, step, result))

    def _step_stopped(
        self, hybrid: HybridMigration, step: HybridStep, result: MigrationResult
    ) -> MigrationResult:
        """The hybrid's result when a step neither completed nor failed (running elsewhere, paused)."""
        hid = hybrid.metadata.id
        note = f"{step.attribute} step {step.id!r}: {result.error or result.status.value}"
        if result.status is MigrationStatus.CANCELLED:
            note += f"; `await migrator.execute({hid!r})` resumes the hybrid"
        return not_run(hybrid.metadata, result.status, note)

    async def _validate(
        self, hybrid: HybridMigration, run: HybridRun, cfg: MigrationConfig, *, contract: bool
    ) -> None:
        """The gate before contract, without the runner lock (a long check holds up no runner):
        every backfill step applied with no failed item, and ``validate_backfill`` true, in a
        read-only transaction that is rolled back. Its verdict is then recorded under the lock, if
        the run is still validating; a refusal compensates."""
        meta = hybrid.metadata
        problem: str | None = None
        async with connection(self.pool, cfg.lock_wait_seconds) as conn:
            states = await self.ledger.states(conn)
            for step in hybrid.steps_of(HybridPhase.BACKFILLING):
                if not _applied(states, step):
                    problem = f"backfill step {step.id!r} is not applied"
                    break
                if step.migration.kind in (MigrationKind.DATA, MigrationKind.STRUCTURE):
                    progress = await self.progress(conn, step.id)
                    if progress is not None and progress.failed:
                        problem = (
                            f"backfill step {step.id!r} left {progress.failed} failed items (see "
                            f"Migrator.failed_items({step.id!r}))"
                        )
                        break
            if problem is None:
                transaction = conn.transaction(readonly=True)
                await transaction.start()
                try:
                    if await hybrid.validate_backfill(conn) is False:
                        problem = "validate_backfill returned False"
                except Exception as exc:
                    problem = f"validate_backfill raised {reason(exc)}"
                finally:
                    with anyio.CancelScope(shield=True):
                        await transaction.rollback()
        async with runner_session(self.pool, self.schema, cfg) as session:
            work = await session.work_connection()
            current = await self.runs.latest(work, meta.id)
            if current is None or current.run_id != run.run_id or current.phase is not HybridPhase.VALIDATING:
                return  # another runner recorded a verdict meanwhile: the next move reads it
            if problem is not None:
                refusal = MigrationValidationError(
                    f"hybrid migration {meta.id!r} failed validation before contract: {problem}; "
                    "contract did not start",
                    migration_id=meta.id,
                )
                raise await self._compensate(session, hybrid, current, cfg, refusal)
            manual = type(hybrid).contract_mode == "manual" and not contract
            target = HybridPhase.READY_TO_CONTRACT if manual else HybridPhase.CONTRACTING
            await self.runs.move(work, current, target, operation="validate")
            logger.info("hybrid migration %s: validated, %s", meta.id, target.value)
        if manual:
            raise _Stop(not_run(meta, MigrationStatus.RUNNING, ready_note(meta.id)))

    async def _complete(self, session: RunnerSession, hybrid: HybridMigration, run: HybridRun) -> None:
        """Record the hybrid as applied, with its phase COMPLETED, in one transaction."""
        conn = await session.work_connection()
        async with conn.transaction():
            await self.runs.move(conn, run, HybridPhase.COMPLETED, operation="complete")
            await self.ledger.insert(
                conn,
                self._attempt(hybrid, run, APPLY, AttemptStatus.COMPLETED, True, HybridPhase.COMPLETED),
                session.lock,
            )
        logger.info("applied hybrid migration %s", hybrid.metadata.id)

    def _attempt(
        self,
        hybrid: HybridMigration,
        run: HybridRun,
        operation: MigrationOperation,
        status: AttemptStatus,
        applied: bool | None,
        phase: HybridPhase,
        *,
        started: datetime | None = None,
        error: str | None = None,
        actor: str | None = None,
        why: str | None = None,
    ) -> Attempt:
        meta = hybrid.metadata
        return Attempt(
            migration_id=meta.id,
            name=meta.name,
            migration_type=meta.migration_type,
            version=meta.version,
            checksum=run.checksum,
            operation=operation,
            status=status,
            applied_after=applied,
            started_at=started or run.started_at,
            finished_at=now(),
            error=error,
            hybrid_id=meta.id,
            hybrid_phase=phase.value,
            actor=actor,
            reason=why,
        )

    # -- failures and compensation ---------------------------------------------------------------

    async def _step_failed(
        self,
        session: RunnerSession,
        hybrid: HybridMigration,
        run: HybridRun,
        step: HybridStep,
        error: BrainMigrateError,
        cfg: MigrationConfig,
    ) -> BrainMigrateError:
        """A step failed: before contract, compensate; in contract, keep the run to carry on.

        A failure of the database itself (unreachable after the retries) is not the step's: the
        run is left as it is, to carry on when the database is back.
        """
        hid = hybrid.metadata.id
        conn = await session.work_connection()
        where = f"{step.attribute} step {step.id!r} of hybrid migration {hid!r} failed"
        if run.phase not in HYBRID_BEFORE_CONTRACT or is_recoverable(error.__cause__ or error):
            then = (
                "contract is never compensated: the next run carries it on from this step; fix the "
                "cause and run again"
                if run.phase is HybridPhase.CONTRACTING
                else "the database did not answer, so nothing was compensated: the next run carries "
                "the hybrid on from this step"
            )
            _amend(error, f"{where}; {then}")
            await self._noted(conn, run, str(error), error)
            return error
        _amend(error, where)
        return await self._compensate(session, hybrid, run, cfg, error)

    async def _noted(self, conn: Connection, run: HybridRun, text: str, error: BrainMigrateError) -> None:
        """Record why the run stopped; when that fails too, say so in ``error``, never in its place."""
        with anyio.CancelScope(shield=True):
            try:
                await self.runs.note_error(conn, run, text)
            except Exception as exc:
                self._unrecorded(error, exc)

    def _unrecorded(self, error: BrainMigrateError, exc: Exception) -> None:
        table = f"{self.schema}.hybrid_runs"
        _amend(
            error,
            f"this could not be recorded in {table}: {reason(exc)}; check that table and the "
            "database user's privileges on it",
        )
        error.recording_error = exc

    async def _compensate(
        self,
        session: RunnerSession,
        hybrid: HybridMigration,
        run: HybridRun,
        cfg: MigrationConfig,
        error: BrainMigrateError,
    ) -> BrainMigrateError:
        """Roll the completed steps back in reverse order; return ``error`` saying how that went.

        Compensated, the run is ROLLED_BACK; when a step's rollback fails, the run is left FAILED
        naming it, and that failure is kept as ``error.compensation_error``.
        """
        hid = hybrid.metadata.id
        conn = await session.work_connection()
        try:
            if run.phase is not HybridPhase.COMPENSATING:
                run = await self.runs.move(
                    conn, run, HybridPhase.COMPENSATING, operation="compensate", error=str(error)
                )
            logger.warning("hybrid migration %s: compensating after: %s", hid, error)
            undone, failure = await self._undo(session, hybrid, run, cfg, HybridPhase.COMPENSATING)
        except Exception as exc:  # interrupted (the lock or the database lost): the next runner goes on
            error.compensation_error = exc
            _amend(
                error,
                f"compensating hybrid {hid!r} was interrupted ({reason(exc)}); it stays COMPENSATING, "
                "and the next run finishes the compensation",
            )
            return error
        rolled = ", ".join(repr(s) for s in undone) or "no step had completed"
        conn = await session.work_connection()
        try:
            if failure is None:
                note = (
                    f"hybrid {hid!r} was compensated ({rolled} rolled back, in reverse order), so "
                    "the database is as it was before it; fix the cause and run it again"
                )
                _amend(error, note)
                async with conn.transaction():
                    run = await self.runs.move(
                        conn, run, HybridPhase.ROLLED_BACK, operation="compensate", error=str(error)
                    )
                    await self.ledger.insert(
                        conn,
                        self._attempt(
                            hybrid,
                            run,
                            APPLY,
                            AttemptStatus.FAILED,
                            None,
                            HybridPhase.ROLLED_BACK,
                            error=str(error),
                        ),
                    )
            else:
                step, undo = failure
                error.compensation_error = undo
                note = (
                    f"compensating hybrid {hid!r} failed too, at {step.attribute} step {step.id!r} "
                    f"(its rollback raised {reason(undo)}); "
                    + (f"{rolled} were rolled back before that; " if undone else "")
                    + f"the steps before {step.id!r} are still applied, and the hybrid is left FAILED. "
                    f"Inspect the database and undo or finish step {step.id!r} by hand, then "
                    f"`await migrator.rollback({hid!r})` to compensate again, or "
                    f"`await migrator.abandon({hid!r}, reason=...)` to give this run up"
                )
                _amend(error, note)
                async with conn.transaction():
                    run = await self.runs.move(
                        conn,
                        run,
                        HybridPhase.FAILED,
                        operation="compensate",
                        step=step.id,
                        error=str(error),
                    )
                    await self.ledger.insert(
                        conn,
                        self._attempt(
                            hybrid,
                            run,
                            APPLY,
                            AttemptStatus.FAILED,
                            None,
                            HybridPhase.FAILED,
                            error=str(error),
                        ),
                    )
        except Exception as exc:
            self._unrecorded(error, exc)
        return error

    async def _undo(
        self,
        session: RunnerSession,
        hybrid: HybridMigration,
        run: HybridRun,
        cfg: MigrationConfig,
        phase: HybridPhase,
    ) -> tuple[list[str], tuple[HybridStep, BaseException] | None]:
        """Roll back, in reverse order, every step applied (or stopped midway); the ids undone, and
        the step whose rollback failed with why."""
        hid = hybrid.metadata.id
        undone: list[str] = []
        states = await self.ledger.states(session.lock.conn)
        for step in reversed(hybrid.steps):
            runner = self.steps.of(step.migration)
            if not _applied(states, step) and not await runner.stopped_midway(
                session.lock.conn, step.migration
            ):
                continue
            await self.runs.at_step(await session.work_connection(), run, step.id)
            try:
                reversal = await runner.check_reversible(
                    step.migration, await step.migration.checksum(), session
                )
                with hybrid_step(step.id, hid, phase.value):
                    await reversal(cfg, session)
            except MigrationLockLost:
                raise
            except Exception as exc:
                logger.exception("hybrid migration %s: rolling back step %s failed", hid, step.id)
                return undone, (step, exc)
            undone.append(step.id)
        return undone, None

    def _stuck(self, run: HybridRun) -> HybridPhaseError:
        return HybridPhaseError(
            f"hybrid migration {run.hybrid_id!r} is FAILED: its compensation failed"
            + (f" at step {run.current_step!r}" if run.current_step else "")
            + ", so it is not run again until someone has looked. Inspect the database, then "
            f"`await migrator.rollback({run.hybrid_id!r})` to compensate again, or "
            f"`await migrator.abandon({run.hybrid_id!r}, reason=...)` to give this run up. "
            f"Recorded: {run.error or 'no detail'}",
            migration_id=run.hybrid_id,
            phase=run.phase.value,
        )

    # -- rollback and abandon ----------------------------------------------------------------------

    async def _rollback(
        self, hybrid: HybridMigration, checksum: str, cfg: MigrationConfig, session: RunnerSession
    ) -> MigrationResult:
        """Under the runner lock: roll every step back in reverse order, contract's first."""
        meta = hybrid.metadata
        started = now()
        with telemetry.migration_span(telemetry.SPAN_ROLLBACK, meta.id, meta.migration_type, False):
            conn = await session.work_connection()
            run = await self.runs.latest(conn, meta.id)
            assert run is not None
            was_completed = run.phase is HybridPhase.COMPLETED
            if run.phase is not HybridPhase.COMPENSATING:
                run = await self.runs.move(conn, run, HybridPhase.COMPENSATING, operation="roll back")
            undone, failure = await self._undo(session, hybrid, run, cfg, HybridPhase.COMPENSATING)
            conn = await session.work_connection()
            if failure is not None:
                step, undo = failure
                message = (
                    f"rolling back hybrid migration {meta.id!r} failed at {step.attribute} step "
                    f"{step.id!r}: {reason(undo)}; "
                    + (f"{', '.join(map(repr, undone))} were rolled back before that; " if undone else "")
                    + "the hybrid is left FAILED. Inspect the database, fix the cause, then call "
                    f"rollback({meta.id!r}) again, or `await migrator.abandon({meta.id!r}, reason=...)`"
                )
                error = MigrationExecutionError(message, migration_id=meta.id)
                with anyio.CancelScope(shield=True):
                    try:
                        await self.runs.move(
                            conn, run, HybridPhase.FAILED, operation="roll back", step=step.id, error=message
                        )
                    except Exception as exc:
                        self._unrecorded(error, exc)
                raise error from undo
            async with conn.transaction():
                run = await self.runs.move(conn, run, HybridPhase.ROLLED_BACK, operation="roll back")
                if was_completed:
                    await self.ledger.insert(
                        conn,
                        self._attempt(
                            hybrid,
                            run,
                            ROLLBACK,
                            AttemptStatus.COMPLETED,
                            False,
                            HybridPhase.ROLLED_BACK,
                            started=started,
                        ),
                        session.lock,
                    )
        logger.info("rolled back hybrid migration %s: %s", meta.id, ", ".join(undone) or "no step")
        return ended(meta, ROLLBACK, MigrationStatus.ROLLED_BACK, started, now())

    async def abandon(
        self, migration: Migration, session: RunnerSession, *, reason_text: str, actor: str
    ) -> int:
        """Under the runner lock: end the current run where it stands, and record who and why."""
        hybrid = _hybrid(migration)
        meta = hybrid.metadata
        conn = await session.work_connection()
        run = await self.runs.latest(conn, meta.id)
        if run is None or run.phase in (*HYBRID_ENDED, HybridPhase.COMPLETED):
            raise HybridPhaseError(
                f"cannot abandon hybrid migration {meta.id!r}: "
                + ("it never ran" if run is None else f"its latest run is {run.phase.value}, not in progress")
                + "; abandon() is for a run that is stuck",
                migration_id=meta.id,
                phase=None if run is None else run.phase.value,
            )
        before = run.phase
        note = f"abandoned in phase {before.value} by {actor}: {reason_text}"
        async with conn.transaction():
            run = await self.runs.move(
                conn, run, HybridPhase.ABANDONED, operation="abandon", step=run.current_step, error=note
            )
            attempt_id = await self.ledger.insert(
                conn,
                attrs.evolve(
                    self._attempt(
                        hybrid,
                        run,
                        MigrationOperation.ABANDON,
                        AttemptStatus.COMPLETED,
                        False,
                        before,
                        started=now(),
                        actor=actor,
                        why=reason_text,
                    ),
                    error=note,
                ),
                session.lock,
            )
        logger.warning("hybrid migration %s %s", meta.id, note)
        return attempt_id


def steps_done(hybrid: HybridMigration, states: Mapping[str, MigrationState]) -> Sequence[str]:
    """The ids of the steps applied now, in the order they run."""
    return tuple(step.id for step in hybrid.steps if _applied(states, step))
