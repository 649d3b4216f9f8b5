"""The runner lock: a session-level advisory lock on a dedicated connection.

The connection holding the lock never has a transaction open, and waiting for the lock is done by
polling ``pg_try_advisory_lock`` (short statements, no long-held snapshot), so neither a holder nor
a waiter ever blocks ``CREATE INDEX CONCURRENTLY``. If a runner dies, PostgreSQL drops its lock with
its session; if a runner's lock session is ended while it works, the statement writing its next
history row checks :attr:`RunnerLock.guard` and refuses, so nothing more is committed. Session
advisory locks need a direct connection (not PgBouncer in transaction pooling mode).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
import attrs

from . import _sql
from ._errors import MigrationLockTimeout, PoolExhaustedError
from ._types import Connection

logger = logging.getLogger("brainmigrate")

_FIRST_POLL_SECONDS = 0.01
_MAX_POLL_SECONDS = 0.1


def lock_key(schema: str) -> int:
    """A stable 64-bit advisory lock key for the history schema."""
    digest = hashlib.sha256(f"brainmigrate:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@attrs.frozen
class RunnerLock:
    """The held lock: its key, and the session (connection) holding it.

    The connection serves short reads that leave no transaction open; work runs on another one.
    """

    key: int
    conn: Connection = attrs.field(eq=False, repr=False)
    holder_pid: int = attrs.field(init=False)

    @holder_pid.default
    def _holder_pid(self) -> int:
        return self.conn.get_server_pid()

    @property
    def guard(self) -> tuple[int, int, int]:
        """Parameters for the SQL checks that the lock is still held: holder pid and the key's halves."""
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        return self.holder_pid, unsigned >> 32, unsigned & 0xFFFF_FFFF


@asynccontextmanager
async def migration_lock(
    pool: asyncpg.Pool[Any], schema: str, wait_seconds: float
) -> AsyncIterator[RunnerLock]:
    """Hold the runner lock for ``schema``; wait at most ``wait_seconds`` for it."""
    key = lock_key(schema)
    deadline = time.monotonic() + wait_seconds
    try:
        conn = await pool.acquire(timeout=max(wait_seconds, 0.001))
    except TimeoutError as exc:
        raise PoolExhaustedError(wait_seconds) from exc
    try:
        delay = _FIRST_POLL_SECONDS
        while not await conn.fetchval(_sql.TRY_LOCK, key):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise MigrationLockTimeout(wait_seconds)
            await anyio.sleep(min(delay, remaining))
            delay = min(delay * 2, _MAX_POLL_SECONDS)
        logger.debug("took migration lock %s for schema %s", key, schema)
        try:
            yield RunnerLock(key, conn)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.execute(_sql.UNLOCK, key)
                except (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, OSError) as exc:
                    # The session is gone, and its lock with it; the pool replaces the connection.
                    logger.warning("the migration lock session ended before unlocking: %s", exc)
    finally:
        with anyio.CancelScope(shield=True):
            await pool.release(conn)
