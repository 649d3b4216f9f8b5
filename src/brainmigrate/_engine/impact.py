"""What writing one changed row costs: the indexes it touches, whether the update can be HOT, and
a cost per row measured by writing a sample inside the dry run.

An ``UPDATE`` is heap-only (HOT) when no column it changes is referenced by an index, counting
the columns of expression and partial indexes, and the new version fits on the same page: then no
index gets a new entry. Otherwise every index of the table gets one, vector indexes included,
where each entry is a graph insert (HNSW) costing far more than a B-tree's. Summarizing indexes
(BRIN, from PostgreSQL 16) do not prevent HOT; they are updated, but cheaply.

:func:`write_impact` is what every runner calls: the data engine with the columns a sample's
transform wrote, a structure runner with the column its statements write.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import asyncpg
import attrs

from .._errors import BrainMigrateError
from .._model.results import WriteImpact
from .._model.types import Connection, is_usable
from .table import TableShape

#: Rows written to measure the cost per row, at most (the sample's first rows).
MEASURE_ROWS = 500

#: Access methods of vector indexes (pgvector): an update inserts into a graph or lists.
VECTOR_METHODS = frozenset({"hnsw", "ivfflat"})

#: Access methods whose indexes summarize pages and so, from PostgreSQL 16, do not prevent HOT.
SUMMARIZING_METHODS = frozenset({"brin"})
SUMMARIZING_SINCE = (16,)

#: The share of a table's pages its rows fill, by its statistics, above which pages count as full.
_FULL_PAGE_SHARE = 0.9

#: The live indexes of table $1: name, access method, the table columns each references (its key
#: and INCLUDE columns, and, through ``pg_depend``, those of its expressions and predicate), whether
#: an expression or predicate references the whole row, and whether it is partial or has expressions.
INDEXES = """
SELECT c.relname::text,
       am.amname::text,
       ARRAY(SELECT a.attname::text
               FROM pg_attribute a
              WHERE a.attrelid = i.indrelid AND a.attnum > 0 AND NOT a.attisdropped
                AND (a.attnum = ANY (i.indkey::int2[])
                     OR EXISTS (SELECT 1 FROM pg_depend d
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid
                                   AND d.refclassid = 'pg_class'::regclass
                                   AND d.refobjid = i.indrelid AND d.refobjsubid = a.attnum))
              ORDER BY a.attnum),
       coalesce(i.indexprs::text ~ ':varattno 0 ' OR i.indpred::text ~ ':varattno 0 ', false),
       i.indpred IS NOT NULL,
       i.indexprs IS NOT NULL
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_am am ON am.oid = c.relam
 WHERE i.indrelid = $1::regclass AND i.indislive AND i.indisready
 ORDER BY c.relname
"""

#: Table $1's name as PostgreSQL spells it (quoted where needed, qualified unless on the search path).
TABLE_NAME = "SELECT $1::regclass::text"

#: Table $1's fillfactor, pages, estimated rows, and estimated bytes per row (from its statistics,
#: with the tuple header and line pointer; NULL before the table is analyzed).
TABLE_STORAGE = """
SELECT coalesce((SELECT option_value::int FROM pg_options_to_table(c.reloptions)
                  WHERE option_name = 'fillfactor'), 100),
       c.relpages::bigint,
       c.reltuples::float8,
       (SELECT 28 + sum(s.avg_width) FROM pg_stats s
         WHERE s.schemaname = n.nspname AND s.tablename = c.relname)::float8,
       current_setting('block_size')::int
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = $1::regclass
"""

#: Updates of table $1 in this transaction so far: all of them, and those that were HOT.
XACT_UPDATES = (
    "SELECT pg_stat_get_xact_tuples_updated($1::regclass), pg_stat_get_xact_tuples_hot_updated($1::regclass)"
)

#: Batched writes keep to the key's index (as a run's workers do); undone with the savepoint.
_PLANNER = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

#: Writes some rows as the migration would, inside a savepoint that is rolled back; returns how
#: many rows it wrote.
Measure = Callable[[], Awaitable[int]]


@attrs.frozen
class Index:
    """One index of the table, as :data:`INDEXES` describes it."""

    name: str
    method: str
    columns: tuple[str, ...]
    whole_row: bool
    partial: bool
    expression: bool

    def references(self, written: Iterable[str]) -> bool:
        return self.whole_row or not set(self.columns).isdisjoint(written)


@attrs.frozen
class Measured:
    """What writing a sample inside a rolled-back savepoint took."""

    rows: int
    seconds: float
    updated: int
    hot: int
    error: str | None = None

    @property
    def seconds_per_row(self) -> float | None:
        return self.seconds / self.rows if self.rows > 0 and self.error is None else None


async def indexes(conn: Connection, table: str) -> list[Index]:
    """The live indexes of ``table`` (a qualified, quoted name)."""
    rows = await conn.fetch(INDEXES, table)
    return [Index(r[0], r[1], tuple(r[2]), r[3], r[4], r[5]) for r in rows]


async def estimated_rows(conn: Connection, table: str, where: str | None = None) -> int:
    """About how many rows of ``table`` match ``where``: the planner's estimate, read cheaply."""
    query = f"SELECT 1 FROM {table}" + (f" WHERE {where}" if where else "")
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {query}")
    document = json.loads(plan) if isinstance(plan, str) else plan
    return int(document[0]["Plan"]["Plan Rows"])


async def measure_in_savepoint(conn: Connection, table: str, measure: Measure) -> Measured:
    """Run ``measure`` in a savepoint that is always rolled back, timing it; count HOT updates.

    A failure of the write is reported in :attr:`Measured.error`, not raised: the dry run goes on
    without a measured cost. One that leaves the connection unusable is raised.
    """
    savepoint = conn.transaction()
    await savepoint.start()
    try:
        await conn.execute(_PLANNER)
        before = await conn.fetchrow(XACT_UPDATES, table)
        started = time.perf_counter()
        rows = await measure()
        seconds = time.perf_counter() - started
        after = await conn.fetchrow(XACT_UPDATES, table)
        assert before is not None and after is not None
        measured = Measured(rows, seconds, int(after[0] - before[0]), int(after[1] - before[1]))
    except (asyncpg.PostgresError, asyncpg.InterfaceError, BrainMigrateError) as exc:
        if not is_usable(conn):
            raise
        measured = Measured(0, 0.0, 0, 0, f"{type(exc).__name__}: {exc}")
    finally:
        await savepoint.rollback()
    return measured


async def write_impact(
    conn: Connection,
    shape: TableShape,
    written: Sequence[str],
    *,
    measure: Measure | None = None,
    rows_to_change: int | None = None,
) -> WriteImpact:
    """What writing each changed row of ``shape``'s table costs, when a migration writes ``written``.

    ``measure``, when given, writes some rows as the migration would (the same statement) and
    returns how many it wrote; it runs inside a savepoint that is rolled back, timed, for
    :attr:`WriteImpact.seconds_per_row`. ``rows_to_change`` is how many rows the whole migration
    would change (by default, the planner's estimate of the table's rows), for the estimated total.
    With no ``written`` columns (a statement that does not declare them), whether updates are HOT
    is read from the measurement.
    """
    table = shape.qualified
    name = str(await conn.fetchval(TABLE_NAME, table))
    found = await indexes(conn, table)
    summarizing = SUMMARIZING_METHODS if conn.get_server_version() >= SUMMARIZING_SINCE else frozenset()
    measured = await measure_in_savepoint(conn, table, measure) if measure is not None else None
    known = bool(written)
    if known:
        blocking = [i for i in found if i.method not in summarizing and i.references(written)]
        hot_possible = not blocking
    else:
        blocking = []
        hot_possible = measured is not None and measured.updated > 0 and measured.hot == measured.updated
        if not hot_possible:
            blocking = [i for i in found if i.method not in summarizing]
    if hot_possible:
        touched = [i for i in found if i.method in summarizing and i.references(written)]
    else:
        touched = list(found)
    vector = [i for i in touched if i.method in VECTOR_METHODS]
    if rows_to_change is None:
        rows_to_change = await estimated_rows(conn, table)
    warnings: list[str] = []
    if measured is not None and measured.error is not None:
        warnings.append(f"the cost per row was not measured: writing the sample failed ({measured.error})")
    elif measured is not None and measured.rows == 0:
        warnings.append("the cost per row was not measured: the sample changes no row")
    if not known:
        warnings.append(
            "the migration does not declare the columns it writes (`writes`), so the indexes it "
            + (
                f"touches were read from the sample: {measured.hot} of {measured.updated} updates were HOT"
                if measured is not None and measured.updated
                else "touches are unknown; every index is assumed touched"
            )
        )
    if vector:
        warnings.append(_vector_warning(name, written, blocking, vector, measured, rows_to_change))
    if hot_possible and known and found:
        note = await _room_note(conn, table, measured)
        if note:
            warnings.append(note)
    return WriteImpact(
        table=name,
        written_columns=tuple(written),
        touched_indexes=tuple(i.name for i in touched),
        hot_possible=hot_possible,
        vector_indexes=tuple(i.name for i in vector),
        seconds_per_row=measured.seconds_per_row if measured is not None else None,
        warnings=tuple(warnings),
    )


def _duration(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:,.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds:,.1f} s"


def _vector_warning(
    table: str,
    written: Sequence[str],
    blocking: Sequence[Index],
    vector: Sequence[Index],
    measured: Measured | None,
    rows_to_change: int,
) -> str:
    names = ", ".join(f"{i.name} ({i.method})" for i in vector)
    columns = ", ".join(written) or "the columns the statement writes"
    if written and any(i.references(written) for i in vector):
        why = f"the migration writes the indexed vector column ({columns})"
    else:
        causes = ", ".join(i.name for i in blocking) or "an index on a written column"
        why = f"writing {columns} prevents HOT updates (indexed by {causes}), so every index gets a new entry"
    text = f"vector index {names} of {table} will be updated for every changed row: {why}"
    per_row = measured.seconds_per_row if measured is not None else None
    if per_row is not None and measured is not None:
        total = per_row * rows_to_change
        text += (
            f"; measured {per_row * 1000:.3f} ms per row ({1 / per_row:,.0f} rows/s) writing a sample of "
            f"{measured.rows} rows, so about {_duration(total)} for the ~{rows_to_change:,} rows that "
            "would change"
        )
    else:
        text += "; the cost per row was not measured"
    return (
        text
        + ". To build the vector index once instead of updating it row by row, write the new values to a "
        "new column or table and create the index after the backfill (CREATE INDEX CONCURRENTLY, then "
        "swap), or drop the vector index before the migration and rebuild it after (searches fall "
        "back to exact scans meanwhile)"
    )


async def _room_note(conn: Connection, table: str, measured: Measured | None) -> str | None:
    """A note when HOT updates may fail for lack of room on full pages (fillfactor 100)."""
    row = await conn.fetchrow(TABLE_STORAGE, table)
    if row is None:
        return None
    fillfactor, pages, tuples, width, block = row
    if measured is not None and measured.updated and measured.hot < measured.updated:
        return (
            f"only {measured.hot} of {measured.updated} sampled updates were HOT: their pages lacked room "
            f"for the new row versions (fillfactor {fillfactor}), so the other "
            f"{measured.updated - measured.hot} got an entry in every index; a lower fillfactor "
            "(ALTER TABLE ... SET (fillfactor = ...), for pages written after it, or for all after a "
            "rewrite) leaves room for HOT updates"
        )
    if fillfactor < 100 or not pages or tuples <= 0 or width is None:
        return None
    if tuples * width / (pages * block) < _FULL_PAGE_SHARE:
        return None
    return (
        f"the table's pages look full (fillfactor {fillfactor}, about {tuples * width / (pages * block):.0%} "
        "used), so HOT updates may fail for lack of room and touch every index; a lower fillfactor "
        "(ALTER TABLE ... SET (fillfactor = 90), then a rewrite) leaves room for them"
    )
