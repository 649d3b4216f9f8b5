"""The work of a hybrid done without the runner lock: a backfill step's batches, and the
validation gate before contract (its verdict recorded under the lock again)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio
import attrs

from .._errors import MigrationExecutionError, MigrationValidationError
from .._ledger.connect import connection
from .._ledger.history import HistoryLedger, hybrid_step
from .._ledger.hybrid import HybridLedger, HybridRun
from .._ledger.session import runner_session
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration, HybridStep
from .._model.items import Progress
from .._model.metadata import MigrationStatus
from .._model.migration import MigrationKind
from .._model.states import HybridPhase
from .._model.types import Connection, Pool
from .._runtime.translate import reason
from .base import Deferred, not_run
from .hybrid_compensation import HybridCompensation
from .hybrid_records import _applied, _step_stopped, _Stop, ready_note

logger = logging.getLogger("brainmigrate")


@attrs.frozen
class HybridBackfill:
    """Runs a hybrid's unlocked work; a failure goes to ``compensation``, ``progress`` reads a data
    step's progress."""

    pool: Pool
    ledger: HistoryLedger
    runs: HybridLedger
    progress: Callable[[Connection, str], Awaitable[Progress | None]]
    compensation: HybridCompensation

    async def run(
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
            async with runner_session(self.pool, self.ledger.schema, cfg) as session:
                run = await self.runs.latest(await session.work_connection(), meta.id)
                assert run is not None
                if run.phase is not HybridPhase.BACKFILLING or run.current_step != step.id:
                    # Another runner carried the hybrid on past this step (this one lost its
                    # lease): the run is theirs, and nothing of it is compensated.
                    raise MigrationExecutionError(
                        f"{error}; meanwhile another runner carried hybrid migration {meta.id!r} on "
                        f"(it is {run.phase.value} now), so nothing was compensated",
                        migration_id=meta.id,
                    ) from error
                failure = await self.compensation.step_failed(session, hybrid, run, step, error, cfg)
            raise failure from error.__cause__
        counts[0] += result.items_processed
        counts[1] += result.items_skipped
        counts[2] += result.items_failed
        if result.status is not MigrationStatus.COMPLETED:
            raise _Stop(_step_stopped(hybrid, step, result))

    async def validate(
        self, hybrid: HybridMigration, run: HybridRun, cfg: MigrationConfig, *, contract: bool
    ) -> None:
        """The gate before cutover and contract, without the runner lock (a long check holds up no runner):
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
        async with runner_session(self.pool, self.ledger.schema, cfg) as session:
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
                raise await self.compensation.compensate(session, hybrid, current, cfg, refusal)
            cutover = bool(hybrid.steps_of(HybridPhase.CUTTING_OVER))
            manual = type(hybrid).contract_mode == "manual" and not contract and not cutover
            if cutover:
                target = HybridPhase.CUTTING_OVER
            else:
                target = HybridPhase.READY_TO_CONTRACT if manual else HybridPhase.CONTRACTING
            await self.runs.move(work, current, target, operation="validate")
            logger.info("hybrid migration %s: validated, %s", meta.id, target.value)
        if manual:
            raise _Stop(not_run(meta, MigrationStatus.RUNNING, ready_note(meta.id)))
