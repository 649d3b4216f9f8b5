"""What is recorded by hand: a dirty mark ``resolve``d, a migration ``stamp``ed as applied without
running it, a chain of applied migrations ``squash``ed into one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .._authoring.squash import write_squash
from .._catalog_view import _applied
from .._errors import ConfigError, MigrationStateError
from .._ledger.connect import connection
from .._ledger.history import Attempt
from .._ledger.session import runner_session
from .._ledger.stamps import Stamp, stamp_refusal, write_stamps
from .._model.results import HistoryRecord
from .._model.states import AttemptStatus, MigrationOperation
from .._runtime.steps import now
from .reads import status
from .workbench import Parts, checked_actor, checked_states, load, prepare_writes

logger = logging.getLogger("brainmigrate")


async def resolve(migrator: Parts, migration_id: str, *, applied: bool) -> HistoryRecord:
    catalog = await load(migrator)
    migration = catalog.get(migration_id)
    async with runner_session(migrator.pool, migrator.schema, migrator.config) as session:
        state = (await migrator._ledger.states(session.lock.conn)).get(migration_id)
        if state is None or not state.dirty:
            raise MigrationStateError(
                f"migration {migration_id!r} is not dirty; resolve() is only for interrupted "
                "non-transactional migrations",
                migration_id=migration_id,
            )
        meta = migration.metadata
        stamp = now()
        conn = await session.work_connection()
        async with conn.transaction():
            await migrator._ledger.close_interrupted(conn, migration_id, stamp)
            attempt_id = await migrator._ledger.insert(
                conn,
                Attempt(
                    migration_id=migration_id,
                    name=meta.name,
                    migration_type=meta.migration_type,
                    version=meta.version,
                    checksum=catalog.checksums[migration_id],
                    operation=MigrationOperation.RESOLVE,
                    status=AttemptStatus.COMPLETED,
                    applied_after=applied,
                    started_at=stamp,
                    finished_at=stamp,
                    error=f"resolved by hand as {'applied' if applied else 'not applied'}",
                ),
                session.lock,
            )
        record = await migrator._ledger.record(conn, attempt_id)
    logger.warning("dirty migration %s resolved by hand as applied=%s", migration_id, applied)
    return record


async def stamp(
    migrator: Parts, migration_id: str, *, actor: str | None, reason: str | None
) -> list[HistoryRecord]:
    if reason is not None and (not isinstance(reason, str) or not reason.strip()):
        raise ConfigError(f"reason must be a non-empty string or None, got {reason!r}")
    who = checked_actor(actor)
    catalog = await load(migrator)
    catalog.top_level(migration_id, "stamp")
    async with runner_session(migrator.pool, migrator.schema, migrator.config) as session:
        states = await checked_states(migrator, catalog, migrator.config, session)
        if _applied(states, migration_id):
            raise MigrationStateError(
                f"migration {migration_id!r} is already applied, so there is nothing to stamp",
                migration_id=migration_id,
            )
        wanted = {*catalog.graph.ancestors(migration_id), migration_id}
        due = sorted((mid for mid in wanted if not _applied(states, mid)), key=catalog.graph.position)
        for mid in due:
            refusal = stamp_refusal(catalog.migrations[mid], await status(migrator, mid), migration_id)
            if refusal is not None:
                raise refusal
        await prepare_writes(migrator, session, states)
        dependency = f"a dependency of {migration_id!r}" + (f": {reason}" if reason else "")
        stamps = [
            Stamp(
                catalog.migrations[mid].metadata,
                catalog.checksums[mid],
                reason if mid == migration_id else dependency,
            )
            for mid in due
        ]
        records = await write_stamps(migrator._ledger, session, stamps, actor=who)
    logger.info("stamped as applied without running: %s", ", ".join(due))
    return records


async def squash(
    migrator: Parts,
    from_id: str,
    to_id: str,
    *,
    directory: str | os.PathLike[str] | None,
    migration_id: str | None,
) -> Path:
    catalog = await load(migrator)
    async with connection(migrator.pool) as conn:
        states = await migrator._ledger.states(conn)
    return await write_squash(
        catalog,
        states,
        from_id,
        to_id,
        directory=directory,
        migration_id=migration_id,
        source=migrator._source,
    )
