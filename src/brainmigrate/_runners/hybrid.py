"""The runner of hybrid migrations: expand, backfill, validate, cutover and contract, step by step.

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
from collections.abc import Awaitable, Callable

import attrs
from opentelemetry.trace import StatusCode

from .._errors import (
    BrainMigrateError,
    HybridPhaseError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationStateError,
    MigrationValidationError,
)
from .._ledger.history import Attempt, HistoryLedger, hybrid_step
from .._ledger.hybrid import HybridLedger, HybridRun
from .._ledger.session import RunnerSession, runner_session
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration, HybridStep
from .._model.items import Progress
from .._model.metadata import MigrationStatus
from .._model.migration import Migration
from .._model.results import ItemChange, MigrationResult
from .._model.states import HYBRID_ENDED, AttemptStatus, HybridPhase, MigrationOperation
from .._model.types import Connection, Pool
from .._runtime import telemetry as telemetry
from .._runtime.steps import now
from .._runtime.translate import reason
from .base import Deferred, Reversal, Runners, Sample, ended, not_run
from .hybrid_backfill import HybridBackfill
from .hybrid_compensation import HybridCompensation
from .hybrid_records import APPLY, _applied, _attempt, _hybrid, _step_stopped, _Stop, ready_note

logger = logging.getLogger("brainmigrate")

#: The phase that follows a phase of steps once all its steps are done.
_AFTER = {
    HybridPhase.EXPANDING: HybridPhase.BACKFILLING,
    HybridPhase.BACKFILLING: HybridPhase.VALIDATING,
}


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

    @property
    def compensation(self) -> HybridCompensation:
        return HybridCompensation(self.ledger, self.runs, self.steps)

    @property
    def backfill(self) -> HybridBackfill:
        return HybridBackfill(self.pool, self.ledger, self.runs, self.progress, self.compensation)

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
            raise self.compensation.stuck(run)
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
            return await self.compensation.rollback(hybrid, checksum, config, session)

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

    async def live_workers(self, conn: Connection, migration: Migration) -> int:
        """The workers of its steps' runs holding a live lease."""
        steps = _hybrid(migration).steps
        return sum([await self.steps.of(step.migration).live_workers(conn, step.migration) for step in steps])

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
            raise self.compensation.stuck(run)
        if phase is HybridPhase.COMPLETED:
            raise _Stop(ended(meta, APPLY, MigrationStatus.COMPLETED, run.started_at, now()))
        if phase is HybridPhase.COMPENSATING:  # a compensation a killed runner left midway
            raise await self.compensation.compensate(
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
                await self.backfill.validate(hybrid, run, cfg, contract=contract)

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
            if phase is HybridPhase.CUTTING_OVER:
                manual = type(hybrid).contract_mode == "manual" and not contract
                target = HybridPhase.READY_TO_CONTRACT if manual else HybridPhase.CONTRACTING
                await self.runs.move(conn, run, target, operation="cut over")
                logger.info("hybrid migration %s: cut over, %s", meta.id, target.value)
                if manual:
                    raise _Stop(not_run(meta, MigrationStatus.RUNNING, ready_note(meta.id)))
                return None
            moved = await self.runs.move(conn, run, _AFTER[phase], operation="advance")
            logger.info("hybrid migration %s: %s", meta.id, moved.phase.value)
            return None
        state = states.get(step.id)
        if state is not None and state.dirty and type(step.migration).rerun_after_interruption:
            await self._rerun_interrupted(session, step)
            logger.warning(
                "hybrid migration %s: step %s was interrupted midway; it is safe to run again, so it "
                "runs again",
                meta.id,
                step.id,
            )
            state = None
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
            raise await self.compensation.step_failed(
                session, hybrid, run, step, error, cfg
            ) from error.__cause__
        if not isinstance(outcome, MigrationResult):
            deferred = outcome

            async def batches() -> None:
                await self.backfill.run(hybrid, step, deferred, cfg, counts)

            return batches
        if outcome.status is not MigrationStatus.COMPLETED:
            raise _Stop(_step_stopped(hybrid, step, outcome))
        return None

    async def _rerun_interrupted(self, session: RunnerSession, step: HybridStep) -> None:
        """Record an interrupted step that is safe to run again as not applied (a ``resolve``
        attempt saying so), so that it runs again."""
        meta = step.migration.metadata
        conn = await session.work_connection()
        stamp = now()
        async with conn.transaction():
            await self.ledger.close_interrupted(conn, step.id, stamp)
            await self.ledger.insert(
                conn,
                Attempt(
                    migration_id=step.id,
                    name=meta.name,
                    migration_type=meta.migration_type,
                    version=meta.version,
                    checksum=await step.migration.checksum(),
                    operation=MigrationOperation.RESOLVE,
                    status=AttemptStatus.COMPLETED,
                    applied_after=False,
                    started_at=stamp,
                    finished_at=stamp,
                    error="interrupted midway; it declares rerun_after_interruption, so it runs again",
                ),
                session.lock,
            )

    async def _complete(self, session: RunnerSession, hybrid: HybridMigration, run: HybridRun) -> None:
        """Record the hybrid as applied, with its phase COMPLETED, in one transaction."""
        conn = await session.work_connection()
        async with conn.transaction():
            await self.runs.move(conn, run, HybridPhase.COMPLETED, operation="complete")
            await self.ledger.insert(
                conn,
                _attempt(hybrid, run, APPLY, AttemptStatus.COMPLETED, True, HybridPhase.COMPLETED),
                session.lock,
            )
        logger.info("applied hybrid migration %s", hybrid.metadata.id)

    # -- abandon, by hand ------------------------------------------------------------------------

    async def abandon(
        self,
        migration: Migration,
        session: RunnerSession,
        cfg: MigrationConfig,
        *,
        reason_text: str,
        actor: str,
    ) -> int:
        """Under the runner lock: end the current run where it stands, and record who and why."""
        return await self.compensation.abandon(migration, session, cfg, reason_text=reason_text, actor=actor)
