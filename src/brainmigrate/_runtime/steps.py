"""What every runner's steps share, below both engines: the clock and the validation gates."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from .._errors import BrainMigrateError, MigrationValidationError
from .._model.migration import Migration
from .._model.types import Connection

logger = logging.getLogger("brainmigrate")

#: A validation hook: ``validate_preconditions`` or ``validate_postconditions``.
Gate = Callable[[Connection], Awaitable[bool]]


def now() -> datetime:
    return datetime.now(UTC)


class GateRefused(MigrationValidationError):
    """A validation hook returned False (or raised)."""


async def run_gate(hook: Gate, conn: Connection, what: str, migration_id: str) -> None:
    """Run a validation hook; False or an exception refuses the migration."""
    try:
        passed = await hook(conn)
    except BrainMigrateError:
        raise
    except Exception as exc:
        raise GateRefused(
            f"{what} of migration {migration_id!r} raised {type(exc).__name__}: {exc}; it was not applied",
            migration_id=migration_id,
        ) from exc
    if passed is False:
        raise GateRefused(
            f"{what} of migration {migration_id!r} failed (validate_{what} returned False); "
            "it was not applied",
            migration_id=migration_id,
        )


async def passes(migration: Migration, conn: Connection) -> bool:
    """The postcondition gate's answer, with an exception counting as False (for dry runs)."""
    try:
        return await migration.validate_postconditions(conn) is not False
    except Exception:
        logger.exception("postconditions of %s raised during a dry run", migration.metadata.id)
        return False
