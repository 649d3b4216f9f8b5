"""The switch-over steps of a re-embedding: index builds the new column's HNSW index
concurrently; cutover switches the names in one short locked transaction; contract drops the
previous column and its index."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from .._errors import MigrationExecutionError
from .._ledger.connect import connection
from .._model.embedding import GenerationStatus
from .._model.migration import Migration
from .._model.sqltext import quote_ident
from .._model.types import Connection
from .catalog import TableFacts, index_validity, read_table, toast_target_reset, vector_indexes
from .locking import TableBusy, with_table_lock
from .plan import ReembedPlan
from .steps import IN_LOCK_MAX, StepOf

if TYPE_CHECKING:
    pass

logger = logging.getLogger("brainmigrate")


class IndexStep(StepOf, Migration):
    """Embed what was written since the backfill, then build the new column's HNSW index
    concurrently, its progress recorded; an INVALID index an interrupted build left is dropped
    and built again."""

    suffix = "index"
    title = "build the new column's vector index"
    transactional = False
    rerun_after_interruption = True

    async def up(self, conn: Connection) -> None:
        plan = self.plan
        facts = await read_table(conn, plan)
        await self._catch_up(conn, facts.schema)
        if not plan.build_index:
            return
        valid = await index_validity(conn, facts.schema, plan.next_index)
        if valid:  # an interrupted run's build the server finished: kept, and recorded as done
            await self._ledger().note_index(conn, await self._generation(conn), "done", None, None)
            return
        qualified_index = f"{quote_ident(facts.schema)}.{quote_ident(plan.next_index)}"
        if valid is False:
            logger.warning(
                "re-embedding %s: dropping the INVALID index %s an interrupted build left",
                plan.migration_id,
                plan.next_index,
            )
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified_index}")
        opclass, options = await self._index_choice(conn, facts)
        generation = await self._generation(conn)
        pid = conn.get_server_pid()
        failure: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, pid, generation)
            try:
                await _unhurried(conn, plan.index_sql(facts.schema, opclass, options))
            except Exception as exc:  # raised as itself, not in the task group's ExceptionGroup
                failure = exc
            finally:
                group.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not await index_validity(conn, facts.schema, plan.next_index):
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {qualified_index}")
            raise MigrationExecutionError(
                f"re-embedding {plan.migration_id!r}: the index {plan.next_index} was built INVALID; it "
                "was dropped, and the next run builds it again",
                migration_id=plan.migration_id,
            )
        await self._ledger().note_index(conn, generation, "done", None, None)

    async def down(self, conn: Connection) -> None:
        plan = self.plan
        facts = await read_table(conn, plan)
        await conn.execute(
            f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(facts.schema)}.{quote_ident(plan.next_index)}"
        )

    async def _catch_up(self, conn: Connection, schema: str) -> None:
        """Embed memories written since the backfill read them; ``conn`` is outside a transaction,
        so each write commits at once and no lock is held for long."""
        batch = self.reembed.embed_batch_size * 8
        for _ in range(self.reembed.catch_up_passes):
            stale = await self._stale(conn, schema, batch)
            if not stale:
                return
            await self._embed_rows(conn, schema, stale)

    async def _index_choice(self, conn: Connection, facts: TableFacts) -> tuple[str, dict[str, int]]:
        """The operator class and options: as declared, else as the old column's index had them."""
        plan = self.plan
        old = [i for i in await vector_indexes(conn, facts, plan.column) if i.method == "hnsw"]
        opclass = plan.opclass
        if opclass is None:
            if old:
                metric = old[0].opclass.split("_", 1)[1] if "_" in old[0].opclass else "cosine_ops"
                opclass = f"{plan.column_type}_{metric}"
            else:
                opclass = f"{plan.column_type}_cosine_ops"
        options = dict(old[0].options) if old else {}
        options.update(plan.index_options)
        return opclass, options

    async def _watch(self, pid: int, generation_id: int) -> None:
        """Copy ``pg_stat_progress_create_index`` of the build into the generation, every second."""
        ledger = self._ledger()
        while True:
            await anyio.sleep(1.0)
            try:  # a pool with no connection to spare gets no progress, not a stalled build
                async with connection(self._pool(), 1.0) as other:
                    row = await other.fetchrow(
                        "SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                        "FROM pg_stat_progress_create_index WHERE pid = $1",
                        pid,
                    )
                    if row is None:
                        continue
                    done, total = (
                        (row["tuples_done"], row["tuples_total"])
                        if row["tuples_total"]
                        else (row["blocks_done"], row["blocks_total"])
                    )
                    await ledger.note_index(other, generation_id, row["phase"], done, total)
            except Exception:  # progress is for people: a failed read never stops the build
                logger.debug("reading the index build's progress failed", exc_info=True)


class CutoverStep(StepOf, Migration):
    """Switch the names in one short transaction under ``lock_timeout``, retried: the new column
    and index take the old names, the old ones are kept as "previous"."""

    suffix = "cutover"
    title = "switch to the new model's column"

    async def up(self, conn: Connection) -> None:
        plan = self.plan
        facts = await read_table(conn, plan)

        async def catch_up() -> None:  # without the table lock: only the last few under it
            for _ in range(self.reembed.catch_up_passes):
                stale = await self._stale(conn, facts.schema, IN_LOCK_MAX + 1)
                if len(stale) <= IN_LOCK_MAX:
                    return
                await self._embed_rows(conn, facts.schema, stale)

        await catch_up()
        generation = await self._generation(conn)
        ledger = self._ledger()

        async def switch() -> None:
            stale = await self._stale(conn, facts.schema, IN_LOCK_MAX + 1)
            if len(stale) > IN_LOCK_MAX:
                raise TableBusy(
                    f"memories were written faster than the model embeds them ({len(stale)}+ stale "
                    "at the switch)"
                )
            await self._embed_rows(conn, facts.schema, stale)
            table = plan.qualified(facts.schema)
            # A memory whose text was removed since it was embedded has no vector of the new model.
            await conn.execute(
                f"UPDATE {table} SET {quote_ident(plan.next_column)} = NULL, "
                f"{quote_ident(plan.hash_column)} = NULL WHERE {quote_ident(plan.text_column)} IS NULL "
                f"AND {quote_ident(plan.next_column)} IS NOT NULL"
            )
            old_indexes = await vector_indexes(conn, facts, plan.column)
            names: dict[str, Any] = {"indexes": [], "new_index": None}
            for index in old_indexes:
                previous = plan.previous_index(index.name)
                await conn.execute(f"ALTER INDEX {_in(facts, index.name)} RENAME TO {quote_ident(previous)}")
                names["indexes"].append([index.name, previous])
            await _rename_column(conn, table, plan.column, plan.previous_column)
            await _rename_column(conn, table, plan.next_column, plan.column)
            # (No new index in a dry run, which cannot build one concurrently.)
            built = await index_validity(conn, facts.schema, plan.next_index) is not None
            if plan.build_index and built:
                # Never left under next_index, where the next re-embedding builds its own.
                final = old_indexes[0].name if old_indexes else await _free_index_name(conn, facts, plan)
                await conn.execute(
                    f"ALTER INDEX {_in(facts, plan.next_index)} RENAME TO {quote_ident(final)}"
                )
                names["new_index"] = [plan.next_index, final]
            active = await ledger.with_status(
                conn, facts.schema, plan.table, plan.column, GenerationStatus.ACTIVE
            )
            if active is not None:
                await ledger.move(
                    conn, active.generation_id, GenerationStatus.ACTIVE, GenerationStatus.PREVIOUS
                )
            await ledger.move(conn, generation, GenerationStatus.BUILDING, GenerationStatus.ACTIVE)
            await ledger.set_cutover(conn, generation, names)

        await with_table_lock(conn, plan, facts, switch, self.reembed, catch_up=catch_up)

    async def down(self, conn: Connection) -> None:
        plan = self.plan
        facts = await read_table(conn, plan)
        generation = await self._generation(conn)
        ledger = self._ledger()
        names = await ledger.cutover_of(conn, generation) or {"indexes": [], "new_index": None}

        async def swap_back() -> None:
            table = plan.qualified(facts.schema)
            if names["new_index"]:
                start, final = names["new_index"]
                await conn.execute(f"ALTER INDEX {_in(facts, final)} RENAME TO {quote_ident(start)}")
            await _rename_column(conn, table, plan.column, plan.next_column)
            await _rename_column(conn, table, plan.previous_column, plan.column)
            for original, previous in names["indexes"]:
                await conn.execute(f"ALTER INDEX {_in(facts, previous)} RENAME TO {quote_ident(original)}")
            await ledger.move(conn, generation, GenerationStatus.ACTIVE, GenerationStatus.BUILDING)
            before = await ledger.with_status(
                conn, facts.schema, plan.table, plan.column, GenerationStatus.PREVIOUS
            )
            if before is not None:
                await ledger.move(
                    conn, before.generation_id, GenerationStatus.PREVIOUS, GenerationStatus.ACTIVE
                )
            await ledger.set_cutover(conn, generation, None)

        await with_table_lock(conn, plan, facts, swap_back, self.reembed)


class ContractStep(StepOf, Migration):
    """Drop the previous model's column and index (after the soak period, by hand by default)."""

    suffix = "contract"
    title = "drop the previous model's column"
    step_reversible = False

    async def up(self, conn: Connection) -> None:
        plan = self.plan
        facts = await read_table(conn, plan)
        generation = await self._generation(conn)
        ledger = self._ledger()
        names = await ledger.cutover_of(conn, generation) or {"indexes": []}

        async def drop() -> None:
            for _original, previous in names["indexes"]:
                await conn.execute(f"DROP INDEX IF EXISTS {_in(facts, previous)}")
            table = plan.qualified(facts.schema)
            await conn.execute(
                f"ALTER TABLE {table} DROP COLUMN IF EXISTS "
                f"{quote_ident(plan.previous_column)}, DROP COLUMN IF EXISTS {quote_ident(plan.hash_column)}"
                + await toast_target_reset(conn, table, self.reembed.toast_tuple_target)
            )
            before = await ledger.with_status(
                conn, facts.schema, plan.table, plan.column, GenerationStatus.PREVIOUS
            )
            if before is not None:
                await ledger.move(
                    conn, before.generation_id, GenerationStatus.PREVIOUS, GenerationStatus.RETIRED
                )

        await with_table_lock(conn, plan, facts, drop, self.reembed)


async def _free_index_name(conn: Connection, facts: TableFacts, plan: ReembedPlan) -> str:
    """The name PostgreSQL would give the column's index (``{table}_{column}_idx``, numbered when
    taken), for a new index whose column had none before."""
    for number in range(1000):
        name = plan.index_name(number)
        if await conn.fetchval("SELECT to_regclass($1)", _in(facts, name)) is None:
            return name
    return plan.next_index  # pragma: no cover - a thousand names taken


async def _unhurried(conn: Connection, statement: str) -> None:
    """``statement`` (a CREATE INDEX CONCURRENTLY) without the session's ``lock_timeout``.

    Its waits (for transactions holding older snapshots, or writing the table when it starts)
    block no one, so they are not cut short: a report in REPEATABLE READ, or a session idle in its
    transaction, would else fail the re-embedding. ``statement_timeout`` still bounds it.
    """
    previous = await conn.fetchval("SELECT current_setting('lock_timeout')")
    await conn.execute("SET lock_timeout = 0")
    try:
        await conn.execute(statement)
    finally:
        await conn.execute("SELECT set_config('lock_timeout', $1, false)", previous)


async def _rename_column(conn: Connection, table: str, name: str, new_name: str) -> None:
    await conn.execute(f"ALTER TABLE {table} RENAME COLUMN {quote_ident(name)} TO {quote_ident(new_name)}")


def _in(facts: TableFacts, name: str) -> str:
    return f"{quote_ident(facts.schema)}.{quote_ident(name)}"
