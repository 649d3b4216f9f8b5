"""The cutover and contract of an online rewrite: the swap under the table's lock (and the swap
back), the validation of the foreign keys it carried over, and the drop of the original."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import ClassVar

from .._engine.plan import make_plan
from .._engine.reshape import reshape
from .._engine.table_lock import TableBusy, under_table_lock
from .._errors import MigrationValidationError
from .._model.data import DataMigration
from .._model.memory_structure import MemoryStructureMigration
from .._model.types import Connection
from . import capture, surgery
from .capture import Direction
from .definition import TableDefinition
from .names import RewriteNames
from .replay import REPLAY_BATCH, catch_up
from .steps import SchemaStep

#: Changes the swap replays while it holds the lock, at most; more are replayed without it first.
IN_LOCK_MAX = 250


class SwapStep(SchemaStep):
    """Under the table's lock: replay the last changes, swap the tables, capture in reverse."""

    suffix = "swap"
    title = "swap the rewritten table in"
    lock_timeout_ms: ClassVar[int] = 2_000
    attempts: ClassVar[int] = 5

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        definition = await self.definition(conn, names)
        replayer = self.replayer(names)

        async def swap() -> None:
            await surgery.swap(conn, definition, names)
            instant = self.rewrite.inner.rewrite_swap_back == "instant"
            await self.capture(conn, names, definition, Direction.REVERSE, mirror=instant)
            await _check_expected_shape(conn, names, self.rewrite.inner)
            if not await self.rewrite.inner.validate_postconditions(conn):
                raise MigrationValidationError(
                    f"rewrite of {self.migration_id!r}: validate_postconditions() returned False on the "
                    "rewritten table; it was not swapped in",
                    migration_id=self.migration_id,
                )

        await self._switch(
            conn,
            names,
            definition,
            Direction.FORWARD,
            replayer.forward,
            swap,
            what=f"the swap of rewrite {self.migration_id!r}",
            advice="The shadow stays up to date; run the migration again once the table is quieter",
        )

    async def down(self, conn: Connection) -> None:
        """Swap back: the changes made since the swap go back to the old table, which takes the
        table's name again."""
        names = await self.names(conn)
        definition = await self.definition(conn, names, table=names.old)
        current = await self.definition(conn, names)

        async def swap_back() -> None:
            await surgery.swap_back(conn, definition, names)

        await self._switch(
            conn,
            names,
            current,
            Direction.REVERSE,
            self.replayer(names).backward,
            swap_back,
            what=f"the swap back of rewrite {self.migration_id!r}",
            advice="Nothing was changed; roll it back again once the table is quieter",
        )

    async def _switch(
        self,
        conn: Connection,
        names: RewriteNames,
        live: TableDefinition,
        direction: Direction,
        apply: capture.Apply,
        switch: Callable[[], Awaitable[None]],
        *,
        what: str,
        advice: str,
    ) -> None:
        """Under the lock of ``live``'s table (and of what depends on it): replay the rest of
        ``direction``'s log through ``apply``, take its capture off, then ``switch``. The log is
        replayed down to :data:`SWAP_LAG` changes without the lock first, and again whenever more
        than :data:`IN_LOCK_MAX` are left once the lock is held (which is then released)."""

        async def change() -> None:
            if await capture.lag(conn, names, direction) > IN_LOCK_MAX:
                raise TableBusy(f"more than {IN_LOCK_MAX:,} changes were still to replay")
            await capture.replay(conn, names, direction, apply, batch=REPLAY_BATCH, until_lag=0)
            await capture.remove_capture(conn, names, direction)
            await switch()

        async def replay_unlocked() -> None:
            await catch_up(conn, names, direction, apply)

        await replay_unlocked()
        await under_table_lock(
            conn,
            _locked(live, names.qualified_table),
            change,
            lock_timeout_ms=self.lock_timeout_ms,
            attempts=self.attempts,
            what=what,
            migration_id=self.migration_id,
            catch_up=replay_unlocked,
            advice=advice,
            oid=live.oid,
        )


def _locked(definition: TableDefinition, table: str) -> str:
    """What a swap of ``definition``'s table (``table``, quoted and qualified) locks, in order: the
    views reading it (and, as PostgreSQL locks a view, what they read) and the tables whose
    foreign keys reference it first, as a query through a view or a write to a referencing table
    locks them before the table (taken the other way round, the two would deadlock); the table
    last."""
    first = [view.qualified for view in definition.dependent_views]
    first += dict.fromkeys(f"ONLY {key.qualified_table}" for key in definition.inbound_foreign_keys)
    return ", ".join([*first, table])


async def _check_expected_shape(conn: Connection, names: RewriteNames, inner: DataMigration) -> None:
    """MigrationValidationError when a structure migration's rewritten table, now under the
    table's name, does not have its expected shape (as the structure runner checks in place)."""
    if not isinstance(inner, MemoryStructureMigration) or not inner.expected:
        return
    plan = await make_plan(conn, names.history_schema, inner, "")
    checked = await reshape(inner, plan.table).check(conn, conditions=False, shape="now", changes=False)
    if checked.shape:
        raise MigrationValidationError(
            f"structure migration {inner.metadata.id!r} does not leave the expected shape: "
            f"{'; '.join(str(violation) for violation in checked.shape)}. Fix `expected` or the "
            "operations (a dry run shows both); the rewritten table was not swapped in",
            migration_id=inner.metadata.id,
        )


class ValidateKeysStep(SchemaStep):
    """Validate the foreign keys the swap added NOT VALID, the table's own and other tables'
    referencing it (without blocking writes)."""

    suffix = "validate-keys"
    title = "validate the foreign keys carried over"

    async def up(self, conn: Connection) -> None:
        await surgery.validate_foreign_keys(conn, await self.names(conn))

    async def down(self, conn: Connection) -> None:
        """Validated constraints need no undoing; swapping back gives them to the original again."""


class DropOldStep(SchemaStep):
    """Drop the original table, kept since the swap, and the reverse capture."""

    suffix = "drop-old"
    title = "drop the original table"
    step_reversible = False

    async def up(self, conn: Connection) -> None:
        names = await self.names(conn)
        await capture.remove_capture(conn, names, Direction.REVERSE)
        await surgery.drop_old(conn, names)


__all__: Sequence[str] = ("IN_LOCK_MAX", "DropOldStep", "SwapStep", "ValidateKeysStep")
