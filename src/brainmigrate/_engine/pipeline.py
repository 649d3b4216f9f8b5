"""A worker's stream of pages through the transform: pages read, calls in flight and groups written
at once, so that a remote model is kept busy across pages and checkpoints.

Three kinds of task share a worker's one connection and its pages:

* the *reader* reads the chunk's pages in key order (while fewer than ``limit`` pages are read and
  not yet committed), decodes them and cuts each into its transform calls;
* ``concurrency`` *callers* take the next call of the earliest page as soon as they are free, so
  that calls of the next page start while the last ones of this page run; ``throttle()`` is asked
  before the first call of each page, and its pause holds every caller and the writer;
* the *writer* (the worker's own task) takes the pages in key order, group by group as the
  checkpoint frequency cuts them, waits until every page of a group is transformed, then writes the
  group and advances the chunk's checkpoint to its last key in one transaction.

So the checkpoint only ever covers a prefix of the chunk whose every page is written, in the same
transaction; a page that failed is raised when the writer reaches it, once the groups before it
are committed, as a worker taking one page at a time would; a cancelled run finishes the page in
progress, if any, and leaves the pages read ahead. The connection serves one statement (or the
writer's transaction) at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import attrs

from .._errors import MigrationExecutionError
from .._model.data import DataMigration
from .._model.types import Connection
from .batches import Counts, decode_rows, unwrap
from .entries import Entry, calls_batches, entry_maker, part_entries, transform_calls, vector_encoder
from .pager import bounds, last_key
from .transform import cancelled

if TYPE_CHECKING:
    from .chunks import ChunkWorker

#: Pages read beyond a checkpoint group, at least, so that the calls go on while a group is written ...
AHEAD = 3
#: ... and at most, unless the call slots need more (up to a whole group, when groups are smaller):
#: enough to transform and encode the next group while the server writes this one.
MOST_AHEAD = 8


@attrs.define(eq=False)
class Page:
    """A page of the chunk on its way: its calls, their results, and once all are in, its entries."""

    cursor: str
    last: bool
    started: float
    started_ns: int
    fn: Callable[[Any], Awaitable[Any]]
    args: list[Any]
    batched: bool
    #: The last page of its checkpoint group.
    closes_group: bool = False
    #: The entries of each call, or the error that stops the run on reaching the call.
    parts: list[list[Entry] | Exception] = attrs.field(factory=list)
    taken: int = 0
    left: int = 0
    entries: list[Entry] = attrs.field(factory=list)
    error: BaseException | None = None
    done: anyio.Event = attrs.field(factory=anyio.Event)


@attrs.frozen
class End:
    """No page follows: the chunk is read to its end, or reading stopped (out of time, or failed)."""

    end: bool = False
    stop: str | None = None
    error: BaseException | None = None


class Carried(Exception):
    """A BaseException to raise once the pipeline's tasks are gone (a CancelledError the
    migration's own code raised, which must not pass for a cancellation of the pipeline)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


def page_limit(worker: ChunkWorker) -> int:
    """Pages read and not yet committed, at most: a checkpoint group, and beyond it enough to keep
    every call slot busy while the group is written (the next group, up to ``MOST_AHEAD`` pages)."""
    config = worker.config
    group = math.ceil(config.checkpoint_frequency / config.batch_size)
    migration = worker.plan.migration
    per_call = min(migration.transform_batch_size, config.batch_size) if calls_batches(worker.plan) else 1
    slots = math.ceil(config.concurrency * per_call / config.batch_size)
    return group + max(AHEAD, min(group, MOST_AHEAD), slots + 1)


class Pipeline:
    """One pass over a chunk from its checkpoint, until the chunk is done or the run must stop."""

    def __init__(
        self, worker: ChunkWorker, conn: Connection, chunk: int, lower: str | None, upper: str | None
    ) -> None:
        self.worker = worker
        self.conn = conn
        self.chunk = chunk
        self.lower = lower
        self.upper = upper
        self.lock = anyio.Lock()
        self.slots = anyio.Semaphore(page_limit(worker))
        self.to_callers, self.for_callers = anyio.create_memory_object_stream[Page](math.inf)
        self.to_writer, self.for_writer = anyio.create_memory_object_stream[Page | End](math.inf)
        self.current: Page | None = None
        self.taking = anyio.Lock()
        #: Set once the pause throttle() asked for is over (None when not pausing).
        self.pausing: anyio.Event | None = None
        #: No page's first call is to start any more (the run was cancelled).
        self.stopping = False
        self.throttled = worker.plan.migration._overrides("throttle", DataMigration)
        self.entry_of = entry_maker(worker.plan)
        writer = worker.plan.writer
        self.encode = writer.encode if writer is not None else vector_encoder(worker.plan)

    async def run(self, cursor: str | None) -> bool:
        """Work from ``cursor`` until the chunk is done (True); Stop or raise otherwise."""
        error: BaseException | None = None
        done = False
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._read, cursor)
                for _ in range(self.worker.config.concurrency):
                    group.start_soon(self._calls)
                try:
                    done = await self._write(cursor)
                except Carried as carried:
                    error = carried.error
                except Exception as exc:
                    error = exc
                group.cancel_scope.cancel()
        except BaseExceptionGroup as failed:
            raise unwrap(failed) from None
        if error is not None:
            raise error
        return done

    # -- reading ---------------------------------------------------------------------------------

    async def _read(self, cursor: str | None) -> None:
        worker, config = self.worker, self.worker.config
        size = config.batch_size
        in_group = 0
        try:
            while True:
                await self.slots.acquire()
                if (stop := worker.timed_out()) is not None:
                    self.to_writer.send_nowait(End(stop=stop))
                    return
                started, started_ns = time.monotonic(), time.time_ns()
                rows = await self._fetch(cursor, size)
                if not rows:
                    self.slots.release()
                    self.to_writer.send_nowait(End(end=True))
                    return
                cursor = last_key(rows)
                items = decode_rows(worker.plan, rows)
                fn, args, batched = transform_calls(worker.plan, items)
                page = Page(cursor, len(rows) < size, started, started_ns, fn, args, batched)
                page.parts = [[]] * len(args)
                page.left = len(args)
                in_group += len(items)
                if in_group >= config.checkpoint_frequency or page.last:
                    page.closes_group, in_group = True, 0
                self.to_callers.send_nowait(page)
                self.to_writer.send_nowait(page)
                if page.last:
                    return
        except Exception as exc:  # raised by the writer when it gets there (retried from the checkpoint)
            self.to_writer.send_nowait(End(error=exc))
        finally:
            self.to_callers.close()

    async def _fetch(self, cursor: str | None, size: int) -> list[Any]:
        """The page after ``cursor``, read between the writer's transactions, whole: a cancelled
        pipeline waits for it rather than leave the connection in mid-statement."""
        text, args = bounds(self.worker.plan.page_sql, cursor, self.lower, self.upper)
        rows: list[Any] = []
        async with self.lock:
            with anyio.CancelScope(shield=True):
                rows = list(await self.conn.fetch(text, size, *args))
        return rows

    # -- calling the transform -------------------------------------------------------------------

    async def _calls(self) -> None:
        """One call slot: the next call of the earliest page, again and again; each call's entries
        are made (and their vectors encoded) as soon as it returns."""
        direct, call = self.worker.caller.direct, self.worker.caller.call
        plan, entry_of, encode = self.worker.plan, self.entry_of, self.encode
        while (taken := self._take_now() or await self._take()) is not None:
            page, index = taken
            arg = page.args[index]
            try:
                result = await (page.fn(arg) if direct else call(page.fn, arg))
            except Exception as exc:
                result = exc
            except BaseException as exc:
                # A CancelledError the transform raised itself fails its items; a real cancellation
                # (or KeyboardInterrupt, SystemExit) ends the slot.
                if isinstance(exc, KeyboardInterrupt | SystemExit) or await cancelled():
                    raise
                result = exc
            part: list[Entry] | Exception
            try:
                part = part_entries(plan, entry_of, arg, result, page.batched)
                if encode is not None:
                    encode(part)
            except Exception as exc:
                part = exc
            page.parts[index] = part
            page.left -= 1
            if not page.left:
                self._finish(page)

    def _take_now(self) -> tuple[Page, int] | None:
        page = self.current
        if page is None or page.taken >= len(page.args):
            return None
        page.taken += 1
        return page, page.taken - 1

    async def _take(self) -> tuple[Page, int] | None:
        """The next call, once the earliest page's are all taken: the first of the next page, after
        the pause throttle() asks for (every slot waits meanwhile). None when no page is left."""
        async with self.taking:
            while (taken := self._take_now()) is None:
                try:
                    page = await self.for_callers.receive()
                except anyio.EndOfStream:
                    return None
                if self.stopping:
                    return None
                if self.throttled:
                    try:
                        await self._pause()
                    except BaseException as exc:
                        if isinstance(exc, KeyboardInterrupt | SystemExit) or await cancelled():
                            raise
                        page.error = exc  # raised by the writer when it gets there
                        page.done.set()
                        continue
                    if self.stopping:
                        return None
                self.current = page
            return taken

    async def _pause(self) -> None:
        """The pause throttle() asks for; no group is written meanwhile either."""
        pause = await self.worker.plan.migration.throttle()
        if pause and pause > 0:
            self.pausing = anyio.Event()
            try:
                await anyio.sleep(pause)
            finally:
                self.pausing.set()
                self.pausing = None

    def _finish(self, page: Page) -> None:
        """The page's entries from its calls', or the error that stops the run on reaching it: the
        first in the page's order, as if its calls had been made one after the other."""
        worker = self.worker
        plan = worker.plan
        entries: list[Entry] = []
        for part in page.parts:
            if isinstance(part, Exception):
                page.error = part
                break
            entries += part
        else:
            failures = [e for e in entries if e.error is not None]
            if failures and not worker.config.continue_on_error:
                page.error = MigrationExecutionError(
                    f"data migration {plan.migration_id!r} failed on item {failures[0].key}: "
                    f"{failures[0].error}; pass MigrationConfig(continue_on_error=True) to record "
                    "failing items and go on",
                    migration_id=plan.migration_id,
                )
        page.entries = entries
        page.args, page.parts = [], []
        page.done.set()

    # -- writing ---------------------------------------------------------------------------------

    async def _write(self, cursor: str | None) -> bool:
        """Commit each group once its pages are transformed; True once the chunk is done."""
        worker = self.worker
        while True:
            pages: list[Page] = []
            end = End()
            while True:
                got = await self.for_writer.receive()
                if isinstance(got, End):
                    end = got
                    break
                pages.append(got)
                if got.closes_group:
                    end = End(end=got.last)
                    break
            if end.error is not None and not pages:
                raise end.error
            status = await self._commit(pages, cursor, end)
            if pages:
                cursor = pages[-1].cursor
            if status not in ("running", "failed") and end.stop is None and not end.end:
                # Cancelled: a batch in progress is finished and committed, as if taken one at a
                # time; the pages read ahead are left for the run that resumes it.
                end = await self._started(pages := [])
                if pages or end.end:
                    status = await self._commit(pages, cursor, end)
            if worker.went_on(status, end.stop, end.end):
                return True

    async def _started(self, pages: list[Page]) -> End:
        """Stop starting pages. If the next page's calls are in flight (the batch in progress when
        the run was cancelled), it and the started pages after it in its group, into ``pages``."""
        self.stopping = True
        while True:
            try:
                got = self.for_writer.receive_nowait()
            except anyio.WouldBlock:
                return End()
            if isinstance(got, End):
                return End(end=got.end) if got.error is None else End()
            done = got.done.is_set()
            if not (got.taken or done) or (done and not pages):
                return End()
            pages.append(got)
            if got.last:
                return End(end=True)
            if got.closes_group:
                return End()

    async def _commit(self, pages: list[Page], cursor: str | None, end: End) -> str:
        """Write ``pages`` once transformed, and the checkpoint after them; the run's status."""
        worker = self.worker
        for page in pages:
            await page.done.wait()
            if page.error is not None:
                error = page.error
                raise error if isinstance(error, Exception) else Carried(error)
        if end.error is not None:
            raise end.error
        if pages:
            cursor = pages[-1].cursor
        batches = worker.batches([(p.entries, p.started, p.started_ns) for p in pages])
        counts = Counts(batches=len(batches))
        while self.pausing is not None:
            await self.pausing.wait()
        async with self.lock, self.conn.transaction():
            await worker.write(self.conn, batches, counts)
            status = await worker.checkpoint(self.conn, self.chunk, cursor, counts, end.end)
        for _ in pages:
            self.slots.release()
        await worker.committed(batches, counts)
        return status
