"""The Migrator: the one object users hold to plan, apply, roll back and inspect migrations."""

from __future__ import annotations

import getpass
import logging
import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from ._authoring.squash import write_squash
from ._catalog.graph import MigrationGraph
from ._catalog.loader import MigrationSource, configured_source, load_migrations
from ._catalog_view import (
    _applied,
    _Catalog,
    _hybrid_steps,
    _refuse_dependencies_on_steps,
)
from ._engine.executors import Executor, placed
from ._engine.reshape import DESCRIBE_SAMPLE_ROWS, describe_structure
from ._engine.runner import DataRunner
from ._errors import (
    ChecksumMismatchError,
    ConfigError,
    DependencyError,
    DirtyMigrationError,
    MigrationExecutionError,
    MigrationStateError,
    MigrationValidationError,
)
from ._ledger import sql as _sql
from ._ledger.connect import connection
from ._ledger.embeddings import EmbeddingLedger
from ._ledger.history import Attempt, HistoryLedger, MigrationState, acting_as
from ._ledger.hybrid import HybridLedger
from ._ledger.lock import key_parts, lock_key
from ._ledger.session import RunnerSession, runner_session
from ._ledger.stamps import Stamp, replaced_ids, stamp_refusal, stamp_squashes, with_squashes, write_stamps
from ._model.config import MigrationConfig, check_schema_name
from ._model.data import DataMigration
from ._model.embedding import EmbeddingGeneration, EmbeddingModel, GenerationStatus
from ._model.hybrid import HybridMigration, HybridStatus
from ._model.items import Progress, ProgressCallback
from ._model.metadata import MigrationMetadata, MigrationStatus, MigrationType
from ._model.migration import Migration, MigrationKind, check_definition
from ._model.results import (
    HistoryRecord,
    ItemError,
    MigrationResult,
    StructureDescription,
    ValidationReport,
)
from ._model.sqltext import quote_ident
from ._model.states import (
    ACTIVE_RUN_STATUSES,
    AttemptStatus,
    HybridPhase,
    MigrationOperation,
    RunStatus,
)
from ._model.statistics import HistoryStatistics, summarise, window_start
from ._model.types import Connection
from ._review.check import review
from ._review.report import CheckReport
from ._rewrite.migration import RewriteMigration
from ._runners.base import Deferred, Runners, not_run
from ._runners.data import DataMigrationRunner
from ._runners.dry_run import dry_run
from ._runners.hybrid import HybridRunner
from ._runners.hybrid_records import steps_done
from ._runners.schema import SchemaRunner
from ._runners.structure import StructureMigrationRunner
from ._runtime import telemetry as telemetry
from ._runtime.steps import now
from ._strategies import RunsAs, as_they_run, sampled

logger = logging.getLogger("brainmigrate")

#: Run statuses that decide a data migration's status while it is not applied.
_STOPPABLE = (RunStatus.RUNNING, RunStatus.CANCELLING, RunStatus.CANCELLED, RunStatus.FAILED)

APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK


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
        catalog = await self._load()
        async with connection(self.pool) as conn:
            states = with_squashes(catalog.migrations, catalog.checksums, await self._ledger.states(conn))
        return [migration.metadata for migration in catalog.pending(states, migration_type)]

    async def history(self) -> list[HistoryRecord]:
        """Every recorded attempt, oldest first."""
        async with connection(self.pool) as conn:
            return await self._ledger.records(conn)

    async def statistics(self, *, since: datetime | timedelta | None = None) -> HistoryStatistics:
        """Success rate of attempts and average rollback time, over the history since ``since`` (a
        timezone-aware time, a span back from now, or None for all); see :class:`HistoryStatistics`."""
        start = window_start(since)
        return summarise(await self.history(), start)

    async def progress(self, migration_id: str) -> Progress | None:
        """How far a data migration's latest run got (from any process), or None if it never ran."""
        catalog = await self._load()
        migration = catalog.get(migration_id)
        if not isinstance(migration, DataMigration | RewriteMigration):
            raise MigrationStateError(
                f"migration {migration_id!r} is not a data migration; only those report progress",
                migration_id=migration_id,
            )
        async with connection(self.pool) as conn:
            run_id = await self._runs_as(catalog).data_run_id(migration_id, conn)
            return await self._data.progress(conn, run_id)

    async def failed_items(self, migration_id: str) -> list[ItemError]:
        """The items of a data migration that failed (with ``continue_on_error``), from its error ledger."""
        (await self._load()).get(migration_id)
        async with connection(self.pool) as conn:
            return await self._data.errors(conn, migration_id)

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
        async with connection(self.pool) as conn:
            return await describe_structure(conn, table, column, schema, sample_rows)

    async def retry_failed(
        self, migration_id: str, *, config: MigrationConfig | None = None
    ) -> MigrationResult:
        """Run a data migration's transform again over the items in its error ledger, and only those.

        For a run that completed with failures (``continue_on_error``) once the cause is fixed. Items
        that succeed now are written (with their before-images) and leave the ledger.
        """
        cfg = self._config(config)
        catalog = await self._load()
        migration = catalog.get(migration_id)
        if not isinstance(migration, DataMigration):
            raise MigrationStateError(
                f"migration {migration_id!r} is not a data migration; only those keep failed items",
                migration_id=migration_id,
            )
        return await self._data_runner.retry_failed(migration, catalog.checksums[migration_id], cfg)

    async def running(self) -> list[Progress]:
        """The data migrations' runs in flight, from any process, each with its progress.

        A run is in flight while it is running or cancelling, or while workers still hold parts of
        it; ordered by migration id. Reads only: it takes no lock and writes nothing.
        """
        async with connection(self.pool) as conn:
            return await self._data.running(conn)

    async def cancel(self, migration_id: str) -> MigrationStatus:
        """Stop a running data migration at its next batch boundary, from any process.

        Its workers stop after committing their current batch; the run stays resumable:
        ``execute(id)`` resumes it (so cancel, then execute later, is pause and resume).
        Returns CANCELLING while workers are still stopping, CANCELLED once none is left.
        """
        catalog = await self._load()
        migration = catalog.get(migration_id)
        async with connection(self.pool) as conn:
            migration_id = await self._runs_as(catalog).data_run_id(migration_id, conn)
            if (
                not isinstance(migration, DataMigration | RewriteMigration)
                or await self._data.set_status(conn, migration_id, RunStatus.CANCELLING, ACTIVE_RUN_STATUSES)
                is None
            ):
                raise MigrationStateError(
                    f"migration {migration_id!r} is not a running data migration, so there is nothing "
                    "to cancel",
                    migration_id=migration_id,
                )
            if not await self._data.live_workers(conn, migration_id):
                await self._data.set_status(conn, migration_id, RunStatus.CANCELLED)
                return MigrationStatus.CANCELLED
        logger.info("data migration %s: cancellation requested", migration_id)
        return MigrationStatus.CANCELLING

    async def status(self, migration_id: str) -> MigrationStatus:
        """Where one migration stands: pending, completed, failed, rolled back, running or dirty.

        A data migration can also be cancelling or cancelled (paused); one whose workers all died
        midway is failed (and resumable). A hybrid migration is running from its first step until
        it completes (:meth:`hybrid_status` tells its phase), failed when a step failed (and it was
        compensated, or its compensation failed), rolled back after ``rollback(id)``, and pending
        again once abandoned.
        """
        catalog = await self._load()
        migration = catalog.get(migration_id)
        if migration_id in catalog.rewrites:
            async with connection(self.pool) as conn:
                migration = await self._runs_as(catalog).effective(migration, conn)
        if isinstance(migration, HybridMigration):
            return await self._hybrid_migration_status(migration)
        async with connection(self.pool) as conn:
            states = with_squashes(catalog.migrations, catalog.checksums, await self._ledger.states(conn))
            state = states.get(migration_id)
            if isinstance(migration, DataMigration) and not (state is not None and state.applied):
                progress = await self._data.progress(conn, migration_id)
                if progress is not None and progress.status in _STOPPABLE:
                    if progress.status in ACTIVE_RUN_STATUSES and not progress.workers:
                        return MigrationStatus.FAILED
                    return MigrationStatus(progress.status.value)
            if state is not None and state.status == AttemptStatus.RUNNING:
                # A running mark while no session holds the runner lock means its runner died: dirty.
                # Read from pg_locks: asking takes no lock and waits for none.
                if not await conn.fetchval(_sql.lock_held_by_anyone(), *key_parts(lock_key(self.schema))):
                    return MigrationStatus.DIRTY
                return MigrationStatus.RUNNING
            if state is not None and state.dirty:
                return MigrationStatus.DIRTY
            if state is not None and state.applied:
                return MigrationStatus.COMPLETED
            latest = await self._ledger.latest_attempt(conn, migration_id)
        if latest is None:
            return MigrationStatus.PENDING
        if latest["status"] == "failed":
            return MigrationStatus.FAILED
        return MigrationStatus.ROLLED_BACK if latest["operation"] == ROLLBACK else MigrationStatus.PENDING

    async def validate(self, migration_id: str) -> ValidationReport:
        """Check, without changing anything, whether a migration could be applied now."""
        catalog = await self._load()
        migration = catalog.get(migration_id)
        problems: list[str] = []
        async with connection(self.pool) as conn:
            states = await self._ledger.states(conn)
            state = states.get(migration_id)
            if state is not None and state.dirty:
                problems.append(str(await self._dirty_error(catalog, state)))
            elif state is not None and state.applied:
                problems.append("already applied")
                if state.checksum != catalog.checksums[migration_id]:
                    problems.append(
                        str(
                            ChecksumMismatchError(
                                migration_id, expected=state.checksum, actual=catalog.checksums[migration_id]
                            )
                        )
                    )
            missing = [dep for dep in migration.metadata.dependencies if not _applied(states, dep)]
            if missing:
                problems.append(f"dependencies not applied: {', '.join(missing)}")
            transaction = conn.transaction(readonly=True)
            await transaction.start()
            try:
                if await migration.validate_preconditions(conn) is False:
                    problems.append("validate_preconditions returned False")
            except Exception as exc:
                problems.append(f"validate_preconditions raised {type(exc).__name__}: {exc}")
            finally:
                await transaction.rollback()
        return ValidationReport(migration_id=migration_id, valid=not problems, problems=tuple(problems))

    async def check(self) -> CheckReport:
        """Review the migrations before they run: several heads, pending migrations touching one
        table or column with no dependency path between them, applied migrations edited since
        (checksum drift), and unsafe DDL on the tables as they are. Reads only: no lock, no writes."""
        catalog = await self._load()
        async with connection(self.pool) as conn:
            return await review(conn, catalog, await self._ledger.states(conn))

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
        if actor is not None:
            with acting_as(_actor(actor)):
                return await self.run_pending(migration_type, config, executor=executor)
        if executor is not None:
            with placed(executor, source=self._source, pool=self.pool):
                return await self.run_pending(migration_type, executor.prepare(self._config(config)))
        cfg = self._config(config)
        catalog = await self._load()
        results: list[MigrationResult] = []
        settled: set[str] = set()  # reported already: applied, skipped, failed or running elsewhere
        with telemetry.tracer().start_as_current_span(telemetry.SPAN_RUN) as span:
            span.set_attribute(telemetry.ATTR_DRY_RUN, cfg.dry_run)
            while True:
                # The runner lock is held for schema migrations and for the short transitions of
                # data migrations, never while a data migration's batches run.
                async with runner_session(self.pool, self.schema, cfg) as session:
                    states = await self._checked_states(catalog, cfg, session)
                    plan = [
                        m for m in catalog.pending(states, migration_type) if m.metadata.id not in settled
                    ]
                    if not settled:
                        span.set_attribute(telemetry.ATTR_PENDING_COUNT, len(plan))
                    if cfg.dry_run:
                        dry_results = await dry_run(
                            self._runners, [(sampled(m), APPLY) for m in plan], cfg, session
                        )
                        return await self._runs_as(catalog).shown(dry_results, cfg, session)
                    if plan:
                        await self._prepare_writes(session, states)
                    claimed = await self._apply_plan(plan, states, catalog, cfg, session, results, settled)
                if claimed is None:
                    return results
                migration, work = claimed
                settled.add(migration.metadata.id)
                try:
                    results.append(await work())
                except (MigrationExecutionError, MigrationValidationError) as exc:
                    if not cfg.continue_on_error:
                        raise
                    logger.warning("migration %s failed, continuing: %s", migration.metadata.id, exc)
                    results.append(not_run(migration.metadata, MigrationStatus.FAILED, str(exc)))

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
        if actor is not None:
            with acting_as(_actor(actor)):
                return await self.execute(migration_id, config=config, executor=executor)
        if executor is not None:
            with placed(executor, source=self._source, pool=self.pool):
                return await self.execute(migration_id, config=executor.prepare(self._config(config)))
        cfg = self._config(config)
        catalog = await self._load()
        migration = catalog.top_level(migration_id, "execute")
        async with runner_session(self.pool, self.schema, cfg) as session:
            states = await self._checked_states(catalog, cfg, session)
            if _applied(states, migration_id):
                raise MigrationStateError(
                    f"migration {migration_id!r} is already applied; roll it back first to run it again",
                    migration_id=migration_id,
                )
            missing = [dep for dep in migration.metadata.dependencies if not _applied(states, dep)]
            if missing:
                raise DependencyError(
                    f"migration {migration_id!r} depends on {', '.join(map(repr, missing))}, "
                    "not applied yet; apply those first or use run_pending()",
                    migration_id=migration_id,
                )
            if cfg.dry_run:
                dry_results = await dry_run(self._runners, [(sampled(migration), APPLY)], cfg, session)
                return (await self._runs_as(catalog).shown(dry_results, cfg, session))[0]
            await self._prepare_writes(session, states)
            if migration_id in catalog.rewrites:
                migration = await self._runs_as(catalog).effective(
                    migration, await session.work_connection(), config=cfg
                )
            outcome = await self._runners.of(migration).apply(
                migration, catalog.checksums[migration_id], cfg, session, resume=True
            )
        # Work deferred by its runner (a data migration's batches) runs without the runner lock.
        return outcome if isinstance(outcome, MigrationResult) else await outcome()

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
        if actor is not None:
            with acting_as(_actor(actor)):
                return await self.rollback(migration_id, cascade=cascade, config=config)
        cfg = self._config(config)
        catalog = await self._load()
        target = catalog.top_level(migration_id, "roll back")
        async with runner_session(self.pool, self.schema, cfg) as session:
            states = await self._checked_states(catalog, cfg, session)
            target = await self._runs_as(catalog).effective(target, session.lock.conn)
            if not _applied(states, migration_id) and not await self._runners.of(target).stopped_midway(
                session.lock.conn, target
            ):
                done = list(steps_done(target, states)) if isinstance(target, HybridMigration) else []
                if done:
                    raise MigrationStateError(
                        f"hybrid migration {migration_id!r} cannot be rolled back now: its last run was "
                        f"abandoned, and its steps {', '.join(done)} are still applied. `await "
                        "migrator.run_pending()` starts a new run, which carries on from them (a rewrite "
                        f"swapped in waits at READY_TO_CONTRACT again); then rollback({migration_id!r}) "
                        "undoes them, or contract() finishes it; nothing was changed",
                        migration_id=migration_id,
                    )
                raise MigrationStateError(
                    f"migration {migration_id!r} is not applied, so there is nothing to roll back",
                    migration_id=migration_id,
                )
            # Dependents applied, or stopped midway (a data run paused, a hybrid before contract).
            dependents = sorted(
                [
                    mid
                    for mid in catalog.graph.descendants(migration_id)
                    if _applied(states, mid) or await self._stopped_midway(catalog, mid, session.lock.conn)
                ],
                key=catalog.graph.position,
                reverse=True,
            )
            if dependents and not cascade:
                raise DependencyError(
                    f"cannot roll back {migration_id!r}: applied migrations depend on it "
                    f"({', '.join(dependents)}); roll them back first or pass cascade=True",
                    migration_id=migration_id,
                )
            targets = [
                *[
                    await self._runs_as(catalog).effective(catalog.migrations[mid], session.lock.conn)
                    for mid in dependents
                ],
                target,
            ]
            reversals = [
                await self._runners.of(t).check_reversible(t, catalog.checksums[t.metadata.id], session)
                for t in targets
            ]
            if cfg.dry_run:
                return await dry_run(self._runners, [(t, ROLLBACK) for t in targets], cfg, session)
            return [await reverse(cfg, session) for reverse in reversals]

    async def resolve(self, migration_id: str, *, applied: bool) -> HistoryRecord:
        """Clear a dirty mark after inspecting the database by hand.

        ``applied=True`` records the migration as applied (you finished its remaining statements);
        ``applied=False`` records it as not applied (you undid what it did), so it runs again.
        """
        catalog = await self._load()
        migration = catalog.get(migration_id)
        async with runner_session(self.pool, self.schema, self.config) as session:
            state = (await self._ledger.states(session.lock.conn)).get(migration_id)
            if state is None or not state.dirty:
                raise MigrationStateError(
                    f"migration {migration_id!r} is not dirty; resolve() is only for interrupted "
                    "non-transactional migrations",
                    migration_id=migration_id,
                )
            meta = migration.metadata
            stamp = now()
            conn = await session.work_connection()
            async with conn.transaction():
                await self._ledger.close_interrupted(conn, migration_id, stamp)
                attempt_id = await self._ledger.insert(
                    conn,
                    Attempt(
                        migration_id=migration_id,
                        name=meta.name,
                        migration_type=meta.migration_type,
                        version=meta.version,
                        checksum=catalog.checksums[migration_id],
                        operation=MigrationOperation.RESOLVE,
                        status=AttemptStatus.COMPLETED,
                        applied_after=applied,
                        started_at=stamp,
                        finished_at=stamp,
                        error=f"resolved by hand as {'applied' if applied else 'not applied'}",
                    ),
                    session.lock,
                )
            record = await self._ledger.record(conn, attempt_id)
        logger.warning("dirty migration %s resolved by hand as applied=%s", migration_id, applied)
        return record

    async def stamp(
        self, migration_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> list[HistoryRecord]:
        """Record a migration as applied without running it, with its dependencies not applied yet.

        For a database changed by other means (restored from a dump, changed by hand). Each gets a
        completed ``stamp`` row saying who (``actor``, by default the operating-system user) and
        why, all in one transaction under the runner lock; returned in dependency order. Refused,
        with nothing written, when it is applied already, dirty, running or stopped midway.
        """
        if reason is not None and (not isinstance(reason, str) or not reason.strip()):
            raise ConfigError(f"reason must be a non-empty string or None, got {reason!r}")
        who = _actor(actor)
        catalog = await self._load()
        catalog.top_level(migration_id, "stamp")
        async with runner_session(self.pool, self.schema, self.config) as session:
            states = await self._checked_states(catalog, self.config, session)
            if _applied(states, migration_id):
                raise MigrationStateError(
                    f"migration {migration_id!r} is already applied, so there is nothing to stamp",
                    migration_id=migration_id,
                )
            wanted = {*catalog.graph.ancestors(migration_id), migration_id}
            due = sorted((mid for mid in wanted if not _applied(states, mid)), key=catalog.graph.position)
            for mid in due:
                refusal = stamp_refusal(catalog.migrations[mid], await self.status(mid), migration_id)
                if refusal is not None:
                    raise refusal
            await self._prepare_writes(session, states)
            dependency = f"a dependency of {migration_id!r}" + (f": {reason}" if reason else "")
            stamps = [
                Stamp(
                    catalog.migrations[mid].metadata,
                    catalog.checksums[mid],
                    reason if mid == migration_id else dependency,
                )
                for mid in due
            ]
            records = await write_stamps(self._ledger, session, stamps, actor=who)
        logger.info("stamped as applied without running: %s", ", ".join(due))
        return records

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
        catalog = await self._load()
        async with connection(self.pool) as conn:
            states = await self._ledger.states(conn)
        return await write_squash(
            catalog,
            states,
            from_id,
            to_id,
            directory=directory,
            migration_id=migration_id,
            source=self._source,
        )

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
        if actor is not None:
            with acting_as(_actor(actor)):
                return await self.contract(migration_id, config=config)
        cfg = self._config(config)
        catalog = await self._load()
        hybrid = catalog.hybrid(migration_id, "contract", rewritten=True)
        async with runner_session(self.pool, self.schema, cfg) as session:
            await self._checked_states(catalog, cfg, session)
            hybrid = await self._runs_as(catalog).hybrid(hybrid, session.lock.conn, "contract")
            work = await self._hybrid_runner.contract(hybrid, catalog.checksums[migration_id], cfg, session)
        return await work()

    async def abandon(self, migration_id: str, *, reason: str, actor: str | None = None) -> HistoryRecord:
        """Give up a stuck hybrid migration's run, recording who and why in history.

        The run ends where it stands (phase ABANDONED): nothing is undone or applied. Its steps
        applied stay applied, as their history says; the next ``run_pending()`` starts a new run,
        which carries on with the steps not applied. A table rewrite abandoned before its swap is
        the exception: its steps are rolled back first (refused while one still runs elsewhere),
        so that no copy, trigger or change log is left behind. ``actor`` defaults to the
        operating-system user.
        """
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(
                "abandon() needs a reason: say why the hybrid is given up, for the history record"
            )
        who = _actor(actor)
        catalog = await self._load()
        hybrid = catalog.hybrid(migration_id, "abandon", rewritten=True)
        async with runner_session(self.pool, self.schema, self.config) as session:
            hybrid = await self._runs_as(catalog).hybrid(hybrid, session.lock.conn, "abandon")
            attempt_id = await self._hybrid_runner.abandon(
                hybrid, session, self.config, reason_text=reason, actor=who
            )
            return await self._ledger.record(await session.work_connection(), attempt_id)

    async def hybrid_status(self, migration_id: str) -> HybridStatus:
        """Where a hybrid migration stands, from any process: its phase, the step it is at, the steps
        done. Reads only: it takes no lock and writes nothing."""
        catalog = await self._load()
        hybrid = catalog.hybrid(migration_id, "report the phase of", rewritten=True)
        async with connection(self.pool) as conn:
            hybrid = await self._runs_as(catalog).hybrid(hybrid, conn, "report the phase of")
            states = await self._ledger.states(conn)
            run = await HybridLedger(self.schema).latest(conn, migration_id)
        applied = _applied(states, migration_id)
        return HybridStatus(
            migration_id=migration_id,
            phase=HybridPhase.COMPLETED if run is None and applied else (run.phase if run else None),
            contract_mode=type(hybrid).contract_mode,
            steps=tuple(step.id for step in hybrid.steps),
            steps_done=tuple(steps_done(hybrid, states)),
            current_step=run.current_step if run is not None else None,
            error=run.error if run is not None else None,
            started_at=run.started_at if run is not None else None,
            updated_at=run.updated_at if run is not None else None,
        )

    async def hybrid_phase(self, migration_id: str) -> HybridPhase | None:
        """A hybrid migration's phase (None: it never ran), from any process."""
        return (await self.hybrid_status(migration_id)).phase

    # -- embedding models ----------------------------------------------------------------------

    async def embedding_generations(
        self, *, table: str = "memories", column: str = "embedding", table_schema: str | None = None
    ) -> list[EmbeddingGeneration]:
        """Every embedding model ``table.column`` held or is being given, oldest first; reads only."""
        async with connection(self.pool) as conn:
            where = await conn.fetchval(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.oid = to_regclass($1)",
                f"{quote_ident(table_schema)}.{quote_ident(table)}" if table_schema else quote_ident(table),
            )
            if where is None:
                return []
            return await EmbeddingLedger(self.schema).generations(conn, where, table, column)

    async def embedding_model(
        self, *, table: str = "memories", column: str = "embedding", table_schema: str | None = None
    ) -> EmbeddingModel | None:
        """The model whose vectors ``table.column`` holds (None: none recorded); reads only."""
        generations = await self.embedding_generations(table=table, column=column, table_schema=table_schema)
        active = [g for g in generations if g.status is GenerationStatus.ACTIVE]
        return active[-1].model if active else None

    async def _hybrid_migration_status(self, hybrid: HybridMigration) -> MigrationStatus:
        status = await self.hybrid_status(hybrid.metadata.id)
        phase = status.phase
        if phase is None or phase is HybridPhase.ABANDONED:
            return MigrationStatus.PENDING
        if phase is HybridPhase.COMPLETED:
            return MigrationStatus.COMPLETED
        if phase is HybridPhase.ROLLED_BACK:
            # Compensated after a failure (the failure is kept), or rolled back on request.
            return MigrationStatus.FAILED if status.error else MigrationStatus.ROLLED_BACK
        if phase is HybridPhase.FAILED or status.error:
            return MigrationStatus.FAILED
        return MigrationStatus.RUNNING

    # -- machinery -----------------------------------------------------------------------------

    async def _stopped_midway(self, catalog: _Catalog, migration_id: str, conn: Connection) -> bool:
        migration = await self._runs_as(catalog).effective(catalog.migrations[migration_id], conn)
        return await self._runners.of(migration).stopped_midway(conn, migration)

    def _runs_as(self, catalog: _Catalog) -> RunsAs:
        return RunsAs(catalog, self.schema)

    def _config(self, config: MigrationConfig | None) -> MigrationConfig:
        if config is None:
            return self.config
        if not isinstance(config, MigrationConfig):
            raise ConfigError(f"config must be a MigrationConfig, got {config!r}")
        return config

    async def _load(self) -> _Catalog:
        """Load, validate and checksum the migrations once; nothing touches the database."""
        if self._catalog is None:
            loaded = load_migrations(self._source, self.pool)
            for migration, _ in loaded:
                await check_definition(migration)
            loaded, rewrites = await as_they_run(loaded)
            _refuse_dependencies_on_steps(loaded)
            graph = MigrationGraph.build((migration.metadata, label) for migration, label in loaded)
            for migration, _ in loaded:
                if isinstance(migration, RewriteMigration):  # built here, from one checked above
                    await check_definition(migration)
                if isinstance(migration, HybridMigration):
                    await migration.check_steps()
            for rewrite in rewrites.values():
                await rewrite.check_steps()
            migrations = {migration.metadata.id: migration for migration, _ in loaded}
            steps, owners = _hybrid_steps([*loaded, *((r, "") for r in rewrites.values())])
            checksums = {
                mid: await migration.checksum() for mid, migration in (*migrations.items(), *steps.items())
            }
            self._catalog = _Catalog(migrations, graph, checksums, steps, owners, rewrites)
        return self._catalog

    async def _prepare_writes(self, session: RunnerSession, states: Mapping[str, MigrationState]) -> None:
        """Before the first write: take the work connection, then create brainmigrate's tables if missing.

        In this order, a pool with no free connection fails (PoolExhaustedError) before anything is written.
        Existing tables of an older version were upgraded when the session took the lock.
        """
        await session.work_connection()
        if not states:
            # Short transactions on the lock's connection, which never keeps one open otherwise.
            await self._ledger.ensure(session.lock.conn)

    async def _checked_states(
        self, catalog: _Catalog, cfg: MigrationConfig, session: RunnerSession
    ) -> dict[str, MigrationState]:
        """Under the lock: read each migration's state, refusing dirt and drift."""
        states = await self._ledger.states(session.lock.conn)
        for state in states.values():
            step = catalog.steps.get(state.migration_id)
            if step is not None and type(step).rerun_after_interruption:
                continue  # its hybrid runs it again
            if state.dirty and (state.migration_id in catalog.migrations or step is not None):
                raise await self._dirty_error(catalog, state)
        if not cfg.allow_checksum_drift:
            for state in states.values():
                actual = catalog.checksums.get(state.migration_id)
                if state.applied and actual is not None and actual != state.checksum:
                    raise ChecksumMismatchError(state.migration_id, expected=state.checksum, actual=actual)
        replaced = replaced_ids(catalog.migrations)
        unknown = sorted(
            mid
            for mid, state in states.items()
            if state.applied
            and mid not in catalog.migrations
            and mid not in catalog.steps
            and mid not in replaced
        )
        if unknown:
            logger.warning("applied migrations not found in the migration source: %s", ", ".join(unknown))
        # A squash whose replaced migrations are all applied is recorded as applied (stamped).
        return await stamp_squashes(
            self._ledger, session, catalog.migrations, catalog.checksums, states, dry_run=cfg.dry_run
        )

    async def _dirty_error(self, catalog: _Catalog, state: MigrationState) -> DirtyMigrationError:
        migration = catalog.get(state.migration_id)
        index = state.statement_index or 0
        statements = await self._runners.of(migration).describe(migration, APPLY)
        return DirtyMigrationError(
            state.migration_id,
            statement_index=index,
            statement_count=state.statement_count or len(statements),
            statement=statements[index] if index < len(statements) else "",
        )

    async def _apply_plan(
        self,
        plan: Iterable[Migration],
        states: Mapping[str, MigrationState],
        catalog: _Catalog,
        cfg: MigrationConfig,
        session: RunnerSession,
        results: list[MigrationResult],
        settled: set[str],
    ) -> tuple[Migration, Deferred] | None:
        """Apply migrations in order until one's runner defers work to do without the lock (returned).

        Migrations left unapplied (data migrations running elsewhere, or paused) are reported and
        their dependents skipped.
        """
        applied = {mid for mid, state in states.items() if state.applied}
        for migration in plan:
            meta = migration.metadata
            settled.add(meta.id)
            blocked = [dep for dep in meta.dependencies if dep not in applied]
            if blocked:
                results.append(not_run(meta, MigrationStatus.SKIPPED, f"waiting for {', '.join(blocked)}"))
                continue
            try:
                if meta.id in catalog.rewrites:
                    migration = await self._runs_as(catalog).effective(
                        migration, await session.work_connection(), config=cfg
                    )
                outcome = await self._runners.of(migration).apply(
                    migration, catalog.checksums[meta.id], cfg, session, resume=False
                )
            except (MigrationExecutionError, MigrationValidationError) as exc:
                if not cfg.continue_on_error:
                    raise
                logger.warning("migration %s failed, continuing: %s", meta.id, exc)
                results.append(not_run(meta, MigrationStatus.FAILED, str(exc)))
                continue
            if not isinstance(outcome, MigrationResult):
                settled.discard(meta.id)
                return migration, outcome
            results.append(outcome)
            if outcome.status is MigrationStatus.COMPLETED:
                applied.add(meta.id)
        return None


def _actor(actor: str | None) -> str:
    """Who acts by hand: ``actor``, checked, or else the operating-system user."""
    if actor is not None and (not isinstance(actor, str) or not actor.strip()):
        raise ConfigError(f"actor must be a non-empty string or None, got {actor!r}")
    return actor if actor is not None else _operator()


def _operator() -> str:
    """Who runs this process, for the history row of an action taken by hand."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"
