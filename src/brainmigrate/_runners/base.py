"""The one protocol every kind of migration's runner follows, and the registry that picks one.

The Migrator knows no kind: it asks the registry for the runner of each migration
(``runners.of(migration)``, by its :class:`~brainmigrate._model.migration.MigrationKind`) and talks
to it through :class:`Runner` alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, Protocol

import attrs

from .._errors import MigrationValidationError
from .._ledger.session import RunnerSession
from .._model.config import MigrationConfig
from .._model.metadata import MigrationMetadata, MigrationStatus
from .._model.migration import Migration, MigrationKind
from .._model.results import ItemChange, MigrationResult, Violation, WriteImpact
from .._model.states import MigrationOperation
from .._model.types import Connection

#: Work to do once the runner lock is released (a claimed data migration's batches).
Deferred = Callable[[], Awaitable[MigrationResult]]

#: A rollback checked possible and ready to run, under the runner lock on ``session``.
Reversal = Callable[[MigrationConfig, RunnerSession], Awaitable[MigrationResult]]


@attrs.frozen
class Sample:
    """What a dry run of one migration did inside its savepoint: the items it would change."""

    processed: int = 0
    skipped: int = 0
    failed: int = 0
    changes: tuple[ItemChange, ...] = ()
    violations: tuple[Violation, ...] = ()
    write_impact: WriteImpact | None = None
    #: Why the real run would be refused, when the dry run found it would be.
    refusal: str | None = None


class Runner(Protocol):
    """Runs one kind of migration: applies, reverses and dry-runs it, and says what it would run."""

    async def describe(self, migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
        """The SQL statements ``operation`` runs, in order (empty when it runs Python)."""
        ...

    async def apply(
        self,
        migration: Migration,
        checksum: str,
        config: MigrationConfig,
        session: RunnerSession,
        *,
        resume: bool,
    ) -> MigrationResult | Deferred:
        """Under the runner lock: apply ``migration`` and return how it ended, or raise; or return
        the work to do once the lock is released. ``resume`` resumes a paused run."""
        ...

    async def check_reversible(self, migration: Migration, checksum: str, session: RunnerSession) -> Reversal:
        """Raise IrreversibleMigrationError unless ``migration`` can be reversed now; else its rollback."""
        ...

    async def dry_run(
        self,
        conn: Connection,
        migration: Migration,
        operation: MigrationOperation,
        config: MigrationConfig,
        statements: tuple[str, ...],
    ) -> Sample:
        """Inside a savepoint the caller rolls back: do ``operation`` (or a sample of it), or raise
        the public error."""
        ...

    async def stopped_midway(self, conn: Connection, migration: Migration) -> bool:
        """Whether a run of ``migration`` stopped midway, leaving work a rollback can undo."""
        ...

    async def live_workers(self, conn: Connection, migration: Migration) -> int:
        """The workers holding a live lease on a run of ``migration`` (0 for a kind without)."""
        ...


@attrs.frozen
class Runners:
    """The runner of each kind of migration."""

    by_kind: Mapping[MigrationKind, Runner]

    def of(self, migration: Migration) -> Runner:
        try:
            return self.by_kind[migration.kind]
        except KeyError:  # check_definition refuses such a migration when it is loaded
            raise MigrationValidationError(
                f"migration {migration.metadata.id!r} is of kind {migration.kind!r}, which no runner runs",
                migration_id=migration.metadata.id,
            ) from None


def not_run(meta: MigrationMetadata, status: MigrationStatus, error: str) -> MigrationResult:
    """The result of a migration that was not applied (skipped, failed, or running elsewhere)."""
    return MigrationResult(
        migration_id=meta.id,
        name=meta.name,
        migration_type=meta.migration_type,
        operation=MigrationOperation.APPLY,
        status=status,
        error=error,
    )


def ended(
    meta: MigrationMetadata,
    operation: MigrationOperation,
    status: MigrationStatus,
    started: datetime,
    finished: datetime,
    **fields: Any,
) -> MigrationResult:
    """The result of a migration's run (or rollback, or dry run) that started and finished at these
    times; ``fields`` are the rest of :class:`MigrationResult` (statements, counts, error...)."""
    return MigrationResult(
        migration_id=meta.id,
        name=meta.name,
        migration_type=meta.migration_type,
        operation=operation,
        status=status,
        started_at=started,
        finished_at=finished,
        duration_seconds=(finished - started).total_seconds(),
        **fields,
    )
