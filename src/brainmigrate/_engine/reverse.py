"""Reversing a data-migration run: restoring its before-images or applying its inverse transform,
then forgetting the run's chunks and errors.

A reversal runs inside the caller's transaction, over the whole table (the source's filter is not
applied: it may no longer match migrated rows).
"""

from __future__ import annotations

from contextlib import aclosing

from .._errors import IrreversibleMigrationError
from .._model.config import MigrationConfig
from .._model.data import DatabaseDataMigration, MemoryDataMigration
from .._model.sqltext import quote_ident
from .._model.states import RunStatus
from .._model.types import Connection
from . import sql as sql
from .batches import decode_rows, write_entries
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


async def reverse(conn: Connection, plan: RunPlan, config: MigrationConfig) -> int:
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
    """Forget the current run's chunks and errors, keeping its row with ``status`` (rolled back)."""
    await conn.execute(sql.clear_chunks(state.schema), plan.migration_id)
    await state.set_status(conn, plan.migration_id, status, None, error, operation="roll back")
