"""The Migrator's reads: what is pending, applied, running, dirty or failed, a data run's progress, a
hybrid's phase, the history and its statistics, a JSONB column's structure, the embedding models; and
the reviews that change nothing (``validate``, ``check``). None takes the runner lock."""

from __future__ import annotations

from datetime import datetime, timedelta

from .._catalog_view import _applied
from .._engine import reshape
from .._errors import ChecksumMismatchError, MigrationStateError
from .._ledger import sql as _sql
from .._ledger.connect import connection
from .._ledger.embeddings import EmbeddingLedger
from .._ledger.hybrid import HybridLedger
from .._ledger.lock import key_parts, lock_key
from .._ledger.stamps import with_squashes
from .._model.data import DataMigration
from .._model.embedding import EmbeddingGeneration, EmbeddingModel, GenerationStatus
from .._model.hybrid import HybridMigration, HybridStatus
from .._model.items import Progress
from .._model.metadata import MigrationMetadata, MigrationStatus, MigrationType
from .._model.results import HistoryRecord, ItemError, StructureDescription, ValidationReport
from .._model.sqltext import quote_ident
from .._model.states import ACTIVE_RUN_STATUSES, AttemptStatus, HybridPhase, RunStatus
from .._model.statistics import HistoryStatistics, summarise, window_start
from .._review.check import review
from .._review.report import CheckReport
from .._rewrite.migration import RewriteMigration
from .._runners.hybrid_records import steps_done
from .workbench import ROLLBACK, Parts, dirty_error, load, runs_as

#: Run statuses that decide a data migration's status while it is not applied.
_STOPPABLE = (RunStatus.RUNNING, RunStatus.CANCELLING, RunStatus.CANCELLED, RunStatus.FAILED)


async def pending(migrator: Parts, migration_type: MigrationType | str | None) -> list[MigrationMetadata]:
    catalog = await load(migrator)
    async with connection(migrator.pool) as conn:
        states = with_squashes(catalog.migrations, catalog.checksums, await migrator._ledger.states(conn))
    return [migration.metadata for migration in catalog.pending(states, migration_type)]


async def history(migrator: Parts) -> list[HistoryRecord]:
    async with connection(migrator.pool) as conn:
        return await migrator._ledger.records(conn)


async def statistics(migrator: Parts, *, since: datetime | timedelta | None) -> HistoryStatistics:
    start = window_start(since)
    return summarise(await history(migrator), start)


async def progress(migrator: Parts, migration_id: str) -> Progress | None:
    catalog = await load(migrator)
    migration = catalog.get(migration_id)
    if not isinstance(migration, DataMigration | RewriteMigration):
        raise MigrationStateError(
            f"migration {migration_id!r} is not a data migration; only those report progress",
            migration_id=migration_id,
        )
    async with connection(migrator.pool) as conn:
        run_id = await runs_as(migrator, catalog).data_run_id(migration_id, conn)
        return await migrator._data.progress(conn, run_id)


async def failed_items(migrator: Parts, migration_id: str) -> list[ItemError]:
    (await load(migrator)).get(migration_id)
    async with connection(migrator.pool) as conn:
        return await migrator._data.errors(conn, migration_id)


async def describe_structure(
    migrator: Parts, *, table: str, column: str, schema: str | None, sample_rows: int
) -> StructureDescription:
    async with connection(migrator.pool) as conn:
        return await reshape.describe_structure(conn, table, column, schema, sample_rows)


async def running(migrator: Parts) -> list[Progress]:
    async with connection(migrator.pool) as conn:
        return await migrator._data.running(conn)


async def status(migrator: Parts, migration_id: str) -> MigrationStatus:
    catalog = await load(migrator)
    migration = catalog.get(migration_id)
    if migration_id in catalog.rewrites:
        async with connection(migrator.pool) as conn:
            migration = await runs_as(migrator, catalog).effective(migration, conn)
    if isinstance(migration, HybridMigration):
        return await hybrid_migration_status(migrator, migration)
    async with connection(migrator.pool) as conn:
        states = with_squashes(catalog.migrations, catalog.checksums, await migrator._ledger.states(conn))
        state = states.get(migration_id)
        if isinstance(migration, DataMigration) and not (state is not None and state.applied):
            progress = await migrator._data.progress(conn, migration_id)
            if progress is not None and progress.status in _STOPPABLE:
                if progress.status in ACTIVE_RUN_STATUSES and not progress.workers:
                    return MigrationStatus.FAILED
                return MigrationStatus(progress.status.value)
        if state is not None and state.status == AttemptStatus.RUNNING:
            # A running mark while no session holds the runner lock means its runner died: dirty.
            # Read from pg_locks: asking takes no lock and waits for none.
            if not await conn.fetchval(_sql.lock_held_by_anyone(), *key_parts(lock_key(migrator.schema))):
                return MigrationStatus.DIRTY
            return MigrationStatus.RUNNING
        if state is not None and state.dirty:
            return MigrationStatus.DIRTY
        if state is not None and state.applied:
            return MigrationStatus.COMPLETED
        latest = await migrator._ledger.latest_attempt(conn, migration_id)
    if latest is None:
        return MigrationStatus.PENDING
    if latest["status"] == "failed":
        return MigrationStatus.FAILED
    return MigrationStatus.ROLLED_BACK if latest["operation"] == ROLLBACK else MigrationStatus.PENDING


async def validate(migrator: Parts, migration_id: str) -> ValidationReport:
    catalog = await load(migrator)
    migration = catalog.get(migration_id)
    problems: list[str] = []
    async with connection(migrator.pool) as conn:
        states = await migrator._ledger.states(conn)
        state = states.get(migration_id)
        if state is not None and state.dirty:
            problems.append(str(await dirty_error(migrator, catalog, state)))
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


async def check(migrator: Parts) -> CheckReport:
    catalog = await load(migrator)
    async with connection(migrator.pool) as conn:
        return await review(conn, catalog, await migrator._ledger.states(conn))


async def hybrid_status(migrator: Parts, migration_id: str) -> HybridStatus:
    catalog = await load(migrator)
    hybrid = catalog.hybrid(migration_id, "report the phase of", rewritten=True)
    async with connection(migrator.pool) as conn:
        hybrid = await runs_as(migrator, catalog).hybrid(hybrid, conn, "report the phase of")
        states = await migrator._ledger.states(conn)
        run = await HybridLedger(migrator.schema).latest(conn, migration_id)
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


async def hybrid_phase(migrator: Parts, migration_id: str) -> HybridPhase | None:
    return (await hybrid_status(migrator, migration_id)).phase


async def embedding_generations(
    migrator: Parts, *, table: str, column: str, table_schema: str | None
) -> list[EmbeddingGeneration]:
    async with connection(migrator.pool) as conn:
        where = await conn.fetchval(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass($1)",
            f"{quote_ident(table_schema)}.{quote_ident(table)}" if table_schema else quote_ident(table),
        )
        if where is None:
            return []
        return await EmbeddingLedger(migrator.schema).generations(conn, where, table, column)


async def embedding_model(
    migrator: Parts, *, table: str, column: str, table_schema: str | None
) -> EmbeddingModel | None:
    generations = await embedding_generations(migrator, table=table, column=column, table_schema=table_schema)
    active = [g for g in generations if g.status is GenerationStatus.ACTIVE]
    return active[-1].model if active else None


async def hybrid_migration_status(migrator: Parts, hybrid: HybridMigration) -> MigrationStatus:
    status = await hybrid_status(migrator, hybrid.metadata.id)
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
