"""What a runner holds while it works: the runner lock, and one connection for the work.

The work connection serves one migration after another, so between them (and before the pool takes
it back) its session is put back as the pool handed it over: whatever a migration did with ``SET
ROLE``, ``SET SESSION AUTHORIZATION``, ``SET search_path`` or any other setting stays with it.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import asyncpg
import attrs

from .._model.config import MigrationConfig
from .._model.types import Connection, is_usable
from . import schema as _schema
from . import sql as _sql
from .connect import connection
from .lock import RunnerLock, migration_lock

logger = logging.getLogger("brainmigrate")

#: How long putting a session back may take before its connection is discarded instead.
_RESET_SECONDS = 10.0


@attrs.frozen
class SessionBaseline:
    """A connection's session as the pool handed it over (after the pool's ``setup``, if any).

    Settings from the connection's options or ``ALTER ROLE ... SET`` are not kept: ``RESET ALL``
    returns to them. Custom placeholder settings (``myapp.flag``) a ``setup`` SET are not restored.
    """

    user: str
    role: str
    search_path: str
    names: tuple[str, ...]
    values: tuple[str, ...]

    @classmethod
    async def capture(cls, conn: Connection) -> SessionBaseline:
        row = await conn.fetchrow(_sql.SESSION_BASELINE)
        assert row is not None
        return cls(row[0], row[1], row[2], tuple(row[3]), tuple(row[4]))


class RunnerSession:
    """The lock (whose connection serves short reads) and a work connection, taken on first use.

    The work connection carries the session's ``lock_timeout``, ``statement_timeout`` and
    client-check settings. Each time it is handed out again, and before the pool takes it back, its
    session is put back as the pool handed it over (see :meth:`reset`); a connection whose session
    cannot be put back is discarded rather than reused or returned.
    """

    def __init__(
        self, pool: asyncpg.Pool[Any], lock: RunnerLock, config: MigrationConfig, stack: AsyncExitStack
    ):
        self.pool = pool
        self.lock = lock
        self.config = config
        self._stack = stack
        self._work: Connection | None = None
        self._baseline: SessionBaseline | None = None
        self._handed_out = False
        #: Whether the work connection's session is known to be as handed out (reset, and not
        #: handed out since), and whether a reset in the transaction in progress will make it so.
        self._clean = False
        self._reset_in_transaction = False

    async def work_connection(self) -> Connection:
        """The connection migrations run on; replaced if it broke.

        Every call after the first hands it over reset (outside a transaction), so each migration,
        and each write brainmigrate makes after a failed one, starts from the pool's session.
        """
        if self._work is not None and self._handed_out and not self._clean and is_usable(self._work):
            await self._reset_or_discard(self._work)
        if self._work is None or not is_usable(self._work):
            # PoolExhaustedError when no connection is free in time, DatabaseUnavailableError when
            # none can be opened.
            conn = await self._stack.enter_async_context(connection(self.pool, self.config.lock_wait_seconds))
            baseline = await SessionBaseline.capture(conn)
            await self._set_timeouts(conn)
            # Runs before the pool takes the connection back (the exit stack unwinds in reverse).
            self._stack.push_async_callback(self._release_clean, conn, baseline)
            self._work, self._baseline = conn, baseline
        self._handed_out = True
        self._clean = self._reset_in_transaction = False
        return self._work

    @property
    def _statement_timeout_ms(self) -> int:
        return round(self.config.timeout_seconds * 1000)

    async def _set_timeouts(self, conn: Connection) -> None:
        await conn.execute(
            _sql.set_session_timeouts(check_client=conn.get_server_version() >= (14,)),
            f"{self.config.statement_lock_timeout_ms}ms",
            f"{self._statement_timeout_ms}ms",
        )

    async def reset(self, conn: Connection) -> None:
        """Put ``conn``'s session back as the pool handed it over, with this session's timeouts.

        Undoes ``SET SESSION AUTHORIZATION``, ``SET ROLE`` and every ``SET``, then applies again the
        role and settings the session had when it was taken. Inside a transaction, a rollback of
        that transaction undoes the reset too.
        """
        assert self._baseline is not None and conn is self._work
        await self._restore(conn, self._baseline)

    async def _restore(self, conn: Connection, baseline: SessionBaseline) -> None:
        """Reset, then set again what the baseline had SET (and its role) with this session's
        timeouts: two round trips (the reset is several statements, the rest takes parameters)."""
        lock_ms, statement_ms = self.config.statement_lock_timeout_ms, self._statement_timeout_ms
        check_client = conn.get_server_version() >= (14,)
        if not baseline.names and baseline.role == "none":
            await conn.execute(_sql.RESET_SESSION)
            await conn.execute(
                _sql.set_session_timeouts(check_client=check_client), f"{lock_ms}ms", f"{statement_ms}ms"
            )
            return
        await conn.execute(_sql.RESET_SESSION)
        await conn.execute(
            _sql.restore_session(check_client=check_client),
            list(baseline.names),
            list(baseline.values),
            baseline.role,
            f"{lock_ms}ms",
            f"{statement_ms}ms",
        )

    @property
    def resets_before_commit(self) -> bool:
        """Whether :meth:`reset_before_commit` can stand for :meth:`act_as_runner`: when the
        baseline SET nothing and no role, which the reset alone gives back."""
        baseline = self._baseline
        assert baseline is not None
        return not baseline.names and baseline.role == "none"

    async def reset_before_commit(self, conn: Connection, xact: int) -> bool:
        """Inside brainmigrate's transaction ``xact`` on the work connection, before its history row:
        reset the session to the pool's (as :meth:`reset`, and as its session user), so that the
        rest of the transaction runs as the pool's session and, once it commits (see
        :meth:`committed`), the connection is handed out next without another reset.

        False when ``xact`` is not the transaction in progress (a migration ended it): the
        connection is then reset again when handed out next.
        """
        baseline = self._baseline
        assert baseline is not None and conn is self._work and self.resets_before_commit
        # The reset first: if a migration ended the transaction, it runs in another one (undone by
        # its rollback) or in none (a reset all the same), and the id read after it tells.
        await conn.execute(_sql.reset_as(baseline.user))
        current = await conn.fetchval(
            _sql.xact_and_timeouts(check_client=conn.get_server_version() >= (14,)),
            f"{self.config.statement_lock_timeout_ms}ms",
            f"{self._statement_timeout_ms}ms",
        )
        if current != xact:
            return False
        self._reset_in_transaction = True
        return True

    def committed(self, conn: Connection) -> None:
        """The transaction on ``conn`` committed: after :meth:`reset_before_commit`, it is clean."""
        if conn is self._work and self._reset_in_transaction:
            self._clean = True
        self._reset_in_transaction = False

    async def act_as_runner(self, conn: Connection) -> int:
        """Inside a transaction on the work connection: run the rest of it as the session the pool
        handed over (session user, role, search_path), whatever a migration switched it to.

        Returns the id of the transaction in progress (``txid_current()``), read by the same
        statement, for telling whether a migration ended the transaction brainmigrate opened."""
        baseline = self._baseline
        assert baseline is not None and conn is self._work
        return int(await conn.fetchval(_sql.ACT_AS, baseline.user, baseline.role, baseline.search_path))

    async def _reset_or_discard(self, conn: Connection) -> None:
        """Reset ``conn`` between uses; when that fails, close it so the next use takes another.

        A transaction still open here was left by a migration's own code (brainmigrate ends its
        own before handing the connection out again): the session is left alone with it.
        """
        if conn.is_in_transaction():
            logger.warning("the work connection is inside a transaction a migration left open")
            return
        with anyio.CancelScope(shield=True):
            try:
                with anyio.fail_after(_RESET_SECONDS):
                    await self.reset(conn)
            except Exception as exc:
                logger.warning("could not reset the work connection's session, discarding it: %s", exc)
                conn.terminate()

    async def _release_clean(self, conn: Connection, baseline: SessionBaseline) -> None:
        """Before the pool takes ``conn`` back: end what is left open, put its session back, or
        close the connection so that it is never returned as another role."""
        with anyio.CancelScope(shield=True):
            if not is_usable(conn):
                return
            try:
                with anyio.fail_after(_RESET_SECONDS):
                    if conn.is_in_transaction():  # left open by a migration; the pool would roll back
                        await conn.execute("ROLLBACK")
                    await self._restore(conn, baseline)
            except Exception as exc:
                logger.warning("could not reset the work connection's session, discarding it: %s", exc)
                conn.terminate()


@asynccontextmanager
async def runner_session(
    pool: asyncpg.Pool[Any], schema: str, config: MigrationConfig
) -> AsyncIterator[RunnerSession]:
    """Take the runner lock for ``schema`` and hold it, with a work connection, until the block ends.

    Under the lock, brainmigrate's own tables are upgraded to this version if they are older (not in a
    dry run, which writes nothing), and refused if newer; checked once per connection.
    """
    async with AsyncExitStack() as stack:
        lock = await stack.enter_async_context(migration_lock(pool, schema, config.lock_wait_seconds))
        await _schema.upgrade(lock.conn, schema, create=False, check_only=config.dry_run)
        token = _OWN_SCHEMA.set(schema)
        try:
            yield RunnerSession(pool, lock, config, stack)
        finally:
            _OWN_SCHEMA.reset(token)


#: The schema of brainmigrate's tables, while a runner session holds its lock (in this task and
#: those it starts): ready-made migrations record their own state there, in their own transaction.
_OWN_SCHEMA: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "brainmigrate_own_schema", default=None
)


def own_schema() -> str | None:
    """The schema of brainmigrate's tables of the runner session this code runs in, if any."""
    return _OWN_SCHEMA.get()
