"""Reversing a data-migration run: restoring its before-images or applying its inverse transform,
then forgetting the run's chunks and errors.

A reversal runs inside the caller's transaction, over the whole table (the source's filter is not
applied: it may no longer match migrated rows): all or nothing.

Large before-image tables are restored in parallel key ranges first (:func:`restore_in_ranges`),
because one connection's ``UPDATE`` leaves the other cores idle. PostgreSQL cannot share one
transaction between connections, so all or nothing cannot hold there; the restore is resumable
and recorded instead:

* the run's row says it is rolling back (its error column carries :data:`ROLLING_BACK`, its
  earlier error kept after it) before any range is written; its status stays what it was (the
  migration is still applied until the last transaction), as the run tables have no status for
  a rollback under way;
* each range restores its rows and deletes their before-images in one transaction, so the
  before-image table always holds exactly the rows still to restore, whatever stopped when;
* the caller's transaction then restores what is left (nothing, unless a range failed), drops the
  before-images, gives the run back its earlier error and records it rolled back, as before.

A rollback stopped midway (its process killed, the server gone) leaves a table whose committed
ranges are restored and the others still migrated, the run saying so, and the migration still
applied in the history: rolling back again finishes it, restoring only what is left. Tables of
fewer than :data:`PARALLEL_RESTORE_BATCHES` batches of before-images (100,000 rows with the
default ``batch_size``), a ``max_workers`` of 1 or a pool with no connection to spare keep the
single transaction: there the parallel restore gains little. The ranges are as many as the
connections (``max_workers`` at most: the work connection and those the pool has free). The
reversal of a failed run (with ``enable_rollback``) keeps the single transaction.
"""

from __future__ import annotations

import math
from contextlib import AsyncExitStack, aclosing

import anyio

from .._errors import IrreversibleMigrationError
from .._model.config import MigrationConfig
from .._model.data import DatabaseDataMigration, MemoryDataMigration
from .._model.sqltext import quote_ident
from .._model.states import MigrationOperation, RunStatus
from .._model.types import Connection, Pool
from .._runtime.translate import translate
from . import sql as sql
from .batches import decode_rows, unwrap, write_entries
from .entries import Entry, entry_of
from .pager import pages, range_count, range_end
from .plan import RunPlan
from .state import RunState


async def check_reversible(conn: Connection, state: RunState, plan: RunPlan) -> None:
    """Raise IrreversibleMigrationError unless the run can be reversed now."""
    meta = plan.migration.metadata
    if plan.reverse is None:
        raise IrreversibleMigrationError(meta.id)
    if plan.reverse == "images":
        row = await state.run_row(conn, meta.id)
        image = row["before_images"] if row is not None else None
        if image is None or await conn.fetchval(sql.TABLE_EXISTS, image) is None:
            raise IrreversibleMigrationError(
                meta.id, reason="its before-images are gone, so its old values cannot be restored"
            )


#: Before-image tables of at least this many batches (``batch_size`` rows) are restored in
#: parallel key ranges.
PARALLEL_RESTORE_BATCHES = 100

#: What a restore in key ranges that failed left.
_STOPPED = (
    "the key ranges it committed are restored and their before-images gone, the others are still "
    "migrated with their before-images kept; once the cause is fixed, roll it back again to finish"
)

#: How the error column of a run being rolled back in key ranges starts.
ROLLING_BACK = "rolling back"


def _note(previous: str | None) -> str:
    """The run's error while it is rolled back in key ranges, its earlier error kept after a newline."""
    note = (
        f"{ROLLING_BACK}: its before-images are being restored in key ranges, each committed on its "
        "own; if this stays after the rollback stopped, roll it back again to restore the rest"
    )
    return note if previous is None else f"{note}\n{previous}"


async def _spare_connections(pool: Pool, wanted: int, stack: AsyncExitStack) -> list[Connection]:
    """Up to ``wanted`` connections the pool can hand over now (never waiting for busy ones)."""
    free = pool.get_idle_size() + pool.get_max_size() - pool.get_size()
    conns: list[Connection] = []
    for _ in range(min(wanted, free)):
        try:
            conns.append(await stack.enter_async_context(pool.acquire(timeout=1.0)))
        except TimeoutError:
            break
    return conns


async def restore_in_ranges(
    pool: Pool, conn: Connection, state: RunState, plan: RunPlan, config: MigrationConfig
) -> int:
    """Restore a large before-image table in parallel key ranges, each in its own transaction,
    outside any transaction of ``conn``; return the rows restored (0 when it is left to
    :func:`reverse`'s single transaction). See the module's docstring for what a stop leaves."""
    if plan.reverse != "images" or plan.image is None or config.max_workers < 2:
        return 0
    image, shape = plan.image, plan.table
    rows = int(await conn.fetchval(sql.count_images(image)))
    if rows < PARALLEL_RESTORE_BATCHES * config.batch_size:
        return 0
    async with AsyncExitStack() as stack:
        conns = [conn, *await _spare_connections(pool, config.max_workers - 1, stack)]
        if len(conns) < 2:
            return 0
        sets = [row[0] for row in await conn.fetch(sql.written_sets(image))]
        written = sorted({name for names in sets for name in names})
        if not written:
            return 0
        run = await state.run_row(conn, plan.migration_id)
        previous = run["error"] if run is not None else None
        if previous is None or not previous.startswith(ROLLING_BACK):
            await conn.execute(sql.set_run_error(state.schema), plan.migration_id, _note(previous))
        bounds = [
            row[0] for row in await conn.fetch(sql.boundaries(image, shape.key.quoted, None), len(conns))
        ]
        edges: list[str | None] = [None, *bounds, None]
        columns = [(quote_ident(c), c) for c in written]
        timeouts = (f"{config.statement_lock_timeout_ms}ms", f"{math.ceil(config.timeout_seconds * 1000)}ms")
        restored = [0] * (len(edges) - 1)

        async def restore(index: int, worker: Connection) -> None:
            lower, upper = edges[index], edges[index + 1]
            bound = [b for b in (lower, upper) if b is not None]
            where = {"lower": lower is not None, "upper": upper is not None}
            key, key_type = shape.key.quoted, shape.key.sql_type
            async with worker.transaction():
                await worker.execute(sql.RANGE_TIMEOUTS, *timeouts)
                await worker.execute(sql.RESTORE_WORK_MEM)
                statement = sql.restore_images_in_range(
                    image, shape.qualified, key, key_type, columns, uniform=len(sets) == 1, **where
                )
                status = await worker.execute(statement, *bound)
                await worker.execute(sql.delete_images_in_range(image, key, key_type, **where), *bound)
            restored[index] = int(status.split()[-1])

        try:
            async with anyio.create_task_group() as group:
                for index, worker in enumerate(conns[: len(edges) - 1]):
                    group.start_soon(restore, index, worker)
        except BaseExceptionGroup as failed:  # the first range's error, as the public error
            exc = unwrap(failed)
            error = translate(
                exc,
                migration_id=plan.migration_id,
                operation=MigrationOperation.ROLLBACK,
                undone=_STOPPED,
                timeout_seconds=config.timeout_seconds,
            )
            if error is None or error is exc:
                raise exc from None
            raise error from exc
        return sum(restored)


async def reverse(conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
    """Undo what the run wrote, inside the caller's transaction; return the rows restored."""
    if plan.reverse == "dropped":
        return 0
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
    if plan.rollback_statement is not None:
        return await _reverse_by_statement(conn, plan, plan.rollback_statement, config)
    return await _reverse_by_transform(conn, plan, config)


async def _reverse_by_statement(
    conn: Connection, plan: RunPlan, statement: str, config: MigrationConfig
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


async def _reverse_by_transform(conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
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
    conn: Connection, state: RunState, plan: RunPlan, status: RunStatus | str, error: str | None = None
) -> None:
    """Forget the current run's chunks and errors, keeping its row with ``status`` (rolled back)
    and the error it had before a restore in key ranges said it was rolling back."""
    await conn.execute(sql.clear_chunks(state.schema), plan.migration_id)
    run = await state.run_row(conn, plan.migration_id)
    note = run["error"] if run is not None else None
    if note is not None and note.startswith(ROLLING_BACK):
        previous = note.partition("\n")[2] or None
        await conn.execute(sql.set_run_error(state.schema), plan.migration_id, previous)
    await state.set_status(conn, plan.migration_id, status, None, error, operation="roll back")
