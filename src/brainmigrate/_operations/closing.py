"""Reversing and finishing: ``rollback`` (with its dependents, when cascading), and a hybrid
migration's ``contract`` and ``abandon``."""

from __future__ import annotations

from .._catalog_view import _applied
from .._errors import ConfigError, DependencyError, MigrationStateError
from .._ledger.history import acting_as
from .._ledger.session import runner_session
from .._model.config import MigrationConfig
from .._model.hybrid import HybridMigration
from .._model.results import HistoryRecord, MigrationResult
from .._runners.dry_run import dry_run
from .._runners.hybrid_records import steps_done
from .workbench import (
    ROLLBACK,
    Parts,
    checked_actor,
    checked_states,
    config_of,
    load,
    runs_as,
    stopped_midway,
)


async def rollback(
    migrator: Parts, migration_id: str, *, cascade: bool, config: MigrationConfig | None, actor: str | None
) -> list[MigrationResult]:
    if actor is not None:
        with acting_as(checked_actor(actor)):
            return await rollback(migrator, migration_id, cascade=cascade, config=config, actor=None)
    cfg = config_of(migrator, config)
    catalog = await load(migrator)
    target = catalog.top_level(migration_id, "roll back")
    async with runner_session(migrator.pool, migrator.schema, cfg) as session:
        states = await checked_states(migrator, catalog, cfg, session)
        target = await runs_as(migrator, catalog).effective(target, session.lock.conn)
        if not _applied(states, migration_id) and not await migrator._runners.of(target).stopped_midway(
            session.lock.conn, target
        ):
            done = list(steps_done(target, states)) if isinstance(target, HybridMigration) else []
            if done:
                raise MigrationStateError(
                    f"hybrid migration {migration_id!r} cannot be rolled back now: its last run was "
                    f"abandoned, and its steps {', '.join(done)} are still applied. `await "
                    "migrator.run_pending()` starts a new run, which carries on from them (a rewrite "
                    f"swapped in waits at READY_TO_CONTRACT again); then rollback({migration_id!r}) "
                    "undoes them, or contract() finishes it; nothing was changed",
                    migration_id=migration_id,
                )
            raise MigrationStateError(
                f"migration {migration_id!r} is not applied, so there is nothing to roll back",
                migration_id=migration_id,
            )
        # Dependents applied, or stopped midway (a data run paused, a hybrid before contract).
        dependents = sorted(
            [
                mid
                for mid in catalog.graph.descendants(migration_id)
                if _applied(states, mid) or await stopped_midway(migrator, catalog, mid, session.lock.conn)
            ],
            key=catalog.graph.position,
            reverse=True,
        )
        if dependents and not cascade:
            raise DependencyError(
                f"cannot roll back {migration_id!r}: applied migrations depend on it "
                f"({', '.join(dependents)}); roll them back first or pass cascade=True",
                migration_id=migration_id,
            )
        targets = [
            *[
                await runs_as(migrator, catalog).effective(catalog.migrations[mid], session.lock.conn)
                for mid in dependents
            ],
            target,
        ]
        reversals = [
            await migrator._runners.of(t).check_reversible(t, catalog.checksums[t.metadata.id], session)
            for t in targets
        ]
        if cfg.dry_run:
            return await dry_run(migrator._runners, [(t, ROLLBACK) for t in targets], cfg, session)
        return [await reverse(cfg, session) for reverse in reversals]


async def contract(
    migrator: Parts, migration_id: str, *, config: MigrationConfig | None, actor: str | None
) -> MigrationResult:
    if actor is not None:
        with acting_as(checked_actor(actor)):
            return await contract(migrator, migration_id, config=config, actor=None)
    cfg = config_of(migrator, config)
    catalog = await load(migrator)
    hybrid = catalog.hybrid(migration_id, "contract", rewritten=True)
    async with runner_session(migrator.pool, migrator.schema, cfg) as session:
        await checked_states(migrator, catalog, cfg, session)
        hybrid = await runs_as(migrator, catalog).hybrid(hybrid, session.lock.conn, "contract")
        work = await migrator._hybrid_runner.contract(hybrid, catalog.checksums[migration_id], cfg, session)
    return await work()


async def abandon(migrator: Parts, migration_id: str, *, reason: str, actor: str | None) -> HistoryRecord:
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("abandon() needs a reason: say why the hybrid is given up, for the history record")
    who = checked_actor(actor)
    catalog = await load(migrator)
    hybrid = catalog.hybrid(migration_id, "abandon", rewritten=True)
    async with runner_session(migrator.pool, migrator.schema, migrator.config) as session:
        hybrid = await runs_as(migrator, catalog).hybrid(hybrid, session.lock.conn, "abandon")
        attempt_id = await migrator._hybrid_runner.abandon(
            hybrid, session, migrator.config, reason_text=reason, actor=who
        )
        return await migrator._ledger.record(await session.work_connection(), attempt_id)
