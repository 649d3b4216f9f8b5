"""The runner of structure migrations: a data run of the compiled reshaping, with its own checks.

A structure migration runs as a server-side data migration (its key ranges, checkpoints, leases,
resume and rollback are the data runner's); what only a declared reshaping has is checked here:
the conditions its operations need to be inverted (before the first batch), the expected shape
(before the run is recorded as applied), and a dry run computed entirely on the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .._engine.impact import MEASURE_ROWS, write_impact
from .._engine.plan import RunPlan
from .._engine.reshape import Reshape, declared, reshape
from .._errors import MigrationValidationError
from .._model.config import MigrationConfig
from .._model.data import DataMigration
from .._model.memory_structure import MemoryStructureMigration
from .._model.migration import Migration
from .._model.results import Violation
from .._model.states import MigrationOperation
from .._model.types import Connection
from .base import Sample
from .data import DataMigrationRunner

APPLY = MigrationOperation.APPLY


def _structure(migration: Migration) -> MemoryStructureMigration:
    assert isinstance(migration, MemoryStructureMigration), (
        "the structure runner runs structure migrations only"
    )
    return migration


def _listed(found: list[Violation]) -> str:
    return "; ".join(str(violation) for violation in found)


class StructureMigrationRunner(DataMigrationRunner):
    """The :class:`~.base.Runner` of the ``structure`` kind."""

    async def describe(self, migration: Migration, operation: MigrationOperation) -> tuple[str, ...]:
        """The UPDATE run on each key range ($1 to $2), over the declared source."""
        migration = _structure(migration)
        sql = declared(migration)
        if operation == APPLY:
            return (sql.batch_statement(None),)
        if migration.keeps_images:
            return ()  # the before-images are put back
        return (sql.batch_statement(None, inverse=True),)

    async def _dry_run(
        self,
        conn: Connection,
        migration: DataMigration,
        operation: MigrationOperation,
        config: MigrationConfig,
    ) -> Sample:
        """Count and sample the memories that would change, and those breaking a condition."""
        migration = _structure(migration)
        if operation != APPLY:
            return await super()._dry_run(conn, migration, operation, config)
        plan = await self.engine.plan(conn, migration, "")
        sql = _sql(plan)
        checked = await sql.check(conn, shape="after")
        changes = await sql.sample(conn, config.dry_run_sample)

        async def measure() -> int:
            return await sql.measure(conn, MEASURE_ROWS)

        impact = await write_impact(
            conn, plan.table, [migration.column], measure=measure, rows_to_change=checked.changing
        )
        conditions, shape = list(checked.conditions), list(checked.shape)
        refusal = None
        if conditions and _refuses(migration):
            refusal = _conditions_refusal(migration.metadata.id, conditions)
        elif shape and config.validate_after:
            refusal = _shape_refusal(migration.metadata.id, shape)
        return Sample(
            processed=checked.changing,
            skipped=checked.memories - checked.changing,
            changes=tuple(changes),
            violations=checked.conditions + checked.shape,
            write_impact=impact,
            refusal=refusal,
        )

    def _preconditions(
        self, migration: Migration, cfg: MigrationConfig
    ) -> Callable[[Connection], Awaitable[None]] | None:
        """Before the first batch: the operations' conditions, then the migration's own gate."""
        own = super()._preconditions(migration, cfg)
        structure = _structure(migration)

        async def gate(conn: Connection) -> None:
            await self._refuse_violations(conn, structure)
            if own is not None:
                await own(conn)

        return gate

    async def _refuse_violations(self, conn: Connection, migration: MemoryStructureMigration) -> None:
        """MigrationValidationError when a rollback could not restore some memory exactly."""
        if not _refuses(migration):
            return
        plan = await self.engine.plan(conn, migration, "")
        found = list((await _sql(plan).check(conn, changes=False)).conditions)
        if found:
            raise MigrationValidationError(
                _conditions_refusal(migration.metadata.id, found), migration_id=migration.metadata.id
            )

    async def _postconditions(self, conn: Connection, plan: RunPlan) -> None:
        """The expected shape, then the migration's own postconditions."""
        found = list((await _sql(plan).check(conn, conditions=False, shape="now", changes=False)).shape)
        if found:
            raise MigrationValidationError(
                _shape_refusal(plan.migration_id, found), migration_id=plan.migration_id
            )
        await super()._postconditions(conn, plan)


def _refuses(migration: MemoryStructureMigration) -> bool:
    """Whether memories breaking an operation's condition refuse the run: unless the old values
    are kept (then a rollback restores them anyway), or no rollback is promised."""
    return migration.metadata.reversible and not migration.keeps_images


def _conditions_refusal(migration_id: str, found: list[Violation]) -> str:
    return (
        f"structure migration {migration_id!r} was not run, nothing was changed: {_listed(found)}. "
        "Its rollback could not give these memories their old values back. Fix those memories, "
        "change the operations, or set keep_before_images = True on the migration to keep the old "
        "value of every memory it changes"
    )


def _shape_refusal(migration_id: str, found: list[Violation]) -> str:
    return (
        f"structure migration {migration_id!r} does not leave the expected shape: {_listed(found)}. "
        "Fix `expected` or the operations (a dry run shows both)"
    )


def _sql(plan: RunPlan) -> Reshape:
    migration = plan.migration
    assert isinstance(migration, MemoryStructureMigration)
    return reshape(migration, plan.table)
