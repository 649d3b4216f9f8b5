"""The runner lock: a session-level advisory lock on a dedicated connection.

The connection holding the lock never has a transaction open, so it never blocks
``CREATE INDEX CONCURRENTLY``; if its runner dies, PostgreSQL drops the lock with the session.
Session advisory locks need a direct connection (not PgBouncer in transaction pooling mode).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from . import _sql
from ._errors import MigrationLockTimeout

logger = logging.getLogger("brainmigrate")


def lock_key(schema: str) -> int:
    """A stable 64-bit advisory lock key for the history schema."""
    digest = hashlib.sha256(f"brainmigrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def migration_lock(pool: asyncpg.Pool[Any], schema: str, wait_seconds: float) -> AsyncIterator[None]:
    """Hold the runner lock for ``schema``; wait at most ``wait_seconds`` for it."""
    key = lock_key(schema)
    async with pool.acquire() as conn:
        # lock_timeout bounds the wait server-side; 0 would mean "forever", so use 1 ms for "no wait".
        await conn.execute(_sql.SET_LOCK_WAIT, f"{max(1, round(wait_seconds * 1000))}ms")
        try:
            await conn.execute(_sql.LOCK, key)
        except asyncpg.LockNotAvailableError as exc:
            raise MigrationLockTimeout(wait_seconds) from exc
        finally:
            await conn.execute(_sql.RESET_LOCK_WAIT)
        logger.debug("took migration lock %s for schema %s", key, schema)
        try:
            yield
        finally:
            if not conn.is_closed():
                await conn.execute(_sql.UNLOCK, key)
