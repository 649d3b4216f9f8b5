"""The runner of hybrid migrations: expand, backfill, validate, cutover and contract, step by step.

Each step runs through the runner of its own kind, exactly as it would on its own: a schema step
under the runner lock, a backfill step claimed under the lock, its batches run without it
(checkpointed, leased, resumable) and settled under it again. The hybrid's phase is kept in
``hybrid_runs``; each step's history row (written with the step's work, carrying the hybrid and the
phase) says which steps are done. Every move is one short hold of the runner lock that reads the
run as it stands, so a runner killed at any point leaves a run the next one carries on, and
runners of several processes never apply a step twice. That drive is
:class:`~.hybrid_drive.HybridDriver`'s; this runner starts runs (or refuses them), and answers the
runner protocol.

A failure before contract compensates: the completed steps are rolled back in reverse order.
Contract never starts unless validation passed, and once started it is never compensated, only
carried on.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs

from .._errors import BrainMigrateError, HybridPhaseError, IrreversibleMigrationError, MigrationStateError
from .._ledger.history import HistoryLedger
from .._ledger.hybrid import HybridLedger, HybridRun
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration
from .._model.items import Progress
from .._model.metadata import MigrationStatus
from .._model.migration import Migration
from .._model.results import ItemChange, MigrationResult
from .._model.states import HYBRID_ENDED, HybridPhase, MigrationOperation
from .._model.types import Connection, Pool
from .base import Deferred, Reversal, Runners, Sample, not_run
from .hybrid_backfill import HybridBackfill
from .hybrid_compensation import HybridCompensation
from .hybrid_drive import HybridDriver
from .hybrid_records import APPLY, _applied, _hybrid, ready_note

logger = logging.getLogger("brainmigrate")


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

    @property
    def driver(self) -> HybridDriver:
        return HybridDriver(self.pool, self.ledger, self.runs, self.steps, self.backfill, self.compensation)

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
            return await self.driver.drive(hybrid, checksum, config, resume=resume, contract=False)

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
            return await self.driver.drive(hybrid, checksum, config, resume=False, contract=True)

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
