"""A short change under a table's ACCESS EXCLUSIVE lock: waiting at most ``lock_timeout`` for it,
in a savepoint, tried again with backoff; never left half done.

The re-embedding's cutover and the table rewrite's swap both run their switch-over through
:func:`under_table_lock`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import asyncpg

from .._errors import TableLockTimeout
from .._model.sqltext import first_line
from .._model.types import Connection

_HOLDERS = """
SELECT a.pid, a.state, extract(epoch FROM clock_timestamp() - a.xact_start)::int AS seconds,
       left(a.query, 120) AS query
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.relation = $1 AND l.granted AND a.pid <> pg_backend_pid()
 ORDER BY a.xact_start NULLS LAST
 LIMIT 3
"""


class TableBusy(Exception):
    """Raised by a change under the lock that has too much to do there: the lock is let go, the
    work done without it first (``catch_up``), and the change tried again."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def backoff(attempt: int) -> float:
    """Seconds to wait after the ``attempt``-th (from 0) try that could not lock in time."""
    return float(min(0.2 * 2**attempt, 5.0))


async def lock_holders(conn: Connection, oid: int) -> list[str]:
    """The (at most three) other sessions holding a lock on relation ``oid``, longest first."""
    return [
        f"pid {r['pid']} ({r['state']}, in a transaction for {r['seconds']} s: {r['query']!r})"
        for r in await conn.fetch(_HOLDERS, oid)
    ]


#: What a TableLockTimeout advises when its caller gives no advice of its own.
DEFAULT_ADVICE = (
    "Nothing was changed: the next run tries again (end the long transaction, or raise the lock timeout)"
)


async def under_table_lock(
    conn: Connection,
    table: str,
    change: Callable[[], Awaitable[None]],
    *,
    lock_timeout_ms: int,
    attempts: int,
    what: str,
    migration_id: str,
    catch_up: Callable[[], Awaitable[None]] | None = None,
    advice: str = DEFAULT_ADVICE,
    oid: int | None = None,
) -> None:
    """Run ``change`` in a savepoint holding ``table``'s (a quoted, qualified name) ACCESS EXCLUSIVE
    lock, waiting at most ``lock_timeout_ms`` for it, up to ``attempts`` times.

    Each try that cannot lock in time, that the server ends to break a deadlock, or whose change
    raises TableBusy, is rolled back (nothing of ``change`` stays; after TableBusy, ``catch_up``
    runs without the lock); after the last,
    TableLockTimeout says why: ``"{what}: {why}. {advice}"``, why being the transactions that held
    the table (``oid`` is its relation, looked up when not given), or what kept it busy.
    """
    if oid is None:
        oid = await conn.fetchval("SELECT to_regclass($1)::oid", table)
    last: BaseException | None = None
    holders: list[str] = []
    busy: str | None = None
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                await change()
        except asyncpg.LockNotAvailableError as exc:
            last, busy = exc, None
            holders = await lock_holders(conn, oid) if oid is not None else []
            if attempt + 1 < attempts:
                await anyio.sleep(backoff(attempt))
        except asyncpg.DeadlockDetectedError as exc:
            # The server chose this change to end a deadlock (a transaction holding the table
            # waited for something this one had locked): the other one goes on, this one waits.
            last, busy, holders = exc, None, []
            if attempt + 1 < attempts:
                await anyio.sleep(backoff(attempt))
        except TableBusy as exc:
            last, busy = exc, exc.what
            if catch_up is not None and attempt + 1 < attempts:
                await catch_up()
        else:
            return
    if busy is not None:
        why = f"{busy}, every one of {attempts} tries"
    elif isinstance(last, asyncpg.DeadlockDetectedError):
        why = (
            f"the last of {attempts} tries was ended by the server to break a deadlock with another "
            f"transaction ({first_line(str(last))})"
        )
    else:
        held = "; ".join(holders) if holders else "a transaction that has ended since"
        why = f"could not lock {table} within {lock_timeout_ms} ms in {attempts} tries; it was held by {held}"
    raise TableLockTimeout(
        f"{what}: {why}. {advice}", migration_id=migration_id, table=table, tries=attempts
    ) from last
