"""What every operation of the Migrator starts from: the catalog it loaded (once), the configuration
of a call, and the states read under the runner lock, refusing dirt and drift."""

from __future__ import annotations

import getpass
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import asyncpg

from .._catalog.graph import MigrationGraph
from .._catalog.loader import MigrationSource, load_migrations
from .._catalog_view import _Catalog, _hybrid_steps, _refuse_dependencies_on_steps
from .._engine.runner import DataRunner
from .._errors import ChecksumMismatchError, ConfigError, DirtyMigrationError
from .._ledger.history import HistoryLedger, MigrationState
from .._ledger.session import RunnerSession
from .._ledger.stamps import replaced_ids, stamp_squashes
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration
from .._model.migration import check_definition
from .._model.states import MigrationOperation
from .._model.types import Connection
from .._rewrite.migration import RewriteMigration
from .._runners.base import Runners
from .._runners.data import DataMigrationRunner
from .._runners.hybrid import HybridRunner
from .._strategies import RunsAs, as_they_run

logger = logging.getLogger("brainmigrate")


APPLY = MigrationOperation.APPLY
ROLLBACK = MigrationOperation.ROLLBACK


class Parts(Protocol):
    """What a Migrator holds, as its operations read it: :class:`Migrator` is the one implementation."""

    pool: asyncpg.Pool[Any]
    config: MigrationConfig
    schema: str
    _source: MigrationSource
    _ledger: HistoryLedger
    _data: DataRunner
    _data_runner: DataMigrationRunner
    _runners: Runners
    _hybrid_runner: HybridRunner
    _catalog: _Catalog | None


async def stopped_midway(migrator: Parts, catalog: _Catalog, migration_id: str, conn: Connection) -> bool:
    migration = await runs_as(migrator, catalog).effective(catalog.migrations[migration_id], conn)
    return await migrator._runners.of(migration).stopped_midway(conn, migration)


def runs_as(migrator: Parts, catalog: _Catalog) -> RunsAs:
    return RunsAs(catalog, migrator.schema)


def config_of(migrator: Parts, config: MigrationConfig | None) -> MigrationConfig:
    if config is None:
        return migrator.config
    if not isinstance(config, MigrationConfig):
        raise ConfigError(f"config must be a MigrationConfig, got {config!r}")
    return config


async def load(migrator: Parts) -> _Catalog:
    """Load, validate and checksum the migrations once; nothing touches the database."""
    if migrator._catalog is None:
        loaded = load_migrations(migrator._source, migrator.pool)
        for migration, _ in loaded:
            await check_definition(migration)
        loaded, rewrites = await as_they_run(loaded)
        _refuse_dependencies_on_steps(loaded)
        graph = MigrationGraph.build((migration.metadata, label) for migration, label in loaded)
        for migration, _ in loaded:
            if isinstance(migration, RewriteMigration):  # built here, from one checked above
                await check_definition(migration)
            if isinstance(migration, HybridMigration):
                await migration.check_steps()
        for rewrite in rewrites.values():
            await rewrite.check_steps()
        migrations = {migration.metadata.id: migration for migration, _ in loaded}
        steps, owners = _hybrid_steps([*loaded, *((r, "") for r in rewrites.values())])
        checksums = {
            mid: await migration.checksum() for mid, migration in (*migrations.items(), *steps.items())
        }
        migrator._catalog = _Catalog(migrations, graph, checksums, steps, owners, rewrites)
    return migrator._catalog


async def prepare_writes(
    migrator: Parts, session: RunnerSession, states: Mapping[str, MigrationState]
) -> None:
    """Before the first write: take the work connection, then create brainmigrate's tables if missing.

    In this order, a pool with no free connection fails (PoolExhaustedError) before anything is written.
    Existing tables of an older version were upgraded when the session took the lock.
    """
    await session.work_connection()
    if not states:
        # Short transactions on the lock's connection, which never keeps one open otherwise.
        await migrator._ledger.ensure(session.lock.conn)


async def checked_states(
    migrator: Parts, catalog: _Catalog, cfg: MigrationConfig, session: RunnerSession
) -> dict[str, MigrationState]:
    """Under the lock: read each migration's state, refusing dirt and drift."""
    states = await migrator._ledger.states(session.lock.conn)
    for state in states.values():
        step = catalog.steps.get(state.migration_id)
        if step is not None and type(step).rerun_after_interruption:
            continue  # its hybrid runs it again
        if state.dirty and (state.migration_id in catalog.migrations or step is not None):
            raise await dirty_error(migrator, catalog, state)
    if not cfg.allow_checksum_drift:
        for state in states.values():
            actual = catalog.checksums.get(state.migration_id)
            if state.applied and actual is not None and actual != state.checksum:
                raise ChecksumMismatchError(state.migration_id, expected=state.checksum, actual=actual)
    replaced = replaced_ids(catalog.migrations)
    unknown = sorted(
        mid
        for mid, state in states.items()
        if state.applied
        and mid not in catalog.migrations
        and mid not in catalog.steps
        and mid not in replaced
    )
    if unknown:
        logger.warning("applied migrations not found in the migration source: %s", ", ".join(unknown))
    # A squash whose replaced migrations are all applied is recorded as applied (stamped).
    return await stamp_squashes(
        migrator._ledger, session, catalog.migrations, catalog.checksums, states, dry_run=cfg.dry_run
    )


async def dirty_error(migrator: Parts, catalog: _Catalog, state: MigrationState) -> DirtyMigrationError:
    migration = catalog.get(state.migration_id)
    index = state.statement_index or 0
    statements = await migrator._runners.of(migration).describe(migration, APPLY)
    return DirtyMigrationError(
        state.migration_id,
        statement_index=index,
        statement_count=state.statement_count or len(statements),
        statement=statements[index] if index < len(statements) else "",
    )


def checked_actor(actor: str | None) -> str:
    """Who acts by hand: ``actor``, checked, or else the operating-system user."""
    if actor is not None and (not isinstance(actor, str) or not actor.strip()):
        raise ConfigError(f"actor must be a non-empty string or None, got {actor!r}")
    return actor if actor is not None else system_user()


def system_user() -> str:
    """Who runs this process, for the history row of an action taken by hand."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database
        return "unknown"
