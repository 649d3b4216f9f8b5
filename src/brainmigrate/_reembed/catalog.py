"""What the database says about a re-embedding's table: its columns, their types and
dimensions (``atttypmod``, never the type's name), and the vector indexes of a column."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .._errors import MigrationValidationError
from .._model.sqltext import quote_ident
from .._model.types import Connection
from .plan import HNSW_OPTIONS, ReembedPlan

#: pgvector's vector types, whose ``atttypmod`` is their number of dimensions.
VECTOR_TYPES = frozenset({"vector", "halfvec"})


@attrs.frozen
class ColumnFacts:
    name: str
    type_name: str
    #: The declared dimensions of a vector column (None: undeclared, or not a vector).
    dimensions: int | None


@attrs.frozen
class VectorIndex:
    name: str
    method: str
    opclass: str
    options: Mapping[str, int]
    valid: bool


@attrs.frozen
class TableFacts:
    """One table as the catalog describes it."""

    schema: str
    oid: int
    columns: Mapping[str, ColumnFacts]

    def column(self, name: str) -> ColumnFacts | None:
        return self.columns.get(name)


_TABLE = """
SELECT n.nspname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = to_regclass($1) AND c.relkind IN ('r', 'p')
"""
_COLUMNS = """
SELECT a.attname, t.typname::text, a.atttypmod
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
"""
_INDEXES = """
SELECT i.relname::text, am.amname::text, opc.opcname::text, i.reloptions, x.indisvalid
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_am am ON am.oid = i.relam
  JOIN pg_opclass opc ON opc.oid = x.indclass[0]
  JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0]
 WHERE x.indrelid = $1 AND x.indnatts = 1 AND a.attname = $2 AND am.amname IN ('hnsw', 'ivfflat')
 ORDER BY i.relname
"""


async def read_table(conn: Connection, plan: ReembedPlan) -> TableFacts:
    """The re-embedding's table, or MigrationValidationError when there is none."""
    name = quote_ident(plan.table)
    target = f"{quote_ident(plan.table_schema)}.{name}" if plan.table_schema else name
    row = await conn.fetchrow(_TABLE, target)
    if row is None:
        raise MigrationValidationError(
            f"re-embedding {plan.migration_id!r}: there is no table {target} (set table = ... and "
            "table_schema = ... to the table of the vector column)",
            migration_id=plan.migration_id,
        )
    columns = {}
    for attname, type_name, typmod in await conn.fetch(_COLUMNS, row[1]):
        dimensions = typmod if type_name in VECTOR_TYPES and typmod > 0 else None
        columns[attname] = ColumnFacts(attname, type_name, dimensions)
    return TableFacts(schema=row[0], oid=row[1], columns=columns)


async def vector_indexes(conn: Connection, facts: TableFacts, column: str) -> list[VectorIndex]:
    """The HNSW and IVFFlat indexes of ``column`` alone (valid or not)."""
    found = []
    for name, method, opclass, reloptions, valid in await conn.fetch(_INDEXES, facts.oid, column):
        options = {}
        for option in reloptions or ():
            key, _, value = option.partition("=")
            if key in HNSW_OPTIONS and value.isdigit():
                options[key] = int(value)
        found.append(VectorIndex(name, method, opclass, options, valid))
    return found


async def index_validity(conn: Connection, schema: str, name: str) -> bool | None:
    """Whether the index ``schema.name`` is valid (None: there is none)."""
    valid: bool | None = await conn.fetchval(
        "SELECT x.indisvalid FROM pg_index x WHERE x.indexrelid = to_regclass($1)",
        f"{quote_ident(schema)}.{quote_ident(name)}",
    )
    return valid


# A re-embedding's ``toast_tuple_target`` (``ReembedMigration.toast_tuple_target``, 128 by
# default) while each row holds two vectors. A row's new version, with the new vector beside the
# old, is larger than PostgreSQL's TOAST threshold (2 kB); with the default target only one vector
# moves out of line, and the version left (about as large as the row was) rarely fits on its page,
# so the update is not HOT and inserts the row into every index again, the old column's HNSW graph
# included. With a small target both vectors move out of line, the new version is a few hundred
# bytes and fits: the update is HOT and no index is touched. Rows of one vector (below the
# threshold) are unaffected.

_TOAST_TARGET = """
SELECT c.relkind::text, (SELECT o.option_value FROM pg_options_to_table(c.reloptions) AS o
                          WHERE o.option_name = 'toast_tuple_target')
  FROM pg_class c WHERE c.oid = $1::regclass
"""


async def toast_target(conn: Connection, qualified: str) -> tuple[str, int | None]:
    """The kind of the table (``r`` for a plain table) and its ``toast_tuple_target`` (None when
    not set)."""
    row = await conn.fetchrow(_TOAST_TARGET, qualified)
    if row is None:
        return "", None
    return str(row[0]), None if row[1] is None else int(row[1])


async def toast_target_set(conn: Connection, qualified: str, wanted: int | None) -> str:
    """The ALTER TABLE action (with its leading comma) giving the table the ``toast_tuple_target``
    ``wanted``, or nothing: when ``wanted`` is None, for a table other than a plain one, or for one
    with a ``toast_tuple_target`` of its own."""
    if wanted is None:
        return ""
    kind, target = await toast_target(conn, qualified)
    return f", SET (toast_tuple_target = {int(wanted)})" if kind == "r" and target is None else ""


async def toast_target_reset(conn: Connection, qualified: str, given: int | None) -> str:
    """The ALTER TABLE action (with its leading comma) resetting the ``toast_tuple_target`` when
    the table has the one a re-embedding gave it (``given``), or nothing."""
    if given is None:
        return ""
    _, target = await toast_target(conn, qualified)
    return ", RESET (toast_tuple_target)" if target == given else ""
