"""Typed values that brainmigrate returns: results of runs, history records, validation reports."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from .metadata import MigrationStatus, MigrationType
from .sqltext import first_line
from .states import AttemptStatus, MigrationOperation


def _operation(value: MigrationOperation | str) -> MigrationOperation:
    return MigrationOperation(value)


def _attempt_status(value: AttemptStatus | str) -> AttemptStatus:
    return AttemptStatus(value)


@attrs.frozen(kw_only=True)
class ItemChange:
    """One value a data migration changes (or, in a dry run, would change)."""

    key: Any
    column: str
    before: Any
    after: Any


@attrs.frozen(kw_only=True)
class ItemError:
    """One item that failed, as kept in the error ledger."""

    key: str
    error: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime


@attrs.frozen(kw_only=True)
class Violation:
    """Memories breaking a condition one operation of a structure migration needs (a dry run's
    finding, or the reason a run was refused)."""

    #: The operation, as printed (such as ``rename('topic', 'topics')``).
    operation: str
    #: What must hold for it, such as "no memory has the key 'topics' already".
    condition: str
    #: How many memories break it.
    count: int
    #: Keys of a few of them.
    sample_keys: tuple[Any, ...] = ()

    def __str__(self) -> str:
        keys = ", ".join(str(key) for key in self.sample_keys)
        return f"{self.operation}: {self.count} memories break the condition that {self.condition}" + (
            f" (such as {keys})" if keys else ""
        )


@attrs.frozen(kw_only=True)
class WriteImpact:
    """What writing one changed row of a data, memory or structure migration costs (a dry run's
    estimate): the indexes it touches, whether the update can be HOT, and a measured cost."""

    table: str
    #: The columns the migration writes.
    written_columns: tuple[str, ...]
    #: Indexes every changed row must be inserted into (all of them unless the update is HOT).
    touched_indexes: tuple[str, ...]
    #: Whether updates can be heap-only (no written column is indexed).
    hot_possible: bool
    #: Vector indexes (HNSW, IVFFlat) among the touched ones: a graph insert per changed row.
    vector_indexes: tuple[str, ...] = ()
    #: Seconds per changed row, measured by writing a sample inside the dry run; None when not measured.
    seconds_per_row: float | None = None
    #: Warnings for people, such as the cost of per-row vector index maintenance.
    warnings: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class KeyPathStats:
    """One key path of a JSONB column: the JSON types found there, and how many memories have it."""

    path: tuple[str, ...]
    #: JSON type (``object``, ``array``, ``string``, ``number``, ``boolean``, ``null``) to memories.
    types: dict[str, int]
    #: Memories carrying this path (with any type).
    memories: int

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


@attrs.frozen(kw_only=True)
class StructureDescription:
    """What a JSONB column of memories holds: every key path, its types, and how common it is."""

    table: str
    column: str
    #: Memories looked at (all, or a sample: see ``sampled``).
    memories: int
    #: Whether the figures come from a sample of the table (``TABLESAMPLE``), not every memory.
    sampled: bool
    paths: tuple[KeyPathStats, ...] = ()

    def get(self, path: str | tuple[str, ...]) -> KeyPathStats | None:
        """The figures of ``path`` (dotted, or a tuple), or None when no memory has it."""
        wanted = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
        return next((stats for stats in self.paths if stats.path == wanted), None)

    def __str__(self) -> str:
        """A table for people: one line per key path."""
        head = f"{self.table}.{self.column}: {self.memories} memories" + (
            " (sampled)" if self.sampled else ""
        )
        lines = [head]
        for stats in self.paths:
            types = ", ".join(f"{kind} {count}" for kind, count in sorted(stats.types.items()))
            lines.append(f"  {stats.dotted:<40} {stats.memories:>10}  {types}")
        return "\n".join(lines)


@attrs.frozen(kw_only=True)
class MigrationResult:
    """How one migration run (apply or rollback, real or dry) ended."""

    migration_id: str
    name: str
    migration_type: MigrationType
    operation: MigrationOperation = attrs.field(converter=_operation)
    status: MigrationStatus
    dry_run: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_seconds: float = 0.0
    #: The statements run (or, in a dry run, that would run), in order.
    statements: tuple[str, ...] = ()
    #: The postcondition gate's answer; None when it was not evaluated.
    postconditions_passed: bool | None = None
    #: How many tries it took (transient failures are retried).
    attempts: int = 1
    error: str | None = None
    #: Data migrations: items written by this run (committed), skipped by the transform, and failed
    #: (recorded in the error ledger, see ``Migrator.failed_items``).
    items_processed: int = 0
    items_skipped: int = 0
    items_failed: int = 0
    #: Data migrations in a dry run: examples of the values that would change.
    changes: tuple[ItemChange, ...] = ()
    #: Structure migrations in a dry run: memories breaking a condition of an operation.
    violations: tuple[Violation, ...] = ()
    #: Data, memory and structure migrations in a dry run: what writing a changed row costs.
    write_impact: WriteImpact | None = None
    #: Data, memory and structure migrations in a dry run: how the run would write its table
    #: (``"in_place"`` or ``"rewrite"``, see ``DataMigration.strategy``), and why.
    strategy: str | None = None
    strategy_reason: str | None = None

    @property
    def succeeded(self) -> bool:
        """True when the run did what it was asked to."""
        return self.status in (MigrationStatus.COMPLETED, MigrationStatus.ROLLED_BACK)

    def __str__(self) -> str:
        """One line, such as ``add_users_001 apply completed in 0.012 s``; repr() has every field."""
        text = f"{self.migration_id} {self.operation} {self.status} in {self.duration_seconds:.3f} s"
        if self.dry_run:
            text += " (dry run)"
        if self.items_processed or self.items_skipped or self.items_failed:
            text += (
                f": {self.items_processed} written, {self.items_skipped} skipped, {self.items_failed} failed"
            )
        if self.error:
            text += f": {first_line(self.error)}"
        return text


@attrs.frozen(kw_only=True)
class HistoryRecord:
    """One attempt recorded in the history table; attempts are kept, never overwritten."""

    attempt_id: int
    migration_id: str
    name: str
    migration_type: MigrationType
    version: str
    checksum: str
    #: ``apply``, ``rollback``, ``resolve``, ``stamp`` or ``abandon``.
    operation: MigrationOperation = attrs.field(converter=_operation)
    #: ``running`` (in progress, or dirty when its runner died), ``completed``, ``failed`` or ``dirty``.
    status: AttemptStatus = attrs.field(converter=_attempt_status)
    #: Whether the migration counts as applied after this attempt (None for failed attempts).
    applied_after: bool | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None
    statement_index: int | None
    statement_count: int | None
    error: str | None
    sqlstate: str | None
    hostname: str
    pid: int
    db_user: str
    #: For a step of a hybrid migration (and the hybrid's own rows): the hybrid's id, and the
    #: phase it was in (``expanding``, ``backfilling``, ``contracting``, ``compensating``...).
    #: The step is ``migration_id``.
    hybrid_id: str | None = None
    hybrid_phase: str | None = None
    #: For rows written by hand (``abandon``): who, and why.
    actor: str | None = None
    reason: str | None = None

    def __str__(self) -> str:
        """One line, such as ``#12 add_users_001 apply completed 2026-12-01 19:04:05+00:00 (12 ms)``."""
        text = f"#{self.attempt_id} {self.migration_id} {self.operation} {self.status} {self.started_at}"
        if self.duration_ms is not None:
            text += f" ({self.duration_ms:.0f} ms)"
        if self.error:
            text += f": {first_line(self.error)}"
        return text


@attrs.frozen(kw_only=True)
class ValidationReport:
    """Whether a migration could run now, and if not, why."""

    migration_id: str
    valid: bool
    problems: tuple[str, ...] = ()
