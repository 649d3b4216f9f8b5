"""The steps of a re-embedding, each an ordinary migration run by the runner of its kind: what
they share, and the first two.

expand adds the new column (and its text hashes) and records the new generation; backfill is a
data migration writing only the new column. The switch-over steps are in :mod:`.switch`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from .._errors import MigrationStateError, MigrationValidationError
from .._ledger.embeddings import EmbeddingLedger
from .._ledger.session import own_schema
from .._model.data import DatabaseDataMigration
from .._model.embedding import EmbeddingModel, GenerationStatus
from .._model.hybrid import ReadyMadeStep
from .._model.items import DataSource
from .._model.metadata import MigrationMetadata, MigrationType
from .._model.migration import Migration
from .._model.sqltext import quote_ident
from .._model.types import Connection, Pool
from .catalog import VECTOR_TYPES, TableFacts, read_table, toast_target_reset, toast_target_set
from .embedder import embed_checked, text_md5
from .plan import ReembedPlan
from .vector_copy import VectorCopyWriter

if TYPE_CHECKING:
    from .._engine.table import TableShape
    from .migration import ReembedMigration

logger = logging.getLogger("brainmigrate")

#: Stale memories (written since the backfill read them) the cutover embeds while it holds the
#: table's lock; more are embedded first, without the lock.
IN_LOCK_MAX = 256


class StepOf(ReadyMadeStep):
    """What every step of a re-embedding shares: its re-embedding and plan."""

    reembed: ReembedMigration

    def __init__(self, reembed: ReembedMigration) -> None:
        super().__init__(reembed.pool)  # type: ignore[call-arg]  # the Migration class after it
        self.reembed = reembed

    @property
    def hybrid_metadata(self) -> MigrationMetadata:
        return self.reembed.metadata

    @property
    def subject(self) -> str:
        plan = self.plan
        return f"{plan.table}.{plan.column} to {plan.model.name}"

    async def checksum_material(self) -> str:
        """What the step does: its part and the re-embedding's plan (its model, names, types)."""
        return f"{self.suffix}\n{self.plan!r}"

    @property
    def plan(self) -> ReembedPlan:
        return self.reembed.plan

    def _ledger(self) -> EmbeddingLedger:
        schema = own_schema()
        if schema is None:
            raise self.outside_a_migrator(f"re-embedding {self.reembed.metadata.id!r}")
        return EmbeddingLedger(schema)

    def _pool(self) -> Pool:
        pool = self.reembed.pool
        if pool is None:
            raise MigrationStateError(
                f"re-embedding {self.reembed.metadata.id!r} has no pool; it runs only through a Migrator",
                migration_id=self.reembed.metadata.id,
            )
        return pool

    async def _generation(self, conn: Connection) -> int:
        """The id of the generation this re-embedding records (0 in a dry run on tables older than
        the generations table, where nothing is recorded)."""
        ledger = self._ledger()
        if not await ledger.present(conn):
            return 0
        generation = await ledger.of_migration(conn, self.reembed.metadata.id)
        if generation is None:
            raise MigrationStateError(
                f"re-embedding {self.reembed.metadata.id!r} has no generation recorded; its expand "
                "step did not run",
                migration_id=self.reembed.metadata.id,
            )
        return generation.generation_id

    # -- stale memories ------------------------------------------------------------------------

    async def _stale(self, conn: Connection, schema: str, limit: int) -> list[asyncpg.Record]:
        plan = self.plan
        return list(
            await conn.fetch(
                f"SELECT {quote_ident(plan.key)} AS key, {quote_ident(plan.text_column)}::text AS text "
                f"FROM {plan.qualified(schema)} WHERE {plan.stale_condition()} "
                f"ORDER BY {quote_ident(plan.key)} LIMIT {int(limit)}"
            )
        )

    async def _embed_rows(self, conn: Connection, schema: str, rows: list[asyncpg.Record]) -> int:
        """Embed ``rows`` and write each vector where its text is still the one embedded."""
        plan = self.plan
        written = 0
        size = self.reembed.embed_batch_size
        for start in range(0, len(rows), size):
            batch = rows[start : start + size]
            texts = [row["text"] for row in batch]
            vectors = await embed_checked(
                self.reembed.embed, texts, plan.model.dimensions, self.reembed.metadata.id
            )
            args = [
                (row["key"], "[" + ",".join(map(repr, vector)) + "]", text_md5(text))
                for row, text, vector in zip(batch, texts, vectors, strict=True)
            ]
            await conn.executemany(
                f"UPDATE {plan.qualified(schema)} SET {quote_ident(plan.next_column)} = "
                f"$2::text::{plan.sql_type}, {quote_ident(plan.hash_column)} = $3 "
                f"WHERE {quote_ident(plan.key)} = $1 "
                f"AND md5({quote_ident(plan.text_column)}::text)::uuid = $3",
                args,
            )
            written += len(args)
        return written


class ExpandStep(StepOf, Migration):
    """Add the new model's column and its text hashes; record the new generation."""

    suffix = "expand"
    title = "add the column of the new model"

    async def up(self, conn: Connection) -> None:
        plan = self.plan
        hid = self.reembed.metadata.id
        ledger = self._ledger()
        facts = await read_table(conn, plan)
        old = _vector_column(facts, plan)
        building = await ledger.with_status(
            conn, facts.schema, plan.table, plan.column, GenerationStatus.BUILDING
        )
        if building is not None:
            raise MigrationStateError(
                f"re-embedding {hid!r}: {plan.table}.{plan.column} is being re-embedded already, to "
                f"{building.model} by {building.migration_id!r}; one re-embedding of a column at a "
                "time. Let that one finish (or roll it back), then run again",
                migration_id=hid,
            )
        previous = await ledger.with_status(
            conn, facts.schema, plan.table, plan.column, GenerationStatus.PREVIOUS
        )
        if previous is not None:
            last = await ledger.with_status(
                conn, facts.schema, plan.table, plan.column, GenerationStatus.ACTIVE
            )
            by = last.migration_id if last is not None and last.migration_id else "the last re-embedding"
            raise MigrationStateError(
                f"re-embedding {hid!r}: {plan.table}.{plan.column} keeps the vectors of {previous.model} "
                f"in {plan.previous_column} until {by!r} is contracted; contract it (`await "
                f"migrator.contract({by!r})`) or roll it back, then run again",
                migration_id=hid,
            )
        for name in (plan.next_column, plan.hash_column, plan.previous_column):
            if facts.column(name) is not None:
                raise MigrationStateError(
                    f"re-embedding {hid!r}: {facts.schema}.{plan.table} already has a column {name!r}, "
                    "left by another re-embedding of this column; roll that one back "
                    "(`await migrator.rollback(id)`), or drop the column if nothing uses it",
                    migration_id=hid,
                )
        active = await ledger.with_status(
            conn, facts.schema, plan.table, plan.column, GenerationStatus.ACTIVE
        )
        if active is not None and active.model == plan.model:
            raise MigrationValidationError(
                f"re-embedding {hid!r}: {plan.table}.{plan.column} holds {plan.model} already "
                f"(generation {active.generation_id}); there is nothing to re-embed",
                migration_id=hid,
            )
        if active is None:
            current = self.reembed.current_model or EmbeddingModel(
                name="unknown", dimensions=old.dimensions or 1
            )
            await ledger.add(
                conn,
                facts.schema,
                plan.table,
                plan.column,
                current,
                column_type=old.type_name,
                status=GenerationStatus.ACTIVE,
                migration_id=None,
            )
        table = plan.qualified(facts.schema)
        await conn.execute(
            f"ALTER TABLE {table} ADD COLUMN {quote_ident(plan.next_column)} "
            f"{plan.sql_type}, ADD COLUMN {quote_ident(plan.hash_column)} uuid"
            + await toast_target_set(conn, table, self.reembed.toast_tuple_target)
        )
        await ledger.add(
            conn,
            facts.schema,
            plan.table,
            plan.column,
            plan.model,
            column_type=plan.column_type,
            status=GenerationStatus.BUILDING,
            migration_id=hid,
        )

    async def down(self, conn: Connection) -> None:
        plan = self.plan
        facts = await read_table(conn, plan)
        table = plan.qualified(facts.schema)
        await conn.execute(
            f"ALTER TABLE {table} DROP COLUMN IF EXISTS "
            f"{quote_ident(plan.next_column)}, DROP COLUMN IF EXISTS {quote_ident(plan.hash_column)}"
            + await toast_target_reset(conn, table, self.reembed.toast_tuple_target)
        )
        generation = await self._ledger().of_migration(conn, self.reembed.metadata.id)
        if generation is not None:
            await self._ledger().move(
                conn, generation.generation_id, GenerationStatus.BUILDING, GenerationStatus.ROLLED_BACK
            )


def _vector_column(facts: TableFacts, plan: ReembedPlan) -> Any:
    """The column re-embedded, checked: the text and key columns exist, it is a vector column."""
    where = f"{facts.schema}.{plan.table}"
    hid = plan.migration_id
    for attribute, name in (("text_column", plan.text_column), ("key", plan.key)):
        if facts.column(name) is None:
            raise MigrationValidationError(
                f"re-embedding {hid!r}: table {where} has no column {name!r} (its declared "
                f"{attribute}); set {attribute} = ... to the column holding "
                + ("each memory's text" if attribute == "text_column" else "each row's unique key"),
                migration_id=hid,
            )
    old = facts.column(plan.column)
    if old is None or old.type_name not in VECTOR_TYPES:
        found = "no such column" if old is None else f"a column of type {old.type_name}"
        raise MigrationValidationError(
            f"re-embedding {hid!r}: {where}.{plan.column} is {found}, not a pgvector vector or "
            "halfvec column; set column = ... to the vector column to re-embed",
            migration_id=hid,
        )
    return old


class BackfillStep(StepOf, DatabaseDataMigration):
    """Embed every memory's text with the new model into the new column, in leased batches."""

    suffix = "backfill"
    title = "embed every memory with the new model"
    step_type = MigrationType.DATABASE_DATA

    @classmethod
    def of(cls, reembed: ReembedMigration) -> BackfillStep:
        """The backfill of ``reembed``: its rows are the memories whose new vector is missing or
        stale, read with their text."""
        plan = reembed.plan
        bound = type(
            cls.__name__,
            (cls,),
            {
                "source": DataSource(
                    table=plan.table,
                    key=plan.key,
                    columns=(plan.text_column,),
                    where=plan.stale_condition(),
                    schema=plan.table_schema,
                ),
                "retry_on": type(reembed).retry_on,
                "transform_batch_size": reembed.embed_batch_size,
                "__module__": cls.__module__,
            },
        )
        step: BackfillStep = bound(reembed)
        return step

    async def transform_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        plan = self.plan
        texts = [str(row[plan.text_column]) for row in rows]
        vectors = await embed_checked(
            self.reembed.embed, texts, plan.model.dimensions, self.reembed.metadata.id
        )
        return [
            {plan.next_column: vector, plan.hash_column: text_md5(text)}
            for text, vector in zip(texts, vectors, strict=True)
        ]

    async def reverse_row(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """Nothing to restore: rolling back expand drops the new column."""
        return None

    async def _batch_writer(self, conn: Connection, table: TableShape) -> VectorCopyWriter | None:
        """The data engine's writer of this backfill's batches: the vectors in binary, through
        COPY into a temporary table. None (the engine's text UPDATE writes them) for column types
        it does not pack, or a role that may not create temporary tables."""
        if not await conn.fetchval("SELECT has_database_privilege(current_database(), 'TEMPORARY')"):
            return None
        plan = self.plan
        return VectorCopyWriter.of(plan.migration_id, table, plan.next_column, plan.hash_column)
