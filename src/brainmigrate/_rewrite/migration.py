"""``RewriteMigration``: a data, memory or structure migration run as an online table rewrite.

Built by brainmigrate from a migration whose ``strategy`` is ``"rewrite"`` (or ``"auto"``, when
the rewrite is chosen): a hybrid with the same id, metadata and checksum, whose steps build the
transformed copy of the table, keep it up to date from a change log, and swap it in. The user's
migration decides what is written; the steps decide only where.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import ClassVar

from .._errors import MigrationValidationError
from .._model.data import DatabaseDataMigration, DataMigration, MemoryDataMigration
from .._model.hybrid import ContractMode, HybridMigration, HybridStep
from .._model.memory_structure import MemoryStructureMigration
from .._model.metadata import MigrationMetadata, MigrationType
from .._model.states import HybridPhase
from .._model.types import Connection
from .steps import FillStep, IndexStep, ShadowStep, copy_step
from .switch import DropOldStep, SwapStep, ValidateKeysStep


async def rewritable(migration: DataMigration) -> str | None:
    """Why ``migration`` cannot run as a rewrite, whatever its table (None: it can).

    A rewrite copies every row and applies the migration's transform on the way: a transform in
    Python (``transform_row``, ``transform_memory``, ``transform_batch``) or a structure
    migration's operations. A batch statement is an ``UPDATE`` of the table itself, and a query
    (``get_memories_to_migrate``) names no key range to copy.
    """
    if isinstance(migration, MemoryStructureMigration):
        return None
    if isinstance(migration, MemoryDataMigration) and migration.uses_query:
        return "it reads its memories with get_memories_to_migrate(), not from a source table"
    if isinstance(migration, DatabaseDataMigration) and await migration.get_batch_statement() is not None:
        return "its get_batch_statement() updates the table in place"
    if migration.source is None:
        return "it has no source table"
    return None


class RewriteMigration(HybridMigration):
    """The online rewrite of one data, memory or structure migration (built by brainmigrate).

    Phases: expand (the shadow table and the capture of every change to the original), backfill
    (every row copied, transformed, in leased key ranges), cutover (the shadow's indexes built
    once, the change log replayed, then the swap under a short lock), contract (the original,
    kept under another name since the swap, dropped). A rollback before contract swaps back.
    """

    migration_types: ClassVar[frozenset[MigrationType]] = frozenset(
        {MigrationType.DATABASE_DATA, MigrationType.MEMORY_DATA, MigrationType.MEMORY_STRUCTURE}
    )

    inner: DataMigration

    def __init__(self, inner: DataMigration) -> None:
        super().__init__(inner.pool)
        self.inner = inner
        self._checksum: str | None = None

    @classmethod
    def of(cls, inner: DataMigration) -> RewriteMigration:
        """The rewrite of ``inner``, its contract mode the migration's ``rewrite_contract_mode``."""
        bound = type(
            f"Rewrite{type(inner).__name__}",
            (cls,),
            {"contract_mode": type(inner).rewrite_contract_mode, "__module__": type(inner).__module__},
        )
        rewrite: RewriteMigration = bound(inner)
        return rewrite

    contract_mode: ClassVar[ContractMode] = "manual"

    def _get_metadata(self) -> MigrationMetadata:
        return self.inner.metadata

    @property
    def table_schema(self) -> str | None:
        source = self.inner.source
        assert source is not None
        return source.schema

    def _make_steps(self) -> Iterator[HybridStep]:
        yield HybridStep(HybridPhase.EXPANDING, 0, ShadowStep(self))
        yield HybridStep(HybridPhase.BACKFILLING, 0, copy_step(self))
        yield HybridStep(HybridPhase.BACKFILLING, 1, FillStep.of(self))
        yield HybridStep(HybridPhase.CUTTING_OVER, 0, IndexStep(self))
        yield HybridStep(HybridPhase.CUTTING_OVER, 1, SwapStep(self))
        yield HybridStep(HybridPhase.CUTTING_OVER, 2, ValidateKeysStep(self))
        yield HybridStep(HybridPhase.CONTRACTING, 0, DropOldStep(self))

    def rolled_back_when_abandoned(self, applied: Collection[str]) -> bool:
        """Before the swap, an abandoned rewrite is rolled back: nothing else would drop its shadow
        or take its capture off the table (whose trigger would go on logging every write)."""
        swap = next(step.id for step in self.steps if isinstance(step.migration, SwapStep))
        return swap not in applied

    def _check_definition(self) -> None:
        if self.inner.source is None:
            raise MigrationValidationError(
                f"migration {self.metadata.id!r} cannot be rewritten: it has no source table",
                migration_id=self.metadata.id,
            )

    async def checksum(self) -> str:
        """The migration's own checksum: how it writes (in place or by rewrite) is not drift.
        Computed once: each of the steps' checksums includes it."""
        if self._checksum is None:
            self._checksum = await self.inner.checksum()
        return self._checksum

    async def checksum_material(self) -> str:
        return await self.inner.checksum_material()

    async def validate_preconditions(self, conn: Connection) -> bool:
        return await self.inner.validate_preconditions(conn)

    async def validate_backfill(self, conn: Connection) -> bool:
        """Every backfill step applied without failed items (checked by the hybrid runner); the
        migration's own postconditions are checked on the new table, inside the swap."""
        return True
