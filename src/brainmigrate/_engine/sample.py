"""The dry run of a data migration: transform a sample of its items and report what would change,
writing nothing.
"""

from __future__ import annotations

import copy
from contextlib import aclosing

import attrs

from .._model.config import MigrationConfig
from .._model.data import MemoryDataMigration
from .._model.results import ItemChange
from .._model.types import Connection
from .batches import (
    Counts,
    ItemValueError,
    decode_rows,
    encode_changes,
    key_text,
    query_items,
    transform_items,
)
from .pager import pages
from .plan import QUERY, STATEMENT, RunPlan
from .transform import TransformCaller


async def sample(conn: Connection, plan: RunPlan, config: MigrationConfig) -> tuple[Counts, list[ItemChange]]:
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
