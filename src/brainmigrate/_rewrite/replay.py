"""Replaying a rewrite's change log: each logged key's row re-read from the table it was changed
in and written to the other one (transformed again on the way into the shadow), or deleted there
when it is gone; and the passes of replay that bring the log's lag down before a lock is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from .._engine.batches import decode_rows, write_entries
from .._engine.entries import transform_items
from .._engine.plan import RunPlan, make_plan
from .._engine.structure_sql import new_value
from .._engine.transform import TransformCaller
from .._errors import MigrationValidationError
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.items import DataSource
from .._model.memory_structure import MemoryStructureMigration
from .._model.sqltext import quote_ident
from .._model.types import Connection
from . import capture, copy
from .capture import Direction
from .names import RewriteNames
from .writer import RewriteWriter

#: Keys replayed per transaction; the lag the index step leaves to the swap.
REPLAY_BATCH = 1_000
REPLAY_LAG = 1_000
#: Passes of replay without the lock before the swap tries anyway.
CATCH_UP_PASSES = 20
#: Changes left to replay when the swap asks for the table's lock: it replays down to this many
#: without the lock first, so that it holds the lock for a few replays only (a replayed row
#: enters every index of the shadow, an HNSW index included: milliseconds each).
SWAP_LAG = 50


class Replayer:
    """Applies logged keys to the target: each row re-read from the source, transformed again when
    the migration would change it, written, or deleted when it is gone."""

    def __init__(self, names: RewriteNames, inner: DataMigration, source: DataSource) -> None:
        self.names = names
        self.inner = inner
        self.source = source
        self._plan: RunPlan | None = None

    @property
    def migration_id(self) -> str:
        return self.inner.metadata.id

    async def _writing_plan(self, conn: Connection) -> RunPlan:
        """The migration's plan, writing into the shadow (made once: the tables do not change
        while a step replays)."""
        if self._plan is None:
            plan = await make_plan(conn, self.names.history_schema, self.inner, "")
            writer = await RewriteWriter.of(conn, self.names, plan.table)
            self._plan = attrs.evolve(plan, writer=writer)
        return self._plan

    async def forward(self, conn: Connection, keys: list[Any]) -> int:
        """Apply ``keys`` from the original to the shadow, transformed."""
        names, source, inner = self.names, self.source, self.inner
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
                f"rewrite of {self.migration_id!r}: the transform failed on {len(failed)} changed "
                f"row(s) while replaying the change log (first: {failed[0].key}: {failed[0].error})",
                migration_id=self.migration_id,
            )
        return written

    async def backward(self, conn: Connection, keys: list[Any]) -> int:
        """Apply ``keys`` from the rewritten table back to the old one, as the application wrote them."""
        names = self.names
        return await copy.apply_keys(
            conn,
            source=names.qualified_table,
            target=names.in_table_schema(names.old),
            key=self.source.key,
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


async def catch_up(
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


__all__: Sequence[str] = ("CATCH_UP_PASSES", "REPLAY_BATCH", "REPLAY_LAG", "SWAP_LAG", "Replayer", "catch_up")
