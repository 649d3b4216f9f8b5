"""Errors as JSON responses: ``{"error": <the error's class name>, "message": <what to do>}``."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.responses import JSONResponse

from .._errors import (
    BrainMigrateError,
    ChecksumMismatchError,
    ConfigError,
    DatabaseUnavailableError,
    DependencyError,
    IrreversibleMigrationError,
    MigrationExecutionError,
    MigrationLockLost,
    MigrationLockTimeout,
    MigrationNotFoundError,
    MigrationStateError,
    MigrationValidationError,
    PoolExhaustedError,
    SchemaVersionError,
)

logger = logging.getLogger("brainmigrate.http")

#: The status of each error a call of the Migrator can raise; the first match (in order) wins.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (MigrationNotFoundError, 404),
    (ConfigError, 422),
    (MigrationLockTimeout, 409),
    (PoolExhaustedError, 503),
    (DatabaseUnavailableError, 503),
    (MigrationStateError, 409),
    (DependencyError, 409),
    (ChecksumMismatchError, 409),
    (IrreversibleMigrationError, 409),
    (MigrationValidationError, 409),
    (MigrationLockLost, 409),
    (SchemaVersionError, 409),
    # The migration failed on this database (its SQL, a timeout, a lock): nothing of it is applied
    # unless its message says so; the request was sound, the database's state refused it.
    (MigrationExecutionError, 409),
)


class HTTPProblem(Exception):
    """A request refused before the Migrator is asked (bad token, bad body, unknown path...).

    Never leaves the router: it becomes a JSON response with ``status``, ``error`` and ``message``.
    """

    def __init__(
        self, status: int, error: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})


def problem_response(problem: HTTPProblem) -> JSONResponse:
    """The JSON response of a refused request."""
    return JSONResponse(
        {"error": problem.error, "message": problem.message}, problem.status, headers=problem.headers
    )


def error_status(exc: BrainMigrateError) -> int:
    """The HTTP status of an error the Migrator raised."""
    return next((status for kind, status in _STATUS if isinstance(exc, kind)), 500)


def error_response(exc: BrainMigrateError) -> JSONResponse:
    """The JSON response of an error the Migrator raised: its class name and its message."""
    status = error_status(exc)
    if status >= 500:
        logger.warning("HTTP request failed: %s: %s", type(exc).__name__, exc)
    return JSONResponse({"error": type(exc).__name__, "message": str(exc)}, status)


def unexpected_response(exc: Exception) -> JSONResponse:
    """The JSON response of a bug (logged with its traceback); the message gives nothing away."""
    logger.error("HTTP request failed unexpectedly", exc_info=exc)
    return JSONResponse(
        {
            "error": "InternalServerError",
            "message": "the server failed unexpectedly; its log has the details",
        },
        500,
    )
