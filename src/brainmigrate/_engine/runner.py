"""Runs data migrations: leased chunks of the key space, batches, checkpoints and before-images.

A run's state lives in the database (``data_runs``, ``data_chunks``, ``data_errors`` in the
history schema), so any process can join, resume, cancel or report on it. The key space is cut
into chunks; a worker leases one (``FOR UPDATE SKIP LOCKED``), pages through it by key, transforms
each batch outside any transaction, then writes a group of batches and advances the chunk's
checkpoint in one transaction. The checkpoint is written only while the worker still holds the
lease, so each item is written exactly once whatever dies when.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing

import anyio
import anyio.lowlevel
import asyncpg
import attrs

from .._errors import (
    ChecksumMismatchError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationStateError,
    MigrationValidationError,
    SchemaVersionError,
)
from .._ledger import schema as _own_schema
from .._model.config import MigrationConfig
from .._model.data import DatabaseDataMigration, DataMigration, MemoryDataMigration
from .._model.items import Progress, ProgressCallback
from .._model.results import ItemChange, ItemError
from .._model.sqltext import quote_ident
from .._model.states import ACTIVE_RUN_STATUSES, RUN_TRANSITIONS, RunStatus, allowed_sources, check_transition
from .._model.types import Connection, Pool
from .._runtime import telemetry as telemetry
from . import sql as sql
from .batches import (
    Counts,
    Entry,
    ItemValueError,
    decode_rows,
    encode_changes,
    entry_of,
    key_text,
    query_items,
    transform_items,
    unwrap,
    write_entries,
)
from .chunks import ChunkWorker, Stop, Tracker
from .pager import pages, range_count, range_end
from .plan import QUERY, STATEMENT, STREAM, RunPlan, image_candidates
from .table import TableShape
from .transform import TransformCaller, cancelled


@attrs.frozen
class Claim:
    """What a runner may do with a data migration: work on it, or leave it to others."""

    #: ``work`` (start, resume or join), ``elsewhere`` (others are running it) or ``paused``.
    kind: str
    plan: RunPlan | None = None
    note: str = ""


@attrs.define
class Outcome:
    """What this process's workers did, and why they stopped."""

    counts: Counts = attrs.field(factory=Counts)
    stop: str | None = None  # "cancelled", "timeout", "failed" (elsewhere), or None when out of work


class DataRunner:
    """Claims, works, settles, reverses and reports data-migration runs in one history schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._metrics = telemetry.data_metrics()

    # -- state ------------------------------------------------------------------------------

    async def ensure_tables(self, conn: Connection) -> None:
        """Create brainmigrate's tables if the run tables are missing (under the runner lock)."""
        if await conn.fetchval(sql.TABLE_EXISTS, f"{quote_ident(self.schema)}.{sql.CHUNKS}") is None:
            await _own_schema.upgrade(conn, self.schema, create=True)

    async def run_row(self, conn: Connection, migration_id: str) -> asyncpg.Record | None:
        """The current (latest) run of ``migration_id``, or None if it never ran."""
        try:
            return await conn.fetchrow(sql.select_run(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc

    async def progress(self, conn: Connection, migration_id: str) -> Progress | None:
        """The persisted progress of a run, or None if it never ran."""
        try:
            row = await conn.fetchrow(sql.run_progress(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc
        return None if row is None else _progress(row)

    async def running(self, conn: Connection) -> list[Progress]:
        """The progress of each current run in flight: running or cancelling, or with live workers."""
        try:
            rows = await conn.fetch(sql.running_progress(self.schema, ACTIVE_RUN_STATUSES))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc
        return [_progress(row) for row in rows]

    async def _outdated(self, conn: Connection) -> SchemaVersionError:
        """The error for run tables of an older layout (a 0.1.0 database not upgraded yet)."""
        return SchemaVersionError(
            self.schema,
            found=await _own_schema.read_version(conn, self.schema) or 1,
            supported=_own_schema.CURRENT_VERSION,
        )

    async def chunks_left(self, conn: Connection, migration_id: str) -> int:
        """Chunks of the current run's key space not done yet."""
        count: int = await conn.fetchval(sql.chunks_left(self.schema), migration_id)
        return count

    async def live_workers(self, conn: Connection, migration_id: str) -> int:
        progress = await self.progress(conn, migration_id)
        return 0 if progress is None else progress.workers

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
        """Move the current run of ``migration_id`` to ``status``; None if it was not moved.

        It moves from the statuses :data:`RUN_TRANSITIONS` allows (narrowed to ``allowed``, if given;
        a run already in ``status`` stays in it when ``allowed`` names it). With ``operation``, a
        refused move of an existing run raises MigrationStateError naming it, instead of returning None.
        """
        target = RunStatus(status)
        sources = set(allowed_sources(RUN_TRANSITIONS, target))
        if allowed is not None:
            sources = {s for s in sources if s in allowed} | ({target.value} & set(allowed))
        try:
            result: str | None = await conn.fetchval(
                sql.set_status(self.schema), migration_id, target.value, error, sorted(sources)
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        if result is None and operation is not None:
            current = await conn.fetchval(sql.run_status(self.schema), migration_id)
            if current is not None:
                check_transition(
                    RUN_TRANSITIONS,
                    RunStatus(current),
                    target,
                    operation=operation,
                    migration_id=migration_id,
                )
                raise MigrationStateError(
                    f"cannot {operation} migration {migration_id!r}: it is {current}",
                    migration_id=migration_id,
                )
        return None if result is None else RunStatus(result)

    async def resume(self, conn: Connection, migration_id: str) -> None:
        """Mark the current run running again: a stopped one, or one whose workers all died."""
        sources = sorted({*allowed_sources(RUN_TRANSITIONS, RunStatus.RUNNING), RunStatus.RUNNING.value})
        if await conn.fetchval(sql.resume_run(self.schema), migration_id, sources) is None:
            current = await conn.fetchval(sql.run_status(self.schema), migration_id)
            check_transition(
                RUN_TRANSITIONS,
                RunStatus(current),
                RunStatus.RUNNING,
                operation="resume",
                migration_id=migration_id,
            )

    async def errors(self, conn: Connection, migration_id: str) -> list[ItemError]:
        """The failed items of the current run."""
        try:
            rows = await conn.fetch(sql.select_errors(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc
        return [
            ItemError(key=r[0], error=r[1], attempts=r[2], first_failed_at=r[3], last_failed_at=r[4])
            for r in rows
        ]

    # -- claiming (under the runner lock) -----------------------------------------------------

    async def plan(self, conn: Connection, migration: DataMigration, checksum: str) -> RunPlan:
        """Check the migration against the database and derive how it runs."""
        meta = migration.metadata
        statement = (
            await migration.get_batch_statement() if isinstance(migration, DatabaseDataMigration) else None
        )
        if isinstance(migration, MemoryDataMigration) and migration.uses_query:
            mode = QUERY
        elif statement is not None:
            mode = STATEMENT
        else:
            mode = STREAM
        source = migration.source
        if source is None:
            raise MigrationValidationError(
                f"data migration {meta.id!r} has no source: set `source = DataSource(table=..., key=...)`"
                + (
                    " or override get_batch_statement()"
                    if isinstance(migration, DatabaseDataMigration)
                    else ""
                ),
                migration_id=meta.id,
            )
        shape = await TableShape.read(conn, source, meta.id)
        if mode == STREAM:
            memory = isinstance(migration, MemoryDataMigration)
            base: type = MemoryDataMigration if memory else DatabaseDataMigration
            one = "transform_memory" if memory else "transform_row"
            if not (migration._overrides(one, base) or migration._overrides("transform_batch", base)):
                raise MigrationValidationError(
                    f"data migration {meta.id!r} has nothing to do: override {one}() or transform_batch()"
                    + ("" if memory else " or get_batch_statement()"),
                    migration_id=meta.id,
                )
        reverse = None
        if meta.reversible:
            reverse = "inverse" if self._has_inverse(migration) else "images"
            if mode == STATEMENT and reverse == "images":
                assert isinstance(migration, DatabaseDataMigration)
                if not migration.writes:
                    raise MigrationValidationError(
                        f"data migration {meta.id!r} is reversible but its batch statement declares no "
                        "`writes` (the columns it changes, whose before-images are kept) and no "
                        "get_rollback_batch_statement()",
                        migration_id=meta.id,
                    )
                shape.check_columns(migration.writes, meta.id, "writes")
        image = (
            f"{quote_ident(self.schema)}.{quote_ident(sql.image_table(meta.id))}"
            if reverse == "images"
            else None
        )
        read = [name for name in source.columns if name != shape.key.name]
        return RunPlan(
            migration=migration,
            checksum=checksum,
            schema=self.schema,
            mode=mode,
            shape=shape,
            read_columns=shape.read_columns(read),
            image=image,
            reverse=reverse,
            statement=statement,
        )

    def _has_inverse(self, migration: DataMigration) -> bool:
        if isinstance(migration, MemoryDataMigration):
            return migration._overrides("reverse_memory", MemoryDataMigration)
        assert isinstance(migration, DatabaseDataMigration)
        return migration._overrides("reverse_row", DatabaseDataMigration) or (
            type(migration).get_rollback_batch_statement
            is not DatabaseDataMigration.get_rollback_batch_statement
        )

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
        """Work on the run's chunks until none is left to lease here, or the run is stopped."""
        outcome = Outcome()
        deadline = time.monotonic() + config.timeout_seconds
        workers = config.max_workers if config.parallel_execution and plan.mode != QUERY else 1
        async with pool.acquire() as conn:
            baseline = await self.progress(conn, plan.migration_id)
        tracker = Tracker(plan.migration_id, baseline, on_progress)
        caller = TransformCaller(config, plan.migration.retry_on)

        errors: list[BaseException] = []

        async def worker(scope: anyio.CancelScope) -> None:
            chunker = ChunkWorker(self.schema, self._metrics, pool, plan, config, caller, tracker, deadline)
            try:
                await chunker.run()
            except Stop as stop:
                outcome.stop = stop.reason
            except Exception as exc:  # the first failure stops the other workers too
                errors.append(unwrap(exc))
                scope.cancel()
            except BaseException as exc:
                # A CancelledError the migration's own code raised (throttle(), its query) is a
                # failure: the task group would swallow it, leaving the run neither done nor failed.
                if isinstance(exc, KeyboardInterrupt | SystemExit) or await cancelled():
                    raise
                error = MigrationExecutionError(
                    f"data migration {plan.migration_id!r} failed: {type(exc).__name__}: {exc} (raised by "
                    "the migration's code, not by a cancellation of the run)",
                    migration_id=plan.migration_id,
                )
                error.__cause__ = exc
                errors.append(error)
                scope.cancel()
            finally:
                with anyio.CancelScope(shield=True):
                    await chunker.close()

        async with anyio.create_task_group() as group:
            for _ in range(workers):
                group.start_soon(worker, group.cancel_scope)
        outcome.counts = tracker.counts
        if errors:
            raise errors[0]
        if outcome.stop == "timeout":
            raise MigrationExecutionError(
                f"data migration {plan.migration_id!r} did not finish within timeout_seconds="
                f"{config.timeout_seconds:g}; it stopped at a batch boundary",
                migration_id=plan.migration_id,
            )
        return outcome

    # -- reversing ---------------------------------------------------------------------------

    async def check_reversible(self, conn: Connection, plan: RunPlan) -> None:
        """Raise IrreversibleMigrationError unless the run can be reversed now."""
        meta = plan.migration.metadata
        if plan.reverse is None:
            raise IrreversibleMigrationError(meta.id)
        if plan.reverse == "images":
            row = await self.run_row(conn, meta.id)
            image = row["before_images"] if row is not None else None
            if image is None or await conn.fetchval(sql.TABLE_EXISTS, image) is None:
                raise IrreversibleMigrationError(
                    meta.id, reason="its before-images are gone, so its old values cannot be restored"
                )

    async def reverse(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
        """Undo what the run wrote, inside the caller's transaction; return the rows restored."""
        shape = plan.table
        if plan.reverse == "images":
            assert plan.image is not None
            sets = [row[0] for row in await conn.fetch(sql.written_sets(plan.image))]
            written = sorted({name for names in sets for name in names})
            restored = 0
            if written:
                # The join with the before-images spills to disk with a small work_mem (20 s
                # instead of 10 s for 1M rows); this transaction's restore may use more.
                await conn.execute(sql.RESTORE_WORK_MEM)
                status = await conn.execute(
                    sql.restore_images(
                        plan.image,
                        shape.qualified,
                        shape.key.quoted,
                        [(quote_ident(c), c) for c in written],
                        uniform=len(sets) == 1,
                    )
                )
                restored = int(status.split()[-1])
            await conn.execute(sql.drop_images(plan.image))
            return restored
        migration = plan.migration
        if isinstance(migration, DatabaseDataMigration) and (
            statement := await migration.get_rollback_batch_statement()
        ):
            return await self._reverse_by_statement(conn, plan, statement, config)
        return await self._reverse_by_transform(conn, plan, config)

    async def _reverse_by_statement(
        self, conn: Connection, plan: RunPlan, statement: str, config: MigrationConfig
    ) -> int:
        """Run the rollback statement over key ranges of the whole table (the source's filter is not
        applied: it may no longer match migrated rows)."""
        count = 0
        key_ranges = pages(
            conn,
            plan.table_range_sql,
            None,
            None,
            config.batch_size,
            cursor_of=range_end,
            count_of=range_count,
        )
        async with aclosing(key_ranges) as key_ranges:
            async for page in key_ranges:
                first, last, _, rows = page.rows[0]
                await conn.execute(statement, first, last)
                count += rows
        return count

    async def _reverse_by_transform(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
        """Apply the inverse transform to every row of the table (the source's filter is not applied)."""
        migration = plan.migration
        count = 0
        async with aclosing(pages(conn, plan.table_page_sql, None, None, config.batch_size)) as table:
            async for page in table:
                entries: list[Entry] = []
                for item in decode_rows(plan, page.rows):
                    if isinstance(migration, MemoryDataMigration):
                        entries.append(entry_of(plan, item, await migration.reverse_memory(item)))
                    else:
                        assert isinstance(migration, DatabaseDataMigration)
                        entries.append(entry_of(plan, item, await migration.reverse_row(item)))
                await write_entries(conn, plan, [e for e in entries if e.changes is not None], isolate=False)
                count += sum(1 for e in entries if e.changes is not None)
        return count

    async def discard(
        self, conn: Connection, plan: RunPlan, status: RunStatus | str, error: str | None = None
    ) -> None:
        """Forget the current run's chunks and errors, keeping its row with ``status`` (rolled back)."""
        await conn.execute(sql.clear_chunks(self.schema), plan.migration_id)
        await self.set_status(conn, plan.migration_id, status, None, error, operation="roll back")

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

    # -- dry run -----------------------------------------------------------------------------

    async def sample(
        self, conn: Connection, plan: RunPlan, config: MigrationConfig
    ) -> tuple[Counts, list[ItemChange]]:
        """Transform a sample and report what would change; writes nothing."""
        migration = plan.migration
        if plan.mode == STATEMENT:
            return Counts(), []
        if plan.mode == QUERY:
            assert isinstance(migration, MemoryDataMigration)
            items = query_items(plan, await migration.get_memories_to_migrate())
            items = items[: config.dry_run_sample]
        else:
            async with aclosing(pages(conn, plan.page_sql, None, None, config.dry_run_sample)) as source:
                page = await anext(source, None)  # the first page only
            items = decode_rows(plan, page.rows if page is not None else [])
        # The values as read, untouched by a transform that edits its input in place (only here:
        # a run writes what the transform returns and needs no copy).
        key_name = plan.table.key.name
        before = {key_text(item[key_name]): copy.deepcopy(item) for item in items}
        caller = TransformCaller(config, migration.retry_on)
        entries = await transform_items(plan, caller, items)
        counts = Counts()
        changes: list[ItemChange] = []
        for entry in entries:
            if entry.error is None and entry.changes is not None:
                try:  # a value the run could not write fails the item here too
                    encode_changes(plan, entry)
                except ItemValueError as exc:
                    entry = attrs.evolve(entry, error=exc.reason)
            if entry.error is not None:
                counts.failed += 1
            elif entry.changes is None:
                counts.skipped += 1
            else:
                counts.processed += 1
                old = before.get(key_text(entry.key), {})
                for column, value in entry.changes.items():
                    if len(changes) < 20 and (column not in old or old[column] != value):
                        changes.append(
                            ItemChange(key=entry.key, column=column, before=old.get(column), after=value)
                        )
        return counts, changes


def _progress(row: asyncpg.Record) -> Progress:
    """A run's progress from a row of :func:`sql.run_progress`."""
    (
        status,
        total,
        started,
        resumed,
        at_resume,
        error,
        processed,
        failed,
        skipped,
        batches,
        updated,
        live,
        _,
        _now,
        migration_id,
    ) = row
    done = processed + failed + skipped
    elapsed = (updated - resumed).total_seconds()
    rate = (done - at_resume) / elapsed if elapsed > 0 and done > at_resume else None
    return Progress(
        migration_id=migration_id,
        status=status,
        processed=processed,
        failed=failed,
        skipped=skipped,
        total=total,
        batch_number=batches,
        rate=rate,
        started_at=started,
        updated_at=updated,
        workers=live,
        error=error,
    )


# -- helpers shared by the workers ----------------------------------------------------------------
