"""The one translation of a failure into the public error, for every runner.

A PostgreSQL error keeps its SQLSTATE, DETAIL and HINT, both as attributes of the
:class:`MigrationExecutionError` and once each in its message.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from .._errors import BrainMigrateError, MigrationExecutionError
from .._model.sqltext import first_line
from .._model.states import MigrationOperation


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def reason(exc: BaseException) -> str:
    """What went wrong, for messages: ``[sqlstate] message (detail: ..., hint: ...)`` for PostgreSQL."""
    if not isinstance(exc, asyncpg.PostgresError):
        return f"{type(exc).__name__}: {exc}"
    # str() of an asyncpg error already appends DETAIL and HINT lines: take the message alone.
    text = f"[{getattr(exc, 'sqlstate', None)}] {getattr(exc, 'message', None) or exc}"
    for extra in ("detail", "hint"):
        value = _text(getattr(exc, extra, None))
        if value:
            text += f" ({extra}: {value})"
    return text


def execution_error(
    message: str,
    exc: BaseException | None,
    *,
    migration_id: str,
    statement_index: int | None = None,
    statement: str | None = None,
) -> MigrationExecutionError:
    """A MigrationExecutionError carrying ``exc``'s SQLSTATE, DETAIL and HINT (when it has them)."""
    return MigrationExecutionError(
        message,
        migration_id=migration_id,
        statement_index=statement_index,
        statement=statement,
        sqlstate=_text(getattr(exc, "sqlstate", None)),
        detail=_text(getattr(exc, "detail", None)),
        hint=_text(getattr(exc, "hint", None)),
    )


def is_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is a timeout: brainmigrate's own, or the server's statement_timeout."""
    server = isinstance(exc, asyncpg.QueryCanceledError) and "statement timeout" in str(exc)
    return server or isinstance(exc, TimeoutError)


def is_own_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a plain failure to translate (not a public error, timeout or cancellation)."""
    return isinstance(exc, Exception) and not isinstance(exc, BrainMigrateError) and not is_timeout(exc)


def advice(exc: BaseException) -> str:
    """What to do about a failed run: wait and run it again after a conflict with other
    transactions (which outlasted the retries), or fix the migration."""
    state = getattr(exc, "sqlstate", None) if isinstance(exc, asyncpg.PostgresError) else None
    if state == "55P03":
        return (
            "Another transaction held a lock it needs for longer than MigrationConfig("
            "statement_lock_timeout_ms=...) allows, on every try: run it again once that transaction "
            "has ended (pg_stat_activity shows it), or raise statement_lock_timeout_ms"
        )
    if state == "40P01":
        return "It deadlocked with another transaction on every try: run it again"
    if state == "40001":
        return "It conflicted with a concurrent transaction on every try: run it again"
    return "Fix the migration and run it again"


def translate(
    exc: BaseException,
    *,
    migration_id: str,
    operation: MigrationOperation,
    undone: str,
    timeout_seconds: float | None = None,
    statements: Sequence[str] = (),
    statement_index: int | None = None,
    committing: bool = False,
) -> BrainMigrateError | None:
    """The public error for a failed run of a migration, or None for what must propagate (cancellation).

    ``undone`` says what became of the database; ``statements`` and ``statement_index`` where it
    failed, ``committing`` whether the COMMIT was sent.
    """
    if isinstance(exc, BrainMigrateError):
        return exc
    verb = "apply" if operation is MigrationOperation.APPLY else "roll back"
    # The server's statement_timeout is set to timeout_seconds too; whichever fires first.
    if timeout_seconds is not None and is_timeout(exc):
        server = "" if isinstance(exc, TimeoutError) else f" (the server: {reason(exc)})"
        return execution_error(
            f"could not {verb} migration {migration_id!r} within timeout_seconds={timeout_seconds:g}"
            f"{server}; {undone}. Raise MigrationConfig(timeout_seconds=...) or make it faster",
            exc,
            migration_id=migration_id,
            statement_index=statement_index,
        )
    if not isinstance(exc, Exception):
        return None
    where = ""
    statement = None
    if committing:
        where, statement_index = " when committing it", None
    elif statement_index is not None and statement_index < len(statements):
        statement = statements[statement_index]
        where = f" at statement {statement_index + 1} of {len(statements)} ({first_line(statement)!r})"
    return execution_error(
        f"could not {verb} migration {migration_id!r}{where}: {reason(exc)}; {undone}. {advice(exc)}",
        exc,
        migration_id=migration_id,
        statement_index=statement_index,
        statement=statement,
    )


def data_error(exc: BaseException, migration_id: str) -> BrainMigrateError | None:
    """The public error for a failed data run, or None for what must propagate (cancellation)."""
    if isinstance(exc, BrainMigrateError):
        return exc
    if not isinstance(exc, Exception):
        return None
    return execution_error(
        f"data migration {migration_id!r} failed: {reason(exc)}", exc, migration_id=migration_id
    )
