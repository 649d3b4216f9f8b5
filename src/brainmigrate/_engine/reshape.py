"""The SQL of a structure migration's run: its batch statements and the queries that check it.

A structure migration's operations compile to one jsonb expression over its column
(:mod:`.structure_sql`); here that expression becomes the UPDATE run on each key range (and the
one reversing it), the dry run's sample, the counts of memories breaking an operation's
condition, and the check of the expected shape.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from .._errors import MigrationValidationError
from .._model.memory_structure import MemoryStructureMigration
from .._model.results import ItemChange, KeyPathStats, StructureDescription, Violation
from .._model.sqltext import quote_ident, quote_literal
from .._model.structure.operation import inverse_of
from .._model.types import Connection
from . import sql as sql
from .structure_sql import Staged, describe_query, new_value, sampled, shape_violations, staged
from .structure_sql import conditions as conditions_of
from .table import TableShape

#: The alias of the memories table in every statement here.
_ROW = "m"
#: Keys shown for each violation.
SAMPLE_KEYS = 5


def _filtered(where: str | None) -> str:
    return f" AND ({where})" if where else ""


@attrs.frozen
class Reshape:
    """A structure migration's SQL over one table, made once its column is checked."""

    migration: MemoryStructureMigration
    #: The table, qualified and quoted; its key, quoted; the JSONB column's name.
    table: str
    key: str
    column: str

    @property
    def _column(self) -> str:
        return f"{_ROW}.{quote_ident(self.column)}"

    @property
    def _where(self) -> str | None:
        source = self.migration.source
        return source.where if source is not None else None

    def new_value(self, *, inverse: bool = False) -> str:
        """The column's new value (or, with ``inverse``, its value after the inverted operations)."""
        operations = self.migration.checked_operations()
        return new_value(inverse_of(operations) if inverse else operations, self._column)

    def batch_statement(self, image: str | None, *, inverse: bool = False) -> str:
        """The UPDATE of one key range ($1 to $2), writing only memories whose value changes.

        With ``image``, the old values of exactly those memories are saved first, in the same
        statement: the changing rows are locked and re-read (a concurrent write is seen, not lost),
        and both the saved value and the update come from that latest version.
        """
        table, key, column = self.table, self.key, quote_ident(self.column)
        new = self.new_value(inverse=inverse)
        in_range = f"{_ROW}.{key} BETWEEN $1 AND $2{_filtered(self._where)}"
        changes = f"{in_range} AND {self._column} IS DISTINCT FROM {new}"
        if image is None:
            return f"UPDATE {table} AS {_ROW} SET {column} = {new} WHERE {changes}"
        written = quote_literal(self.column)
        return (
            f"WITH changed AS (SELECT {_ROW}.{key} AS k, {self._column} AS old FROM {table} AS {_ROW} "
            f"WHERE {changes} FOR UPDATE), "
            f"saved AS (INSERT INTO {image} ({key}, written, {column}) "
            f"SELECT k, ARRAY[{written}]::text[], old FROM changed ON CONFLICT DO NOTHING) "
            f"UPDATE {table} AS {_ROW} SET {column} = {new} FROM changed WHERE {_ROW}.{key} = changed.k"
        )

    def sample_update(self) -> str:
        """The update of the first $1 memories that would change, as a run writes them (to measure it)."""
        table, key, column = self.table, self.key, quote_ident(self.column)
        new = self.new_value()
        return (
            f"WITH picked AS (SELECT {_ROW}.{key} AS k FROM {table} AS {_ROW} "
            f"WHERE {self._column} IS DISTINCT FROM {new}{_filtered(self._where)} LIMIT $1) "
            f"UPDATE {table} AS {_ROW} SET {column} = {new} FROM picked WHERE {_ROW}.{key} = picked.k"
        )

    async def measure(self, conn: Connection, rows: int) -> int:
        """Write the first ``rows`` memories that would change; how many it wrote."""
        status = await conn.execute(self.sample_update(), rows)
        return int(status.split()[-1])

    def _staged(self, *, operations: bool = True) -> Staged:
        """The operations' stages over the row (or, without ``operations``, the column as it is)."""
        return staged(self.migration.checked_operations() if operations else (), self._column)

    def _from(self, joins: str, condition: str | None = None) -> str:
        """FROM the source's rows with ``joins``, filtered by the source and ``condition``."""
        conditions = [f"({c})" for c in (self._where, condition) if c]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return f" FROM {self.table} AS {_ROW} {joins}{where}"

    def changes_query(self) -> str:
        """Some memories that would change, with their old and new values ($1: how many)."""
        chain = self._staged()
        changed = f"{self._column} IS DISTINCT FROM {chain.final}"
        return (
            f"SELECT {_ROW}.{self.key}, {self._column}::text, ({chain.final})::text"
            f"{self._from(chain.joins, changed)} LIMIT $1"
        )

    async def sample(self, conn: Connection, limit: int) -> list[ItemChange]:
        """Some changes (at most ``limit``): the old and new values of memories that would change."""
        changes = [
            ItemChange(key=row[0], column=self.column, before=_json(row[1]), after=_json(row[2]))
            for row in await conn.fetch(self.changes_query(), limit)
        ]
        return changes

    async def check(
        self, conn: Connection, *, conditions: bool = True, shape: str | None = None, changes: bool = True
    ) -> Checked:
        """One pass over the source: how many memories it holds, and, with ``changes``, how many
        would change; with ``conditions``, those breaking an operation's condition; with ``shape``
        (``"now"`` or ``"after"`` the operations), those not of the expected shape."""
        operations = self.migration.checked_operations()
        joins: list[str] = []
        counts = ["count(*)"]
        final = self._column
        if changes or shape == "after":
            chain = staged(operations, self._column)
            joins.append(chain.joins)
            final = chain.final
            if changes:
                counts.append(f"count(*) FILTER (WHERE {self._column} IS DISTINCT FROM {final})")
        checks: list[tuple[str, str, str]] = []
        if conditions:
            found = conditions_of(operations, self._column)
            joins.append(found.joins)
            checks += [(str(op), condition, predicate) for op, condition, predicate in found.checks]
        shapes = 0
        if shape is not None and self.migration.expected:
            value = final if shape == "after" else self._column
            expected = shape_violations(self.migration.expected, value)
            checks += [
                (f"expected[{path}]", f"every memory has {path} of type {kind}", predicate)
                for path, kind, predicate in expected
            ]
            shapes = len(expected)
        first = len(counts)
        counts += [f"count(*) FILTER (WHERE {predicate})" for _, _, predicate in checks]
        source = " ".join(join for join in joins if join)
        row = await conn.fetchrow(f"SELECT {', '.join(counts)}{self._from(source)}")
        assert row is not None
        found_conditions: list[Violation] = []
        found_shapes: list[Violation] = []
        for index, (operation, condition, predicate) in enumerate(checks):
            count = int(row[first + index])
            if count:
                keys = await conn.fetch(
                    f"SELECT {_ROW}.{self.key}{self._from(source, predicate)} LIMIT {SAMPLE_KEYS}"
                )
                violation = Violation(
                    operation=operation,
                    condition=condition,
                    count=count,
                    sample_keys=tuple(key[0] for key in keys),
                )
                (found_shapes if index >= len(checks) - shapes else found_conditions).append(violation)
        return Checked(
            memories=int(row[0]),
            changing=int(row[1]) if changes else 0,
            conditions=tuple(found_conditions),
            shape=tuple(found_shapes),
        )


@attrs.frozen
class Checked:
    """What one pass over a structure migration's source found."""

    #: Memories in the source, and how many the operations would change.
    memories: int
    changing: int
    #: Memories breaking an operation's condition, and not of the expected shape, by check.
    conditions: tuple[Violation, ...] = ()
    shape: tuple[Violation, ...] = ()


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def reshape(migration: MemoryStructureMigration, shape: TableShape) -> Reshape:
    """The SQL of ``migration`` over ``shape``; MigrationValidationError unless its column is JSONB."""
    meta = migration.metadata
    name = migration.column
    column = shape.columns.get(name)
    if column is None:
        raise MigrationValidationError(
            f"structure migration {meta.id!r} reshapes column {name!r}, which table {shape.qualified} "
            f"does not have (its columns: {', '.join(shape.columns)}); set `column` to one of its "
            "JSONB columns",
            migration_id=meta.id,
        )
    if column.type_name != "jsonb":
        raise MigrationValidationError(
            f"structure migration {meta.id!r} reshapes column {name!r} of {shape.qualified}, which is "
            f"{column.sql_type}, not jsonb: structure operations work on JSONB only. Convert the column "
            f"first (ALTER TABLE ... ALTER COLUMN {quote_ident(name)} TYPE jsonb USING ...) or point "
            "`column` at a JSONB column",
            migration_id=meta.id,
        )
    return Reshape(migration, shape.qualified, shape.key.quoted, name)


def declared(migration: MemoryStructureMigration) -> Reshape:
    """The SQL of ``migration`` over its declared source, unchecked (for describing what it runs)."""
    source = migration.source
    if source is None:
        raise MigrationValidationError(
            f"structure migration {migration.metadata.id!r} has no source: set "
            "`source = DataSource(table=..., key=...)`",
            migration_id=migration.metadata.id,
        )
    table = quote_ident(source.table)
    if source.schema is not None:
        table = f"{quote_ident(source.schema)}.{table}"
    return Reshape(migration, table, quote_ident(source.key), migration.column)


#: Past this many memories (by the planner's estimate), describe_structure reads a sample of them.
DESCRIBE_SAMPLE_ROWS = 100_000

_COLUMN_TYPE = """
SELECT t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = $1::regclass AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped
"""
_ESTIMATE = "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass"


async def describe_structure(
    conn: Connection, table: str, column: str, schema: str | None, sample_rows: int = DESCRIBE_SAMPLE_ROWS
) -> StructureDescription:
    """Every key path of a JSONB column, with its JSON types and how many memories carry it."""
    qualified = quote_ident(table) if schema is None else f"{quote_ident(schema)}.{quote_ident(table)}"
    if await conn.fetchval(sql.TABLE_EXISTS, qualified) is None:
        raise MigrationValidationError(
            f"cannot describe {qualified}.{quote_ident(column)}: there is no table {qualified} "
            "(on the connection's search_path); pass table= (and schema=) of an existing table"
        )
    kind = await conn.fetchval(_COLUMN_TYPE, qualified, column)
    if kind != "jsonb":
        problem = "has no such column" if kind is None else f"is {kind}, not jsonb"
        raise MigrationValidationError(
            f"cannot describe column {column!r} of {qualified}: it {problem}; structure is described "
            "for JSONB columns only, pass column= of one"
        )
    estimate = int(await conn.fetchval(_ESTIMATE, qualified) or 0)
    percent = None
    if estimate > sample_rows:
        percent = max(0.01, min(100.0, 100.0 * sample_rows / estimate))
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # One snapshot and one seed: the count and the paths come from the same blocks.
        source = sampled(qualified, percent) if percent is not None else qualified
        memories = int(await conn.fetchval(f"SELECT count(*) FROM {source}"))
        rows = await conn.fetch(describe_query(qualified, quote_ident(column), sample_percent=percent))
    by_path: dict[tuple[str, ...], dict[str, int]] = {}
    for path, kind_found, count in rows:
        by_path.setdefault(tuple(path), {})[kind_found] = int(count)
    paths = tuple(
        KeyPathStats(path=path, types=types, memories=sum(types.values()))
        for path, types in sorted(by_path.items())
    )
    return StructureDescription(
        table=qualified, column=column, memories=memories, sampled=percent is not None, paths=paths
    )
