"""Runs data migrations: claims a run, works on its leased chunks, and composes the engine's parts.

The :class:`DataRunner` is what the runners hold. Under the runner lock it claims a run (starts,
resumes or joins it); without the lock its workers lease chunks of the key space and work through
them (``chunks``), on the executor in place (``executors``: in this process by default). The
persisted state of runs is read and changed in ``state``, a run's plan is made in ``plan``,
reversing a run is ``reverse`` and the dry run ``sample``; the runner delegates to them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import attrs

from .._errors import ChecksumMismatchError, MigrationExecutionError
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.items import Progress, ProgressCallback
from .._model.results import ItemChange, ItemError, WriteImpact
from .._model.sqltext import quote_ident
from .._model.states import ACTIVE_RUN_STATUSES, RunStatus
from .._model.types import Connection, Pool
from .._runtime import telemetry as telemetry
from . import reverse as _reverse
from . import sample as _sample
from . import sql as sql
from .batches import Counts, decode_rows, key_text, write_entries
from .entries import transform_items
from .executors import InProcessExecutor, Placement, WorkerJob, WorkerOutcome, placement
from .plan import QUERY, STREAM, RunPlan, image_candidates, make_plan
from .progress import Tracker
from .state import RunState
from .transform import TransformCaller

#: What a run's workers did, and why they stopped (see ``executors``).
Outcome = WorkerOutcome


@attrs.frozen
class Claim:
    """What a runner may do with a data migration: work on it, or leave it to others."""

    #: ``work`` (start, resume or join), ``elsewhere`` (others are running it) or ``paused``.
    kind: str
    plan: RunPlan | None = None
    note: str = ""


class DataRunner:
    """Claims, works, settles, reverses and reports data-migration runs in one history schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self.state = RunState(schema)
        self._metrics = telemetry.data_metrics()

    # -- state (see ``state``) ----------------------------------------------------------------

    async def ensure_tables(self, conn: Connection) -> None:
        """Create brainmigrate's tables if the run tables are missing (under the runner lock)."""
        await self.state.ensure_tables(conn)

    async def run_row(self, conn: Connection, migration_id: str) -> asyncpg.Record | None:
        """The current (latest) run of ``migration_id``, or None if it never ran."""
        return await self.state.run_row(conn, migration_id)

    async def progress(self, conn: Connection, migration_id: str) -> Progress | None:
        """The persisted progress of a run, or None if it never ran."""
        return await self.state.progress(conn, migration_id)

    async def running(self, conn: Connection) -> list[Progress]:
        """The progress of each current run in flight: running or cancelling, or with live workers."""
        return await self.state.running(conn)

    async def chunks_left(self, conn: Connection, migration_id: str) -> int:
        """Chunks of the current run's key space not done yet."""
        return await self.state.chunks_left(conn, migration_id)

    async def live_workers(self, conn: Connection, migration_id: str) -> int:
        return await self.state.live_workers(conn, migration_id)

    async def set_status(
        self,
        conn: Connection,
        migration_id: str,
        status: RunStatus | str,
        allowed: Sequence[str] | None = None,
        error: str | None = None,
        *,
        operation: str | None = None,
    ) -> RunStatus | None:
        """Move the current run of ``migration_id`` to ``status``; None if it was not moved
        (see :meth:`RunState.set_status`)."""
        return await self.state.set_status(conn, migration_id, status, allowed, error, operation=operation)

    async def resume(self, conn: Connection, migration_id: str) -> None:
        """Mark the current run running again: a stopped one, or one whose workers all died."""
        await self.state.resume(conn, migration_id)

    async def errors(self, conn: Connection, migration_id: str) -> list[ItemError]:
        """The failed items of the current run."""
        return await self.state.errors(conn, migration_id)

    # -- claiming (under the runner lock) -----------------------------------------------------

    async def plan(self, conn: Connection, migration: DataMigration, checksum: str) -> RunPlan:
        """Check the migration against the database and derive how it runs (see ``plan``)."""
        return await make_plan(conn, self.schema, migration, checksum)

    async def claim(
        self,
        conn: Connection,
        migration: DataMigration,
        checksum: str,
        config: MigrationConfig,
        *,
        resume_paused: bool,
        before_start: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> Claim:
        """Under the runner lock: start a run, resume a stopped one, join a parallel one, or step aside."""
        meta = migration.metadata
        await self.ensure_tables(conn)
        row = await self.run_row(conn, meta.id)
        status = None if row is None else RunStatus(row["status"])
        if (
            row is not None
            and status not in (RunStatus.ROLLED_BACK, RunStatus.COMPLETED)
            and row["checksum"] != checksum
        ):
            raise ChecksumMismatchError(meta.id, expected=row["checksum"], actual=checksum, resuming=True)
        plan = await self.plan(conn, migration, checksum)
        if status in ACTIVE_RUN_STATUSES:
            live = await self.live_workers(conn, meta.id)
            if live and not (config.parallel_execution and status is RunStatus.RUNNING):
                return Claim("elsewhere", plan, f"running in {live} worker(s) elsewhere")
            if not live:
                await self.resume(conn, meta.id)
            return Claim("work", plan)
        if status is RunStatus.CANCELLED and not resume_paused:
            return Claim("paused", plan, "paused (cancelled); `await migrator.execute(id)` resumes it")
        if status in (RunStatus.CANCELLED, RunStatus.FAILED):
            await self.resume(conn, meta.id)
            return Claim("work", plan)
        if before_start is not None:
            await before_start(conn)
        await self._start(conn, plan, config)
        return Claim("work", plan)

    async def _start(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> None:
        """Write a fresh run: its row, its chunks, and an empty before-image table."""
        meta = plan.migration.metadata
        shape = plan.table
        source = plan.migration.source
        assert source is not None
        total = None
        bounds: list[str] = []
        if plan.mode != QUERY:
            total = await conn.fetchval(sql.count_rows(shape.qualified, source.where))
            if config.parallel_execution and total:
                parts = min(config.max_workers * 4, max(1, total // config.batch_size))
                if parts > 1:
                    bounds = [
                        r[0]
                        for r in await conn.fetch(
                            sql.boundaries(shape.qualified, shape.key.quoted, source.where), parts
                        )
                    ]
        async with conn.transaction():  # a new run: the earlier ones are kept, with their chunks
            if plan.image is not None:
                await conn.execute(sql.drop_images(plan.image, missing_ok=True))
                columns = image_candidates(plan.migration, shape)
                await conn.execute(
                    sql.create_images(
                        plan.image, shape.qualified, shape.key.quoted, [quote_ident(c) for c in columns]
                    )
                )
            await conn.execute(
                sql.start_run(self.schema), meta.id, plan.checksum, plan.mode, total, plan.image
            )
            lowers: list[str | None] = [None, *bounds]
            uppers: list[str | None] = [*bounds, None]
            await conn.execute(sql.insert_chunks(self.schema), meta.id, lowers, uppers)

    # -- working (no runner lock) -------------------------------------------------------------

    async def work(
        self,
        pool: Pool,
        plan: RunPlan,
        config: MigrationConfig,
        on_progress: ProgressCallback | None,
    ) -> Outcome:
        """Work on the run's chunks until none is left to lease, or the run is stopped.

        The workers run on the executor in place (see ``executors``): in this process unless the
        caller placed another, for runs of a source table's rows.
        """
        placement = self.placement()
        async with pool.acquire() as conn:
            baseline = await self.progress(conn, plan.migration_id)
        job = WorkerJob(
            migration_id=plan.migration_id,
            checksum=plan.checksum,
            schema=self.schema,
            config=config,
            deadline=time.monotonic() + config.timeout_seconds,
            source=placement.source,
            dsn=placement.dsn,
            pool=pool,
            plan=plan,
            tracker=Tracker(plan.migration_id, baseline, on_progress, self._metrics),
            metrics=self._metrics,
            on_progress=on_progress,
        )
        # A query's slices and server-side key ranges are not worth carrying elsewhere.
        executor = placement.executor if plan.mode == STREAM else InProcessExecutor()
        outcome = await executor.run_workers(job)
        if outcome.stop == "timeout":
            raise MigrationExecutionError(
                f"data migration {plan.migration_id!r} did not finish within timeout_seconds="
                f"{config.timeout_seconds:g}; it stopped at a batch boundary",
                migration_id=plan.migration_id,
            )
        return outcome

    @staticmethod
    def placement() -> Placement:
        """The executor the runs started here use, and what workers elsewhere need to know."""
        return placement()

    # -- reversing (see ``reverse``) -----------------------------------------------------------

    async def check_reversible(self, conn: Connection, plan: RunPlan) -> None:
        """Raise IrreversibleMigrationError unless the run can be reversed now."""
        await _reverse.check_reversible(conn, self.state, plan)

    async def reverse(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
        """Undo what the run wrote, inside the caller's transaction; return the rows restored."""
        return await _reverse.reverse(conn, plan, config)

    async def discard(
        self, conn: Connection, plan: RunPlan, status: RunStatus | str, error: str | None = None
    ) -> None:
        """Forget the current run's chunks and errors, keeping its row with ``status`` (rolled back)."""
        await _reverse.discard(conn, self.state, plan, status, error)

    # -- retrying failed items ------------------------------------------------------------------

    async def retry_failed(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> Counts:
        """Transform and write again the items in the error ledger, and only those.

        Items that now succeed (or are skipped, or no longer exist) leave the ledger; the others
        stay with one more attempt counted. Each slice commits with its ledger changes.
        """
        keys = [error.key for error in await self.errors(conn, plan.migration_id)]
        caller = TransformCaller(config, plan.migration.retry_on)
        counts = Counts()
        for first in range(0, len(keys), config.batch_size):
            wanted = keys[first : first + config.batch_size]
            items = decode_rows(plan, await conn.fetch(plan.rows_by_key, wanted))
            entries = await transform_items(plan, caller, items)
            async with conn.transaction():
                ok = [e for e in entries if e.changes is not None and e.error is None]
                failed = [e for e in entries if e.error is not None]
                failed += await write_entries(conn, plan, ok, isolate=True)
                failed_keys = {key_text(e.key) for e in failed}
                settled = [key for key in wanted if key not in failed_keys]
                await conn.execute(sql.forget_errors(self.schema), plan.migration_id, settled)
                if failed:
                    await conn.execute(
                        sql.record_errors(self.schema),
                        plan.migration_id,
                        [key_text(e.key) for e in failed],
                        [e.error or "" for e in failed],
                    )
                written = len(ok) - (len(failed) - sum(1 for e in entries if e.error is not None))
                skipped = sum(1 for e in entries if e.changes is None and e.error is None)
                await conn.execute(
                    sql.move_failed(self.schema), plan.migration_id, written, skipped, len(settled)
                )
            counts.processed += written
            counts.skipped += skipped
            counts.failed += len(failed)
        return counts

    # -- dry run (see ``sample``) ---------------------------------------------------------------

    async def sample(
        self, conn: Connection, plan: RunPlan, config: MigrationConfig
    ) -> tuple[Counts, list[ItemChange], WriteImpact | None]:
        """Transform a sample and report what would change and what writing a row costs (measured
        in a savepoint that is rolled back); leaves nothing written."""
        return await _sample.sample(conn, plan, config)
