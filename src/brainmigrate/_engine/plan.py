"""How one data migration runs here: its mode, its table, and the SQL derived from them."""

from __future__ import annotations

from typing import Any

import attrs

from .._model.data import DatabaseDataMigration, DataMigration, MemoryDataMigration
from .._model.items import MEMORY_FIELDS
from . import sql as sql
from .table import Column, TableShape

STREAM = "stream"  # pages of a source table, transformed in Python
QUERY = "query"  # slices returned by get_memories_to_migrate(), until it returns none
STATEMENT = "statement"  # an SQL statement per key range, on the server


@attrs.define
class RunPlan:
    """How one data migration runs here: its mode, table, and the SQL derived from them."""

    migration: DataMigration
    checksum: str
    schema: str
    mode: str
    shape: TableShape | None
    read_columns: list[Column]
    image: str | None
    reverse: str | None  # "images", "inverse", or None when not reversible
    statement: str | None = None
    _sql_cache: dict[Any, str] = attrs.field(factory=dict)

    @property
    def migration_id(self) -> str:
        return self.migration.metadata.id

    @property
    def table(self) -> TableShape:
        assert self.shape is not None
        return self.shape

    def page_sql(self, lower: str | None, upper: bool) -> str:
        key = ("page", lower, upper)
        if key not in self._sql_cache:
            shape = self.table
            source = self.migration.source
            assert source is not None
            self._sql_cache[key] = sql.page(
                shape.qualified,
                shape.key.quoted,
                [column.select() for column in self.read_columns],
                source.where,
                shape.key.sql_type,
                lower=lower,
                upper=upper,
            )
        return self._sql_cache[key]

    def range_sql(self, lower: str | None, upper: bool) -> str:
        key = ("range", lower, upper)
        if key not in self._sql_cache:
            shape = self.table
            source = self.migration.source
            assert source is not None
            self._sql_cache[key] = sql.key_range(
                shape.qualified, shape.key.quoted, source.where, shape.key.sql_type, lower=lower, upper=upper
            )
        return self._sql_cache[key]

    def write_sql(self, fields: tuple[str, ...]) -> tuple[str, list[Column]]:
        columns = self.table.check_columns(fields, self.migration_id, "writes")
        key = ("write", fields)
        if key not in self._sql_cache:
            self._sql_cache[key] = sql.write_batch(
                self.table.qualified,
                self.table.key.quoted,
                self.table.key.sql_type,
                [(c.quoted, c.param_type(), f"::{c.sql_type}" if c.sent_as_text else "") for c in columns],
                self.image if self.reverse == "images" else None,
            )
        return self._sql_cache[key], columns


def image_candidates(migration: DataMigration, shape: TableShape) -> list[str]:
    """Columns whose before-images a reversible migration keeps: those it may write."""
    if isinstance(migration, MemoryDataMigration):
        return [name for name in MEMORY_FIELDS if name in shape.columns]
    assert isinstance(migration, DatabaseDataMigration)
    if migration.writes:
        return list(migration.writes)
    return [name for name in shape.columns if name != shape.key.name]
