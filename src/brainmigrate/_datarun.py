"""Runs data migrations: leased chunks of the key space, batches, checkpoints and before-images.

A run's state lives in the database (``data_runs``, ``data_chunks``, ``data_errors`` in the
history schema), so any process can join, resume, cancel or report on it. The key space is cut
into chunks; a worker leases one (``FOR UPDATE SKIP LOCKED``), pages through it by key, transforms
each batch outside any transaction, then writes a group of batches and advances the chunk's
checkpoint in one transaction. The checkpoint is written only while the worker still holds the
lease, so each item is written exactly once whatever dies when.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import asyncpg
import attrs
import tenacity

from . import _run_sql as sql
from . import _telemetry as telemetry
from ._config import MigrationConfig
from ._data import DatabaseDataMigration, DataMigration, MemoryDataMigration
from ._errors import (
    ChecksumMismatchError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationValidationError,
    PoolExhaustedError,
)
from ._items import MEMORY_FIELDS, BulkMemoryItem, Progress
from ._results import ItemChange, ItemError
from ._retry import TRANSIENT_SQLSTATES
from ._sql import quote_ident, set_session_timeouts
from ._table import Column, TableShape
from ._transform import TransformCaller
from ._types import Connection, Pool, is_usable

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

T = TypeVar("T")

logger = logging.getLogger("brainmigrate")

STREAM = "stream"  # pages of a source table, transformed in Python
QUERY = "query"  # slices returned by get_memories_to_migrate(), until it returns none
STATEMENT = "statement"  # an SQL statement per key range, on the server

#: Statuses in which a run is still going (or stopping) somewhere.
ACTIVE = ("running", "cancelling")

ProgressCallback = Callable[[Progress], Awaitable[None] | None]


def is_transient(exc: BaseException) -> bool:
    """A failure a batch is retried after, from its checkpoint: lost connections, conflicts."""
    if isinstance(exc, asyncpg.PostgresConnectionError | asyncpg.InterfaceError | OSError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state in TRANSIENT_SQLSTATES or state.startswith("08") or state in ("57P01", "57P02", "57P03")
    return False


class LeaseLost(Exception):
    """Another worker took over this worker's chunk (its lease expired or its session ended)."""


class _Stop(Exception):
    """The run was asked to stop (cancelled, failed elsewhere, or out of time) at a batch boundary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define
class Counts:
    processed: int = 0
    failed: int = 0
    skipped: int = 0
    batches: int = 0

    def add(self, other: Counts) -> None:
        self.processed += other.processed
        self.failed += other.failed
        self.skipped += other.skipped
        self.batches += other.batches


@attrs.frozen
class _Entry:
    """One item's outcome after its transform: changes to write, a skip, or a failure."""

    key: Any
    changes: dict[str, Any] | None = None
    error: str | None = None


@attrs.define
class RunPlan:
    """How one data migration runs here: its mode, table, and the SQL derived from them."""

    migration: DataMigration
    checksum: str
    schema: str
    mode: str
    shape: TableShape | None
    read_columns: list[Column]
    image: str | None
    reverse: str | None  # "images", "inverse", or None when not reversible
    statement: str | None = None
    _sql_cache: dict[Any, str] = attrs.field(factory=dict)

    @property
    def migration_id(self) -> str:
        return self.migration.metadata.id

    @property
    def table(self) -> TableShape:
        assert self.shape is not None
        return self.shape

    def page_sql(self, lower: str | None, upper: bool) -> str:
        key = ("page", lower, upper)
        if key not in self._sql_cache:
            shape = self.table
            source = self.migration.source
            assert source is not None
            self._sql_cache[key] = sql.page(
                shape.qualified,
                shape.key.quoted,
                [column.select() for column in self.read_columns],
                source.where,
                shape.key.sql_type,
                lower=lower,
                upper=upper,
            )
        return self._sql_cache[key]

    def range_sql(self, lower: str | None, upper: bool) -> str:
        key = ("range", lower, upper)
        if key not in self._sql_cache:
            shape = self.table
            source = self.migration.source
            assert source is not None
            self._sql_cache[key] = sql.key_range(
                shape.qualified, shape.key.quoted, source.where, shape.key.sql_type, lower=lower, upper=upper
            )
        return self._sql_cache[key]

    def write_sql(self, fields: tuple[str, ...]) -> tuple[str, list[Column]]:
        columns = self.table.check_columns(fields, self.migration_id, "writes")
        key = ("write", fields)
        if key not in self._sql_cache:
            for column in columns:
                column.param_type()  # refuses array columns with a clear error
            self._sql_cache[key] = sql.write_batch(
                self.table.qualified,
                self.table.key.quoted,
                self.table.key.sql_type,
                [(c.quoted, c.param_type(), f"::{c.sql_type}" if c.sent_as_text else "") for c in columns],
                self.image if self.reverse == "images" else None,
            )
        return self._sql_cache[key], columns


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


def image_candidates(migration: DataMigration, shape: TableShape) -> list[str]:
    """Columns whose before-images a reversible migration keeps: those it may write."""
    if isinstance(migration, MemoryDataMigration):
        return [name for name in MEMORY_FIELDS if name in shape.columns]
    assert isinstance(migration, DatabaseDataMigration)
    if migration.writes:
        return list(migration.writes)
    return [name for name in shape.columns if name != shape.key.name]


class DataRunner:
    """Claims, works, settles, reverses and reports data-migration runs in one history schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._metrics = telemetry.data_metrics()

    # -- state ------------------------------------------------------------------------------

    async def ensure_tables(self, conn: Connection) -> None:
        if await conn.fetchval("SELECT to_regclass($1)", f"{quote_ident(self.schema)}.{sql.CHUNKS}") is None:
            await conn.execute(sql.bootstrap(self.schema))

    async def run_row(self, conn: Connection, migration_id: str) -> asyncpg.Record | None:
        try:
            return await conn.fetchrow(sql.select_run(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None

    async def progress(self, conn: Connection, migration_id: str) -> Progress | None:
        """The persisted progress of a run, or None if it never ran."""
        try:
            row = await conn.fetchrow(sql.run_progress(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        if row is None:
            return None
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

    async def chunks_left(self, conn: Connection, migration_id: str) -> int:
        """Chunks of the key space not done yet."""
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM {quote_ident(self.schema)}.{sql.CHUNKS} "
            "WHERE migration_id = $1 AND NOT done",
            migration_id,
        )
        return count

    async def live_workers(self, conn: Connection, migration_id: str) -> int:
        progress = await self.progress(conn, migration_id)
        return 0 if progress is None else progress.workers

    async def set_status(
        self,
        conn: Connection,
        migration_id: str,
        status: str,
        allowed: Sequence[str],
        error: str | None = None,
    ) -> str | None:
        """Move run ``migration_id`` to ``status`` if it is in one of ``allowed``; None if it was not."""
        try:
            result: str | None = await conn.fetchval(
                sql.set_status(self.schema), migration_id, status, error, list(allowed)
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        return result

    async def errors(self, conn: Connection, migration_id: str) -> list[ItemError]:
        try:
            rows = await conn.fetch(sql.select_errors(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []
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
        status = None if row is None else row["status"]
        if row is not None and status not in ("rolled_back", "completed") and row["checksum"] != checksum:
            raise ChecksumMismatchError(meta.id, expected=row["checksum"], actual=checksum, resuming=True)
        plan = await self.plan(conn, migration, checksum)
        if status in ACTIVE:
            live = await self.live_workers(conn, meta.id)
            if live and not (config.parallel_execution and status == "running"):
                return Claim("elsewhere", plan, f"running in {live} worker(s) elsewhere")
            if not live:
                await conn.execute(sql.resume_run(self.schema), meta.id)
            return Claim("work", plan)
        if status == "cancelled" and not resume_paused:
            return Claim("paused", plan, "paused (cancelled); `await migrator.execute(id)` resumes it")
        if status in ("cancelled", "failed"):
            await conn.execute(sql.resume_run(self.schema), meta.id)
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
        async with conn.transaction():
            await conn.execute(sql.clear_chunks(self.schema), meta.id)
            if plan.image is not None:
                await conn.execute(f"DROP TABLE IF EXISTS {plan.image}")
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
        tracker = _Tracker(plan.migration_id, baseline, on_progress)
        caller = TransformCaller(config, plan.migration.retry_on)

        errors: list[BaseException] = []

        async def worker(scope: anyio.CancelScope) -> None:
            chunker = _ChunkWorker(self, pool, plan, config, caller, tracker, deadline)
            try:
                await chunker.run()
            except _Stop as stop:
                outcome.stop = stop.reason
            except Exception as exc:  # the first failure stops the other workers too
                errors.append(_unwrap(exc))
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
            if image is None or await conn.fetchval("SELECT to_regclass($1)", image) is None:
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
            await conn.execute(f"DROP TABLE {plan.image}")
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
        shape = plan.table
        cursor: str | None = None
        count = 0
        key_range = sql.key_range  # over the whole table: the filter may no longer match migrated rows
        while True:
            text = key_range(
                shape.qualified,
                shape.key.quoted,
                None,
                shape.key.sql_type,
                lower=">" if cursor else None,
                upper=False,
            )
            row = await conn.fetchrow(text, config.batch_size, *([cursor] if cursor else []))
            if row is None or not row[3]:
                return count
            await conn.execute(statement, row[0], row[1])
            cursor, count = row[2], count + row[3]

    async def _reverse_by_transform(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
        """Apply the inverse transform to every row of the table (the source's filter is not applied)."""
        shape = plan.table
        migration = plan.migration
        cursor: str | None = None
        count = 0
        while True:
            text = sql.page(
                shape.qualified,
                shape.key.quoted,
                [c.select() for c in plan.read_columns],
                None,
                shape.key.sql_type,
                lower=">" if cursor else None,
                upper=False,
            )
            rows = await conn.fetch(text, config.batch_size, *([cursor] if cursor else []))
            if not rows:
                return count
            items = _decode_rows(plan, rows)
            entries: list[_Entry] = []
            for item in items:
                if isinstance(migration, MemoryDataMigration):
                    entries.append(_entry_of(plan, item, await migration.reverse_memory(item)))
                else:
                    assert isinstance(migration, DatabaseDataMigration)
                    entries.append(_entry_of(plan, item, await migration.reverse_row(item)))
            await write_entries(conn, plan, [e for e in entries if e.changes is not None], isolate=False)
            count += sum(1 for e in entries if e.changes is not None)
            cursor = str(rows[-1][0])

    async def discard(self, conn: Connection, plan: RunPlan, status: str, error: str | None = None) -> None:
        """Forget a run's chunks and errors, keeping its row with ``status``."""
        await conn.execute(sql.clear_chunks(self.schema), plan.migration_id)
        await self.set_status(conn, plan.migration_id, status, sql.RUN_STATUSES, error)

    async def retry_failed(self, conn: Connection, plan: RunPlan, config: MigrationConfig) -> Counts:
        """Transform and write again the items in the error ledger, and only those.

        Items that now succeed (or are skipped, or no longer exist) leave the ledger; the others
        stay with one more attempt counted. Each slice commits with its ledger changes.
        """
        shape = plan.table
        keys = [error.key for error in await self.errors(conn, plan.migration_id)]
        caller = TransformCaller(config, plan.migration.retry_on)
        select = sql.rows_by_key(
            shape.qualified, shape.key.quoted, [c.select() for c in plan.read_columns], shape.key.sql_type
        )
        counts = Counts()
        for first in range(0, len(keys), config.batch_size):
            wanted = keys[first : first + config.batch_size]
            items = _decode_rows(plan, await conn.fetch(select, wanted))
            entries = await transform_items(plan, caller, items)
            async with conn.transaction():
                ok = [e for e in entries if e.changes is not None and e.error is None]
                failed = [e for e in entries if e.error is not None]
                failed += await write_entries(conn, plan, ok, isolate=True)
                failed_keys = {_key_text(e.key) for e in failed}
                settled = [key for key in wanted if key not in failed_keys]
                await conn.execute(sql.forget_errors(self.schema), plan.migration_id, settled)
                if failed:
                    await conn.execute(
                        sql.record_errors(self.schema),
                        plan.migration_id,
                        [_key_text(e.key) for e in failed],
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
            items = [_decode_mapping(plan, m) for m in (await migration.get_memories_to_migrate())]
            items = items[: config.dry_run_sample]
        else:
            rows = await conn.fetch(plan.page_sql(None, False), config.dry_run_sample)
            items = _decode_rows(plan, rows)
        caller = TransformCaller(config, migration.retry_on)
        entries = await transform_items(plan, caller, items)
        counts = Counts()
        changes: list[ItemChange] = []
        before = {_key_text(item[plan.table.key.name]): item for item in items}
        for entry in entries:
            if entry.error is not None:
                counts.failed += 1
            elif entry.changes is None:
                counts.skipped += 1
            else:
                counts.processed += 1
                old = before.get(_key_text(entry.key), {})
                for column, value in entry.changes.items():
                    if len(changes) < 20 and (column not in old or old[column] != value):
                        changes.append(
                            ItemChange(key=entry.key, column=column, before=old.get(column), after=value)
                        )
        return counts, changes


# -- helpers shared by the workers ----------------------------------------------------------------


def _unwrap(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one error each, or ``exc`` itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _key_text(key: Any) -> str:
    return str(key)


def _decode(plan: RunPlan, row: asyncpg.Record) -> dict[str, Any]:
    return _decode_rows(plan, [row])[0]


def _decode_rows(plan: RunPlan, rows: Sequence[asyncpg.Record]) -> list[dict[str, Any]]:
    """Rows read with the plan's columns, by column name, each value as :meth:`Column.decode` makes it.

    The same as ``{c.name: c.decode(v) ...}`` for each row, with the per-column checks made once
    per page rather than once per value: only columns whose text is parsed are looked at again.
    """
    columns = plan.read_columns
    names = [column.name for column in columns]
    parsed = list(dict.fromkeys(column.name for column in columns if column.parsed))
    # Every row of a result has the same length: checked once, as zip(strict=True) costs per row.
    for row in rows[:1]:
        if len(row) != len(names):
            raise ValueError(f"a row of {len(row)} values read for {len(names)} columns")
    items = [dict(zip(names, row)) for row in rows]  # noqa: B905 (lengths checked above)
    if parsed:
        loads = json.loads
        for item in items:
            for name in parsed:
                value = item[name]
                if isinstance(value, str):
                    item[name] = loads(value)
    return items


def _decode_mapping(plan: RunPlan, memory: Any) -> dict[str, Any]:
    """A memory from the user's query: JSON columns that arrived as text become Python objects."""
    item = dict(memory)
    columns = plan.table.columns
    for name, value in item.items():
        column = columns.get(name)
        if column is not None and column.is_json and isinstance(value, str):
            item[name] = json.loads(value)
    return item


def _entry_maker(plan: RunPlan) -> Callable[[dict[str, Any], Any], _Entry]:
    """:func:`_entry_of` bound to ``plan``; for memories, with its checks of the plan made once."""
    if not isinstance(plan.migration, MemoryDataMigration):
        return functools.partial(_entry_of, plan)
    key_name = plan.table.key.name

    def memory_entry(item: dict[str, Any], result: Any) -> _Entry:
        if result is None:
            return _Entry(item.get(key_name))
        if not isinstance(result, BulkMemoryItem):
            return _entry_of(plan, item, result)  # raises MigrationValidationError
        return _Entry(result.memory_id, result.changes())

    return memory_entry


def _entry_of(plan: RunPlan, item: dict[str, Any], result: Any) -> _Entry:
    """Check a transform's return value and turn it into the changes to write."""
    meta = plan.migration.metadata
    key = item.get(plan.table.key.name)
    if result is None:
        return _Entry(key)
    if isinstance(plan.migration, MemoryDataMigration):
        if not isinstance(result, BulkMemoryItem):
            raise MigrationValidationError(
                f"data migration {meta.id!r}: the transform must return a BulkMemoryItem or None, "
                f"got {type(result).__name__} for memory {key}",
                migration_id=meta.id,
            )
        return _Entry(result.memory_id, result.changes())
    if not isinstance(result, dict):
        raise MigrationValidationError(
            f"data migration {meta.id!r}: the transform must return a dict of column values or None, "
            f"got {type(result).__name__} for row {key}",
            migration_id=meta.id,
        )
    changes = dict(result)
    new_key = changes.pop(plan.table.key.name, key)
    if new_key != key:
        raise MigrationValidationError(
            f"data migration {meta.id!r}: the transform changed the key of row {key}; data migrations "
            "update rows in place",
            migration_id=meta.id,
        )
    return _Entry(key, changes)


async def transform_items(
    plan: RunPlan, caller: TransformCaller, items: list[dict[str, Any]]
) -> list[_Entry]:
    """Run the migration's transform over ``items``; a failing item becomes an entry with its error."""
    migration = plan.migration
    base: type = MemoryDataMigration if isinstance(migration, MemoryDataMigration) else DatabaseDataMigration
    entries: list[_Entry] = []
    entry_of = _entry_maker(plan)
    if migration._overrides("transform_batch", base):
        size = migration.transform_batch_size
        slices = [items[i : i + size] for i in range(0, len(items), size)]
        batch_transform: Callable[[list[dict[str, Any]]], Awaitable[Any]] = migration.transform_batch  # type: ignore[attr-defined]
        results = await caller.map(batch_transform, slices)
        for part, result in zip(slices, results, strict=True):
            if isinstance(result, Exception):
                entries.extend(_failed(plan, item, result) for item in part)
                continue
            outputs = list(result)
            if len(outputs) != len(part):
                raise MigrationValidationError(
                    f"data migration {migration.metadata.id!r}: transform_batch returned {len(outputs)} "
                    f"results for {len(part)} items; return one per item, in order (None to skip)",
                    migration_id=migration.metadata.id,
                )
            entries.extend(entry_of(item, output) for item, output in zip(part, outputs, strict=True))
        return entries
    one: Callable[[dict[str, Any]], Awaitable[Any]] = (
        migration.transform_memory if isinstance(migration, MemoryDataMigration) else migration.transform_row  # type: ignore[attr-defined]
    )
    for item, result in zip(items, await caller.map(one, items), strict=True):
        entries.append(
            _failed(plan, item, result) if isinstance(result, Exception) else entry_of(item, result)
        )
    return entries


def _failed(plan: RunPlan, item: dict[str, Any], exc: Exception) -> _Entry:
    if isinstance(exc, MigrationValidationError):
        raise exc
    return _Entry(item.get(plan.table.key.name), error=f"{type(exc).__name__}: {exc}")


async def write_entries(
    conn: Connection, plan: RunPlan, entries: Sequence[_Entry], *, isolate: bool, pipe: _Pipe | None = None
) -> list[_Entry]:
    """Write entries with changes, one UPDATE per set of written columns; return those that failed.

    With ``isolate``, a failing write is split in halves inside savepoints until the failing items
    are found, so one bad item never aborts the transaction holding its neighbours' writes.
    Without, ``pipe`` (if given) sends each UPDATE as soon as the one before is done, and encodes
    the next meanwhile: the statements, their order and their errors stay the same.
    """
    groups: dict[tuple[str, ...], list[_Entry]] = {}
    for entry in entries:
        assert entry.changes is not None
        groups.setdefault(tuple(entry.changes), []).append(entry)
    failed: list[_Entry] = []
    for fields, group in groups.items():
        if not fields:
            continue
        try:
            statement, columns = plan.write_sql(fields)
        except BaseException:
            if pipe is not None:
                await pipe.wait()  # the statement before fails first, as it would have unpiped
            raise

        async def run(
            part: Sequence[_Entry],
            statement: str = statement,
            columns: list[Column] = columns,
            fields: tuple[str, ...] = fields,
        ) -> None:
            status = await conn.execute(statement, *_write_args(plan, fields, columns, part))
            _check_written(plan, len(part), status)

        if isolate:
            failed += await _isolated(conn, run, group)
        elif pipe is None:
            await run(group)
        else:
            try:
                args = _write_args(plan, fields, columns, group)
            except BaseException:
                await pipe.wait()  # the statement before fails first, as it would have unpiped
                raise
            await pipe.send(statement, args, functools.partial(_check_written, plan, len(group)))
    return failed


def _write_args(
    plan: RunPlan, fields: tuple[str, ...], columns: list[Column], part: Sequence[_Entry]
) -> list[Any]:
    """The parameters of a batch's UPDATE: the keys, then each column's values, encoded."""
    args: list[Any] = [[e.key for e in part]]
    args += [column.encode_all([e.changes[column.name] for e in part]) for column in columns]  # type: ignore[index]
    if plan.reverse == "images":
        args.append(list(fields))
    return args


def _check_written(plan: RunPlan, expected: int, status: str) -> None:
    written = int(status.split()[-1])
    if written != expected:
        raise MigrationExecutionError(
            f"data migration {plan.migration_id!r}: {expected - written} of {expected} items name "
            "rows that do not exist; a transform updates existing rows, never creates them",
            migration_id=plan.migration_id,
        )


async def _isolated(
    conn: Connection, run: Callable[[Sequence[_Entry]], Awaitable[None]], part: Sequence[_Entry]
) -> list[_Entry]:
    try:
        async with conn.transaction():  # a savepoint inside the batch's transaction
            await run(part)
    except Exception as exc:
        if is_transient(exc):
            raise
        if len(part) == 1:
            return [attrs.evolve(part[0], error=f"{type(exc).__name__}: {exc}")]
        middle = len(part) // 2
        return await _isolated(conn, run, part[:middle]) + await _isolated(conn, run, part[middle:])
    return []


class _Tracker:
    """This process's view of a run's progress, pushed to ``on_progress`` after each checkpoint."""

    def __init__(
        self, migration_id: str, baseline: Progress | None, callback: ProgressCallback | None
    ) -> None:
        self.migration_id = migration_id
        self.baseline = baseline
        self.callback = callback
        self.counts = Counts()
        self.started = time.monotonic()
        self.started_at = baseline.started_at if baseline is not None else datetime.now(UTC)

    async def committed(self, counts: Counts) -> None:
        self.counts.add(counts)
        if self.callback is None:
            return
        base = self.baseline
        elapsed = time.monotonic() - self.started
        done = self.counts.processed + self.counts.failed + self.counts.skipped
        progress = Progress(
            migration_id=self.migration_id,
            status="running",
            processed=(base.processed if base else 0) + self.counts.processed,
            failed=(base.failed if base else 0) + self.counts.failed,
            skipped=(base.skipped if base else 0) + self.counts.skipped,
            total=base.total if base else None,
            batch_number=(base.batch_number if base else 0) + self.counts.batches,
            rate=done / elapsed if elapsed > 0 else None,
            started_at=self.started_at,
            updated_at=datetime.now(UTC),
        )
        result = self.callback(progress)
        if result is not None:
            await result


class _InFlight(Generic[T]):
    """A statement running in the background on a worker's connection, awaited later.

    It runs shielded from cancellation, so the connection is never left in mid-statement: a task
    group holding it waits for it to finish, whatever happens to its other tasks.
    """

    def __init__(self) -> None:
        self._done = anyio.Event()
        self._value: T | None = None
        self._error: BaseException | None = None

    async def run(self, call: Callable[[], Awaitable[T]]) -> None:
        with anyio.CancelScope(shield=True):
            try:
                self._value = await call()
            except BaseException as exc:
                self._error = exc
            finally:
                self._done.set()

    async def result(self) -> T:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def _in_background(group: TaskGroup, call: Callable[[], Awaitable[T]]) -> _InFlight[T]:
    flight: _InFlight[T] = _InFlight()
    group.start_soon(flight.run, call)
    return flight


class _Pipe:
    """Statements run one at a time, in order, on one connection, while the client prepares the next.

    :meth:`send` first waits for the statement before it and raises its error, so the statements
    run and fail exactly as if each were awaited in turn; only the client's work on the next one
    (encoding a batch) overlaps the server's work on the last. Used within :func:`_piped`.
    """

    def __init__(self, conn: Connection, group: TaskGroup) -> None:
        self._conn = conn
        self._group = group
        self._pending: tuple[_InFlight[str], Callable[[str], None]] | None = None

    async def send(self, statement: str, args: Sequence[Any], check: Callable[[str], None]) -> None:
        """Run ``statement`` once the one before is done; ``check`` its status when it is waited for."""
        await self.wait()

        async def execute() -> str:
            status: str = await self._conn.execute(statement, *args)
            return status

        self._pending = (_in_background(self._group, execute), check)
        await anyio.lowlevel.checkpoint()  # let it go out now

    async def wait(self) -> None:
        """Wait for the statement in flight, if any; raise its error or its check's."""
        if self._pending is not None:
            (flight, check), self._pending = self._pending, None
            check(await flight.result())


@asynccontextmanager
async def _piped(conn: Connection) -> AsyncIterator[_Pipe]:
    """A :class:`_Pipe` whose last statement is done (or failed) when the block ends."""
    async with anyio.create_task_group() as group:
        pipe = _Pipe(conn, group)
        yield pipe
        await pipe.wait()


@attrs.define
class _Batch:
    number: int
    entries: list[_Entry]
    span: Any
    started: float


class _ChunkWorker:
    """One worker: a connection, and a loop of lease chunk → batches → checkpoint."""

    def __init__(
        self,
        runner: DataRunner,
        pool: Pool,
        plan: RunPlan,
        config: MigrationConfig,
        caller: TransformCaller,
        tracker: _Tracker,
        deadline: float,
    ) -> None:
        self.runner = runner
        self.pool = pool
        self.plan = plan
        self.config = config
        self.caller = caller
        self.tracker = tracker
        self.deadline = deadline
        self.owner = uuid.uuid4()
        self._conn: Any = None
        self._chunk: int | None = None
        self._seen_failed: set[str] = set()
        self._seen_skipped: set[str] = set()
        self._last_written: set[str] = set()

    async def connection(self) -> Any:
        if self._conn is not None and not is_usable(self._conn):
            await self.pool.release(self._conn)
            self._conn = None
        if self._conn is None:
            try:
                conn = await self.pool.acquire(timeout=self.config.lock_wait_seconds)
            except TimeoutError as exc:
                raise PoolExhaustedError(self.config.lock_wait_seconds) from exc
            await conn.execute(sql.PLANNER_SETTINGS)
            await conn.execute(
                set_session_timeouts(check_client=conn.get_server_version() >= (14,)),
                f"{self.config.statement_lock_timeout_ms}ms",
                "0",
            )
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if is_usable(conn):
                await conn.execute(sql.release_chunks(self.runner.schema), self.plan.migration_id, self.owner)
        except Exception as exc:  # its leases end with its session, or expire
            logger.debug("could not release the leases of a data worker: %s", exc)
        with suppress(Exception):
            await self.pool.release(conn)

    def _retrying(self) -> tenacity.AsyncRetrying:
        policy = self.config.retry
        return tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(is_transient),
            stop=tenacity.stop_after_attempt(policy.attempts),
            wait=tenacity.wait_exponential(multiplier=policy.initial_delay, max=policy.max_delay)
            + tenacity.wait_random(0, policy.jitter),
            sleep=anyio.sleep,
            before_sleep=lambda state: logger.warning(
                "data migration %s: transient failure, resuming from the checkpoint: %s",
                self.plan.migration_id,
                state.outcome.exception() if state.outcome else None,
            ),
            reraise=True,
        )

    async def run(self) -> None:
        schema = self.runner.schema
        while True:
            chunk = None
            async for attempt in self._retrying():
                with attempt:
                    conn = await self.connection()
                    chunk = await conn.fetchrow(
                        sql.lease_chunk(schema), self.plan.migration_id, self.owner, self.config.lease_seconds
                    )
            if chunk is None:
                return
            self._chunk = chunk["chunk"]
            try:
                await self._work_chunk(chunk["chunk"], chunk["lower_key"], chunk["upper_key"])
            except LeaseLost:
                logger.warning(
                    "data migration %s: chunk %s was taken over by another worker",
                    self.plan.migration_id,
                    self._chunk,
                )
            self._chunk = None

    async def _work_chunk(self, chunk: int, lower: str | None, upper: str | None) -> None:
        done = False
        while not done:
            async for attempt in self._retrying():
                with attempt:
                    conn = await self.connection()
                    row = await conn.fetchrow(
                        f"SELECT cursor_key, lease_owner FROM {quote_ident(self.runner.schema)}.{sql.CHUNKS} "
                        "WHERE migration_id = $1 AND chunk = $2",
                        self.plan.migration_id,
                        chunk,
                    )
                    if row is None or row[1] != self.owner:
                        raise LeaseLost()
                    cursor = row[0]
                    done = await self._group(conn, chunk, lower, upper, cursor)

    async def _group(
        self, conn: Connection, chunk: int, lower: str | None, upper: str | None, cursor: str | None
    ) -> bool:
        """Read, transform and write batches up to a checkpoint; return True when the chunk is done."""
        plan, config = self.plan, self.config
        batches: list[_Batch] = []
        items_in_group = 0
        end = False
        stop: str | None = None
        number = self.tracker.counts.batches
        statements_done = 0
        # In a stream without a throttle, the next page is read while this one is transformed.
        ahead: _InFlight[list[asyncpg.Record]] | None = None
        read_ahead = plan.mode == STREAM and not plan.migration._overrides("throttle", DataMigration)
        async with anyio.create_task_group() as reads:
            while items_in_group < config.checkpoint_frequency:
                if time.monotonic() > self.deadline:
                    stop = "timeout"
                    break
                if ahead is None:
                    pause = await plan.migration.throttle()
                    if pause and pause > 0:
                        await anyio.sleep(pause)
                started, started_ns = time.monotonic(), time.time_ns()
                if plan.mode == STATEMENT:
                    # Server-side batches run in the checkpoint's transaction below.
                    span = telemetry.start_batch_span(plan.migration_id, number + 1, started_ns)
                    batches.append(_Batch(number + len(batches) + 1, [], span, started))
                    items_in_group = config.checkpoint_frequency
                    break
                if plan.mode == QUERY:
                    # One slice per checkpoint: the next call must see this slice's writes committed.
                    items = await self._query_slice()
                    if items is None:
                        end = True
                        break
                    items_in_group = config.checkpoint_frequency
                else:
                    if ahead is None:
                        text, args = self._bounds(plan.page_sql, cursor, lower, upper)
                        rows = await conn.fetch(text, config.batch_size, *args)
                    else:
                        rows, ahead = await ahead.result(), None
                    if not rows:
                        end = True
                        break
                    cursor = str(rows[-1][0])
                    if len(rows) < config.batch_size:
                        end = True
                    elif read_ahead and items_in_group + len(rows) < config.checkpoint_frequency:
                        text, args = self._bounds(plan.page_sql, cursor, lower, upper)
                        ahead = _in_background(
                            reads, functools.partial(conn.fetch, text, config.batch_size, *args)
                        )
                        await anyio.lowlevel.checkpoint()  # let it send the query now
                    items = _decode_rows(plan, rows)
                span = telemetry.start_batch_span(plan.migration_id, number + len(batches) + 1, started_ns)
                entries = await transform_items(plan, self.caller, items)
                failures = [e for e in entries if e.error is not None]
                if failures and not config.continue_on_error:
                    span.end()
                    raise MigrationExecutionError(
                        f"data migration {plan.migration_id!r} failed on item {failures[0].key}: "
                        f"{failures[0].error}; pass MigrationConfig(continue_on_error=True) to record "
                        "failing items and go on",
                        migration_id=plan.migration_id,
                    )
                for first in range(0, len(entries), config.batch_size):
                    if first:
                        span = telemetry.start_batch_span(plan.migration_id, number + len(batches) + 1)
                    batches.append(
                        _Batch(
                            number + len(batches) + 1,
                            entries[first : first + config.batch_size],
                            span,
                            started,
                        )
                    )
                items_in_group += len(entries)
                if end:
                    break
        counts = Counts(batches=len(batches))
        async with conn.transaction():
            if plan.mode == STATEMENT:
                statements_done, ranges, cursor, end = await self._statement_batches(
                    conn, cursor, lower, upper
                )
                counts.processed, counts.batches = statements_done, ranges
            else:
                async with _piped(conn) as pipe:
                    for batch in batches:
                        to_write = [e for e in batch.entries if e.changes is not None and e.error is None]
                        failed = [e for e in batch.entries if e.error is not None]
                        failed += await write_entries(
                            conn,
                            plan,
                            to_write,
                            isolate=config.continue_on_error,
                            pipe=None if config.continue_on_error else pipe,
                        )
                        if failed and not config.continue_on_error:
                            await pipe.wait()
                            raise MigrationExecutionError(
                                f"data migration {plan.migration_id!r} failed on item {failed[0].key}: "
                                f"{failed[0].error}",
                                migration_id=plan.migration_id,
                            )
                        if failed:
                            await conn.execute(
                                sql.record_errors(self.runner.schema),
                                plan.migration_id,
                                [_key_text(e.key) for e in failed],
                                [e.error or "" for e in failed],
                            )
                        skipped = sum(1 for e in batch.entries if e.changes is None and e.error is None)
                        counts.failed += len(failed)
                        counts.skipped += skipped
                        counts.processed += len(batch.entries) - len(failed) - skipped
            status = await conn.fetchval(
                sql.checkpoint(self.runner.schema),
                plan.migration_id,
                chunk,
                cursor,
                counts.processed,
                counts.failed,
                counts.skipped,
                counts.batches,
                end,
                self.config.lease_seconds,
                self.owner,
            )
            if status is None:
                raise LeaseLost()
        self._after_commit(batches)
        await self.tracker.committed(counts)
        if plan.mode == QUERY:
            self._remember(batches)
        if status != "running":
            raise _Stop("failed" if status == "failed" else "cancelled")
        if stop is not None:
            raise _Stop(stop)
        return end

    async def _statement_batches(
        self, conn: Connection, cursor: str | None, lower: str | None, upper: str | None
    ) -> tuple[int, int, str | None, bool]:
        """Run the batch statement over key ranges up to a checkpoint: rows, ranges, cursor, done."""
        plan, config = self.plan, self.config
        assert plan.statement is not None
        done = ranges = 0
        while done < config.checkpoint_frequency:
            text, args = self._bounds(plan.range_sql, cursor, lower, upper)
            row = await conn.fetchrow(text, config.batch_size, *args)
            assert row is not None
            first, last, last_text, count = row
            if not count:
                return done, ranges, cursor, True
            if plan.reverse == "images":
                assert plan.image is not None and isinstance(plan.migration, DatabaseDataMigration)
                writes = list(plan.migration.writes)
                await conn.execute(
                    sql.save_images_in_range(
                        plan.image,
                        plan.table.qualified,
                        plan.table.key.quoted,
                        [quote_ident(w) for w in writes],
                    ),
                    first,
                    last,
                    writes,
                )
            await conn.execute(plan.statement, first, last)
            cursor = last_text
            done += count
            ranges += 1
            if count < config.batch_size:
                return done, ranges, cursor, True
        return done, ranges, cursor, False

    @staticmethod
    def _bounds(
        make: Callable[[str | None, bool], str], cursor: str | None, lower: str | None, upper: str | None
    ) -> tuple[str, list[str]]:
        """The page query after ``cursor`` (or from the chunk's ``lower`` key) and before ``upper``."""
        args = []
        op = None
        if cursor is not None:
            op, args = ">", [cursor]
        elif lower is not None:
            op, args = ">=", [lower]
        if upper is not None:
            args.append(upper)
        return make(op, upper is not None), args

    def _after_commit(self, batches: list[_Batch]) -> None:
        metrics = self.runner._metrics
        now = time.monotonic()
        for batch in batches:
            failed = sum(1 for e in batch.entries if e.error is not None)
            telemetry.end_batch_span(batch.span, size=len(batch.entries), failed=failed)
            metrics.record_batch(
                self.plan.migration_id, len(batch.entries) - failed, failed, now - batch.started
            )

    # -- the query mode (get_memories_to_migrate) ------------------------------------------

    async def _query_slice(self) -> list[dict[str, Any]] | None:
        """The next slice of memories not yet tried in this run; None when the run is over."""
        migration = self.plan.migration
        assert isinstance(migration, MemoryDataMigration)
        key = self.plan.table.key.name
        memories = [_decode_mapping(self.plan, m) for m in await migration.get_memories_to_migrate()]
        fresh = [m for m in memories if _key_text(m.get(key)) not in self._seen_failed | self._seen_skipped]
        if not fresh:
            return None  # nothing, or only memories that failed or were skipped in this run
        again = [m for m in fresh if _key_text(m.get(key)) in self._last_written]
        if again:
            raise MigrationExecutionError(
                f"data migration {migration.metadata.id!r} made no progress: get_memories_to_migrate() "
                f"returned {len(again)} memories this run has already written (e.g. {again[0].get(key)}); "
                "its query must leave out migrated memories (for instance WHERE metadata->>'x' IS NULL)",
                migration_id=migration.metadata.id,
            )
        return fresh

    def _remember(self, batches: list[_Batch]) -> None:
        written: set[str] = set()
        for batch in batches:
            for entry in batch.entries:
                text = _key_text(entry.key)
                if entry.error is not None:
                    self._seen_failed.add(text)
                elif entry.changes is None:
                    self._seen_skipped.add(text)
                else:
                    written.add(text)
        self._last_written = written
