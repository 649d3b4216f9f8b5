"""The states brainmigrate records, and the transitions allowed between them, in one table each.

Every change of an attempt's or a data run's status goes through :func:`check_transition`, so a
refused change is an error naming the operation and the state, never a silent overwrite.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from .._errors import MigrationStateError

S = TypeVar("S", bound=enum.StrEnum)


class MigrationOperation(enum.StrEnum):
    """What a run or a recorded attempt did to a migration."""

    APPLY = "apply"
    ROLLBACK = "rollback"
    #: A dirty mark cleared by hand (``Migrator.resolve``).
    RESOLVE = "resolve"
    #: A stuck hybrid migration given up by hand, with who and why (``Migrator.abandon``).
    ABANDON = "abandon"
    #: Recorded as applied without running it, with who and why (``Migrator.stamp``, or a squash
    #: migration whose replaced migrations were all applied).
    STAMP = "stamp"


class AttemptStatus(enum.StrEnum):
    """How one attempt in the history table stands."""

    #: In progress, or dirty when its runner died.
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    #: A non-transactional attempt interrupted midway (see ``Migrator.resolve``).
    DIRTY = "dirty"


class RunStatus(enum.StrEnum):
    """Where a data migration's run stands (persisted, read by every process)."""

    RUNNING = "running"
    #: Asked to stop; workers stop at their next batch boundary.
    CANCELLING = "cancelling"
    #: Stopped midway (paused); ``execute(id)`` resumes it.
    CANCELLED = "cancelled"
    #: Stopped by a failure; resumable, or reversed when rollback was enabled.
    FAILED = "failed"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


#: Statuses in which a run is still going (or stopping) somewhere.
ACTIVE_RUN_STATUSES: tuple[RunStatus, ...] = (RunStatus.RUNNING, RunStatus.CANCELLING)

#: For each status, the statuses an attempt row may move to (rows are otherwise never rewritten).
ATTEMPT_TRANSITIONS: Mapping[AttemptStatus, frozenset[AttemptStatus]] = {
    AttemptStatus.RUNNING: frozenset({AttemptStatus.COMPLETED, AttemptStatus.FAILED, AttemptStatus.DIRTY}),
    AttemptStatus.COMPLETED: frozenset(),
    AttemptStatus.FAILED: frozenset(),
    AttemptStatus.DIRTY: frozenset(),
}

#: For each status, the statuses a data run may move to.
RUN_TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    RunStatus.RUNNING: frozenset(
        {RunStatus.CANCELLING, RunStatus.FAILED, RunStatus.COMPLETED, RunStatus.ROLLED_BACK}
    ),
    # RUNNING: a cancelling run whose workers all died is taken over by the next runner (resumed).
    RunStatus.CANCELLING: frozenset(
        {RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.ROLLED_BACK, RunStatus.RUNNING}
    ),
    RunStatus.CANCELLED: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.ROLLED_BACK}),
    RunStatus.FAILED: frozenset({RunStatus.RUNNING, RunStatus.ROLLED_BACK}),
    RunStatus.COMPLETED: frozenset({RunStatus.ROLLED_BACK}),
    RunStatus.ROLLED_BACK: frozenset(),
}


class HybridPhase(enum.StrEnum):
    """Where a hybrid migration's run stands (persisted, read by every process).

    expand, backfill, validate, cutover and contract run in that order; a failure before contract
    compensates (rolls the completed steps back, in reverse order).
    """

    #: Running its expand steps (additive schema changes).
    EXPANDING = "expanding"
    #: Running its backfill steps (data or structure migrations).
    BACKFILLING = "backfilling"
    #: Running the gate before contract (``validate_backfill``).
    VALIDATING = "validating"
    #: Validated, running its cutover steps (building indexes, switching names), before contract.
    CUTTING_OVER = "cutting_over"
    #: Validated (and cut over); with ``contract_mode = "manual"`` it waits here for
    #: ``Migrator.contract(id)``.
    READY_TO_CONTRACT = "ready_to_contract"
    #: Running its contract steps (destructive changes); never compensated, resumed after a crash.
    CONTRACTING = "contracting"
    COMPLETED = "completed"
    #: Rolling its completed steps back, in reverse order (after a failure, or ``rollback(id)``).
    COMPENSATING = "compensating"
    ROLLED_BACK = "rolled_back"
    #: Compensating failed too: the database needs a look by hand (see ``Migrator.abandon``).
    FAILED = "failed"
    #: Given up by hand (``Migrator.abandon``); the next run starts a new one.
    ABANDONED = "abandoned"


#: Phases in which a hybrid's run is over: the next run of it starts a new one (or none, completed).
HYBRID_ENDED: tuple[HybridPhase, ...] = (HybridPhase.ROLLED_BACK, HybridPhase.ABANDONED)

#: Phases before contract: a failure in them compensates.
HYBRID_BEFORE_CONTRACT: tuple[HybridPhase, ...] = (
    HybridPhase.EXPANDING,
    HybridPhase.BACKFILLING,
    HybridPhase.VALIDATING,
    HybridPhase.CUTTING_OVER,
    HybridPhase.READY_TO_CONTRACT,
)

#: For each phase, the phases a hybrid's run may move to.
HYBRID_TRANSITIONS: Mapping[HybridPhase, frozenset[HybridPhase]] = {
    HybridPhase.EXPANDING: frozenset(
        {HybridPhase.BACKFILLING, HybridPhase.COMPENSATING, HybridPhase.ABANDONED}
    ),
    HybridPhase.BACKFILLING: frozenset(
        {HybridPhase.VALIDATING, HybridPhase.COMPENSATING, HybridPhase.ABANDONED}
    ),
    HybridPhase.VALIDATING: frozenset(
        {
            HybridPhase.CUTTING_OVER,
            HybridPhase.READY_TO_CONTRACT,
            HybridPhase.CONTRACTING,
            HybridPhase.COMPENSATING,
            HybridPhase.ABANDONED,
        }
    ),
    HybridPhase.CUTTING_OVER: frozenset(
        {
            HybridPhase.READY_TO_CONTRACT,
            HybridPhase.CONTRACTING,
            HybridPhase.COMPENSATING,
            HybridPhase.ABANDONED,
        }
    ),
    HybridPhase.READY_TO_CONTRACT: frozenset(
        {HybridPhase.CONTRACTING, HybridPhase.COMPENSATING, HybridPhase.ABANDONED}
    ),
    # A failure never compensates contract: it goes on (resumed step by step) or is abandoned by
    # hand. COMPENSATING only by rollback(id), when every contract step is reversible.
    HybridPhase.CONTRACTING: frozenset(
        {HybridPhase.COMPLETED, HybridPhase.COMPENSATING, HybridPhase.ABANDONED}
    ),
    # rollback(id) of a completed hybrid, when every contract step is reversible.
    HybridPhase.COMPLETED: frozenset({HybridPhase.COMPENSATING}),
    # An interrupted compensation stays COMPENSATING and is resumed by the next runner.
    HybridPhase.COMPENSATING: frozenset({HybridPhase.ROLLED_BACK, HybridPhase.FAILED, HybridPhase.ABANDONED}),
    # rollback(id) tries the compensation again; abandon(id) gives the run up.
    HybridPhase.FAILED: frozenset({HybridPhase.COMPENSATING, HybridPhase.ABANDONED}),
    HybridPhase.ROLLED_BACK: frozenset(),
    HybridPhase.ABANDONED: frozenset(),
}


def allowed_sources(table: Mapping[S, frozenset[S]], target: S) -> tuple[str, ...]:
    """The statuses from which ``table`` allows moving to ``target`` (for SQL that checks it)."""
    return tuple(source.value for source, targets in table.items() if target in targets)


def check_transition(
    table: Mapping[S, frozenset[S]],
    current: S,
    target: S,
    *,
    operation: str,
    migration_id: str,
) -> None:
    """Refuse moving from ``current`` to ``target`` unless ``table`` allows it.

    The error names the operation that asked for the change and the state it found.
    """
    if target not in table.get(current, frozenset()):
        allowed = ", ".join(sorted(t.value for t in table.get(current, frozenset()))) or "none"
        raise MigrationStateError(
            f"cannot {operation} migration {migration_id!r}: it is {current.value}, which can become "
            f"only {allowed}, not {target.value}",
            migration_id=migration_id,
        )
