"""Ending the transactions brainmigrate opens, and telling whether a migration ended one itself."""

from __future__ import annotations

import logging
from typing import Any

from .._ledger import sql as _sql
from .._model.types import Connection, is_usable

logger = logging.getLogger("brainmigrate")


async def left_transaction(conn: Connection, xact: int, *, after_failure: bool = False) -> bool:
    """Whether the transaction brainmigrate opened (id ``xact``) is no longer the one in progress.

    After a failure the answer is best effort: an aborted transaction answers no query, and is
    taken to be brainmigrate's.
    """
    if not is_usable(conn):
        return False
    if not conn.is_in_transaction():
        return True
    if not after_failure:
        return bool(await conn.fetchval(_sql.CURRENT_XACT) != xact)
    try:
        return bool(await conn.fetchval(_sql.CURRENT_XACT) != xact)
    except Exception:
        return False


async def roll_back(conn: Connection, transaction: Any, *, committing: bool = False) -> None:
    """End brainmigrate's transaction after a failure, never letting any of it commit.

    After a failed COMMIT the server has ended it already (and asyncpg refuses rollback()); when
    rolling back fails, closing the connection makes the server roll back.
    """
    if not is_usable(conn):
        return
    try:
        if not committing:
            await transaction.rollback()
        elif conn.is_in_transaction():
            await conn.execute("ROLLBACK")
    except Exception as exc:
        logger.warning("could not roll back a migration's transaction, closing its connection: %s", exc)
        conn.terminate()
