"""How one data migration runs here: its mode, its table, and the SQL derived from them, as a plan
made by checking the migration against the database (:func:`make_plan`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .._errors import MigrationValidationError
from .._model.data import DatabaseDataMigration, DataMigration, MemoryDataMigration
from .._model.items import MEMORY_FIELDS
from .._model.memory_structure import MemoryStructureMigration
from .._model.sqltext import quote_ident
from .._model.types import Connection
from . import sql as sql
from .reshape import reshape
from .table import Column, TableShape
from .writers import BatchWriter, batch_writer

STREAM = "stream"  # pages of a source table, transformed in Python
QUERY = "query"  # slices returned by get_memories_to_migrate(), until it returns none
STATEMENT = "statement"  # an SQL statement per key range, on the server (also a structure migration's)

#: A keyset query for each combination of bounds (:data:`sql.BOUNDS`).
Keyset = Mapping[tuple[str | None, bool], str]


def _tuple(columns: Iterable[Column]) -> tuple[Column, ...]:
    return tuple(columns)


class WriteStatements:
    """The batch UPDATE for each set of written columns, built on first use and then kept.

    The only SQL of a run not built with its plan: the columns a batch writes are the keys of the
    changes its transform returns, known only once it has run (any subset of the table's columns,
    in the transform's order), so each set's statement is built the first time a batch writes it.
    It is a pure function of the plan and the set: the cache never changes what a plan means.
    """

    def __init__(self, shape: TableShape | None, migration_id: str, image: str | None) -> None:
        self._shape = shape
        self._migration_id = migration_id
        self._image = image
        self._built: dict[tuple[str, ...], tuple[str, list[Column]]] = {}

    def __call__(self, fields: tuple[str, ...]) -> tuple[str, list[Column]]:
        built = self._built.get(fields)
        if built is None:
            shape = self._shape
            assert shape is not None
            columns = shape.check_columns(fields, self._migration_id, "writes")
            statement = sql.write_batch(
                shape.qualified,
                shape.key.quoted,
                shape.key.sql_type,
                [(c.quoted, c.param_type(), f"::{c.sql_type}" if c.sent_as_text else "") for c in columns],
                self._image,
            )
            built = self._built[fields] = (statement, columns)
        return built


@attrs.frozen
class RunPlan:
    """How one data migration runs here: its mode, table, and all the SQL derived from them.

    Frozen and complete: every statement a run reads with is built when the plan is made (the
    batch writes, built per set of written columns, see :class:`WriteStatements`).
    """

    migration: DataMigration
    checksum: str
    schema: str
    mode: str
    shape: TableShape | None
    read_columns: tuple[Column, ...] = attrs.field(converter=_tuple)
    image: str | None
    #: "images", "inverse", "dropped" (what it wrote goes with a table its rollback drops), or
    #: None when not reversible.
    reverse: str | None
    statement: str | None = None
    #: The statement reversing a server-side run per key range, when it is reversed by one.
    rollback_statement: str | None = None
    #: The migration's own writer of batches (see :mod:`.writers`); never when the batch UPDATE
    #: must save before-images.
    writer: BatchWriter | None = None

    #: Pages of the source (its filter applied) in key order, by bounds.
    pages: Keyset = attrs.field(init=False)
    #: Key ranges of the source (server-side batches), by bounds.
    ranges: Keyset = attrs.field(init=False)
    #: Pages and key ranges of the whole table, for reversing: the filter may no longer match
    #: migrated rows.
    table_pages: Keyset = attrs.field(init=False)
    table_ranges: Keyset = attrs.field(init=False)
    #: The rows with the keys in $1 (retrying failed items).
    rows_by_key: str = attrs.field(init=False)
    #: Saving the before-images of a server-side batch's key range, when it keeps them.
    save_range_images: str | None = attrs.field(init=False)
    write_sql: WriteStatements = attrs.field(init=False)

    @pages.default
    def _pages(self) -> Keyset:
        return self._page_sql(self._where())

    @ranges.default
    def _ranges(self) -> Keyset:
        return self._range_sql(self._where())

    @table_pages.default
    def _table_pages(self) -> Keyset:
        return self._page_sql(None)

    @table_ranges.default
    def _table_ranges(self) -> Keyset:
        return self._range_sql(None)

    @rows_by_key.default
    def _rows_by_key(self) -> str:
        if self.shape is None:
            return ""
        shape = self.shape
        return sql.rows_by_key(shape.qualified, shape.key.quoted, self._selects(), shape.key.sql_type)

    @save_range_images.default
    def _save_range_images(self) -> str | None:
        migration = self.migration
        if self.mode != STATEMENT or self.reverse != "images" or self.shape is None:
            return None
        if isinstance(migration, MemoryStructureMigration):
            return None  # its batch statement saves the images of exactly the rows it changes
        assert self.image is not None and isinstance(migration, DatabaseDataMigration)
        return sql.save_images_in_range(
            self.image,
            self.shape.qualified,
            self.shape.key.quoted,
            [quote_ident(w) for w in migration.writes],
        )

    @write_sql.default
    def _write_sql(self) -> WriteStatements:
        return WriteStatements(
            self.shape, self.migration_id, self.image if self.reverse == "images" else None
        )

    def _selects(self) -> list[str]:
        return [column.select() for column in self.read_columns]

    def _where(self) -> str | None:
        source = self.migration.source
        return source.where if source is not None else None

    def _page_sql(self, where: str | None) -> Keyset:
        shape = self.shape
        if shape is None:
            return {}
        return sql.pages(shape.qualified, shape.key.quoted, self._selects(), where, shape.key.sql_type)

    def _range_sql(self, where: str | None) -> Keyset:
        shape = self.shape
        if shape is None:
            return {}
        return sql.key_ranges(shape.qualified, shape.key.quoted, where, shape.key.sql_type)

    @property
    def migration_id(self) -> str:
        return self.migration.metadata.id

    @property
    def table(self) -> TableShape:
        assert self.shape is not None
        return self.shape

    def page_sql(self, lower: str | None, upper: bool) -> str:
        return self.pages[lower, upper]

    def range_sql(self, lower: str | None, upper: bool) -> str:
        return self.ranges[lower, upper]

    def table_page_sql(self, lower: str | None, upper: bool) -> str:
        return self.table_pages[lower, upper]

    def table_range_sql(self, lower: str | None, upper: bool) -> str:
        return self.table_ranges[lower, upper]


def image_candidates(migration: DataMigration, shape: TableShape) -> list[str]:
    """Columns whose before-images a reversible migration keeps: those it may write."""
    if isinstance(migration, MemoryStructureMigration):
        return [migration.column]
    if isinstance(migration, MemoryDataMigration):
        return [name for name in MEMORY_FIELDS if name in shape.columns]
    assert isinstance(migration, DatabaseDataMigration)
    if migration.writes:
        return list(migration.writes)
    return [name for name in shape.columns if name != shape.key.name]


async def make_plan(conn: Connection, schema: str, migration: DataMigration, checksum: str) -> RunPlan:
    """Check the migration against the database and derive how it runs."""
    if isinstance(migration, MemoryStructureMigration):
        return await _structure_plan(conn, schema, migration, checksum)
    meta = migration.metadata
    statement = (
        await migration.get_batch_statement() if isinstance(migration, DatabaseDataMigration) else None
    )
    if isinstance(migration, MemoryDataMigration) and migration.uses_query:
        mode = QUERY
    elif statement is not None:
        mode = STATEMENT
    else:
        mode = STREAM
    source = migration.source
    if source is None:
        raise MigrationValidationError(
            f"data migration {meta.id!r} has no source: set `source = DataSource(table=..., key=...)`"
            + (" or override get_batch_statement()" if isinstance(migration, DatabaseDataMigration) else ""),
            migration_id=meta.id,
        )
    shape = await TableShape.read(conn, source, meta.id)
    if mode == STREAM:
        memory = isinstance(migration, MemoryDataMigration)
        base: type = MemoryDataMigration if memory else DatabaseDataMigration
        one = "transform_memory" if memory else "transform_row"
        if not (migration._overrides(one, base) or migration._overrides("transform_batch", base)):
            raise MigrationValidationError(
                f"data migration {meta.id!r} has nothing to do: override {one}() or transform_batch()"
                + ("" if memory else " or get_batch_statement()"),
                migration_id=meta.id,
            )
    reverse = None
    if meta.reversible and type(migration)._dropped_on_rollback:
        reverse = "dropped"
    elif meta.reversible:
        reverse = "inverse" if _has_inverse(migration) else "images"
        if mode == STATEMENT and reverse == "images":
            assert isinstance(migration, DatabaseDataMigration)
            if not migration.writes:
                raise MigrationValidationError(
                    f"data migration {meta.id!r} is reversible but its batch statement declares no "
                    "`writes` (the columns it changes, whose before-images are kept) and no "
                    "get_rollback_batch_statement()",
                    migration_id=meta.id,
                )
            shape.check_columns(migration.writes, meta.id, "writes")
    image = f"{quote_ident(schema)}.{quote_ident(sql.image_table(meta.id))}" if reverse == "images" else None
    read = [name for name in source.columns if name != shape.key.name]
    rollback_statement = None
    if reverse == "inverse" and isinstance(migration, DatabaseDataMigration):
        rollback_statement = await migration.get_rollback_batch_statement()
    return RunPlan(
        migration=migration,
        checksum=checksum,
        schema=schema,
        mode=mode,
        shape=shape,
        read_columns=shape.read_columns(read),
        image=image,
        reverse=reverse,
        statement=statement,
        rollback_statement=rollback_statement,
        writer=None if reverse == "images" else await batch_writer(conn, migration, shape),
    )


async def _structure_plan(
    conn: Connection, schema: str, migration: MemoryStructureMigration, checksum: str
) -> RunPlan:
    """A structure migration runs its compiled UPDATE per key range; it is reversed by the inverted
    operations, or by before-images when an operation drops data (or the migration keeps them)."""
    meta = migration.metadata
    source = migration.source
    if source is None:
        raise MigrationValidationError(
            f"structure migration {meta.id!r} has no source: set `source = DataSource(table=..., key=...)`",
            migration_id=meta.id,
        )
    shape = await TableShape.read(conn, source, meta.id)
    sql_of = reshape(migration, shape)
    reverse = None
    if meta.reversible:
        reverse = "images" if migration.keeps_images else "inverse"
    image = f"{quote_ident(schema)}.{quote_ident(sql.image_table(meta.id))}" if reverse == "images" else None
    return RunPlan(
        migration=migration,
        checksum=checksum,
        schema=schema,
        mode=STATEMENT,
        shape=shape,
        read_columns=(),
        image=image,
        reverse=reverse,
        statement=sql_of.batch_statement(image),
        rollback_statement=sql_of.batch_statement(None, inverse=True) if reverse == "inverse" else None,
    )


def _has_inverse(migration: DataMigration) -> bool:
    if isinstance(migration, MemoryDataMigration):
        return migration._overrides("reverse_memory", MemoryDataMigration)
    assert isinstance(migration, DatabaseDataMigration)
    return migration._overrides("reverse_row", DatabaseDataMigration) or (
        type(migration).get_rollback_batch_statement is not DatabaseDataMigration.get_rollback_batch_statement
    )
