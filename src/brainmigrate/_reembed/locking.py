"""A short change under the table's ACCESS EXCLUSIVE lock: waiting at most ``lock_timeout`` for
it, in a savepoint, tried again with backoff; never left half done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import asyncpg

from .._errors import TableLockTimeout
from .._model.types import Connection
from .catalog import TableFacts
from .plan import ReembedPlan

if TYPE_CHECKING:
    from .migration import ReembedMigration

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


async def with_table_lock(
    conn: Connection,
    plan: ReembedPlan,
    facts: TableFacts,
    change: Callable[[], Awaitable[None]],
    reembed: ReembedMigration,
    *,
    catch_up: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Run ``change`` in a savepoint holding the table's ACCESS EXCLUSIVE lock, waiting at most
    ``reembed.cutover_lock_timeout_ms`` for it, up to ``reembed.cutover_attempts`` times.

    Each try that cannot lock in time, or whose change raises TableBusy, is rolled back (nothing
    of ``change`` stays; after TableBusy, ``catch_up`` runs without the lock); after the last,
    TableLockTimeout says why: the transactions that held the table, or what kept it busy.
    """
    table = plan.qualified(facts.schema)
    tries = reembed.cutover_attempts
    last: BaseException | None = None
    holders: list[str] = []
    busy: str | None = None
    for attempt in range(tries):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(reembed.cutover_lock_timeout_ms)}")
                await conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                await change()
        except asyncpg.LockNotAvailableError as exc:
            last, busy = exc, None
            holders = [
                f"pid {r['pid']} ({r['state']}, in a transaction for {r['seconds']} s: {r['query']!r})"
                for r in await conn.fetch(_HOLDERS, facts.oid)
            ]
            if attempt + 1 < tries:
                await anyio.sleep(min(0.2 * 2**attempt, 5.0))
        except TableBusy as exc:
            last, busy = exc, exc.what
            if catch_up is not None and attempt + 1 < tries:
                await catch_up()
        else:
            return
    if busy is not None:
        why = f"{busy}, every one of {tries} tries"
    else:
        held = "; ".join(holders) if holders else "a transaction that has ended since"
        why = (
            f"could not lock {table} within {reembed.cutover_lock_timeout_ms} ms in {tries} tries; it "
            f"was held by {held}"
        )
    raise TableLockTimeout(
        f"re-embedding {plan.migration_id!r}: {why}. Nothing was switched: the next run tries again "
        "(end the long transaction, or raise cutover_lock_timeout_ms; for a table written faster than "
        "the model embeds, have the application write the new column too)",
        migration_id=plan.migration_id,
        table=table,
        tries=tries,
    ) from last
