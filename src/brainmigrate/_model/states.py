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
