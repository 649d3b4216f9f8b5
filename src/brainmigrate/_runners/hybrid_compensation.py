"""A hybrid's failures and their undoing: a failed step, compensated before contract (its
completed steps rolled back in reverse order) or kept to carry on in contract; a rollback asked
for; and abandoning a stuck run."""

from __future__ import annotations

import logging

import anyio
import attrs

from .._errors import (
    BrainMigrateError,
    HybridPhaseError,
    MigrationExecutionError,
    MigrationLockLost,
    TableLockTimeout,
)
from .._ledger.history import HistoryLedger, hybrid_step
from .._ledger.hybrid import HybridLedger, HybridRun
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration, HybridStep
from .._model.metadata import MigrationStatus
from .._model.migration import Migration
from .._model.results import MigrationResult
from .._model.states import (
    HYBRID_BEFORE_CONTRACT,
    HYBRID_ENDED,
    AttemptStatus,
    HybridPhase,
    MigrationOperation,
)
from .._model.types import Connection
from .._runtime import telemetry as telemetry
from .._runtime.retry import is_recoverable
from .._runtime.steps import now
from .._runtime.translate import reason
from .base import Runners, ended
from .hybrid_records import APPLY, ROLLBACK, _applied, _attempt, _hybrid

logger = logging.getLogger("brainmigrate")


def _amend(error: BrainMigrateError, note: str) -> None:
    """Add ``note`` to ``error``'s message (or, for an error whose arguments are not one message,
    as a note); the error stays the same object, its cause chained as it was."""
    if len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}; {note}",)
    else:
        error.add_note(note)


@attrs.frozen
class HybridCompensation:
    """Undoes what a hybrid's run applied; ``steps`` runs the steps' kinds, ``runs`` holds the runs."""

    ledger: HistoryLedger
    runs: HybridLedger
    steps: Runners

    async def step_failed(
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
        busy = isinstance(error, TableLockTimeout)
        if run.phase not in HYBRID_BEFORE_CONTRACT or busy or is_recoverable(error.__cause__ or error):
            if run.phase is HybridPhase.CONTRACTING:
                then = (
                    "contract is never compensated: the next run carries it on from this step; fix "
                    "the cause and run again"
                )
            elif busy:
                then = (
                    "the table was too busy for a short switch, so nothing was compensated: the next "
                    "run carries the hybrid on from this step"
                )
            else:
                then = (
                    "the database did not answer, so nothing was compensated: the next run carries "
                    "the hybrid on from this step"
                )
            _amend(error, f"{where}; {then}")
            await self._noted(conn, run, str(error), error)
            return error
        _amend(error, where)
        return await self.compensate(session, hybrid, run, cfg, error)

    async def _noted(self, conn: Connection, run: HybridRun, text: str, error: BrainMigrateError) -> None:
        """Record why the run stopped; when that fails too, say so in ``error``, never in its place."""
        with anyio.CancelScope(shield=True):
            try:
                await self.runs.note_error(conn, run, text)
            except Exception as exc:
                self._unrecorded(error, exc)

    def _unrecorded(self, error: BrainMigrateError, exc: Exception) -> None:
        table = f"{self.ledger.schema}.hybrid_runs"
        _amend(
            error,
            f"this could not be recorded in {table}: {reason(exc)}; check that table and the "
            "database user's privileges on it",
        )
        error.recording_error = exc

    async def compensate(
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
                        _attempt(
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
                        _attempt(
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

    def stuck(self, run: HybridRun) -> HybridPhaseError:
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

    async def rollback(
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
                        _attempt(
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
        self,
        migration: Migration,
        session: RunnerSession,
        cfg: MigrationConfig,
        *,
        reason_text: str,
        actor: str,
    ) -> int:
        """Under the runner lock: end the current run where it stands, and record who and why.

        Nothing is undone, unless the hybrid says its steps are rolled back when abandoned (a
        table rewrite before its swap): then they are, first, and the note lists them."""
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
        states = await self.ledger.states(session.lock.conn)
        # The workers holding a live lease on each step's run (read once, under the runner lock).
        live = {
            step.id: await self.steps.of(step.migration).live_workers(session.lock.conn, step.migration)
            for step in hybrid.steps
        }
        if hybrid.rolled_back_when_abandoned({step.id for step in hybrid.steps if _applied(states, step)}):
            for step in hybrid.steps:
                if live[step.id]:
                    raise HybridPhaseError(
                        f"cannot abandon hybrid migration {meta.id!r} yet: its step {step.id!r} is "
                        f"running in {live[step.id]} worker(s) elsewhere, whose lease has not expired, and "
                        "abandoning rolls the step back. Stop those workers, or wait for their lease "
                        "to expire (lease_seconds), then abandon it again; nothing was changed",
                        migration_id=meta.id,
                        phase=before.value,
                    )
            undone, failure = await self._undo(session, hybrid, run, cfg, before)
            if failure is not None:
                step, error = failure
                raise MigrationExecutionError(
                    f"abandoning hybrid migration {meta.id!r} failed while rolling back its step "
                    f"{step.id!r}: {reason(error)}; the run is not abandoned. Fix the cause and "
                    "abandon it again",
                    migration_id=meta.id,
                ) from error
            if undone:
                note += f" (rolled back: {', '.join(undone)})"
            conn = await session.work_connection()
            run = await self.runs.latest(conn, meta.id) or run
        # An attempt of a step still 'running' with no live lease on it belongs to a runner that
        # died midway (the runner lock is held here): history says so, as a resumed run would.
        async with conn.transaction():
            stamp = now()
            for step_id in (step_id for step_id, workers in live.items() if not workers):
                await self.ledger.close_interrupted(conn, step_id, stamp)
            run = await self.runs.move(
                conn, run, HybridPhase.ABANDONED, operation="abandon", step=run.current_step, error=note
            )
            attempt_id = await self.ledger.insert(
                conn,
                attrs.evolve(
                    _attempt(
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
