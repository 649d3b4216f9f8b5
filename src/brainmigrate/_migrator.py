"""The Migrator: the one object users hold to plan, apply, roll back and inspect migrations."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from ._catalog.loader import MigrationSource, configured_source
from ._catalog_view import _Catalog
from ._engine.executors import Executor
from ._engine.reshape import DESCRIBE_SAMPLE_ROWS
from ._engine.runner import DataRunner
from ._errors import ConfigError
from ._ledger.history import HistoryLedger
from ._model.config import MigrationConfig, check_schema_name
from ._model.embedding import EmbeddingGeneration, EmbeddingModel
from ._model.hybrid import HybridStatus
from ._model.items import Progress, ProgressCallback
from ._model.metadata import MigrationMetadata, MigrationStatus, MigrationType
from ._model.migration import MigrationKind
from ._model.results import HistoryRecord, ItemError, MigrationResult, StructureDescription, ValidationReport
from ._model.states import HybridPhase
from ._model.statistics import HistoryStatistics
from ._operations import by_hand, closing, reads, runs
from ._review.report import CheckReport
from ._runners.base import Runners
from ._runners.data import DataMigrationRunner
from ._runners.hybrid import HybridRunner
from ._runners.schema import SchemaRunner
from ._runners.structure import StructureMigrationRunner


class Migrator:
    """Plans and runs migrations against the database behind ``pool``.

    ``migrations`` is a list of Migration classes (or instances), a module or package (object or
    dotted name; its submodules are searched too), or a directory of ``.py`` files. When omitted it
    comes from ``[tool.brainmigrate] migrations`` in ./pyproject.toml or ``$BRAINMIGRATE_MIGRATIONS``.

    ``on_progress`` is called with a :class:`Progress` after each checkpoint of a data migration.

    History lives in ``schema``. The pool needs at least two connections: one holds the runner
    lock while another does the work.
    """

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        migrations: MigrationSource | None = None,
        *,
        config: MigrationConfig | None = None,
        schema: str = "brainmigrate",
        on_progress: ProgressCallback | None = None,
    ) -> None:
        if config is not None and not isinstance(config, MigrationConfig):
            raise ConfigError(f"config must be a MigrationConfig, got {config!r}")
        check_schema_name(schema)
        max_size = pool.get_max_size() if hasattr(pool, "get_max_size") else None
        if max_size is not None and max_size < 2:
            raise ConfigError(
                f"the pool's max_size is {max_size}; brainmigrate needs at least 2 connections "
                "(one holds the migration lock, one runs migrations)"
            )
        self.pool = pool
        self.config = config or MigrationConfig()
        self.schema = schema
        self._source = migrations if migrations is not None else configured_source()
        self._ledger = HistoryLedger(schema)
        self._data = DataRunner(schema)
        schema_runner = SchemaRunner(self._ledger)
        self._data_runner = DataMigrationRunner(pool, self._ledger, self._data, on_progress)
        self._runners = Runners(
            {
                MigrationKind.PYTHON: schema_runner,
                MigrationKind.SQL: schema_runner,
                MigrationKind.DATA: self._data_runner,
                MigrationKind.STRUCTURE: StructureMigrationRunner(
                    pool, self._ledger, self._data, on_progress
                ),
            }
        )
        # A hybrid runs each of its steps through the runner of the step's kind (any of the above).
        self._hybrid_runner = HybridRunner(pool, self._ledger, self._runners, self._data.progress)
        self._runners = Runners({**self._runners.by_kind, MigrationKind.HYBRID: self._hybrid_runner})
        self._catalog: _Catalog | None = None

    # -- reading -------------------------------------------------------------------------------

    async def pending(self, migration_type: MigrationType | str | None = None) -> list[MigrationMetadata]:
        """Migrations not applied yet, in the order they would run."""
        return await reads.pending(self, migration_type)

    async def history(self) -> list[HistoryRecord]:
        """Every recorded attempt, oldest first."""
        return await reads.history(self)

    async def statistics(self, *, since: datetime | timedelta | None = None) -> HistoryStatistics:
        """Success rate of attempts and average rollback time, over the history since ``since`` (a
        timezone-aware time, a span back from now, or None for all); see :class:`HistoryStatistics`."""
        return await reads.statistics(self, since=since)

    async def progress(self, migration_id: str) -> Progress | None:
        """How far a data migration's latest run got (from any process), or None if it never ran."""
        return await reads.progress(self, migration_id)

    async def failed_items(self, migration_id: str) -> list[ItemError]:
        """The items of a data migration that failed (with ``continue_on_error``), from its error ledger."""
        return await reads.failed_items(self, migration_id)

    async def describe_structure(
        self,
        *,
        table: str = "memories",
        column: str = "metadata",
        schema: str | None = None,
        sample_rows: int = DESCRIBE_SAMPLE_ROWS,
    ) -> StructureDescription:
        """What a JSONB column holds today: every key path, its JSON types, and how many memories
        carry it; counted on the server, over a sample of about ``sample_rows`` memories when the
        table holds more. Look at it before writing a structure migration; it reads, never writes."""
        return await reads.describe_structure(
            self, table=table, column=column, schema=schema, sample_rows=sample_rows
        )

    async def retry_failed(
        self, migration_id: str, *, config: MigrationConfig | None = None
    ) -> MigrationResult:
        """Run a data migration's transform again over the items in its error ledger, and only those.

        For a run that completed with failures (``continue_on_error``) once the cause is fixed. Items
        that succeed now are written (with their before-images) and leave the ledger.
        """
        return await runs.retry_failed(self, migration_id, config=config)

    async def running(self) -> list[Progress]:
        """The data migrations' runs in flight, from any process, each with its progress.

        A run is in flight while it is running or cancelling, or while workers still hold parts of
        it; ordered by migration id. Reads only: it takes no lock and writes nothing.
        """
        return await reads.running(self)

    async def cancel(self, migration_id: str) -> MigrationStatus:
        """Stop a running data migration at its next batch boundary, from any process.

        Its workers stop after committing their current batch; the run stays resumable:
        ``execute(id)`` resumes it (so cancel, then execute later, is pause and resume).
        Returns CANCELLING while workers are still stopping, CANCELLED once none is left.
        """
        return await runs.cancel(self, migration_id)

    async def status(self, migration_id: str) -> MigrationStatus:
        """Where one migration stands: pending, completed, failed, rolled back, running or dirty.

        A data migration can also be cancelling or cancelled (paused); one whose workers all died
        midway is failed (and resumable). A hybrid migration is running from its first step until
        it completes (:meth:`hybrid_status` tells its phase), failed when a step failed (and it was
        compensated, or its compensation failed), rolled back after ``rollback(id)``, and pending
        again once abandoned.
        """
        return await reads.status(self, migration_id)

    async def validate(self, migration_id: str) -> ValidationReport:
        """Check, without changing anything, whether a migration could be applied now."""
        return await reads.validate(self, migration_id)

    async def check(self) -> CheckReport:
        """Review the migrations before they run: several heads, pending migrations touching one
        table or column with no dependency path between them, applied migrations edited since
        (checksum drift), and unsafe DDL on the tables as they are. Reads only: no lock, no writes."""
        return await reads.check(self)

    # -- running -------------------------------------------------------------------------------

    async def run_pending(
        self,
        migration_type: MigrationType | str | None = None,
        config: MigrationConfig | None = None,
        *,
        actor: str | None = None,
        executor: Executor | None = None,
    ) -> list[MigrationResult]:
        """Apply every pending migration (of ``migration_type``, if given) in dependency order.

        A migration whose dependencies are not applied (for instance because a type filter left them
        out) is not run; it is reported as skipped. Raises on the first failure unless
        ``continue_on_error``, in which case its dependents are skipped and the rest go on.
        ``actor`` (who asked, such as the HTTP API's caller) is recorded in the history rows.
        ``executor`` runs the workers of data runs (see :meth:`execute`).
        """
        return await runs.run_pending(self, migration_type, config, actor=actor, executor=executor)

    async def execute(
        self,
        migration_id: str,
        *,
        config: MigrationConfig | None = None,
        actor: str | None = None,
        executor: Executor | None = None,
    ) -> MigrationResult:
        """Apply one migration by id; its dependencies must already be applied.

        ``actor`` (who asked, such as the HTTP API's caller) is recorded in the history rows.
        ``executor`` runs the workers of a data run over a source table, such as
        ``brainmigrate.ray.RayExecutor(workers=4)``; by default they are tasks of this process.
        The run is claimed and settled here either way.
        """
        return await runs.execute(self, migration_id, config=config, actor=actor, executor=executor)

    async def rollback(
        self,
        migration_id: str,
        *,
        cascade: bool = False,
        config: MigrationConfig | None = None,
        actor: str | None = None,
    ) -> list[MigrationResult]:
        """Reverse an applied migration; with ``cascade``, first the applied migrations that depend on it.

        Refused (with nothing changed) when a migration to reverse is not reversible, or when applied
        migrations depend on it and ``cascade`` is False. A data migration is restored from its
        before-images (or its inverse transform); one stopped midway (failed or cancelled) can be
        rolled back too, which undoes the part it wrote. ``actor`` (who asked) is recorded in the
        history rows.
        """
        return await closing.rollback(self, migration_id, cascade=cascade, config=config, actor=actor)

    async def resolve(self, migration_id: str, *, applied: bool) -> HistoryRecord:
        """Clear a dirty mark after inspecting the database by hand.

        ``applied=True`` records the migration as applied (you finished its remaining statements);
        ``applied=False`` records it as not applied (you undid what it did), so it runs again.
        """
        return await by_hand.resolve(self, migration_id, applied=applied)

    async def stamp(
        self, migration_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> list[HistoryRecord]:
        """Record a migration as applied without running it, with its dependencies not applied yet.

        For a database changed by other means (restored from a dump, changed by hand). Each gets a
        completed ``stamp`` row saying who (``actor``, by default the operating-system user) and
        why, all in one transaction under the runner lock; returned in dependency order. Refused,
        with nothing written, when it is applied already, dirty, running or stopped midway.
        """
        return await by_hand.stamp(self, migration_id, actor=actor, reason=reason)

    async def squash(
        self,
        from_id: str,
        to_id: str,
        *,
        directory: str | os.PathLike[str] | None = None,
        migration_id: str | None = None,
    ) -> Path:
        """Write one migration replacing the applied chain ``from_id``..``to_id``; returns its file.

        The chain must be a linear path of SQL schema migrations, each applied on this database.
        The file goes in ``directory`` (by default the migrations' own). Where the whole chain is
        applied, the squash is recorded as applied by the next run; elsewhere it runs. Nothing is
        written when refused.
        """
        return await by_hand.squash(self, from_id, to_id, directory=directory, migration_id=migration_id)

    # -- hybrid migrations ---------------------------------------------------------------------

    async def contract(
        self, migration_id: str, *, config: MigrationConfig | None = None, actor: str | None = None
    ) -> MigrationResult:
        """Run a hybrid migration's contract steps, once its backfill is finished and validated.

        For ``contract_mode = "manual"``: the hybrid waits at READY_TO_CONTRACT until this call, so
        the application's new code can be deployed first. Refused (HybridPhaseError, nothing
        changed) while the expand or backfill is unfinished or not validated yet. A contract that
        stopped midway (its runner died) is carried on from its next step. ``actor`` (who asked)
        is recorded in the history rows.
        """
        return await closing.contract(self, migration_id, config=config, actor=actor)

    async def abandon(self, migration_id: str, *, reason: str, actor: str | None = None) -> HistoryRecord:
        """Give up a stuck hybrid migration's run, recording who and why in history.

        The run ends where it stands (phase ABANDONED): nothing is undone or applied. Its steps
        applied stay applied, as their history says; the next ``run_pending()`` starts a new run,
        which carries on with the steps not applied. A table rewrite abandoned before its swap is
        the exception: its steps are rolled back first (refused while one still runs elsewhere),
        so that no copy, trigger or change log is left behind. ``actor`` defaults to the
        operating-system user.
        """
        return await closing.abandon(self, migration_id, reason=reason, actor=actor)

    async def hybrid_status(self, migration_id: str) -> HybridStatus:
        """Where a hybrid migration stands, from any process: its phase, the step it is at, the steps
        done. Reads only: it takes no lock and writes nothing."""
        return await reads.hybrid_status(self, migration_id)

    async def hybrid_phase(self, migration_id: str) -> HybridPhase | None:
        """A hybrid migration's phase (None: it never ran), from any process."""
        return await reads.hybrid_phase(self, migration_id)

    # -- embedding models ----------------------------------------------------------------------

    async def embedding_generations(
        self, *, table: str = "memories", column: str = "embedding", table_schema: str | None = None
    ) -> list[EmbeddingGeneration]:
        """Every embedding model ``table.column`` held or is being given, oldest first; reads only."""
        return await reads.embedding_generations(self, table=table, column=column, table_schema=table_schema)

    async def embedding_model(
        self, *, table: str = "memories", column: str = "embedding", table_schema: str | None = None
    ) -> EmbeddingModel | None:
        """The model whose vectors ``table.column`` holds (None: none recorded); reads only."""
        return await reads.embedding_model(self, table=table, column=column, table_schema=table_schema)
