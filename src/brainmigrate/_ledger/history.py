"""The history ledger: one row per attempt, from which the applied set is derived."""

from __future__ import annotations

import contextvars
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import NamedTuple

import asyncpg
import attrs

from .._errors import MigrationLockLost
from .._model.metadata import MigrationType
from .._model.results import HistoryRecord
from .._model.states import ATTEMPT_TRANSITIONS, AttemptStatus, check_transition
from .._model.types import Connection
from . import schema as _schema
from . import sql as _sql
from .lock import RunnerLock


class MigrationState(NamedTuple):
    """The state the latest decisive history row gives a migration (read on every run: kept light)."""

    migration_id: str
    status: str
    applied: bool
    checksum: str
    statement_index: int | None
    statement_count: int | None

    @property
    def dirty(self) -> bool:
        """An attempt that never finished, or that could not undo its partial work."""
        return self.status in ("running", "dirty")


@attrs.frozen(kw_only=True)
class Attempt:
    """The facts of one attempt, as written to the ledger."""

    migration_id: str
    name: str
    migration_type: MigrationType
    version: str
    checksum: str
    operation: str
    status: str
    applied_after: bool | None
    started_at: datetime
    finished_at: datetime | None = None
    statement_index: int | None = None
    statement_count: int | None = None
    error: str | None = None
    sqlstate: str | None = None
    #: The hybrid migration this row belongs to (a step's, or the hybrid's own), and its phase.
    hybrid_id: str | None = None
    hybrid_phase: str | None = None
    #: Who did it and why, for rows written by hand (``abandon``, ``stamp``).
    actor: str | None = None
    reason: str | None = None

    @property
    def duration_ms(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds() * 1000


_HOSTNAME = socket.gethostname()

#: The hybrid step being run in this context: (step id, hybrid id, phase). The runner of the step's
#: kind writes its history rows as it always does; the ledger tags them with the hybrid and phase.
_HYBRID_STEP: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "brainmigrate_hybrid_step", default=None
)


@contextmanager
def hybrid_step(step_id: str, hybrid_id: str, phase: str) -> Iterator[None]:
    """While the block runs (in this task and those it starts), history rows of ``step_id`` carry
    ``hybrid_id`` and ``phase``."""
    token = _HYBRID_STEP.set((step_id, hybrid_id, phase))
    try:
        yield
    finally:
        _HYBRID_STEP.reset(token)


#: Who acts in this context (such as the caller of the HTTP API): history rows written meanwhile
#: without an actor of their own carry it.
_ACTOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("brainmigrate_actor", default=None)


@contextmanager
def acting_as(actor: str | None) -> Iterator[None]:
    """While the block runs (in this task and those it starts), history rows name ``actor``
    (None: leave them as they are)."""
    token = _ACTOR.set(actor)
    try:
        yield
    finally:
        _ACTOR.reset(token)


def _tagged(attempt: Attempt) -> Attempt:
    """``attempt`` with the actor acting, and the hybrid and phase of the step being run, when it
    is that step's row."""
    actor = _ACTOR.get()
    if actor is not None and attempt.actor is None:
        attempt = attrs.evolve(attempt, actor=actor)
    scope = _HYBRID_STEP.get()
    if scope is None or attempt.hybrid_id is not None or scope[0] != attempt.migration_id:
        return attempt
    return attrs.evolve(attempt, hybrid_id=scope[1], hybrid_phase=scope[2])


@attrs.frozen
class HistoryLedger:
    """Reads and writes the history table in ``schema``."""

    schema: str

    async def ensure(self, conn: Connection) -> None:
        """Create brainmigrate's tables, or upgrade them to this version; only under the runner lock."""
        await _schema.upgrade(conn, self.schema, create=True)

    async def states(self, conn: Connection) -> dict[str, MigrationState]:
        """Each migration's state; empty when the table does not exist yet."""
        try:
            rows = await conn.fetch(_sql.current_states(self.schema))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return {}
        return {row[0]: MigrationState(row[0], row[1], bool(row[2]), row[3], row[4], row[5]) for row in rows}

    async def latest_attempt(self, conn: Connection, migration_id: str) -> asyncpg.Record | None:
        try:
            return await conn.fetchrow(_sql.latest_attempt(self.schema), migration_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None

    async def insert(self, conn: Connection, attempt: Attempt, lock: RunnerLock | None = None) -> int:
        """Write a new attempt row and return its id.

        With ``lock``, the row is written only while that runner lock is held (checked in the same
        statement); otherwise MigrationLockLost is raised.
        """
        attempt = _tagged(attempt)
        hybrid = (attempt.hybrid_id, attempt.hybrid_phase, attempt.actor, attempt.reason)
        tagged = any(value is not None for value in hybrid)
        attempt_id: int | None = await conn.fetchval(
            _sql.insert_attempt(self.schema, guarded=lock is not None, hybrid=tagged),
            attempt.migration_id,
            attempt.name,
            attempt.migration_type.value,
            attempt.version,
            attempt.checksum,
            attempt.operation,
            attempt.status,
            attempt.applied_after,
            attempt.started_at,
            attempt.finished_at,
            attempt.duration_ms,
            attempt.statement_index,
            attempt.statement_count,
            attempt.error,
            attempt.sqlstate,
            _HOSTNAME,
            os.getpid(),
            *(hybrid if tagged else ()),
            *(lock.guard if lock else ()),
        )
        if attempt_id is None:
            raise MigrationLockLost()
        return attempt_id

    async def finish(
        self, conn: Connection, attempt_id: int, attempt: Attempt, lock: RunnerLock | None = None
    ) -> None:
        """Complete an attempt row written while it was running (only while ``lock`` is held, if given)."""
        check_transition(
            ATTEMPT_TRANSITIONS,
            AttemptStatus.RUNNING,
            AttemptStatus(attempt.status),
            operation="record the outcome of",
            migration_id=attempt.migration_id,
        )
        status = await conn.execute(
            _sql.update_attempt(self.schema, guarded=lock is not None),
            attempt_id,
            attempt.status,
            attempt.applied_after,
            attempt.finished_at,
            attempt.duration_ms,
            attempt.statement_index,
            attempt.error,
            attempt.sqlstate,
            *(lock.guard if lock else ()),
        )
        if lock is not None and status == "UPDATE 0":
            raise MigrationLockLost()

    async def close_interrupted(self, conn: Connection, migration_id: str, when: datetime) -> None:
        """Mark attempts whose runner died (still 'running') as dirty, so history tells the truth."""
        await conn.execute(_sql.close_interrupted(self.schema), migration_id, when)

    async def mark_statement(
        self, conn: Connection, attempt_id: int, statement_index: int, lock: RunnerLock
    ) -> None:
        """Record the statement an attempt reached; raise MigrationLockLost if the lock is gone."""
        status = await conn.execute(
            _sql.mark_statement(self.schema), attempt_id, statement_index, *lock.guard
        )
        if status == "UPDATE 0":
            raise MigrationLockLost()

    async def records(self, conn: Connection) -> list[HistoryRecord]:
        try:
            try:
                rows = await conn.fetch(_sql.select_history(self.schema))
            except asyncpg.UndefinedColumnError:  # tables older than version 3, not upgraded yet
                rows = await conn.fetch(_sql.select_history(self.schema, hybrid=False))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return []
        return [_record(row) for row in rows]

    async def record(self, conn: Connection, attempt_id: int) -> HistoryRecord:
        """One attempt by its id (which must exist)."""
        try:
            row = await conn.fetchrow(_sql.select_history(self.schema, one=True), attempt_id)
        except asyncpg.UndefinedColumnError:  # tables older than version 3, not upgraded yet
            row = await conn.fetchrow(_sql.select_history(self.schema, one=True, hybrid=False), attempt_id)
        if row is None:
            raise LookupError(f"no history attempt {attempt_id}")
        return _record(row)


def _record(row: asyncpg.Record) -> HistoryRecord:
    return HistoryRecord(**{**dict(row), "migration_type": MigrationType.parse(row["migration_type"])})
