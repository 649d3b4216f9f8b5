"""The data engine's writer of a rewrite's batches: each changed row goes into the shadow, its
other columns copied from the original, instead of an ``UPDATE`` of the original."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._engine.table import Column, TableShape
from .._model.types import Connection
from . import copy
from .names import RewriteNames

if TYPE_CHECKING:
    from .._engine.entries import Entry


class RewriteWriter:
    """Writes batches of entries of any set of the table's columns into the shadow (one
    ``INSERT ... SELECT`` per batch, built once per set of columns)."""

    def __init__(
        self, names: RewriteNames, shape: TableShape, columns: Sequence[str], overriding: bool
    ) -> None:
        self.names = names
        self.shape = shape
        self.columns = tuple(columns)
        self.overriding = overriding
        self._statements: dict[tuple[str, ...], tuple[str, list[Column]]] = {}

    @classmethod
    async def of(cls, conn: Connection, names: RewriteNames, shape: TableShape) -> RewriteWriter:
        """The writer into ``names``' shadow of ``shape``'s table (its columns read from the catalog)."""
        insertable = await copy.insertable_columns(conn, names.in_table_schema(names.shadow))
        overriding = await copy.has_identity_always(conn, names.in_table_schema(names.shadow))
        return cls(names, shape, insertable, overriding)

    def handles(self, fields: tuple[str, ...]) -> bool:
        return bool(fields) and all(name in self.columns for name in fields)

    def encode(self, entries: list[Entry]) -> None:
        """Nothing to prepare early: values are encoded with the batch, as the batch UPDATE does."""

    def _statement(self, fields: tuple[str, ...]) -> tuple[str, list[Column]]:
        built = self._statements.get(fields)
        if built is None:
            written = [self.shape.columns[name] for name in fields]
            statement = copy.overlay_statement(
                source=self.names.qualified_table,
                target=self.names.in_table_schema(self.names.shadow),
                key=self.shape.key,
                columns=self.columns,
                written=written,
                overriding=self.overriding,
            )
            built = self._statements[fields] = (statement, written)
        return built

    async def write(self, conn: Connection, entries: Sequence[Entry]) -> int:
        if not entries:
            return 0
        first = entries[0].changes
        assert first is not None
        fields = tuple(first)
        statement, written = self._statement(fields)
        args: list[Any] = [[e.key for e in entries]]
        for column in written:
            args.append(column.encode_all([e.changes[column.name] for e in entries]))  # type: ignore[index]
        await conn.execute(statement, *args)
        # A row deleted from the original since it was read is not copied: its deletion is in the
        # change log, which the replay settles. Every entry is accounted for either way.
        return len(entries)
