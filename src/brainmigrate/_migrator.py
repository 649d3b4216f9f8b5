"""The Migrator: the one object users hold to plan, apply, roll back and inspect migrations."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

import anyio
import asyncpg
import attrs
from opentelemetry.trace import StatusCode

from ._catalog.graph import MigrationGraph
from ._catalog.loader import configured_source, load_migrations
from ._engine.batches import Counts
from ._engine.plan import ACTIVE, ProgressCallback, RunPlan
from ._engine.runner import DataRunner, Outcome
from ._errors import (
    BrainMigrateError,
    ChecksumMismatchError,
    ConfigError,
    DependencyError,
    DirtyMigrationError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationNotFoundError,
    MigrationStateError,
    MigrationValidationError,
)
from ._ledger import sql as _sql
from ._ledger.connect import connection
from ._ledger.history import Attempt, HistoryLedger, MigrationState
from ._ledger.lock import lock_key
from ._ledger.session import RunnerSession, runner_session
from ._model.config import MigrationConfig, check_schema_name
from ._model.data import DataMigration
from ._model.items import Progress
from ._model.metadata import MigrationMetadata, MigrationStatus, MigrationType
from ._model.migration import DatabaseSchemaMigration, Migration, check_definition
from ._model.results import HistoryRecord, ItemError, MigrationResult, ValidationReport
from ._model.types import Connection
from ._runners.schema import APPLY, ROLLBACK, MigrationExecutor, now, run_gate, statements_of
from ._runtime import telemetry as telemetry
from ._runtime.retry import is_recoverable

logger = logging.getLogger("brainmigrate")


@attrs.frozen
class _Catalog:
    """The loaded migrations, their graph and their checksums."""

    migrations: Mapping[str, Migration]
    graph: MigrationGraph
    checksums: Mapping[str, str]

    def pending(
        self, states: Mapping[str, MigrationState], migration_type: MigrationType | str | None
    ) -> list[Migration]:
        """Migrations not applied (of ``migration_type``, if given), in run order."""
        wanted = None if migration_type is None else MigrationType.parse(migration_type)
        return [
            self.migrations[mid]
            for mid in self.graph.order
            if not _applied(states, mid)
            and (wanted is None or self.migrations[mid].metadata.migration_type is wanted)
        ]

    def get(self, migration_id: str) -> Migration:
        try:
            return self.migrations[migration_id]
        except KeyError:
            raise MigrationNotFoundError(migration_id, known=self.migrations) from None


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
        migrations: Any = None,
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
        self._executor = MigrationExecutor(self._ledger, self._data)
        self._on_progress = on_progress
        self._catalog: _Catalog | None = None

    # -- reading -------------------------------------------------------------------------------

    async def pending(self, migration_type: MigrationType | str | None = None) -> list[MigrationMetadata]:
        """Migrations not applied yet, in the order they would run."""
        catalog = await self._load()
        async with connection(self.pool) as conn:
            states = await self._ledger.states(conn)
        return [migration.metadata for migration in catalog.pending(states, migration_type)]

    async def history(self) -> list[HistoryRecord]:
        """Every recorded attempt, oldest first."""
        async with connection(self.pool) as conn:
            return await self._ledger.records(conn)

    async def progress(self, migration_id: str) -> Progress | None:
        """How far a data migration's latest run got (from any process), or None if it never ran."""
        migration = (await self._load()).get(migration_id)
        if not isinstance(migration, DataMigration):
            raise MigrationStateError(
                f"migration {migration_id!r} is not a data migration; only those report progress",
                migration_id=migration_id,
            )
        async with connection(self.pool) as conn:
            return await self._data.progress(conn, migration_id)

    async def failed_items(self, migration_id: str) -> list[ItemError]:
        """The items of a data migration that failed (with ``continue_on_error``), from its error ledger."""
        (await self._load()).get(migration_id)
        async with connection(self.pool) as conn:
            return await self._data.errors(conn, migration_id)

    async def retry_failed(self, migration_id: str, config: MigrationConfig | None = None) -> MigrationResult:
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
        started = now()
        async with runner_session(self.pool, self.schema, cfg) as session:
            conn = await session.work_connection()
            row = await self._data.run_row(conn, migration_id)
            if row is None or row["status"] not in ("completed", "failed", "cancelled"):
                raise MigrationStateError(
                    f"data migration {migration_id!r} has no finished or stopped run whose failed items "
                    "could be retried",
                    migration_id=migration_id,
                )
            plan = await self._data.plan(conn, migration, catalog.checksums[migration_id])
            counts = await self._data.retry_failed(conn, plan, cfg)
        return _data_result(migration.metadata, APPLY, MigrationStatus.COMPLETED, started, counts)

    async def cancel(self, migration_id: str) -> MigrationStatus:
        """Stop a running data migration at its next batch boundary, from any process.

        Its workers stop after committing their current batch; the run stays resumable:
        ``execute(id)`` resumes it (so cancel, then execute later, is pause and resume).
        Returns CANCELLING while workers are still stopping, CANCELLED once none is left.
        """
        migration = (await self._load()).get(migration_id)
        async with connection(self.pool) as conn:
            if (
                not isinstance(migration, DataMigration)
                or await self._data.set_status(conn, migration_id, "cancelling", ACTIVE) is None
            ):
                raise MigrationStateError(
                    f"migration {migration_id!r} is not a running data migration, so there is nothing "
                    "to cancel",
                    migration_id=migration_id,
                )
            if not await self._data.live_workers(conn, migration_id):
                await self._data.set_status(conn, migration_id, "cancelled", ("cancelling",))
                return MigrationStatus.CANCELLED
        logger.info("data migration %s: cancellation requested", migration_id)
        return MigrationStatus.CANCELLING

    async def status(self, migration_id: str) -> MigrationStatus:
        """Where one migration stands: pending, completed, failed, rolled back, running or dirty.

        A data migration can also be cancelling or cancelled (paused); one whose workers all died
        midway is failed (and resumable).
        """
        migration = (await self._load()).get(migration_id)
        async with connection(self.pool) as conn:
            state = (await self._ledger.states(conn)).get(migration_id)
            if isinstance(migration, DataMigration) and not (state is not None and state.applied):
                progress = await self._data.progress(conn, migration_id)
                if progress is not None and progress.status in (
                    "running",
                    "cancelling",
                    "cancelled",
                    "failed",
                ):
                    if progress.status in ACTIVE and not progress.workers:
                        return MigrationStatus.FAILED
                    return MigrationStatus(progress.status)
            if state is not None and state.status == "running":
                # A running mark with the runner lock free means its runner died: dirty.
                key = lock_key(self.schema)
                if await conn.fetchval(_sql.TRY_LOCK, key):
                    await conn.execute(_sql.UNLOCK, key)
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

    # -- running -------------------------------------------------------------------------------

    async def run_pending(
        self, migration_type: MigrationType | str | None = None, config: MigrationConfig | None = None
    ) -> list[MigrationResult]:
        """Apply every pending migration (of ``migration_type``, if given) in dependency order.

        A migration whose dependencies are not applied (for instance because a type filter left them
        out) is not run; it is reported as skipped. Raises on the first failure unless
        ``continue_on_error``, in which case its dependents are skipped and the rest go on.
        """
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
                        return await self._executor.dry_run([(m, APPLY) for m in plan], cfg, session)
                    if plan:
                        await self._prepare_writes(session, states)
                    claimed = await self._apply_plan(plan, states, catalog, cfg, session, results, settled)
                if claimed is None:
                    return results
                settled.add(claimed.migration_id)
                try:
                    results.append(await self._run_data(claimed, cfg))
                except (MigrationExecutionError, MigrationValidationError) as exc:
                    if not cfg.continue_on_error:
                        raise
                    logger.warning("migration %s failed, continuing: %s", claimed.migration_id, exc)
                    results.append(_not_run(claimed.migration.metadata, MigrationStatus.FAILED, str(exc)))

    async def execute(self, migration_id: str, config: MigrationConfig | None = None) -> MigrationResult:
        """Apply one migration by id; its dependencies must already be applied."""
        cfg = self._config(config)
        catalog = await self._load()
        migration = catalog.get(migration_id)
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
                return (await self._executor.dry_run([(migration, APPLY)], cfg, session))[0]
            await self._prepare_writes(session, states)
            if not isinstance(migration, DataMigration):
                return await self._executor.run(
                    migration, catalog.checksums[migration_id], APPLY, cfg, session
                )
            claim = await self._data.claim(
                await session.work_connection(),
                migration,
                catalog.checksums[migration_id],
                cfg,
                resume_paused=True,
                before_start=self._preconditions(migration, cfg),
            )
            if claim.kind != "work" or claim.plan is None:
                return _not_run(migration.metadata, MigrationStatus.RUNNING, claim.note)
        return await self._run_data(claim.plan, cfg)

    async def rollback(
        self, migration_id: str, config: MigrationConfig | None = None, cascade: bool = False
    ) -> list[MigrationResult]:
        """Reverse an applied migration; with ``cascade``, first the applied migrations that depend on it.

        Refused (with nothing changed) when a migration to reverse is not reversible, or when applied
        migrations depend on it and ``cascade`` is False. A data migration is restored from its
        before-images (or its inverse transform); one stopped midway (failed or cancelled) can be
        rolled back too, which undoes the part it wrote.
        """
        cfg = self._config(config)
        catalog = await self._load()
        catalog.get(migration_id)
        async with runner_session(self.pool, self.schema, cfg) as session:
            states = await self._checked_states(catalog, cfg, session)
            if not _applied(states, migration_id) and not await self._stopped_data_run(
                catalog, migration_id, session
            ):
                raise MigrationStateError(
                    f"migration {migration_id!r} is not applied, so there is nothing to roll back",
                    migration_id=migration_id,
                )
            dependents = sorted(
                (mid for mid in catalog.graph.descendants(migration_id) if _applied(states, mid)),
                key=catalog.graph.position,
                reverse=True,
            )
            if dependents and not cascade:
                raise DependencyError(
                    f"cannot roll back {migration_id!r}: applied migrations depend on it "
                    f"({', '.join(dependents)}); roll them back first or pass cascade=True",
                    migration_id=migration_id,
                )
            targets = [catalog.migrations[mid] for mid in [*dependents, migration_id]]
            data_plans: dict[str, RunPlan] = {}
            for target in targets:
                if not target.metadata.reversible:
                    raise IrreversibleMigrationError(target.metadata.id)
                if isinstance(target, DatabaseSchemaMigration) and not await statements_of(target, ROLLBACK):
                    raise IrreversibleMigrationError(
                        target.metadata.id,
                        reason="it declares reversible=True but has no rollback statements",
                    )
                if isinstance(target, DataMigration):
                    conn = await session.work_connection()
                    plan = await self._data.plan(conn, target, catalog.checksums[target.metadata.id])
                    await self._data.check_reversible(conn, plan)
                    data_plans[target.metadata.id] = plan
            if cfg.dry_run:
                return await self._executor.dry_run([(t, ROLLBACK) for t in targets], cfg, session)
            results = []
            for target in targets:
                plan_of_data = data_plans.get(target.metadata.id)
                if plan_of_data is None:
                    results.append(
                        await self._executor.run(
                            target, catalog.checksums[target.metadata.id], ROLLBACK, cfg, session
                        )
                    )
                else:
                    results.append(await self._rollback_data(plan_of_data, cfg, session))
            return results

    async def _stopped_data_run(self, catalog: _Catalog, migration_id: str, session: RunnerSession) -> bool:
        """Whether ``migration_id`` is a data migration whose run stopped midway (failed or cancelled)."""
        if not isinstance(catalog.migrations[migration_id], DataMigration):
            return False
        progress = await self._data.progress(session.lock.conn, migration_id)
        return progress is not None and (
            progress.status in ("failed", "cancelled") or (progress.status in ACTIVE and not progress.workers)
        )

    async def _rollback_data(
        self, plan: RunPlan, cfg: MigrationConfig, session: RunnerSession
    ) -> MigrationResult:
        """Restore what a data migration changed and record it, in one transaction."""
        meta = plan.migration.metadata
        started = now()
        with telemetry.migration_span(telemetry.SPAN_ROLLBACK, meta.id, meta.migration_type, False):
            conn = await session.work_connection()
            async with conn.transaction():
                restored = await self._data.reverse(conn, plan, cfg)
                await self._data.discard(conn, plan, "rolled_back")
                attempt = attrs.evolve(
                    self._data_attempt(plan, "completed", False, None, started),
                    operation=ROLLBACK,
                    started_at=started,
                )
                await self._ledger.insert(conn, attempt, session.lock)
        logger.info("rolled back data migration %s: %d rows restored", meta.id, restored)
        return _data_result(meta, ROLLBACK, MigrationStatus.ROLLED_BACK, started, Counts(processed=restored))

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
                        operation="resolve",
                        status="completed",
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

    # -- machinery -----------------------------------------------------------------------------

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
            graph = MigrationGraph.build((migration.metadata, label) for migration, label in loaded)
            for migration, _ in loaded:
                await check_definition(migration)
            migrations = {migration.metadata.id: migration for migration, _ in loaded}
            checksums = {mid: await migration.checksum() for mid, migration in migrations.items()}
            self._catalog = _Catalog(migrations, graph, checksums)
        return self._catalog

    async def _prepare_writes(self, session: RunnerSession, states: Mapping[str, MigrationState]) -> None:
        """Before the first write: take the work connection, then create the history table if missing.

        In this order, a pool with no free connection fails (PoolExhaustedError) before anything is written.
        """
        await session.work_connection()
        if not states:
            # Short statements on the lock's connection, which never keeps a transaction open.
            await self._ledger.ensure(session.lock.conn)

    async def _checked_states(
        self, catalog: _Catalog, cfg: MigrationConfig, session: RunnerSession
    ) -> dict[str, MigrationState]:
        """Under the lock: read each migration's state, refusing dirt and drift."""
        states = await self._ledger.states(session.lock.conn)
        for state in states.values():
            if state.dirty and state.migration_id in catalog.migrations:
                raise await self._dirty_error(catalog, state)
        if not cfg.allow_checksum_drift:
            for state in states.values():
                actual = catalog.checksums.get(state.migration_id)
                if state.applied and actual is not None and actual != state.checksum:
                    raise ChecksumMismatchError(state.migration_id, expected=state.checksum, actual=actual)
        unknown = sorted(
            mid for mid, state in states.items() if state.applied and mid not in catalog.migrations
        )
        if unknown:
            logger.warning("applied migrations not found in the migration source: %s", ", ".join(unknown))
        return states

    async def _dirty_error(self, catalog: _Catalog, state: MigrationState) -> DirtyMigrationError:
        migration = catalog.migrations[state.migration_id]
        index = state.statement_index or 0
        statements = await statements_of(migration, APPLY)
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
    ) -> RunPlan | None:
        """Apply schema migrations in order until a data migration is claimed for work (returned).

        Data migrations running elsewhere, or paused, are reported and their dependents skipped.
        """
        applied = {mid for mid, state in states.items() if state.applied}
        for migration in plan:
            meta = migration.metadata
            settled.add(meta.id)
            blocked = [dep for dep in meta.dependencies if dep not in applied]
            if blocked:
                results.append(_not_run(meta, MigrationStatus.SKIPPED, f"waiting for {', '.join(blocked)}"))
                continue
            try:
                if isinstance(migration, DataMigration):
                    claim = await self._data.claim(
                        await session.work_connection(),
                        migration,
                        catalog.checksums[meta.id],
                        cfg,
                        resume_paused=False,
                        before_start=self._preconditions(migration, cfg),
                    )
                    if claim.kind == "work" and claim.plan is not None:
                        settled.discard(meta.id)
                        return claim.plan
                    status = MigrationStatus.CANCELLED if claim.kind == "paused" else MigrationStatus.RUNNING
                    logger.info("data migration %s: %s", meta.id, claim.note)
                    results.append(_not_run(meta, status, claim.note))
                    continue
                results.append(
                    await self._executor.run(migration, catalog.checksums[meta.id], APPLY, cfg, session)
                )
            except (MigrationExecutionError, MigrationValidationError) as exc:
                if not cfg.continue_on_error:
                    raise
                logger.warning("migration %s failed, continuing: %s", meta.id, exc)
                results.append(_not_run(meta, MigrationStatus.FAILED, str(exc)))
                continue
            applied.add(meta.id)
        return None

    # -- data migrations -------------------------------------------------------------------------

    async def _run_data(self, plan: RunPlan, cfg: MigrationConfig) -> MigrationResult:
        """Work on a claimed data migration without the runner lock, then settle it under the lock."""
        meta = plan.migration.metadata
        started = now()
        with telemetry.migration_span(telemetry.SPAN_MIGRATION, meta.id, meta.migration_type, False) as span:
            try:
                outcome = await self._data.work(self.pool, plan, cfg, self._on_progress)
            except BaseException as exc:
                error = _data_error(exc, meta.id)
                if error is None:
                    raise
                with anyio.CancelScope(shield=True):
                    # After transient failures outlast the retries (the database is unreachable),
                    # reversing would fail or throw away hours of work: the run stays resumable.
                    error = await self._fail_data(plan, cfg, error, started, reverse=not is_recoverable(exc))
                span.set_attribute(telemetry.ATTR_STATUS, MigrationStatus.FAILED.value)
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, str(error))
                if error is exc:
                    raise
                raise error from exc
            async with runner_session(self.pool, self.schema, cfg) as session:
                result = await self._settle_data(session, plan, outcome, started, cfg)
            if isinstance(result, BrainMigrateError):  # the postconditions refused the finished run
                with anyio.CancelScope(shield=True):
                    refusal = await self._fail_data(plan, cfg, result, started)
                span.set_attribute(telemetry.ATTR_STATUS, MigrationStatus.FAILED.value)
                span.set_status(StatusCode.ERROR, str(refusal))
                raise refusal
            span.set_attribute(telemetry.ATTR_STATUS, result.status.value)
            return result

    def _preconditions(
        self, migration: Migration, cfg: MigrationConfig
    ) -> Callable[[Connection], Awaitable[None]] | None:
        """The precondition gate, run before a data migration's first batch (with validate_before)."""
        if not cfg.validate_before:
            return None

        async def gate(conn: Connection) -> None:
            await run_gate(migration.validate_preconditions, conn, "preconditions", migration.metadata.id)

        return gate

    async def _settle_data(
        self, session: RunnerSession, plan: RunPlan, outcome: Outcome, started: datetime, cfg: MigrationConfig
    ) -> MigrationResult | BrainMigrateError:
        """Under the lock: record a finished run as applied, or report where it stands.

        A finished run must pass the postcondition gate (with validate_after); when it does not,
        the refusal is returned, to be handled once the lock is released.
        """
        meta = plan.migration.metadata
        conn = await session.work_connection()
        progress = await self._data.progress(conn, meta.id)
        assert progress is not None
        counts = outcome.counts
        status = MigrationStatus.RUNNING
        note: str | None = None
        if progress.status in ("cancelling", "cancelled"):
            if progress.workers == 0:
                await self._data.set_status(conn, meta.id, "cancelled", ("cancelling",))
            status, note = MigrationStatus.CANCELLED, "cancelled at a batch boundary; execute(id) resumes it"
        elif progress.status == "failed":
            status, note = MigrationStatus.FAILED, progress.error or "failed in another worker"
        elif progress.status == "completed":
            status = MigrationStatus.COMPLETED
        elif await self._data.chunks_left(conn, meta.id):
            note = f"still running in {progress.workers} other worker(s)"
        else:
            async with conn.transaction():
                if cfg.validate_after:
                    try:
                        await run_gate(
                            plan.migration.validate_postconditions, conn, "postconditions", meta.id
                        )
                    except MigrationValidationError as refused:
                        return refused
                await session.act_as_runner(conn)  # not as a role the postconditions switched to
                await self._ledger.insert(
                    conn,
                    self._data_attempt(plan, "completed", True, progress, started),
                    session.lock,
                )
                await self._data.set_status(conn, meta.id, "completed", ("running",))
            status = MigrationStatus.COMPLETED
            logger.info(
                "applied data migration %s: %d written, %d skipped, %d failed",
                meta.id,
                progress.processed,
                progress.skipped,
                progress.failed,
            )
        return _data_result(meta, APPLY, status, started, counts, note)

    def _data_attempt(
        self, plan: RunPlan, status: str, applied: bool | None, progress: Progress | None, started: datetime
    ) -> Attempt:
        meta = plan.migration.metadata
        error = None
        if progress is not None and progress.failed:
            error = f"{progress.failed} items failed; see Migrator.failed_items({meta.id!r})"
        return Attempt(
            migration_id=meta.id,
            name=meta.name,
            migration_type=meta.migration_type,
            version=meta.version,
            checksum=plan.checksum,
            operation=APPLY,
            status=status,
            applied_after=applied,
            started_at=progress.started_at if progress is not None else started,
            finished_at=now(),
            error=error,
        )

    async def _fail_data(
        self,
        plan: RunPlan,
        cfg: MigrationConfig,
        error: BrainMigrateError,
        started: datetime,
        *,
        reverse: bool = True,
    ) -> BrainMigrateError:
        """After a failed run: reverse it (with ``enable_rollback``) or leave it resumable; record it."""
        meta = plan.migration.metadata
        message = str(error)
        async with runner_session(self.pool, self.schema, cfg) as session:
            conn = await session.work_connection()
            await self._data.set_status(conn, meta.id, "failed", ACTIVE, message)
            if reverse and cfg.enable_rollback and plan.reverse is not None:
                if await self._data.live_workers(conn, meta.id):
                    message += "; not reversed, because other workers are still running it"
                else:
                    try:
                        await self._data.check_reversible(conn, plan)
                        async with conn.transaction():
                            restored = await self._data.reverse(conn, plan, cfg)
                            await self._data.discard(conn, plan, "rolled_back", message)
                        message += f"; its writes were reversed ({restored} rows restored)"
                    except Exception as undo:
                        logger.exception("reversing data migration %s failed", meta.id)
                        message += f"; reversing it failed too ({type(undo).__name__}: {undo})"
            else:
                message += "; it can be resumed from its last checkpoint: run it again"
            progress = await self._data.progress(conn, meta.id)
            failed = attrs.evolve(self._data_attempt(plan, "failed", None, progress, started), error=message)
            await self._ledger.insert(conn, failed)
        if isinstance(error, MigrationExecutionError):
            return MigrationExecutionError(
                message,
                migration_id=meta.id,
                statement_index=error.statement_index,
                statement=error.statement,
                sqlstate=error.sqlstate,
            )
        if isinstance(error, MigrationValidationError):
            return MigrationValidationError(message, migration_id=meta.id)
        return error


def _data_error(exc: BaseException, migration_id: str) -> BrainMigrateError | None:
    """The public error for a failed data run, or None for what must propagate (cancellation)."""
    if isinstance(exc, BrainMigrateError):
        return exc
    if not isinstance(exc, Exception):
        return None
    reason = f"{type(exc).__name__}: {exc}"
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError):
        reason = f"[{sqlstate}] {exc}"
    return MigrationExecutionError(
        f"data migration {migration_id!r} failed: {reason}", migration_id=migration_id, sqlstate=sqlstate
    )


def _applied(states: Mapping[str, MigrationState], migration_id: str) -> bool:
    state = states.get(migration_id)
    return state is not None and state.applied


def _data_result(
    meta: MigrationMetadata,
    operation: str,
    status: MigrationStatus,
    started: datetime,
    counts: Counts,
    error: str | None = None,
) -> MigrationResult:
    """How a data migration's run (or rollback, or retry of failed items) ended, with its counts."""
    finished = now()
    return MigrationResult(
        migration_id=meta.id,
        name=meta.name,
        migration_type=meta.migration_type,
        operation=operation,
        status=status,
        started_at=started,
        finished_at=finished,
        duration_seconds=(finished - started).total_seconds(),
        error=error,
        items_processed=counts.processed,
        items_skipped=counts.skipped,
        items_failed=counts.failed,
    )


def _not_run(meta: MigrationMetadata, status: MigrationStatus, error: str) -> MigrationResult:
    return MigrationResult(
        migration_id=meta.id,
        name=meta.name,
        migration_type=meta.migration_type,
        operation=APPLY,
        status=status,
        error=error,
    )
