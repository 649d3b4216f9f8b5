"""The runner lock: a session-level advisory lock on a dedicated connection.

The connection holding the lock never has a transaction open, and waiting for the lock is done by
polling ``pg_try_advisory_lock`` (short statements, no long-held snapshot), so neither a holder nor
a waiter ever blocks ``CREATE INDEX CONCURRENTLY``. Each try borrows a pool connection and gives it
back while the lock is held elsewhere (the session that takes the lock keeps it), so runners waiting
on one pool never starve the holder of the connection its work needs. If a runner dies, PostgreSQL
drops its lock with its session; if a runner's lock session is ended while it works, the statement
writing its next history row checks :attr:`RunnerLock.guard` and refuses, so nothing more is
committed. Session advisory locks need a direct connection (not PgBouncer in transaction pooling
mode).
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
from asyncpg.pool import PoolConnectionProxy

from .._errors import MigrationLockTimeout, PoolExhaustedError
from .._model.types import Connection
from .._runtime.retry import is_recoverable
from . import sql as _sql
from .connect import acquire, release, unavailable

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
        return (self.holder_pid, *key_parts(self.key))


def key_parts(key: int) -> tuple[int, int]:
    """The halves of an advisory lock key as ``pg_locks`` shows them (``classid``, ``objid``)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


@asynccontextmanager
async def migration_lock(
    pool: asyncpg.Pool[Any], schema: str, wait_seconds: float
) -> AsyncIterator[RunnerLock]:
    """Hold the runner lock for ``schema``; wait at most ``wait_seconds`` for it."""
    key = lock_key(schema)
    conn = await _take(pool, key, wait_seconds)
    try:
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
            await release(pool, conn)


async def _take(pool: asyncpg.Pool[Any], key: int, wait_seconds: float) -> PoolConnectionProxy[Any]:
    """Poll for the lock until ``wait_seconds`` pass; the connection whose session took it.

    Each try borrows a connection and gives it back when the lock is held elsewhere, so runners
    waiting on one pool never pin the connections the holder needs for its work. Having seen the
    lock held, running out of time is a MigrationLockTimeout (even if the pool was busy at the end);
    never getting a connection to try with is a PoolExhaustedError.
    """
    deadline = time.monotonic() + wait_seconds
    delay = _FIRST_POLL_SECONDS
    seen_held = False
    broken = 0  # tries in a row whose connection broke (stale after a server restart, say)
    while True:
        try:
            conn = await acquire(pool, max(deadline - time.monotonic(), 0.001))
        except PoolExhaustedError as exc:
            if seen_held:
                raise MigrationLockTimeout(wait_seconds) from exc.__cause__
            raise PoolExhaustedError(wait_seconds) from exc.__cause__
        taken = False
        try:
            taken = bool(await conn.fetchval(_sql.TRY_LOCK, key))
            seen_held, broken = seen_held or not taken, 0
        except Exception as exc:
            if not is_recoverable(exc):
                raise
            broken += 1
            if broken > pool.get_max_size():
                raise unavailable(pool, exc) from exc
            logger.debug("a connection polling for the migration lock broke, trying another: %s", exc)
            continue  # at once: the pool replaces a broken connection
        finally:
            if not taken:
                with anyio.CancelScope(shield=True):
                    await release(pool, conn)
        if taken:
            return conn
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MigrationLockTimeout(wait_seconds)
        await anyio.sleep(min(delay, remaining))
        delay = min(delay * 2, _MAX_POLL_SECONDS)
