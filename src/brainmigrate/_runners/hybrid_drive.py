"""The drive of a hybrid migration's run: one move per hold of the runner lock, reading the run as it
stands each time (the next step, the next phase, the gate, or the end), until it ends or stops."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
from opentelemetry.trace import StatusCode

from .._errors import (
    BrainMigrateError,
    HybridPhaseError,
    MigrationExecutionError,
    MigrationStateError,
    MigrationValidationError,
)
from .._ledger.history import Attempt, HistoryLedger, hybrid_step
from .._ledger.hybrid import HybridLedger, HybridRun
from .._ledger.session import RunnerSession, runner_session
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration, HybridStep
from .._model.metadata import MigrationStatus
from .._model.results import MigrationResult
from .._model.states import HYBRID_ENDED, AttemptStatus, HybridPhase, MigrationOperation
from .._model.types import Pool
from .._runtime import telemetry as telemetry
from .._runtime.steps import now
from .._runtime.translate import reason
from .base import Runners, ended, not_run
from .hybrid_backfill import HybridBackfill
from .hybrid_compensation import HybridCompensation
from .hybrid_records import APPLY, _applied, _attempt, _step_stopped, _Stop, ready_note

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
class HybridDriver:
    """Carries a hybrid's run on: each step through the runner of its kind (``steps``), its work
    without the lock through ``backfill``, its failures through ``compensation``."""

    pool: Pool
    ledger: HistoryLedger
    runs: HybridLedger
    steps: Runners
    backfill: HybridBackfill
    compensation: HybridCompensation

    @property
    def schema(self) -> str:
        return self.ledger.schema

    async def drive(
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
