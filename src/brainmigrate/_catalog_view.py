"""The migrations the Migrator loaded: each by id, their dependency graph and their checksums, and
the steps of hybrid migrations, each known with the hybrid owning it."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import attrs

from ._catalog.graph import MigrationGraph
from ._errors import (
    DependencyError,
    DuplicateMigrationError,
    MigrationNotFoundError,
    MigrationStateError,
)
from ._ledger.history import MigrationState
from ._model.hybrid import HybridMigration
from ._model.metadata import MigrationType
from ._model.migration import Migration
from ._rewrite.migration import RewriteMigration

logger = logging.getLogger("brainmigrate")


@attrs.frozen
class _Catalog:
    """The loaded migrations, their graph and their checksums (the hybrids' steps' too)."""

    migrations: Mapping[str, Migration]
    graph: MigrationGraph
    checksums: Mapping[str, str]
    #: The steps of hybrid migrations, by id, and the hybrid owning each.
    steps: Mapping[str, Migration] = attrs.field(factory=dict)
    owners: Mapping[str, str] = attrs.field(factory=dict)
    #: The rewrite of each migration with ``strategy = "auto"`` that could run as one (those with
    #: ``strategy = "rewrite"`` are in :attr:`migrations` as their rewrite).
    rewrites: Mapping[str, RewriteMigration] = attrs.field(factory=dict)

    def pending(
        self, states: Mapping[str, MigrationState], migration_type: MigrationType | str | None
    ) -> list[Migration]:
        """Migrations not applied (of ``migration_type``, if given), in run order."""
        wanted = None if migration_type is None else MigrationType.parse(migration_type)
        return [
            self.migrations[mid]
            for mid in self.graph.order
            if not _applied(states, mid)
            and (wanted is None or self.migrations[mid].metadata.migration_type is wanted)
        ]

    def get(self, migration_id: str) -> Migration:
        """A migration, or a hybrid's step, by id."""
        try:
            return self.migrations.get(migration_id) or self.steps[migration_id]
        except KeyError:
            shown = [step for step in self.steps if self.owners[step] not in self.rewrites]
            raise MigrationNotFoundError(migration_id, known=[*self.migrations, *shown]) from None

    def top_level(self, migration_id: str, operation: str) -> Migration:
        """A migration by id; a hybrid's step is refused: it runs only as part of its hybrid."""
        owner = self.owners.get(migration_id)
        if owner is not None:
            raise MigrationStateError(
                f"cannot {operation} {migration_id!r} on its own: it is a step of hybrid migration "
                f"{owner!r}, which runs (and rolls back) its steps in order; {operation} {owner!r} instead",
                migration_id=migration_id,
            )
        return self.get(migration_id)

    def hybrid(self, migration_id: str, operation: str, *, rewritten: bool = False) -> HybridMigration:
        """A hybrid migration by id (or, when ``rewritten``, the rewrite a migration runs as)."""
        migration = self.top_level(migration_id, operation)
        if rewritten and migration_id in self.rewrites:
            return self.rewrites[migration_id]
        if not isinstance(migration, HybridMigration):
            raise MigrationStateError(
                f"cannot {operation} migration {migration_id!r}: it is not a hybrid migration; only "
                "those have phases",
                migration_id=migration_id,
            )
        return migration


def _hybrid_steps(loaded: Iterable[tuple[Migration, str]]) -> tuple[dict[str, Migration], dict[str, str]]:
    """The hybrids' steps by id, and the hybrid owning each; refuses an id used twice."""
    sources = {migration.metadata.id: label for migration, label in loaded}
    steps: dict[str, Migration] = {}
    owners: dict[str, str] = {}
    for migration, label in loaded:
        if not isinstance(migration, HybridMigration):
            continue
        for step in migration.steps:
            where = f"{label}.{step.attribute} (a step of hybrid {migration.metadata.id!r})"
            if step.id in sources:
                raise DuplicateMigrationError(step.id, [sources[step.id], where])
            sources[step.id] = where
            steps[step.id] = step.migration
            owners[step.id] = migration.metadata.id
    return steps, owners


def _refuse_dependencies_on_steps(loaded: Iterable[tuple[Migration, str]]) -> None:
    """A migration may depend on a hybrid, never on one of its steps."""
    owners = {
        step.id: migration.metadata.id
        for migration, _ in loaded
        if isinstance(migration, HybridMigration)
        for step in migration.steps
    }
    for migration, _ in loaded:
        for dependency in migration.metadata.dependencies:
            if dependency in owners:
                owner = owners[dependency]
                raise DependencyError(
                    f"migration {migration.metadata.id!r} depends on {dependency!r}, a step of hybrid "
                    f"migration {owner!r}; steps are not migrations of their own: depend on {owner!r}, "
                    "which is applied once all its steps are",
                    migration_id=migration.metadata.id,
                )


def _applied(states: Mapping[str, MigrationState], migration_id: str) -> bool:
    state = states.get(migration_id)
    return state is not None and state.applied
