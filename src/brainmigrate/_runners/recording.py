"""Writing a schema migration's failed attempts to history, and saying in the error when that
write failed too.
"""

from __future__ import annotations

import anyio
import attrs

from .._errors import BrainMigrateError
from .._ledger import sql as _sql
from .._ledger.history import Attempt, HistoryLedger
from .._ledger.session import RunnerSession
from .._model.migration import Migration
from .._model.states import AttemptStatus
from .._model.types import Connection
from .._runtime.steps import now
from .._runtime.translate import reason
from .stages import Progress


async def finish_failed(
    ledger: HistoryLedger,
    conn: Connection,
    attempt_id: int,
    attempt: Attempt,
    status: AttemptStatus,
    note: str,
    exc: BaseException,
    progress: Progress,
) -> None:
    await ledger.finish(
        conn,
        attempt_id,
        attrs.evolve(
            attempt,
            status=status,
            applied_after=None,
            finished_at=now(),
            statement_index=progress.statement_index,
            error=note,
            sqlstate=getattr(exc, "sqlstate", None),
        ),
    )


async def record_failure(
    ledger: HistoryLedger,
    session: RunnerSession,
    attempt: Attempt,
    error: BrainMigrateError,
    progress: Progress,
) -> None:
    """Write a transactional migration's failed attempt (dirty when it ended its transaction).

    When that write fails too, why is kept in ``progress.recording_error``, never raised in
    place of ``error``.
    """
    cause = error.__cause__
    with anyio.CancelScope(shield=True):
        failed = attrs.evolve(
            attempt,
            status=AttemptStatus.DIRTY if progress.escaped else AttemptStatus.FAILED,
            finished_at=now(),
            statement_index=progress.statement_index,
            error=str(error),
            sqlstate=getattr(error, "sqlstate", None) or getattr(cause, "sqlstate", None),
        )
        try:
            conn = await session.work_connection()
            await ledger.insert(conn, failed)
        except Exception as exc:
            progress.recording_error = exc


def note_unrecorded(
    ledger: HistoryLedger, error: BrainMigrateError, recording: Exception, migration: Migration
) -> None:
    """Say in ``error`` that it could not be recorded in history, why, and what to do.

    The message says so (or, for an error whose arguments are not one message, a note), and
    the recording error is kept as ``error.recording_error``.
    """
    table = f"{ledger.schema}.{_sql.HISTORY_TABLE}"
    note = (
        f"this failure could not be recorded in the history table {table}: {reason(recording)}. "
        "Check that table (was it altered by hand?) and that the database user can insert into "
        "and update it"
    )
    if not migration.transactional:
        note += "; until then its history row may still say 'running', so the next run reports it dirty"
    if len(error.args) == 1 and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}; {note}",)
    else:
        error.add_note(note)
    error.recording_error = recording
