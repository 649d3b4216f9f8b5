"""The steps of an online rewrite, each an ordinary migration run by the runner of its kind.

expand (:class:`ShadowStep`) creates the shadow table and starts capturing the original's
changes; backfill copies every row, transformed (:func:`copy_step`: the migration's own transform
writing the rows it changes, then :class:`FillStep` copying the rest as they are); cutover builds
the shadow's indexes and replays the change log (:class:`IndexStep`), swaps the tables under a
short lock (:mod:`.switch`, which moves the views, other tables' foreign keys and the publications
depending on the table) and validates the foreign keys it carried over or moved; contract drops
the original (also in :mod:`.switch`). The replay of the change log is :mod:`.replay`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import asyncpg

from .._engine.structure_sql import new_value
from .._engine.table import TableShape
from .._errors import MigrationValidationError
from .._ledger.session import own_schema
from .._model.data import DatabaseDataMigration
from .._model.hybrid import ReadyMadeStep
from .._model.items import DataSource
from .._model.memory_structure import MemoryStructureMigration
from .._model.metadata import MigrationMetadata, MigrationType
from .._model.migration import Migration
from .._model.sqltext import quote_ident, quote_literal
from .._model.types import Connection
from . import capture, surgery
from .capture import Direction
from .definition import TableDefinition, read_definition
from .names import RewriteNames
from .refusals import check_rewritable
from .replay import REPLAY_BATCH, REPLAY_LAG, Replayer, catch_up
from .writer import RewriteWriter

if TYPE_CHECKING:
    from .migration import RewriteMigration

logger = logging.getLogger("brainmigrate")

#: The alias of the original's row in the statements copying it (the structure SQL's).
ROW = "m"
#: Builds of the shadow's indexes tried, each after a replay, while a unique index finds duplicates.
UNIQUE_BUILD_ATTEMPTS = 3


class StepOf(ReadyMadeStep):
    """What every step of a rewrite shares: its rewrite and names."""

    rewrite: RewriteMigration

    @property
    def hybrid_metadata(self) -> MigrationMetadata:
        return self.rewrite.metadata

    @property
    def subject(self) -> str:
        return self.table_source.table

    async def checksum_material(self) -> str:
        return f"{self.suffix}\n{await self.rewrite.checksum()}"

    @property
    def table_source(self) -> DataSource:
        source = self.rewrite.inner.source
        assert source is not None
        return source

    @property
    def migration_id(self) -> str:
        return self.rewrite.metadata.id

    async def names(self, conn: Connection) -> RewriteNames:
        schema = own_schema()
        if schema is None:
            raise self.outside_a_migrator(f"the rewrite of {self.migration_id!r}")
        source = self.table_source
        table_schema = source.schema or await conn.fetchval("SELECT current_schema()")
        return RewriteNames(self.migration_id, table_schema, source.table, schema)

    async def capture(
        self,
        conn: Connection,
        names: RewriteNames,
        definition: TableDefinition,
        direction: Direction,
        *,
        mirror: bool = False,
    ) -> None:
        """Start logging the changed keys of the table under the table's name (the original
        before the swap, the rewritten one after it); with ``mirror`` (after the swap), write
        its rows to the old table too instead."""
        await capture.install_capture(
            conn,
            names,
            direction=direction,
            table=names.qualified_table,
            key=definition.key,
            key_type=definition.key_type,
            migration_id=self.migration_id,
            mirror_to=names.in_table_schema(names.old) if mirror else None,
        )

    def replayer(self, names: RewriteNames) -> Replayer:
        """The replay of this rewrite's change log between the tables ``names`` names."""
        return Replayer(names, self.rewrite.inner, self.table_source)

    async def definition(
        self, conn: Connection, names: RewriteNames, *, table: str | None = None
    ) -> TableDefinition:
        """The definition of the original table (or of ``table``, in the table's schema)."""
        return await read_definition(
            conn,
            schema=names.schema,
            table=table or names.table,
            key=self.table_source.key,
            migration_id=self.migration_id,
        )


class SchemaStep(StepOf, Migration):
    """A step run as a schema migration: it has the rewrite and the pool."""

    def __init__(self, rewrite: RewriteMigration) -> None:
        Migration.__init__(self, rewrite.pool)
        self.rewrite = rewrite


class ShadowStep(SchemaStep):
    """Check the table can be rewritten, create its shadow, and start logging its changes."""

    suffix = "shadow"
    title = "create the shadow table and capture changes"

    async def validate_preconditions(self, conn: Connection) -> bool:
        return await self.rewrite.inner.validate_preconditions(conn)

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        definition = await self.definition(conn, names)
        await check_rewritable(conn, definition)
        generated = [c.name for c in definition.columns if c.generated]
        if generated:
            raise MigrationValidationError(
                f"rewrite of {self.migration_id!r}: {names.schema}.{names.table} has generated "
                f"columns ({', '.join(generated)}), which a rewrite does not copy yet; set strategy = "
                "'in_place'",
                migration_id=self.migration_id,
            )
        await surgery.create_shadow(conn, definition, names)
        await self.capture(conn, names, definition, Direction.FORWARD)

    async def down(self, conn: Connection) -> None:
        names = await self.names(conn)
        await capture.remove_capture(conn, names, Direction.FORWARD)
        await surgery.drop_shadow(conn, names)


# -- backfill -------------------------------------------------------------------------------------


class CopyStep(StepOf):
    """The backfill step running the migration's transform into the shadow."""

    suffix = "copy"
    title = "copy the rows it changes, transformed"


class _PythonCopy(CopyStep):
    """Mixed in before the migration's own class: its transform, written into the shadow."""

    strategy = "in_place"
    _dropped_on_rollback = True  # it writes into the shadow, which rolling back expand drops

    def __init__(self, rewrite: RewriteMigration) -> None:
        Migration.__init__(self, rewrite.pool)  # type: ignore[arg-type]
        self.rewrite = rewrite

    @property
    def step_type(self) -> MigrationType:  # type: ignore[override]
        return self.rewrite.inner.metadata.migration_type

    def _get_metadata(self) -> MigrationMetadata:
        meta = super()._get_metadata()
        return MigrationMetadata(
            id=meta.id,
            name=meta.name,
            version=meta.version,
            migration_type=self.rewrite.inner.metadata.migration_type,
            reversible=True,
        )

    async def validate_preconditions(self, conn: Connection) -> bool:
        return True

    async def validate_postconditions(self, conn: Connection) -> bool:
        return True

    async def _batch_writer(self, conn: Connection, table: TableShape) -> RewriteWriter | None:
        """The writer into the shadow; None while there is no shadow (a rollback's plan, made
        once the rewritten table has taken the table's name: it writes nothing)."""
        names = await self.names(conn)
        if await conn.fetchval("SELECT to_regclass($1)", names.in_table_schema(names.shadow)) is None:
            return None
        return await RewriteWriter.of(conn, names, table)


class _RangeCopy(StepOf, DatabaseDataMigration):
    """A backfill step copying key ranges into the shadow on the server; its rollback writes
    nothing: rolling back expand drops the shadow."""

    step_type = MigrationType.DATABASE_DATA
    strategy = "in_place"
    _dropped_on_rollback = True

    def __init__(self, rewrite: RewriteMigration) -> None:
        DatabaseDataMigration.__init__(self, rewrite.pool)
        self.rewrite = rewrite


class _StructureCopy(CopyStep, _RangeCopy):
    """A structure migration's operations applied on the way into the shadow, on the server."""

    async def get_batch_statement(self) -> str | None:
        inner = self.rewrite.inner
        assert isinstance(inner, MemoryStructureMigration)
        column = inner.column
        new = new_value(inner.checked_operations(), f"{ROW}.{quote_ident(column)}")
        shadow, table = _static_names(self)
        where = f" AND ({self.table_source.where})" if self.table_source.where else ""
        # jsonb_populate_record reads a JSON null as SQL NULL: such a value (which no operation
        # changes) is left to the fill, which copies the row as it is.
        where += f" AND {ROW}.{quote_ident(column)} IS DISTINCT FROM 'null'::jsonb"
        key = quote_ident(self.table_source.key)
        # The new row is the one column of a fenced subquery (evaluated once per row), so that the
        # filter's column names name the original's columns only.
        return (
            f"INSERT INTO {shadow} OVERRIDING SYSTEM VALUE SELECT (x.bm_row).* "
            f"FROM {table} AS {ROW} CROSS JOIN LATERAL (SELECT jsonb_populate_record({ROW}, "
            f"jsonb_build_object({quote_literal(column)}, {new})) AS bm_row OFFSET 0) AS x "
            f"WHERE {ROW}.{key} BETWEEN $1 AND $2{where} ON CONFLICT DO NOTHING"
        )


def copy_step(rewrite: RewriteMigration) -> Migration:
    """The backfill step running ``rewrite``'s migration into the shadow."""
    inner = rewrite.inner
    if isinstance(inner, MemoryStructureMigration):
        bound = type("StructureCopy", (_StructureCopy,), {"source": inner.source, "__module__": __name__})
        structure: Migration = bound(rewrite)
        return structure
    cls = type(inner)
    python = type(
        f"{cls.__name__}Copy",
        (_PythonCopy, cls),
        {"__module__": cls.__module__, "__qualname__": f"{cls.__qualname__}Copy"},
    )
    step: Migration = python(rewrite)
    return step


class FillStep(_RangeCopy):
    """Every row the copy did not write (skipped, filtered out, failed), copied as it is."""

    suffix = "fill"
    title = "copy every other row as it is"

    @classmethod
    def of(cls, rewrite: RewriteMigration) -> FillStep:
        source = rewrite.inner.source
        assert source is not None
        bound = type(
            cls.__name__,
            (cls,),
            {
                "source": DataSource(table=source.table, key=source.key, schema=source.schema),
                "__module__": cls.__module__,
            },
        )
        step: FillStep = bound(rewrite)
        return step

    async def get_batch_statement(self) -> str | None:
        shadow, table = _static_names(self)
        key = quote_ident(self.table_source.key)
        return (
            f"INSERT INTO {shadow} OVERRIDING SYSTEM VALUE SELECT {ROW}.* "
            f"FROM {table} AS {ROW} "
            f"WHERE {ROW}.{key} BETWEEN $1 AND $2 ON CONFLICT DO NOTHING"
        )


# -- cutover --------------------------------------------------------------------------------------


class IndexStep(SchemaStep):
    """Build the shadow's indexes once, then replay the changes logged meanwhile."""

    suffix = "indexes"
    title = "build the shadow's indexes"
    transactional = False
    rerun_after_interruption = True

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        definition = await self.definition(conn, names)
        replayer = self.replayer(names)
        # The shadow still holds rows the application deleted, re-keyed or changed since they were
        # copied, so a unique index built over them could find duplicates the table never had: the
        # changes logged so far are replayed first, and a unique build that fails all the same
        # (changes logged meanwhile) is tried again after the next replay.
        await catch_up(conn, names, Direction.FORWARD, replayer.forward, until_lag=REPLAY_LAG)
        for attempt in range(1, UNIQUE_BUILD_ATTEMPTS + 1):
            try:
                await surgery.build_indexes(
                    conn,
                    definition,
                    names,
                    maintenance_work_mem=self.rewrite.inner.rewrite_maintenance_work_mem,
                    parallel_workers=self.rewrite.inner.rewrite_parallel_workers,
                )
                break
            except asyncpg.UniqueViolationError:
                if attempt == UNIQUE_BUILD_ATTEMPTS:
                    raise
                await capture.replay(
                    conn, names, Direction.FORWARD, replayer.forward, batch=REPLAY_BATCH, until_lag=0
                )
        await catch_up(conn, names, Direction.FORWARD, replayer.forward, until_lag=REPLAY_LAG)

    async def down(self, conn: Connection) -> None:
        """The shadow, with its indexes, is dropped by rolling back expand. Rolled back after the
        swap back (outside its lock), this validates the foreign keys it gave the original again
        NOT VALID, its own and other tables'."""
        await surgery.validate_foreign_keys(conn, await self.names(conn))


def _static_names(step: StepOf) -> tuple[str, str]:
    """The shadow's and the original's qualified names, for a statement built without a
    connection (the table's schema is named by the source, or left to the search path)."""
    source = step.table_source
    names = RewriteNames(step.migration_id, source.schema or "", source.table, own_schema() or "")
    if source.schema is None:
        return quote_ident(names.shadow), quote_ident(source.table)
    return names.in_table_schema(names.shadow), names.qualified_table


__all__: Sequence[str] = (
    "CopyStep",
    "FillStep",
    "IndexStep",
    "SchemaStep",
    "ShadowStep",
    "StepOf",
    "copy_step",
)
