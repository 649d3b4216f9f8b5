"""The persisted state of data-migration runs: reading and changing ``data_runs``, ``data_chunks``
and ``data_errors`` in the history schema.

A run's state lives in the database, so any process can join, resume, cancel or report on it:
its status (moved only as :data:`RUN_TRANSITIONS` allows), its progress, its chunks left, its
live workers and its failed items.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .._errors import MigrationStateError, SchemaVersionError
from .._ledger import schema as _own_schema
from .._model.items import Progress
from .._model.results import ItemError
from .._model.sqltext import quote_ident
from .._model.states import ACTIVE_RUN_STATUSES, RUN_TRANSITIONS, RunStatus, allowed_sources, check_transition
from .._model.types import Connection
from . import sql as sql


class RunState:
    """Reads and changes the persisted state of the runs in one history schema."""

    def __init__(self, schema: str) -> None:
        self.schema = schema

    async def ensure_tables(self, conn: Connection) -> None:
        """Create brainmigrate's tables if the run tables are missing (under the runner lock)."""
        if await conn.fetchval(sql.TABLE_EXISTS, f"{quote_ident(self.schema)}.{sql.CHUNKS}") is None:
            await _own_schema.upgrade(conn, self.schema, create=True)

    async def run_row(self, conn: Connection, migration_id: str) -> asyncpg.Record | None:
        """The current (latest) run of ``migration_id``, or None if it never ran."""
        try:
            return await conn.fetchrow(sql.select_run(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc

    async def progress(self, conn: Connection, migration_id: str) -> Progress | None:
        """The persisted progress of a run, or None if it never ran."""
        try:
            row = await conn.fetchrow(sql.run_progress(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc
        return None if row is None else _progress(row)

    async def running(self, conn: Connection) -> list[Progress]:
        """The progress of each current run in flight: running or cancelling, or with live workers."""
        try:
            rows = await conn.fetch(sql.running_progress(self.schema, ACTIVE_RUN_STATUSES))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc
        return [_progress(row) for row in rows]

    async def _outdated(self, conn: Connection) -> SchemaVersionError:
        """The error for run tables of an older layout (a 0.1.0 database not upgraded yet)."""
        return SchemaVersionError(
            self.schema,
            found=await _own_schema.read_version(conn, self.schema) or 1,
            supported=_own_schema.CURRENT_VERSION,
        )

    async def chunks_left(self, conn: Connection, migration_id: str) -> int:
        """Chunks of the current run's key space not done yet."""
        count: int = await conn.fetchval(sql.chunks_left(self.schema), migration_id)
        return count

    async def live_workers(self, conn: Connection, migration_id: str) -> int:
        progress = await self.progress(conn, migration_id)
        return 0 if progress is None else progress.workers

    async def set_status(
        self,
        conn: Connection,
        migration_id: str,
        status: RunStatus | str,
        allowed: Sequence[str] | None = None,
        error: str | None = None,
        *,
        operation: str | None = None,
    ) -> RunStatus | None:
        """Move the current run of ``migration_id`` to ``status``; None if it was not moved.

        It moves from the statuses :data:`RUN_TRANSITIONS` allows (narrowed to ``allowed``, if given;
        a run already in ``status`` stays in it when ``allowed`` names it). With ``operation``, a
        refused move of an existing run raises MigrationStateError naming it, instead of returning None.
        """
        target = RunStatus(status)
        sources = set(allowed_sources(RUN_TRANSITIONS, target))
        if allowed is not None:
            sources = {s for s in sources if s in allowed} | ({target.value} & set(allowed))
        try:
            result: str | None = await conn.fetchval(
                sql.set_status(self.schema), migration_id, target.value, error, sorted(sources)
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        if result is None and operation is not None:
            current = await conn.fetchval(sql.run_status(self.schema), migration_id)
            if current is not None:
                check_transition(
                    RUN_TRANSITIONS,
                    RunStatus(current),
                    target,
                    operation=operation,
                    migration_id=migration_id,
                )
                raise MigrationStateError(
                    f"cannot {operation} migration {migration_id!r}: it is {current}",
                    migration_id=migration_id,
                )
        return None if result is None else RunStatus(result)

    async def resume(self, conn: Connection, migration_id: str) -> None:
        """Mark the current run running again: a stopped one, or one whose workers all died."""
        sources = sorted({*allowed_sources(RUN_TRANSITIONS, RunStatus.RUNNING), RunStatus.RUNNING.value})
        if await conn.fetchval(sql.resume_run(self.schema), migration_id, sources) is None:
            current = await conn.fetchval(sql.run_status(self.schema), migration_id)
            check_transition(
                RUN_TRANSITIONS,
                RunStatus(current),
                RunStatus.RUNNING,
                operation="resume",
                migration_id=migration_id,
            )

    async def errors(self, conn: Connection, migration_id: str) -> list[ItemError]:
        """The failed items of the current run."""
        try:
            rows = await conn.fetch(sql.select_errors(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []
        except asyncpg.UndefinedColumnError as exc:
            raise await self._outdated(conn) from exc
        return [
            ItemError(key=r[0], error=r[1], attempts=r[2], first_failed_at=r[3], last_failed_at=r[4])
            for r in rows
        ]


def _progress(row: asyncpg.Record) -> Progress:
    """A run's progress from a row of :func:`sql.run_progress`."""
    (
        status,
        total,
        started,
        resumed,
        at_resume,
        error,
        processed,
        failed,
        skipped,
        batches,
        updated,
        live,
        _,
        _now,
        migration_id,
    ) = row
    done = processed + failed + skipped
    elapsed = (updated - resumed).total_seconds()
    rate = (done - at_resume) / elapsed if elapsed > 0 and done > at_resume else None
    return Progress(
        migration_id=migration_id,
        status=status,
        processed=processed,
        failed=failed,
        skipped=skipped,
        total=total,
        batch_number=batches,
        rate=rate,
        started_at=started,
        updated_at=updated,
        workers=live,
        error=error,
    )
