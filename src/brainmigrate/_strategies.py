"""How each data migration runs: in place, or as its rewrite (an online table rewrite).

A migration declaring ``strategy = "rewrite"`` is loaded as its rewrite, a hybrid with the
migration's id. One declaring ``"auto"`` keeps its rewrite beside it, and the first run decides
which of the two runs; from then on every process carries on the way that run started, so each
question about the migration (its progress, phase, status, rollback) is asked of the one that
runs here, :meth:`RunsAs.effective`.
"""

from __future__ import annotations

import logging

import attrs

from ._catalog_view import _Catalog
from ._engine.state import RunState
from ._errors import BrainMigrateError, MigrationStateError, MigrationValidationError
from ._ledger.hybrid import HybridLedger
from ._ledger.session import RunnerSession
from ._model.config import MigrationConfig
from ._model.data import DataMigration
from ._model.hybrid import HybridMigration
from ._model.migration import Migration
from ._model.results import MigrationResult
from ._model.states import HybridPhase
from ._model.types import Connection
from ._rewrite.migration import RewriteMigration, rewritable
from ._rewrite.strategy import choose

logger = logging.getLogger("brainmigrate")


async def as_they_run(
    loaded: list[tuple[Migration, str]],
) -> tuple[list[tuple[Migration, str]], dict[str, RewriteMigration]]:
    """The migrations as they run: those with ``strategy = "rewrite"`` as their rewrite; and the
    rewrite of each with ``strategy = "auto"`` that could run as one. A migration declaring
    ``"rewrite"`` that cannot be rewritten is refused, saying why."""
    runs: list[tuple[Migration, str]] = []
    rewrites: dict[str, RewriteMigration] = {}
    for migration, label in loaded:
        strategy = getattr(type(migration), "strategy", "in_place")
        if not isinstance(migration, DataMigration) or strategy == "in_place":
            runs.append((migration, label))
            continue
        why = await rewritable(migration)
        if why is None:
            rewrite = RewriteMigration.of(migration)
            if strategy == "rewrite":
                runs.append((rewrite, label))
                continue
            rewrites[migration.metadata.id] = rewrite
        elif strategy == "rewrite":
            raise MigrationValidationError(
                f"data migration {migration.metadata.id!r} ({label}) declares strategy = 'rewrite', but it "
                f"cannot be rewritten: {why}. Set strategy = 'in_place' (or 'auto')",
                migration_id=migration.metadata.id,
            )
        runs.append((migration, label))
    return runs, rewrites


def sampled(migration: Migration) -> Migration:
    """What a dry run samples of ``migration``: a rewrite's own migration, whose changes it shows
    (the copy it would build is not built in a dry run)."""
    return migration.inner if isinstance(migration, RewriteMigration) else migration


@attrs.frozen
class RunsAs:
    """The catalog's migrations as they run in the database of ``schema``."""

    catalog: _Catalog
    schema: str

    async def effective(
        self, migration: Migration, conn: Connection, *, config: MigrationConfig | None = None
    ) -> Migration:
        """The migration as it runs here: its rewrite when one was started (or, with ``config``,
        when ``strategy = "auto"`` chooses one now, for a migration that never ran), else itself."""
        mid = migration.metadata.id
        rewrite = self.catalog.rewrites.get(mid)
        if rewrite is None or migration is rewrite:
            return migration
        if await HybridLedger(self.schema).latest(conn, mid) is not None:
            return rewrite
        if config is None or await RunState(self.schema).run_row(conn, mid) is not None:
            return migration
        assert isinstance(migration, DataMigration)
        try:
            choice = await choose(conn, self.schema, migration, config)
        except BrainMigrateError as exc:  # its own run says what is wrong (a table missing, say)
            logger.info("data migration %s runs in place: no rewrite could be chosen (%s)", mid, exc)
            return migration
        logger.info("data migration %s runs %s: %s", mid, choice.strategy.replace("_", " "), choice.reason)
        return rewrite if choice.rewrite else migration

    async def by_id(self, migration_id: str, conn: Connection) -> Migration:
        """:meth:`effective` of a migration (or a hybrid's step) by id."""
        return await self.effective(self.catalog.get(migration_id), conn)

    async def hybrid(self, hybrid: HybridMigration, conn: Connection, operation: str) -> HybridMigration:
        """``hybrid``, unless it is the rewrite of a ``strategy = "auto"`` migration that runs in
        place (refused: only hybrids have phases)."""
        mid = hybrid.metadata.id
        if self.catalog.migrations.get(mid) is hybrid or await self.by_id(mid, conn) is hybrid:
            return hybrid
        raise MigrationStateError(
            f"cannot {operation} migration {mid!r}: it is not a hybrid migration (it runs in place, "
            "not as a rewrite); only hybrids have phases",
            migration_id=mid,
        )

    async def data_run_id(self, migration_id: str, conn: Connection) -> str:
        """The id whose data run reports ``migration_id``'s progress: its own, or for a rewrite,
        that of the backfill step at work (the copy, then the fill)."""
        migration = await self.by_id(migration_id, conn)
        if not isinstance(migration, RewriteMigration):
            return migration_id
        copy, fill = (step.id for step in migration.steps_of(HybridPhase.BACKFILLING))
        return fill if await RunState(self.schema).run_row(conn, fill) is not None else copy

    async def shown(
        self, results: list[MigrationResult], config: MigrationConfig, session: RunnerSession
    ) -> list[MigrationResult]:
        """A dry run's results, each data migration's with how its run would write, and why."""
        shown = []
        for result in results:
            migration = self.catalog.migrations.get(result.migration_id)
            if isinstance(migration, RewriteMigration):
                strategy, why = "rewrite", "it declares strategy = 'rewrite'"
            elif isinstance(migration, DataMigration) and result.migration_id in self.catalog.rewrites:
                conn = await session.work_connection()
                if await self.effective(migration, conn) is not migration:
                    strategy, why = "rewrite", "its rewrite has started"
                else:
                    try:
                        choice = await choose(conn, self.schema, migration, config)
                        strategy, why = choice.strategy, choice.reason
                    except BrainMigrateError as exc:  # a table its run's dependencies create
                        strategy, why = "in_place", f"no rewrite could be chosen now: {exc}"
            elif isinstance(migration, DataMigration):
                strategy = "in_place"
                why = (
                    "it declares strategy = 'in_place'"
                    if type(migration).strategy == "in_place"
                    else f"it cannot be rewritten: {await rewritable(migration)}"
                )
            else:
                shown.append(result)
                continue
            shown.append(attrs.evolve(result, strategy=strategy, strategy_reason=why))
        return shown
