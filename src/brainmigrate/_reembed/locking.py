"""A short change under the table's ACCESS EXCLUSIVE lock: waiting at most ``lock_timeout`` for
it, in a savepoint, tried again with backoff; never left half done."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .._engine import table_lock
from .._engine.table_lock import TableBusy
from .._model.types import Connection
from .catalog import TableFacts
from .plan import ReembedPlan

if TYPE_CHECKING:
    from .migration import ReembedMigration

__all__ = ["TableBusy", "with_table_lock"]


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
    await table_lock.under_table_lock(
        conn,
        plan.qualified(facts.schema),
        change,
        oid=facts.oid,
        migration_id=plan.migration_id,
        lock_timeout_ms=reembed.cutover_lock_timeout_ms,
        attempts=reembed.cutover_attempts,
        what=f"re-embedding {plan.migration_id!r}",
        advice="Nothing was switched: the next run tries again (end the long transaction, or raise "
        "cutover_lock_timeout_ms; for a table written faster than the model embeds, have the "
        "application write the new column too)",
        catch_up=catch_up,
    )
