"""What the modules of the hybrid runner share: which of a hybrid's steps are applied, the results
of a drive that ends short of completing, and the history row of a hybrid's attempt."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from .._ledger.history import Attempt, MigrationState
from .._ledger.hybrid import HybridRun
from .._model.hybrid import HybridMigration, HybridStep
from .._model.metadata import MigrationStatus
from .._model.migration import Migration
from .._model.results import MigrationResult
from .._model.states import AttemptStatus, HybridPhase, MigrationOperation
from .._runtime.steps import now
from .base import not_run

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK


def _hybrid(migration: Migration) -> HybridMigration:
    assert isinstance(migration, HybridMigration), "the hybrid runner runs hybrid migrations only"
    return migration


def _applied(states: Mapping[str, MigrationState], step: HybridStep) -> bool:
    state = states.get(step.id)
    return state is not None and state.applied


def steps_done(hybrid: HybridMigration, states: Mapping[str, MigrationState]) -> Sequence[str]:
    """The ids of the steps applied now, in the order they run."""
    return tuple(step.id for step in hybrid.steps if _applied(states, step))


def ready_note(hybrid_id: str) -> str:
    return (
        f"hybrid {hybrid_id!r} is expanded, backfilled and validated, and waits at READY_TO_CONTRACT "
        f"(contract_mode='manual'): deploy the code that no longer needs the old layout, then "
        f"`await migrator.contract({hybrid_id!r})`"
    )


class _Stop(Exception):
    """Internal: the drive ends with this result (the run stopped, paused, or was finished)."""

    def __init__(self, result: MigrationResult) -> None:
        super().__init__(result.error or result.status.value)
        self.result = result


def _step_stopped(hybrid: HybridMigration, step: HybridStep, result: MigrationResult) -> MigrationResult:
    """The hybrid's result when a step neither completed nor failed (running elsewhere, paused)."""
    hid = hybrid.metadata.id
    note = f"{step.attribute} step {step.id!r}: {result.error or result.status.value}"
    if result.status is MigrationStatus.CANCELLED:
        note += f"; `await migrator.execute({hid!r})` resumes the hybrid"
    return not_run(hybrid.metadata, result.status, note)


def _attempt(
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
