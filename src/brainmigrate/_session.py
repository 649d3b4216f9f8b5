"""What a runner holds while it works: the runner lock, and one connection for the work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg

from . import _sql
from ._config import MigrationConfig
from ._errors import PoolExhaustedError
from ._lock import RunnerLock, migration_lock
from ._types import Connection, is_usable


class RunnerSession:
    """The lock (whose connection serves short reads) and a work connection, taken on first use.

    The work connection carries the session's ``lock_timeout``, ``statement_timeout`` and
    client-check settings; the pool resets them when it takes the connection back.
    """

    def __init__(
        self, pool: asyncpg.Pool[Any], lock: RunnerLock, config: MigrationConfig, stack: AsyncExitStack
    ):
        self.pool = pool
        self.lock = lock
        self.config = config
        self._stack = stack
        self._work: Connection | None = None

    async def work_connection(self) -> Connection:
        """The connection migrations run on; replaced if it broke."""
        if self._work is None or not is_usable(self._work):
            try:
                conn = await self._stack.enter_async_context(
                    self.pool.acquire(timeout=self.config.lock_wait_seconds)
                )
            except TimeoutError as exc:
                raise PoolExhaustedError(self.config.lock_wait_seconds) from exc
            await conn.execute(
                _sql.set_session_timeouts(check_client=conn.get_server_version() >= (14,)),
                f"{self.config.statement_lock_timeout_ms}ms",
                f"{round(self.config.timeout_seconds * 1000)}ms",
            )
            self._work = conn
        return self._work


@asynccontextmanager
async def runner_session(
    pool: asyncpg.Pool[Any], schema: str, config: MigrationConfig
) -> AsyncIterator[RunnerSession]:
    """Take the runner lock for ``schema`` and hold it, with a work connection, until the block ends."""
    async with AsyncExitStack() as stack:
        lock = await stack.enter_async_context(migration_lock(pool, schema, config.lock_wait_seconds))
        yield RunnerSession(pool, lock, config, stack)
