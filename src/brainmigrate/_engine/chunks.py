"""A data migration's workers: each leases a chunk of the key space, then reads, transforms and
writes its batches, advancing the chunk's checkpoint in the transaction of each group's writes.

A source stream flows through a :class:`~.pipeline.Pipeline` (pages read, transformed and written
at once); a query's slices and server-side key ranges go one group at a time.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import aclosing, suppress
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import tenacity

from .._errors import (
    MigrationExecutionError,
    PoolExhaustedError,
)
from .._ledger.sql import set_session_timeouts
from .._model.config import MigrationConfig
from .._model.data import DatabaseDataMigration, MemoryDataMigration
from .._model.types import Connection, Pool, is_usable
from .._runtime import telemetry as telemetry
from .._runtime.retry import is_recoverable, retrying
from . import sql as sql
from .batches import Counts, key_text, piped, query_items, write_entries
from .entries import Entry, transform_items
from .pager import pages, range_count, range_end
from .pipeline import Pipeline
from .plan import QUERY, STATEMENT, RunPlan
from .progress import Tracker
from .transform import TransformCaller

logger = logging.getLogger("brainmigrate")


class LeaseLost(Exception):
    """Another worker took over this worker's chunk (its lease expired or its session ended)."""


class Stop(Exception):
    """The run was asked to stop (cancelled, failed elsewhere, or out of time) at a batch boundary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define
class _Batch:
    number: int
    entries: list[Entry]
    span: Any
    started: float


class ChunkWorker:
    """One worker: a connection, and a loop of lease chunk → batches → checkpoint."""

    def __init__(
        self,
        schema: str,
        metrics: telemetry.DataMetrics,
        pool: Pool,
        plan: RunPlan,
        config: MigrationConfig,
        caller: TransformCaller,
        tracker: Tracker,
        deadline: float,
    ) -> None:
        self.schema = schema
        self.metrics = metrics
        self.pool = pool
        self.plan = plan
        self.config = config
        self.caller = caller
        self.tracker = tracker
        self.deadline = deadline
        self.owner = uuid.uuid4()
        self._conn: Any = None
        self._chunk: int | None = None
        self._number = 0
        #: Groups this worker has committed (a retry after some starts its attempts afresh).
        self._commits = 0
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
                await conn.execute(sql.release_chunks(self.schema), self.plan.migration_id, self.owner)
        except Exception as exc:  # its leases end with its session, or expire
            logger.debug("could not release the leases of a data worker: %s", exc)
        with suppress(Exception):
            await self.pool.release(conn)

    def _retrying(self) -> tenacity.AsyncRetrying:
        def log(state: tenacity.RetryCallState) -> None:
            logger.warning(
                "data migration %s: transient failure, resuming from the checkpoint: %s",
                self.plan.migration_id,
                state.outcome.exception() if state.outcome else None,
            )

        return retrying(self.config.retry, is_recoverable, log)

    async def run(self) -> None:
        schema = self.schema
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
                    row = await conn.fetchrow(sql.chunk_cursor(self.schema), self.plan.migration_id, chunk)
                    if row is None or row[1] != self.owner:
                        raise LeaseLost()
                    cursor = row[0]
                    commits = self._commits
                    try:
                        done = await self._group(conn, chunk, lower, upper, cursor)
                    except Exception as exc:
                        if self._commits == commits or not is_recoverable(exc):
                            raise
                        # Groups were committed since the last attempt: resume from the new
                        # checkpoint with the retries afresh, as after any committed group.
                        logger.warning(
                            "data migration %s: transient failure, resuming from the checkpoint: %s",
                            self.plan.migration_id,
                            exc,
                        )
                        await anyio.sleep(self.config.retry.initial_delay)

    async def _group(
        self, conn: Connection, chunk: int, lower: str | None, upper: str | None, cursor: str | None
    ) -> bool:
        """Read, transform and write batches up to a checkpoint (a source stream: to the chunk's
        end, group after group); return True when the chunk is done."""
        self._number = self.tracker.counts.batches  # the run's batches before this group's
        if self.plan.mode == STATEMENT:
            return await self._statement_group(conn, chunk, lower, upper, cursor)
        if self.plan.mode == QUERY:
            return await self._query_group(conn, chunk, cursor)
        return await Pipeline(self, conn, chunk, lower, upper).run(cursor)

    # -- the query mode: slices from get_memories_to_migrate() ----------------------------------

    async def _query_group(self, conn: Connection, chunk: int, cursor: str | None) -> bool:
        """One slice per checkpoint: the next call must see this slice's writes committed."""
        batches: list[_Batch] = []
        end = False
        if (stop := self.timed_out()) is None:
            await self.pause()
            started, started_ns = time.monotonic(), time.time_ns()
            items = await self._query_slice()
            if items is None:
                end = True
            else:
                batches = await self._transform(items, started, started_ns, 0)
        counts = Counts(batches=len(batches))
        async with conn.transaction():
            await self.write(conn, batches, counts)
            status = await self.checkpoint(conn, chunk, cursor, counts, end)
        await self.committed(batches, counts)
        self._remember(batches)
        return self.went_on(status, stop, end)

    # -- the statement mode: the batch statement per key range, on the server -----------------

    async def _statement_group(
        self, conn: Connection, chunk: int, lower: str | None, upper: str | None, cursor: str | None
    ) -> bool:
        """Key ranges up to a checkpoint, each run by the batch statement in the checkpoint's
        transaction."""
        batches: list[_Batch] = []
        if (stop := self.timed_out()) is None:
            await self.pause()
            started, started_ns = time.monotonic(), time.time_ns()
            span = telemetry.start_batch_span(self.plan.migration_id, self._numbered(0), started_ns)
            batches.append(_Batch(self._numbered(0), [], span, started))
        async with conn.transaction():
            done, ranges, cursor, end = await self._statement_batches(conn, cursor, lower, upper)
            counts = Counts(processed=done, batches=ranges)
            status = await self.checkpoint(conn, chunk, cursor, counts, end)
        await self.committed(batches, counts)
        return self.went_on(status, stop, end)

    async def _statement_batches(
        self, conn: Connection, cursor: str | None, lower: str | None, upper: str | None
    ) -> tuple[int, int, str | None, bool]:
        """Run the batch statement over key ranges up to a checkpoint: rows, ranges, cursor, done."""
        plan, config = self.plan, self.config
        assert plan.statement is not None
        done = ranges = 0
        key_ranges = pages(
            conn,
            plan.range_sql,
            lower,
            upper,
            config.batch_size,
            cursor=cursor,
            cursor_of=range_end,
            count_of=range_count,
        )
        async with aclosing(key_ranges) as key_ranges:
            async for page in key_ranges:
                first, last, _, count = page.rows[0]
                if plan.save_range_images is not None:
                    assert isinstance(plan.migration, DatabaseDataMigration)
                    await conn.execute(plan.save_range_images, first, last, list(plan.migration.writes))
                await conn.execute(plan.statement, first, last)
                cursor = page.cursor
                done += count
                ranges += 1
                if page.last:
                    break
                if done >= config.checkpoint_frequency:
                    return done, ranges, cursor, False
        return done, ranges, cursor, True

    # -- the steps every group takes -----------------------------------------------------------

    def timed_out(self) -> str | None:
        return "timeout" if time.monotonic() > self.deadline else None

    async def pause(self) -> None:
        pause = await self.plan.migration.throttle()
        if pause and pause > 0:
            await anyio.sleep(pause)

    def _numbered(self, index: int) -> int:
        """The run-wide number of the group's batch at ``index``."""
        return self._number + index + 1

    async def _transform(
        self, items: list[dict[str, Any]], started: float, started_ns: int, index: int
    ) -> list[_Batch]:
        """Transform items into batches of at most ``batch_size``, numbered from the group's ``index``."""
        plan, config = self.plan, self.config
        span = telemetry.start_batch_span(plan.migration_id, self._numbered(index), started_ns)
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
        batches: list[_Batch] = []
        for first in range(0, len(entries), config.batch_size):
            if first:
                span = telemetry.start_batch_span(plan.migration_id, self._numbered(index + len(batches)))
            batches.append(
                _Batch(
                    self._numbered(index + len(batches)),
                    entries[first : first + config.batch_size],
                    span,
                    started,
                )
            )
        return batches

    async def write(self, conn: Connection, batches: list[_Batch], counts: Counts) -> None:
        """Write the batches (set-based, piped) in the group's transaction, counting what they did."""
        plan, config = self.plan, self.config
        async with piped(conn) as pipe:
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
                        sql.record_errors(self.schema),
                        plan.migration_id,
                        [key_text(e.key) for e in failed],
                        [e.error or "" for e in failed],
                    )
                skipped = sum(1 for e in batch.entries if e.changes is None and e.error is None)
                counts.failed += len(failed)
                counts.skipped += skipped
                counts.processed += len(batch.entries) - len(failed) - skipped

    async def checkpoint(
        self, conn: Connection, chunk: int, cursor: str | None, counts: Counts, end: bool
    ) -> str:
        """Advance the chunk in the transaction of its writes; the run's status."""
        status: str | None = await conn.fetchval(
            sql.checkpoint(self.schema),
            self.plan.migration_id,
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
        return status

    def batches(self, pages: list[tuple[list[Entry], float, int]]) -> list[_Batch]:
        """The batches of a group's pages (entries, read at, in ns), numbered on from the run's
        committed batches, each with its span from the moment its page was read."""
        first = self.tracker.counts.batches + 1
        migration_id = self.plan.migration_id
        return [
            _Batch(
                first + i, entries, telemetry.start_batch_span(migration_id, first + i, started_ns), started
            )
            for i, (entries, started, started_ns) in enumerate(pages)
        ]

    async def committed(self, batches: list[_Batch], counts: Counts) -> None:
        """After a group's commit: its spans and metrics, and the progress it made."""
        self._commits += 1
        self._after_commit(batches)
        await self.tracker.committed(counts)

    @staticmethod
    def went_on(status: str, stop: str | None, end: bool) -> bool:
        """Whether the chunk is done, once a group has committed; Stop if the run must stop."""
        if status != "running":
            raise Stop("failed" if status == "failed" else "cancelled")
        if stop is not None:
            raise Stop(stop)
        return end

    def _after_commit(self, batches: list[_Batch]) -> None:
        metrics = self.metrics
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
        memories = query_items(self.plan, await migration.get_memories_to_migrate())
        fresh = [m for m in memories if key_text(m.get(key)) not in self._seen_failed | self._seen_skipped]
        if not fresh:
            return None  # nothing, or only memories that failed or were skipped in this run
        again = [m for m in fresh if key_text(m.get(key)) in self._last_written]
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
                text = key_text(entry.key)
                if entry.error is not None:
                    self._seen_failed.add(text)
                elif entry.changes is None:
                    self._seen_skipped.add(text)
                else:
                    written.add(text)
        self._last_written = written
