"""The statements copying rows of a rewrite from one table into the other: the fill of one key
range, the upsert and deletion of logged keys (the replay's, and the swap back's), and the overlay
write of a Python transform's batch.

Statements are built from quoted, qualified table names and column names (quoted here); values
are bound. The source row is aliased ``t`` in every statement, so that a column's expression (a
structure migration's, say) can name it. Generated columns are never written: the target computes
them. Identity ``ALWAYS`` columns are written ``OVERRIDING SYSTEM VALUE`` and never updated (their
value cannot change once a row is inserted).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._engine.table import Column
from .._model.sqltext import quote_ident
from .._model.types import Connection

#: The alias of the source's row in every statement.
ROW = "t"

#: The columns of table $1 (qualified name) a copy writes, in order: name, type, identity.
_INSERTABLE = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity::text
  FROM pg_attribute a
 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attnum
"""


@attrs.frozen
class TargetColumns:
    """What a copy into one table needs to know of it: the columns it writes, the type of each,
    and which are identity ``ALWAYS`` columns."""

    names: tuple[str, ...]
    types: Mapping[str, str]
    always: frozenset[str]

    @classmethod
    async def read(cls, conn: Connection, table: str) -> TargetColumns:
        rows = await conn.fetch(_INSERTABLE, table)
        return cls(
            tuple(row[0] for row in rows),
            {row[0]: row[1] for row in rows},
            frozenset(row[0] for row in rows if row[2] == "a"),
        )

    @property
    def overriding(self) -> bool:
        return bool(self.always)


async def insertable_columns(conn: Connection, table: str) -> tuple[str, ...]:
    """The columns of ``table`` (quoted, qualified) a row copy writes: all but generated ones."""
    return (await TargetColumns.read(conn, table)).names


async def has_identity_always(conn: Connection, table: str) -> bool:
    """Whether ``table`` has a ``GENERATED ALWAYS AS IDENTITY`` column (inserts then override it)."""
    return (await TargetColumns.read(conn, table)).overriding


def _selects(columns: Sequence[str], expressions: Mapping[str, str] | None) -> str:
    expressions = expressions or {}
    unknown = sorted(set(expressions) - set(columns))
    if unknown:
        raise ValueError(
            f"expressions given for {', '.join(map(repr, unknown))}, which the copy does not write "
            f"(it writes {', '.join(map(repr, columns))})"
        )
    return ", ".join(expressions.get(name, f"{ROW}.{quote_ident(name)}") for name in columns)


def _insert(target: str, columns: Sequence[str], overriding: bool) -> str:
    override = " OVERRIDING SYSTEM VALUE" if overriding else ""
    return f"INSERT INTO {target} ({', '.join(map(quote_ident, columns))}){override}"


def _on_conflict(key: str, columns: Sequence[str], always: frozenset[str] | Sequence[str]) -> str:
    updated = [name for name in columns if name != key and name not in always]
    if not updated:
        return f"ON CONFLICT ({quote_ident(key)}) DO NOTHING"
    sets = ", ".join(f"{quote_ident(name)} = EXCLUDED.{quote_ident(name)}" for name in updated)
    return f"ON CONFLICT ({quote_ident(key)}) DO UPDATE SET {sets}"


def fill_statement(
    *,
    source: str,
    target: str,
    key: str,
    columns: Sequence[str],
    overriding: bool,
    expressions: Mapping[str, str] | None = None,
) -> str:
    """Copy the rows of one key range (``$1`` first key, ``$2`` last key, inclusive: a server-side
    batch's) that ``target`` does not hold yet: each column as it is, or as its expression over
    ``t``. A row the target already holds (written by the transform or the replay) is left alone.

    Run every fill before the replay starts: a fill reads with its own snapshot, so one running
    while the replay deletes a key could copy that row back after its deletion was replayed.
    Once the fills are done, every change made since their snapshots is still in the log.
    """
    k = quote_ident(key)
    return (
        f"{_insert(target, columns, overriding)} SELECT {_selects(columns, expressions)} "
        f"FROM {source} AS {ROW} WHERE {ROW}.{k} BETWEEN $1 AND $2 "
        f"AND NOT EXISTS (SELECT 1 FROM {target} AS s WHERE s.{k} = {ROW}.{k}) "
        f"ON CONFLICT ({k}) DO NOTHING"
    )


def replace_statements(
    *,
    source: str,
    target: str,
    key: str,
    key_type: str,
    columns: Sequence[str],
    overriding: bool,
    expressions: Mapping[str, str] | None = None,
) -> tuple[str, str]:
    """Delete the rows of keys ``$1`` (an array of ``key_type``) from ``target``, then insert them
    as ``source`` holds them now (each column as it is, or its expression); each returns the keys
    it wrote, as text. Deleting every row first frees a unique value the application moved from
    one of them to another (or exchanged between them), and writes identity ``ALWAYS`` columns
    too, which an upsert cannot update."""
    k = quote_ident(key)
    delete = f"DELETE FROM {target} AS s WHERE s.{k} = ANY($1::{key_type}[]) RETURNING s.{k}::text"
    insert = (
        f"{_insert(target, columns, overriding)} SELECT {_selects(columns, expressions)} "
        f"FROM {source} AS {ROW} WHERE {ROW}.{k} = ANY($1::{key_type}[]) RETURNING {k}::text"
    )
    return delete, insert


def _count(status: str) -> int:
    """The row count of a command status (``INSERT 0 5``, ``DELETE 3``)."""
    return int(status.rsplit(" ", 1)[-1])


async def fill_range(
    conn: Connection,
    *,
    source: str,
    target: str,
    key: str,
    first: Any,
    last: Any,
    expressions: Mapping[str, str] | None = None,
) -> int:
    """Run :func:`fill_statement` on the keys from ``first`` to ``last``; the rows copied."""
    columns = await TargetColumns.read(conn, target)
    statement = fill_statement(
        source=source,
        target=target,
        key=key,
        columns=columns.names,
        overriding=columns.overriding,
        expressions=expressions,
    )
    return _count(await conn.execute(statement, first, last))


async def apply_keys(
    conn: Connection,
    *,
    source: str,
    target: str,
    key: str,
    keys: Sequence[Any],
    expressions: Mapping[str, str] | None = None,
) -> int:
    """Make ``target`` hold, for each of ``keys``, what ``source`` holds now: every row of the keys
    deleted, then those the source still holds inserted again, each column as it is or as its
    expression (see :func:`replace_statements`). The rows written or deleted.

    The replay's ``apply`` (forward: original into shadow; swap back: the rewritten table into the
    old one, rows copied back as they are), in the caller's transaction.
    """
    if not keys:
        return 0
    columns = await TargetColumns.read(conn, target)
    delete, insert = replace_statements(
        source=source,
        target=target,
        key=key,
        key_type=columns.types[key],
        columns=columns.names,
        overriding=columns.overriding,
        expressions=expressions,
    )
    deleted = await conn.fetch(delete, list(keys))
    inserted = await conn.fetch(insert, list(keys))
    return len({row[0] for row in deleted} | {row[0] for row in inserted})


def overlay_statement(
    *,
    source: str,
    target: str,
    key: Column,
    columns: Sequence[str],
    written: Sequence[Column],
    overriding: bool,
    always: Sequence[str] | None = None,
) -> str:
    """Write a Python transform's batch into ``target``: each row as ``source`` holds it, with the
    ``written`` columns taken from bound arrays, inserted or updated.

    ``$1`` is the batch's keys, then one array per written column, each as its
    :meth:`Column.param_type` (values sent as text cast by the server). A key no longer in the
    source is not written (its deletion is in the change log). A row the target holds already
    has every column updated but the identity ``ALWAYS`` ones (``always``); when ``always`` is
    not given and the target has such columns (``overriding``), only the written columns are.
    """
    own = [column for column in written if column.name != key.name and column.name in columns]
    aliases = ["k", *(f"c{i}" for i in range(len(own)))]
    params = [
        f"$1::{key.param_type()}",
        *(f"${i + 2}::{column.param_type()}" for i, column in enumerate(own)),
    ]
    by_name = {column.name: i for i, column in enumerate(own)}

    def value(name: str) -> str:
        i = by_name.get(name)
        if i is None:
            return f"{ROW}.{quote_ident(name)}"
        column = own[i]
        cast = f"::{column.sql_type}" if column.sent_as_text else ""
        return f"c.c{i}{cast}"

    if always is None and overriding:
        updated: Sequence[str] = [column.name for column in own]
    else:
        updated = columns
    key_cast = f"::{key.sql_type}" if key.sent_as_text else ""
    selects = ", ".join(value(name) for name in columns)
    return (
        f"{_insert(target, columns, overriding)} SELECT {selects} FROM {source} AS {ROW} "
        f"JOIN unnest({', '.join(params)}) AS c({', '.join(aliases)}) "
        f"ON {ROW}.{key.quoted} = c.k{key_cast} "
        f"{_on_conflict(key.name, updated, frozenset(always or ()))}"
    )


async def write_overlay(
    conn: Connection,
    *,
    source: str,
    target: str,
    key: Column,
    written: Sequence[Column],
    rows: Sequence[tuple[Any, Mapping[str, Any]]],
) -> int:
    """Write ``rows`` (each a key and its new values of exactly the ``written`` columns) with
    :func:`overlay_statement`; the rows written. Values are encoded as the batch UPDATE's are."""
    if not rows:
        return 0
    columns = await TargetColumns.read(conn, target)
    statement = overlay_statement(
        source=source,
        target=target,
        key=key,
        columns=columns.names,
        written=written,
        overriding=columns.overriding,
        always=sorted(columns.always),
    )
    own = [column for column in written if column.name != key.name and column.name in columns.names]
    args: list[Any] = [key.encode_all([row_key for row_key, _ in rows])]
    for column in own:
        args.append(column.encode_all([values[column.name] for _, values in rows]))
    return _count(await conn.execute(statement, *args))
