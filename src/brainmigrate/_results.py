"""Typed values that brainmigrate returns: results of runs, history records, validation reports."""

from __future__ import annotations

from datetime import datetime

import attrs

from ._metadata import MigrationStatus, MigrationType


@attrs.frozen(kw_only=True)
class MigrationResult:
    """How one migration run (apply or rollback, real or dry) ended."""

    migration_id: str
    name: str
    migration_type: MigrationType
    operation: str
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

    @property
    def succeeded(self) -> bool:
        """True when the run did what it was asked to."""
        return self.status in (MigrationStatus.COMPLETED, MigrationStatus.ROLLED_BACK)


@attrs.frozen(kw_only=True)
class HistoryRecord:
    """One attempt recorded in the history table; attempts are kept, never overwritten."""

    attempt_id: int
    migration_id: str
    name: str
    migration_type: MigrationType
    version: str
    checksum: str
    #: ``apply``, ``rollback`` or ``resolve``.
    operation: str
    #: ``running`` (in progress, or dirty when its runner died), ``completed``, ``failed`` or ``dirty``.
    status: str
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


@attrs.frozen(kw_only=True)
class ValidationReport:
    """Whether a migration could run now, and if not, why."""

    migration_id: str
    valid: bool
    problems: tuple[str, ...] = ()
