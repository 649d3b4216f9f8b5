"""``strategy = "auto"``: whether a data, memory or structure migration runs in place or as a
rewrite, decided once, when its run starts, from the table and a sample of what it changes.

A rewrite pays a copy of every row and one build of each index; in place pays, for each changed
row, a new entry in every index unless the update is heap-only (HOT). So the rewrite is chosen
when the table is large (``rewrite_min_rows``), the updates cannot be HOT (the migration writes an
indexed column), an index every new row version must enter is costly (a vector index, HNSW or
IVFFlat, or a GIN), and most rows change. Anything else, or a table that cannot be rewritten
safely, runs in place; the choice and its reason are logged and shown by a dry run.
"""

from __future__ import annotations

from contextlib import aclosing

import attrs

from .._engine.batches import decode_rows
from .._engine.entries import transform_items
from .._engine.impact import VECTOR_METHODS, estimated_rows, indexes
from .._engine.pager import pages
from .._engine.plan import STREAM, make_plan
from .._engine.structure_sql import new_value
from .._engine.table import TableShape
from .._engine.transform import TransformCaller
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.memory_structure import MemoryStructureMigration
from .._model.sqltext import quote_ident
from .._model.types import Connection
from .definition import read_definition
from .refusals import refusals

#: Index access methods whose per-row maintenance a rewrite avoids.
COSTLY_METHODS = VECTOR_METHODS | {"gin"}
#: Rows of the sample the choice transforms (or, for a structure migration, reads).
SAMPLE_ROWS = 200
#: The share of sampled rows that must change for a rewrite to pay.
MOST_ROWS = 0.5


@attrs.frozen
class Choice:
    """How a migration runs, and why."""

    rewrite: bool
    reason: str

    @property
    def strategy(self) -> str:
        return "rewrite" if self.rewrite else "in_place"


async def choose(conn: Connection, schema: str, migration: DataMigration, config: MigrationConfig) -> Choice:
    """The strategy of ``migration`` (``strategy = "auto"``) on this database, with its reason."""
    meta = migration.metadata
    source = migration.source
    assert source is not None
    shape = await TableShape.read(conn, source, meta.id)
    rows = await estimated_rows(conn, shape.qualified)
    if rows < type(migration).rewrite_min_rows:
        return Choice(False, f"the table holds about {rows:,} rows, fewer than rewrite_min_rows")
    found = await indexes(conn, shape.qualified)
    costly = [i.name for i in found if i.method in COSTLY_METHODS]
    if not costly:
        return Choice(False, "the table has no vector or GIN index whose upkeep a rewrite would save")
    if isinstance(migration, MemoryStructureMigration):
        written, share = [migration.column], await _structure_share(conn, shape, migration)
    else:
        written, share = await _transform_sample(conn, schema, migration, config)
    if written and not any(i.references(written) for i in found if i.method != "brin"):
        return Choice(False, f"its updates ({', '.join(written)}) can be HOT: no index covers them")
    if share < MOST_ROWS:
        return Choice(False, f"only {share:.0%} of a sample of rows would change")
    table = await conn.fetchval(
        "SELECT relname::text FROM pg_class WHERE oid = $1::regclass", shape.qualified
    )
    definition = await read_definition(
        conn,
        schema=await conn.fetchval(
            "SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = $1::regclass", shape.qualified
        ),
        table=table,
        key=source.key,
        migration_id=meta.id,
    )
    reasons = refusals(definition)
    if reasons:
        return Choice(False, f"the table cannot be rewritten safely: {'; '.join(reasons)}")
    return Choice(
        True,
        f"about {rows:,} rows, {share:.0%} of a sample changing, and each update would enter "
        f"{len(found)} index(es) including {', '.join(costly)}",
    )


async def _transform_sample(
    conn: Connection, schema: str, migration: DataMigration, config: MigrationConfig
) -> tuple[list[str], float]:
    """The columns a sample's transform writes, and the share of the sample it changes."""
    plan = await make_plan(conn, schema, migration, "")
    if plan.mode != STREAM:
        return [], 0.0
    async with aclosing(pages(conn, plan.page_sql, None, None, SAMPLE_ROWS)) as source:
        page = await anext(source, None)
    items = decode_rows(plan, page.rows if page is not None else [])
    if not items:
        return [], 0.0
    entries = await transform_items(plan, TransformCaller(config, migration.retry_on), items)
    written: dict[str, None] = {}
    changed = 0
    for entry in entries:
        if entry.changes:
            changed += 1
            written.update(dict.fromkeys(entry.changes))
    return list(written), changed / len(entries)


async def _structure_share(conn: Connection, shape: TableShape, migration: MemoryStructureMigration) -> float:
    """The share of a sample of rows whose column the operations change."""
    column = f"m.{quote_ident(migration.column)}"
    new = new_value(migration.checked_operations(), column)
    where = migration.source.where if migration.source is not None else None
    row = await conn.fetchrow(
        f"SELECT count(*) AS sampled, count(*) FILTER (WHERE {column} IS DISTINCT FROM {new}) AS changing "
        f"FROM (SELECT * FROM {shape.qualified} {'WHERE ' + where if where else ''} LIMIT {SAMPLE_ROWS}) AS m"
    )
    assert row is not None
    return row["changing"] / row["sampled"] if row["sampled"] else 0.0
