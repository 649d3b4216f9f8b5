"""The embedding generations of vector columns: one row per model a column held or is given.

A column has at most one ``active`` generation (the model whose vectors the application reads) and
at most one ``building`` (a re-embedding in progress), enforced by partial unique indexes. Rows
change status only as a re-embedding's steps move them, in the steps' own transactions.

Before brainmigrate's tables are at version 4 there is no such table: reads find nothing, and
writes are skipped. That happens only in a dry run (which never upgrades the tables): a real run
upgrades them before its first step.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import attrs

from .._model.embedding import EmbeddingGeneration, EmbeddingModel, GenerationStatus
from .._model.sqltext import quote_ident
from .._model.types import Connection

TABLE = "embedding_generations"

_COLUMNS = """generation_id, table_name, column_name, model_name, provider, model_version, dimensions,
       column_type, status, migration_id, created_at, activated_at, retired_at, index_phase,
       index_done, index_total"""


def _generation(row: asyncpg.Record) -> EmbeddingGeneration:
    return EmbeddingGeneration(
        generation_id=row["generation_id"],
        table=row["table_name"],
        column=row["column_name"],
        model=EmbeddingModel(
            name=row["model_name"],
            dimensions=row["dimensions"],
            provider=row["provider"],
            version=row["model_version"],
        ),
        column_type=row["column_type"],
        status=row["status"],
        migration_id=row["migration_id"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        retired_at=row["retired_at"],
        index_phase=row["index_phase"],
        index_done=row["index_done"],
        index_total=row["index_total"],
    )


@attrs.frozen
class EmbeddingLedger:
    """Reads and writes ``embedding_generations`` in ``schema``."""

    schema: str

    @property
    def table(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(TABLE)}"

    async def present(self, conn: Connection) -> bool:
        """Whether the table exists (checked without an error, which would end a transaction)."""
        return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", self.table))

    async def generations(
        self, conn: Connection, table_schema: str, table: str, column: str
    ) -> list[EmbeddingGeneration]:
        """Every generation of ``table.column``, oldest first ([] before any was recorded)."""
        if not await self.present(conn):
            return []
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE table_schema = $1 AND table_name = $2 "
            "AND column_name = $3 ORDER BY generation_id",
            table_schema,
            table,
            column,
        )
        return [_generation(row) for row in rows]

    async def with_status(
        self, conn: Connection, table_schema: str, table: str, column: str, status: GenerationStatus
    ) -> EmbeddingGeneration | None:
        """The latest generation of ``table.column`` in ``status``."""
        found = [g for g in await self.generations(conn, table_schema, table, column) if g.status is status]
        return found[-1] if found else None

    async def add(
        self,
        conn: Connection,
        table_schema: str,
        table: str,
        column: str,
        model: EmbeddingModel,
        *,
        column_type: str,
        status: GenerationStatus,
        migration_id: str | None,
    ) -> int:
        """Record a generation; returns its id (0: not recorded, the table is not there yet)."""
        if not await self.present(conn):
            return 0
        generation_id: int = await conn.fetchval(
            f"INSERT INTO {self.table} (table_schema, table_name, column_name, model_name, provider, "
            "model_version, dimensions, column_type, status, migration_id, created_at, activated_at, "
            "updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp(), "
            "CASE WHEN $9 = 'active' THEN clock_timestamp() END, clock_timestamp()) RETURNING generation_id",
            table_schema,
            table,
            column,
            model.name,
            model.provider,
            model.version,
            model.dimensions,
            column_type,
            status.value,
            migration_id,
        )
        return generation_id

    async def move(
        self, conn: Connection, generation_id: int, source: GenerationStatus, target: GenerationStatus
    ) -> None:
        """Move one generation from ``source`` to ``target`` (nothing when it is not in ``source``)."""
        if not generation_id:  # nothing recorded (a dry run on older tables)
            return
        stamps: dict[GenerationStatus, str] = {
            GenerationStatus.ACTIVE: ", activated_at = clock_timestamp(), retired_at = NULL",
            GenerationStatus.RETIRED: ", retired_at = clock_timestamp()",
            GenerationStatus.BUILDING: ", activated_at = NULL",
        }
        await conn.execute(
            f"UPDATE {self.table} SET status = $3, updated_at = clock_timestamp(){stamps.get(target, '')} "
            "WHERE generation_id = $1 AND status = $2",
            generation_id,
            source.value,
            target.value,
        )

    async def note_index(
        self, conn: Connection, generation_id: int, phase: str | None, done: int | None, total: int | None
    ) -> None:
        """Record how far the generation's index build got (read by ``embedding_generations``)."""
        if not generation_id:  # nothing recorded (a dry run on older tables)
            return
        await conn.execute(
            f"UPDATE {self.table} SET index_phase = $2, index_done = $3, index_total = $4, "
            "updated_at = clock_timestamp() WHERE generation_id = $1",
            generation_id,
            phase,
            done,
            total,
        )

    async def of_migration(self, conn: Connection, migration_id: str) -> EmbeddingGeneration | None:
        """The latest generation a re-embedding made (None before its expand ran)."""
        if not await self.present(conn):
            return None
        row: Any = await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM {self.table} WHERE migration_id = $1 "
            "ORDER BY generation_id DESC LIMIT 1",
            migration_id,
        )
        return None if row is None else _generation(row)

    async def set_cutover(self, conn: Connection, generation_id: int, names: dict[str, Any] | None) -> None:
        """Record the names a cutover gave (to give them back on a swap back); None clears them."""
        if not generation_id:  # nothing recorded (a dry run on older tables)
            return
        await conn.execute(
            f"UPDATE {self.table} SET cutover = $2::text::jsonb, updated_at = clock_timestamp() "
            "WHERE generation_id = $1",
            generation_id,
            None if names is None else json.dumps(names),
        )

    async def cutover_of(self, conn: Connection, generation_id: int) -> dict[str, Any] | None:
        """The names the generation's cutover gave, if it was cut over."""
        if not generation_id:
            return None
        text = await conn.fetchval(
            f"SELECT cutover::text FROM {self.table} WHERE generation_id = $1", generation_id
        )
        return None if text is None else dict(json.loads(text))
