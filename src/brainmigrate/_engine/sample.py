"""The dry run of a data migration: transform a sample of its items and report what would change,
and what writing each changed row costs (see ``impact``), leaving nothing written.
"""

from __future__ import annotations

import copy
from contextlib import aclosing

import attrs

from .._model.config import MigrationConfig
from .._model.data import DatabaseDataMigration, MemoryDataMigration
from .._model.results import ItemChange, WriteImpact
from .._model.types import Connection
from .batches import (
    Counts,
    ItemValueError,
    decode_rows,
    encode_changes,
    key_text,
    query_items,
    write_entries,
)
from .entries import Entry, transform_items
from .impact import MEASURE_ROWS, estimated_rows, write_impact
from .pager import pages
from .plan import QUERY, STATEMENT, RunPlan
from .transform import TransformCaller


async def sample(
    conn: Connection, plan: RunPlan, config: MigrationConfig
) -> tuple[Counts, list[ItemChange], WriteImpact | None]:
    """Transform a sample and report what would change and what writing it costs.

    The cost is measured by writing the sample's changes (or, for a server-side batch statement,
    running it over one key range) in a savepoint that is rolled back: nothing stays written.
    """
    migration = plan.migration
    if plan.mode == STATEMENT:
        return Counts(), [], await statement_impact(conn, plan, config)
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
    written: list[Entry] = []
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
            written.append(entry)
            old = before.get(key_text(entry.key), {})
            for column, value in entry.changes.items():
                if len(changes) < 20 and (column not in old or old[column] != value):
                    changes.append(
                        ItemChange(key=entry.key, column=column, before=old.get(column), after=value)
                    )
    impact = await entries_impact(conn, plan, written, len(entries))
    return counts, changes, impact


async def entries_impact(
    conn: Connection, plan: RunPlan, written: list[Entry], sampled: int
) -> WriteImpact | None:
    """The write impact of a sample's entries with changes: written with the run's batch UPDATE
    (without saving before-images) and timed, inside a savepoint that is rolled back."""
    if not sampled:
        return None
    shape = plan.table
    columns = [
        name for name in dict.fromkeys(c for e in written for c in e.changes or {}) if name in shape.columns
    ]
    measured = [e for e in written if e.changes][:MEASURE_ROWS]
    # The run's UPDATE of the table alone: the before-image table exists only once a run starts.
    bare = attrs.evolve(plan, image=None, reverse=None)

    async def measure() -> int:
        await write_entries(conn, bare, measured, isolate=False)
        return len(measured)

    total = await _source_rows(conn, plan)
    return await write_impact(
        conn,
        shape,
        columns,
        measure=measure if measured else None,
        rows_to_change=round(total * len(written) / sampled),
    )


async def statement_impact(conn: Connection, plan: RunPlan, config: MigrationConfig) -> WriteImpact:
    """The write impact of a server-side batch statement: run over the first key range of up to the
    sample's size (at most :data:`MEASURE_ROWS`) and timed, inside a savepoint that is rolled back."""
    migration = plan.migration
    assert isinstance(migration, DatabaseDataMigration) and plan.statement is not None
    statement = plan.statement
    size = min(config.dry_run_sample, MEASURE_ROWS)
    first, last, _, count = await conn.fetchrow(plan.range_sql(None, False), size) or (None, None, None, 0)
    changed = count

    async def measure() -> int:
        nonlocal changed
        status = await conn.execute(statement, first, last)
        parts = status.split()
        if parts and parts[0] in ("UPDATE", "INSERT", "DELETE", "MERGE") and parts[-1].isdigit():
            changed = int(parts[-1])
        return changed

    # Every row of the key ranges: an upper bound when the statement changes only some of them.
    total = await _source_rows(conn, plan)
    return await write_impact(
        conn, plan.table, migration.writes, measure=measure if count else None, rows_to_change=total
    )


async def _source_rows(conn: Connection, plan: RunPlan) -> int:
    """About how many rows the migration reads: those of its source's filter (the planner's estimate)."""
    source = plan.migration.source
    where = source.where if source is not None and plan.mode != QUERY else None
    return await estimated_rows(conn, plan.table.qualified, where)
