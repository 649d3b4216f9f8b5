"""Applying migrations: ``run_pending`` and ``execute``, each under the runner lock with the work a
runner defers (a data migration's batches) run without it; a data run's ``retry_failed`` and ``cancel``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from .._catalog_view import _applied, _Catalog
from .._engine.executors import Executor, placed
from .._errors import DependencyError, MigrationExecutionError, MigrationStateError, MigrationValidationError
from .._ledger.connect import connection
from .._ledger.history import MigrationState, acting_as
from .._ledger.session import RunnerSession, runner_session
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.metadata import MigrationStatus, MigrationType
from .._model.migration import Migration
from .._model.results import MigrationResult
from .._model.states import ACTIVE_RUN_STATUSES, RunStatus
from .._rewrite.migration import RewriteMigration
from .._runners.base import Deferred, not_run
from .._runners.dry_run import dry_run
from .._runtime import telemetry as telemetry
from .._strategies import sampled
from .workbench import APPLY, Parts, checked_actor, checked_states, config_of, load, prepare_writes, runs_as

logger = logging.getLogger("brainmigrate")


async def retry_failed(
    migrator: Parts, migration_id: str, *, config: MigrationConfig | None
) -> MigrationResult:
    cfg = config_of(migrator, config)
    catalog = await load(migrator)
    migration = catalog.get(migration_id)
    if not isinstance(migration, DataMigration):
        raise MigrationStateError(
            f"migration {migration_id!r} is not a data migration; only those keep failed items",
            migration_id=migration_id,
        )
    return await migrator._data_runner.retry_failed(migration, catalog.checksums[migration_id], cfg)


async def cancel(migrator: Parts, migration_id: str) -> MigrationStatus:
    catalog = await load(migrator)
    migration = catalog.get(migration_id)
    async with connection(migrator.pool) as conn:
        migration_id = await runs_as(migrator, catalog).data_run_id(migration_id, conn)
        if (
            not isinstance(migration, DataMigration | RewriteMigration)
            or await migrator._data.set_status(conn, migration_id, RunStatus.CANCELLING, ACTIVE_RUN_STATUSES)
            is None
        ):
            raise MigrationStateError(
                f"migration {migration_id!r} is not a running data migration, so there is nothing to cancel",
                migration_id=migration_id,
            )
        if not await migrator._data.live_workers(conn, migration_id):
            await migrator._data.set_status(conn, migration_id, RunStatus.CANCELLED)
            return MigrationStatus.CANCELLED
    logger.info("data migration %s: cancellation requested", migration_id)
    return MigrationStatus.CANCELLING


async def run_pending(
    migrator: Parts,
    migration_type: MigrationType | str | None,
    config: MigrationConfig | None,
    *,
    actor: str | None,
    executor: Executor | None,
) -> list[MigrationResult]:
    if actor is not None:
        with acting_as(checked_actor(actor)):
            return await run_pending(migrator, migration_type, config, actor=None, executor=executor)
    if executor is not None:
        with placed(executor, source=migrator._source, pool=migrator.pool):
            return await run_pending(
                migrator,
                migration_type,
                executor.prepare(config_of(migrator, config)),
                actor=None,
                executor=None,
            )
    cfg = config_of(migrator, config)
    catalog = await load(migrator)
    results: list[MigrationResult] = []
    settled: set[str] = set()  # reported already: applied, skipped, failed or running elsewhere
    with telemetry.tracer().start_as_current_span(telemetry.SPAN_RUN) as span:
        span.set_attribute(telemetry.ATTR_DRY_RUN, cfg.dry_run)
        while True:
            # The runner lock is held for schema migrations and for the short transitions of
            # data migrations, never while a data migration's batches run.
            async with runner_session(migrator.pool, migrator.schema, cfg) as session:
                states = await checked_states(migrator, catalog, cfg, session)
                plan = [m for m in catalog.pending(states, migration_type) if m.metadata.id not in settled]
                if not settled:
                    span.set_attribute(telemetry.ATTR_PENDING_COUNT, len(plan))
                if cfg.dry_run:
                    dry_results = await dry_run(
                        migrator._runners, [(sampled(m), APPLY) for m in plan], cfg, session
                    )
                    return await runs_as(migrator, catalog).shown(dry_results, cfg, session)
                if plan:
                    await prepare_writes(migrator, session, states)
                claimed = await apply_plan(migrator, plan, states, catalog, cfg, session, results, settled)
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
    migrator: Parts,
    migration_id: str,
    *,
    config: MigrationConfig | None,
    actor: str | None,
    executor: Executor | None,
) -> MigrationResult:
    if actor is not None:
        with acting_as(checked_actor(actor)):
            return await execute(migrator, migration_id, config=config, actor=None, executor=executor)
    if executor is not None:
        with placed(executor, source=migrator._source, pool=migrator.pool):
            return await execute(
                migrator,
                migration_id,
                config=executor.prepare(config_of(migrator, config)),
                actor=None,
                executor=None,
            )
    cfg = config_of(migrator, config)
    catalog = await load(migrator)
    migration = catalog.top_level(migration_id, "execute")
    async with runner_session(migrator.pool, migrator.schema, cfg) as session:
        states = await checked_states(migrator, catalog, cfg, session)
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
            dry_results = await dry_run(migrator._runners, [(sampled(migration), APPLY)], cfg, session)
            return (await runs_as(migrator, catalog).shown(dry_results, cfg, session))[0]
        await prepare_writes(migrator, session, states)
        if migration_id in catalog.rewrites:
            migration = await runs_as(migrator, catalog).effective(
                migration, await session.work_connection(), config=cfg
            )
        outcome = await migrator._runners.of(migration).apply(
            migration, catalog.checksums[migration_id], cfg, session, resume=True
        )
    # Work deferred by its runner (a data migration's batches) runs without the runner lock.
    return outcome if isinstance(outcome, MigrationResult) else await outcome()


async def apply_plan(
    migrator: Parts,
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
                migration = await runs_as(migrator, catalog).effective(
                    migration, await session.work_connection(), config=cfg
                )
            outcome = await migrator._runners.of(migration).apply(
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
