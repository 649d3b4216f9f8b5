"""The table a data migration works on: its columns and types, and how values cross the wire.

Values are read and written without touching the codecs of the user's pool: JSON and vector
columns travel as text and are decoded and encoded here (faster than a type codec, too).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .._errors import MigrationValidationError
from .._model.items import DataSource
from .._model.sqltext import quote_ident
from .._model.types import Connection
from . import jsoncodec
from . import sql as sql

_TEXT_TYPES = frozenset({"json", "jsonb", "vector", "halfvec", "sparsevec"})

#: JSON values are encoded by :mod:`.jsoncodec` (orjson when installed, with ``json``'s results).
#: Values JSON has no type for (bytes, sets, datetimes, Decimals, UUIDs, other objects) raise
#: TypeError, and NaN or infinities ValueError (PostgreSQL refuses them): such an item fails,
#: instead of its values being written as their ``str()``.


def _array_literal(value: Any) -> str:
    """A (nested) sequence as a PostgreSQL array literal: ``[1.5, None]`` is ``{1.5,NULL}``."""
    parts = []
    for element in value:
        if element is None:
            parts.append("NULL")
        elif isinstance(element, list | tuple):
            parts.append(_array_literal(element))
        elif isinstance(element, float):
            parts.append(repr(element))
        else:
            text = str(element).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'"{text}"')
    return "{" + ",".join(parts) + "}"


def _vector_literal(value: Iterable[Any]) -> str:
    """``[1.5,-2.0]``: each element as ``repr(float(x))``; for floats without the call per element."""
    if type(value) is list or type(value) is tuple:
        try:
            return "[" + ",".join(map(float.__repr__, value)) + "]"
        except TypeError:  # an element that is not a float (an int, a Decimal): converted one by one
            pass
    return "[" + ",".join(repr(float(x)) for x in value) + "]"


@attrs.frozen
class Column:
    """One column: its name, its SQL type, and whether it travels as text."""

    name: str
    sql_type: str
    type_name: str
    category: str
    unique: bool
    #: A type of PostgreSQL itself (uuid, numeric...), which the driver knows, or an extension's.
    builtin: bool = True

    @property
    def quoted(self) -> str:
        return quote_ident(self.name)

    @property
    def as_text(self) -> bool:
        """JSON, vectors, enums and types from extensions are sent and read as text."""
        return self.type_name in _TEXT_TYPES or self.category == "E" or not self.builtin

    @property
    def sent_as_text(self) -> bool:
        """Whether values are bound as text and cast by the server: text types, and arrays."""
        return self.as_text or self.category == "A"

    @property
    def is_json(self) -> bool:
        return self.type_name in ("json", "jsonb")

    def select(self, alias: str = "") -> str:
        """The expression that reads this column."""
        expr = f"{alias}{self.quoted}"
        return f"{expr}::text" if self.as_text else expr

    def param_type(self) -> str:
        """The array type a batch of this column's values is bound as."""
        if self.sent_as_text:
            return "text[]"
        return f"{self.sql_type}[]"

    @property
    def parsed(self) -> bool:
        """Whether :meth:`decode` parses this column's text (JSON and vectors)."""
        return self.is_json or self.type_name == "vector"

    def decode(self, value: Any) -> Any:
        """A value read with :meth:`select`, as Python sees it (JSON and vectors parsed)."""
        if value is None or not isinstance(value, str):
            return value
        if self.parsed:
            return jsoncodec.loads(value)
        return value

    def encode(self, value: Any) -> Any:
        """A Python value, ready to bind in this column's array parameter.

        TypeError or ValueError when the column cannot take it (for JSON, a value that is not JSON).
        """
        if value is None or not self.sent_as_text:
            return value
        if self.category == "A" and not isinstance(value, str):
            return _array_literal(value)
        if self.is_json:
            return jsoncodec.dumps(value)
        if self.type_name in ("vector", "halfvec") and not isinstance(value, str):
            return _vector_literal(value)
        return str(value)

    def encode_all(self, values: Iterable[Any]) -> list[Any]:
        """:meth:`encode` of each value, in order: the checks made once, not once per value."""
        if not self.sent_as_text:
            return list(values)
        if self.is_json:
            dumps = jsoncodec.dumps
            return [None if value is None else dumps(value) for value in values]
        return [self.encode(value) for value in values]


@attrs.frozen
class TableShape:
    """A source table as the database describes it."""

    qualified: str
    key: Column
    columns: dict[str, Column]

    @classmethod
    async def read(cls, conn: Connection, source: DataSource, migration_id: str) -> TableShape:
        """Describe ``source``'s table; MigrationValidationError if it, its key or a column is missing."""
        qualified = quote_ident(source.table)
        if source.schema is not None:
            qualified = f"{quote_ident(source.schema)}.{qualified}"
        if await conn.fetchval(sql.TABLE_EXISTS, qualified) is None:
            raise MigrationValidationError(
                f"data migration {migration_id!r}: source table {qualified} does not exist; "
                "create it with a schema migration this one depends on",
                migration_id=migration_id,
            )
        rows = await conn.fetch(sql.TABLE_COLUMNS, qualified)
        columns = {row[0]: Column(row[0], row[1], row[2], row[3], row[4], row[5]) for row in rows}
        key = columns.get(source.key)
        if key is None:
            raise MigrationValidationError(
                f"data migration {migration_id!r}: key column {source.key!r} does not exist in {qualified}",
                migration_id=migration_id,
            )
        if not key.unique:
            raise MigrationValidationError(
                f"data migration {migration_id!r}: key column {source.key!r} of {qualified} has no unique "
                "index; batches page by key, so it must be unique (use the primary key)",
                migration_id=migration_id,
            )
        shape = cls(qualified, key, columns)
        shape.check_columns(source.columns, migration_id, "reads")
        return shape

    def check_columns(self, names: Iterable[str], migration_id: str, verb: str) -> list[Column]:
        """The named columns; MigrationValidationError names the first one that is missing."""
        found = []
        for name in names:
            column = self.columns.get(name)
            if column is None:
                raise MigrationValidationError(
                    f"data migration {migration_id!r} {verb} column {name!r}, which {self.qualified} "
                    f"does not have (it has {', '.join(self.columns)})",
                    migration_id=migration_id,
                )
            found.append(column)
        return found

    def read_columns(self, names: Sequence[str]) -> list[Column]:
        return [self.key, *(self.columns[name] for name in names if name != self.key.name)]
