"""The steps of an online rewrite, each an ordinary migration run by the runner of its kind.

expand (:class:`ShadowStep`) creates the shadow table and starts capturing the original's
changes; backfill copies every row, transformed (:func:`copy_step`: the migration's own transform
writing the rows it changes, then :class:`FillStep` copying the rest as they are); cutover builds
the shadow's indexes and replays the change log (:class:`IndexStep`), swaps the tables under a
short lock (:class:`SwapStep`, which moves the views, other tables' foreign keys and the
publications depending on the table) and validates the foreign keys it carried over or moved
(:class:`ValidateKeysStep`); contract drops the original (:class:`DropOldStep`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import asyncpg
import attrs

from .._engine.batches import decode_rows, write_entries
from .._engine.entries import transform_items
from .._engine.plan import RunPlan, make_plan
from .._engine.reshape import reshape
from .._engine.structure_sql import new_value
from .._engine.table import TableShape
from .._engine.table_lock import TableBusy, under_table_lock
from .._engine.transform import TransformCaller
from .._errors import MigrationValidationError
from .._ledger.session import own_schema
from .._model.config import MigrationConfig
from .._model.data import DatabaseDataMigration, DataMigration
from .._model.hybrid import ReadyMadeStep
from .._model.items import DataSource
from .._model.memory_structure import MemoryStructureMigration
from .._model.metadata import MigrationMetadata, MigrationType
from .._model.migration import Migration
from .._model.sqltext import quote_ident, quote_literal
from .._model.types import Connection
from . import capture, copy, surgery
from .capture import Direction
from .definition import TableDefinition, read_definition
from .names import RewriteNames
from .refusals import check_rewritable
from .writer import RewriteWriter

if TYPE_CHECKING:
    from .migration import RewriteMigration

logger = logging.getLogger("brainmigrate")

#: The alias of the original's row in the statements copying it (the structure SQL's).
ROW = "m"
#: Keys replayed per transaction; the lag the index step leaves to the swap.
REPLAY_BATCH = 1_000
REPLAY_LAG = 1_000
#: Passes of replay without the lock before the swap tries anyway.
CATCH_UP_PASSES = 20
#: Changes left to replay when the swap asks for the table's lock: it replays down to this many
#: without the lock first, so that it holds the lock for a few replays only (a replayed row
#: enters every index of the shadow, an HNSW index included: milliseconds each).
SWAP_LAG = 50
#: Changes the swap replays while it holds the lock, at most; more are replayed without it first.
IN_LOCK_MAX = 250
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
        self, conn: Connection, names: RewriteNames, definition: TableDefinition, direction: Direction
    ) -> None:
        """Start logging the changed keys of the table under the table's name (the original
        before the swap, the rewritten one after it)."""
        await capture.install_capture(
            conn,
            names,
            direction=direction,
            table=names.qualified_table,
            key=definition.key,
            key_type=definition.key_type,
            migration_id=self.migration_id,
        )

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


class _SchemaStep(StepOf, Migration):
    def __init__(self, rewrite: RewriteMigration) -> None:
        Migration.__init__(self, rewrite.pool)
        self.rewrite = rewrite


class ShadowStep(_SchemaStep):
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


class Replayer:
    """Applies logged keys to the target: each row re-read from the source, transformed again when
    the migration would change it, written, or deleted when it is gone."""

    def __init__(self, step: StepOf, names: RewriteNames) -> None:
        self.step = step
        self.names = names
        self._plan: RunPlan | None = None

    async def _writing_plan(self, conn: Connection) -> RunPlan:
        """The migration's plan, writing into the shadow (made once: the tables do not change
        while a step replays)."""
        if self._plan is None:
            plan = await make_plan(conn, self.names.history_schema, self.step.rewrite.inner, "")
            writer = await RewriteWriter.of(conn, self.names, plan.table)
            self._plan = attrs.evolve(plan, writer=writer)
        return self._plan

    async def forward(self, conn: Connection, keys: list[Any]) -> int:
        """Apply ``keys`` from the original to the shadow, transformed."""
        names, source = self.names, self.step.table_source
        inner = self.step.rewrite.inner
        written = await copy.apply_keys(
            conn,
            source=names.qualified_table,
            target=names.in_table_schema(names.shadow),
            key=source.key,
            keys=keys,
            expressions=_restructured(inner, source),
        )
        if not keys or isinstance(inner, MemoryStructureMigration):
            return written
        plan = await self._writing_plan(conn)
        wanted = keys
        if source.where:
            wanted = [
                r[0]
                for r in await conn.fetch(
                    f"SELECT {quote_ident(source.key)}::text FROM {names.qualified_table} "
                    f"WHERE {quote_ident(source.key)}::text = ANY($1::text[]) AND ({source.where})",
                    [str(k) for k in keys],
                )
            ]
        if not wanted:
            return written
        items = decode_rows(plan, await conn.fetch(plan.rows_by_key, [str(k) for k in wanted]))
        entries = await transform_items(plan, TransformCaller(MigrationConfig(), inner.retry_on), items)
        await write_entries(conn, plan, [e for e in entries if e.changes and e.error is None], isolate=False)
        failed = [e for e in entries if e.error is not None]
        if failed:
            raise MigrationValidationError(
                f"rewrite of {self.step.migration_id!r}: the transform failed on {len(failed)} changed "
                f"row(s) while replaying the change log (first: {failed[0].key}: {failed[0].error})",
                migration_id=self.step.migration_id,
            )
        return written

    async def backward(self, conn: Connection, keys: list[Any]) -> int:
        """Apply ``keys`` from the rewritten table back to the old one, as the application wrote them."""
        names = self.names
        return await copy.apply_keys(
            conn,
            source=names.qualified_table,
            target=names.in_table_schema(names.old),
            key=self.step.table_source.key,
            keys=keys,
        )


def _restructured(inner: DataMigration, source: DataSource) -> dict[str, str] | None:
    """A structure migration's column as its replay writes it (its operations applied to the
    rows its filter selects), over the copy's source row; None for any other migration."""
    if not isinstance(inner, MemoryStructureMigration):
        return None
    column = f"{copy.ROW}.{quote_ident(inner.column)}"
    new = new_value(inner.checked_operations(), column)
    return {inner.column: f"CASE WHEN {source.where} THEN {new} ELSE {column} END" if source.where else new}


class IndexStep(_SchemaStep):
    """Build the shadow's indexes once, then replay the changes logged meanwhile."""

    suffix = "indexes"
    title = "build the shadow's indexes"
    transactional = False
    rerun_after_interruption = True

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        definition = await self.definition(conn, names)
        replayer = Replayer(self, names)
        # The shadow still holds rows the application deleted, re-keyed or changed since they were
        # copied, so a unique index built over them could find duplicates the table never had: the
        # changes logged so far are replayed first, and a unique build that fails all the same
        # (changes logged meanwhile) is tried again after the next replay.
        await _catch_up(conn, names, Direction.FORWARD, replayer.forward, until_lag=REPLAY_LAG)
        for attempt in range(1, UNIQUE_BUILD_ATTEMPTS + 1):
            try:
                await surgery.build_indexes(conn, definition, names)
                break
            except asyncpg.UniqueViolationError:
                if attempt == UNIQUE_BUILD_ATTEMPTS:
                    raise
                await capture.replay(
                    conn, names, Direction.FORWARD, replayer.forward, batch=REPLAY_BATCH, until_lag=0
                )
        await _catch_up(conn, names, Direction.FORWARD, replayer.forward, until_lag=REPLAY_LAG)

    async def down(self, conn: Connection) -> None:
        """The shadow, with its indexes, is dropped by rolling back expand. Rolled back after the
        swap back (outside its lock), this validates the foreign keys it gave the original again
        NOT VALID, its own and other tables'."""
        await surgery.validate_foreign_keys(conn, await self.names(conn))


class SwapStep(_SchemaStep):
    """Under the table's lock: replay the last changes, swap the tables, capture in reverse."""

    suffix = "swap"
    title = "swap the rewritten table in"
    lock_timeout_ms: ClassVar[int] = 2_000
    attempts: ClassVar[int] = 5

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        definition = await self.definition(conn, names)
        replayer = Replayer(self, names)

        async def swap() -> None:
            await surgery.swap(conn, definition, names)
            await self.capture(conn, names, definition, Direction.REVERSE)
            await _check_expected_shape(conn, names, self.rewrite.inner)
            if not await self.rewrite.inner.validate_postconditions(conn):
                raise MigrationValidationError(
                    f"rewrite of {self.migration_id!r}: validate_postconditions() returned False on the "
                    "rewritten table; it was not swapped in",
                    migration_id=self.migration_id,
                )

        await self._switch(
            conn,
            names,
            definition,
            Direction.FORWARD,
            replayer.forward,
            swap,
            what=f"the swap of rewrite {self.migration_id!r}",
            advice="The shadow stays up to date; run the migration again once the table is quieter",
        )

    async def down(self, conn: Connection) -> None:
        """Swap back: the changes made since the swap go back to the old table, which takes the
        table's name again."""
        names = await self.names(conn)
        definition = await self.definition(conn, names, table=names.old)
        current = await self.definition(conn, names)

        async def swap_back() -> None:
            await surgery.swap_back(conn, definition, names)

        await self._switch(
            conn,
            names,
            current,
            Direction.REVERSE,
            Replayer(self, names).backward,
            swap_back,
            what=f"the swap back of rewrite {self.migration_id!r}",
            advice="Nothing was changed; roll it back again once the table is quieter",
        )

    async def _switch(
        self,
        conn: Connection,
        names: RewriteNames,
        live: TableDefinition,
        direction: Direction,
        apply: capture.Apply,
        switch: Callable[[], Awaitable[None]],
        *,
        what: str,
        advice: str,
    ) -> None:
        """Under the lock of ``live``'s table (and of what depends on it): replay the rest of
        ``direction``'s log through ``apply``, take its capture off, then ``switch``. The log is
        replayed down to :data:`SWAP_LAG` changes without the lock first, and again whenever more
        than :data:`IN_LOCK_MAX` are left once the lock is held (which is then released)."""

        async def change() -> None:
            if await capture.lag(conn, names, direction) > IN_LOCK_MAX:
                raise TableBusy(f"more than {IN_LOCK_MAX:,} changes were still to replay")
            await capture.replay(conn, names, direction, apply, batch=REPLAY_BATCH, until_lag=0)
            await capture.remove_capture(conn, names, direction)
            await switch()

        async def catch_up() -> None:
            await _catch_up(conn, names, direction, apply)

        await catch_up()
        await under_table_lock(
            conn,
            _locked(live, names.qualified_table),
            change,
            lock_timeout_ms=self.lock_timeout_ms,
            attempts=self.attempts,
            what=what,
            migration_id=self.migration_id,
            catch_up=catch_up,
            advice=advice,
            oid=live.oid,
        )


async def _catch_up(
    conn: Connection,
    names: RewriteNames,
    direction: Direction,
    apply: capture.Apply,
    *,
    until_lag: int = SWAP_LAG,
) -> None:
    """Replay ``direction``'s log without the table's lock, in passes, until at most
    ``until_lag`` changes are left (by default so that the swap, or swap back, replays only a few
    under it)."""
    for _ in range(CATCH_UP_PASSES):
        await capture.replay(conn, names, direction, apply, batch=REPLAY_BATCH, until_lag=until_lag)
        if await capture.lag(conn, names, direction) <= until_lag:
            break


def _locked(definition: TableDefinition, table: str) -> str:
    """What a swap of ``definition``'s table (``table``, quoted and qualified) locks, in order: the
    views reading it (and, as PostgreSQL locks a view, what they read) and the tables whose
    foreign keys reference it first, as a query through a view or a write to a referencing table
    locks them before the table (taken the other way round, the two would deadlock); the table
    last."""
    first = [view.qualified for view in definition.dependent_views]
    first += dict.fromkeys(f"ONLY {key.qualified_table}" for key in definition.inbound_foreign_keys)
    return ", ".join([*first, table])


async def _check_expected_shape(conn: Connection, names: RewriteNames, inner: DataMigration) -> None:
    """MigrationValidationError when a structure migration's rewritten table, now under the
    table's name, does not have its expected shape (as the structure runner checks in place)."""
    if not isinstance(inner, MemoryStructureMigration) or not inner.expected:
        return
    plan = await make_plan(conn, names.history_schema, inner, "")
    checked = await reshape(inner, plan.table).check(conn, conditions=False, shape="now", changes=False)
    if checked.shape:
        raise MigrationValidationError(
            f"structure migration {inner.metadata.id!r} does not leave the expected shape: "
            f"{'; '.join(str(violation) for violation in checked.shape)}. Fix `expected` or the "
            "operations (a dry run shows both); the rewritten table was not swapped in",
            migration_id=inner.metadata.id,
        )


class ValidateKeysStep(_SchemaStep):
    """Validate the foreign keys the swap added NOT VALID, the table's own and other tables'
    referencing it (without blocking writes)."""

    suffix = "validate-keys"
    title = "validate the foreign keys carried over"

    async def up(self, conn: Connection) -> None:
        await surgery.validate_foreign_keys(conn, await self.names(conn))

    async def down(self, conn: Connection) -> None:
        """Validated constraints need no undoing; swapping back gives them to the original again."""


class DropOldStep(_SchemaStep):
    """Drop the original table, kept since the swap, and the reverse capture."""

    suffix = "drop-old"
    title = "drop the original table"
    step_reversible = False

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        await capture.remove_capture(conn, names, Direction.REVERSE)
        await surgery.drop_old(conn, names)


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
    "DropOldStep",
    "FillStep",
    "IndexStep",
    "ShadowStep",
    "SwapStep",
    "ValidateKeysStep",
    "copy_step",
)
