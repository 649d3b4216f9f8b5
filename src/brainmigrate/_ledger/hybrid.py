"""The runs of hybrid migrations: one row per run in ``hybrid_runs``, holding its phase.

The current run of a hybrid is its latest. Its phase moves only as
:data:`~brainmigrate._model.states.HYBRID_TRANSITIONS` allows, checked here and again in the
statement that moves it. Which steps are done is not kept here: each step's history row, written
with the step's own work, says so.
"""

from __future__ import annotations

from datetime import datetime

import asyncpg
import attrs

from .._model.states import (
    HYBRID_ENDED,
    HYBRID_TRANSITIONS,
    HybridPhase,
    allowed_sources,
    check_transition,
)
from .._model.types import Connection
from . import sql as _sql


@attrs.frozen(kw_only=True)
class HybridRun:
    """One run of a hybrid migration, as recorded."""

    run_id: int
    hybrid_id: str
    checksum: str
    phase: HybridPhase = attrs.field(converter=HybridPhase)
    current_step: str | None
    error: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _run(row: asyncpg.Record | None) -> HybridRun | None:
    return None if row is None else HybridRun(**dict(row))


@attrs.frozen
class HybridLedger:
    """Reads and writes the runs of hybrid migrations in ``schema``."""

    schema: str

    async def latest(self, conn: Connection, hybrid_id: str) -> HybridRun | None:
        """The current run of ``hybrid_id``; None when it never ran (or the tables are older)."""
        try:
            row = await conn.fetchrow(_sql.latest_hybrid_run(self.schema), hybrid_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None
        return _run(row)

    async def start(self, conn: Connection, hybrid_id: str, checksum: str) -> HybridRun:
        """A new run, in phase EXPANDING."""
        run = _run(
            await conn.fetchrow(
                _sql.start_hybrid_run(self.schema), hybrid_id, checksum, HybridPhase.EXPANDING.value
            )
        )
        assert run is not None
        return run

    async def move(
        self,
        conn: Connection,
        run: HybridRun,
        target: HybridPhase,
        *,
        operation: str,
        step: str | None = None,
        error: str | None = None,
    ) -> HybridRun:
        """Move ``run`` to ``target`` (MigrationStateError unless the transition table allows it)."""
        check_transition(
            HYBRID_TRANSITIONS, run.phase, target, operation=operation, migration_id=run.hybrid_id
        )
        ended = target in (*HYBRID_ENDED, HybridPhase.COMPLETED, HybridPhase.FAILED)
        moved = _run(
            await conn.fetchrow(
                _sql.set_hybrid_phase(self.schema),
                run.run_id,
                target.value,
                list(allowed_sources(HYBRID_TRANSITIONS, target)),
                step,
                error,
                ended,
            )
        )
        if moved is None:  # moved by someone else since it was read: refuse as the table says
            current = await self.latest(conn, run.hybrid_id)
            check_transition(
                HYBRID_TRANSITIONS,
                current.phase if current is not None else run.phase,
                target,
                operation=operation,
                migration_id=run.hybrid_id,
            )
            raise AssertionError("the hybrid run changed while it was being moved")  # pragma: no cover
        return moved

    async def at_step(self, conn: Connection, run: HybridRun, step: str | None) -> None:
        """Record the step the run is at."""
        await conn.execute(_sql.set_hybrid_step(self.schema), run.run_id, step)

    async def note_error(self, conn: Connection, run: HybridRun, error: str | None) -> None:
        """Record why the run stopped, leaving its phase as it is."""
        await conn.execute(_sql.set_hybrid_error(self.schema), run.run_id, error)
