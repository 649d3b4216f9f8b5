"""Stamps: migrations recorded as applied without being run.

``Migrator.stamp`` records one by hand (a database changed by other means); a squash migration
(``MigrationMetadata.replaces``) is recorded so by the first runner on a database that applied
every migration it replaces.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import attrs

from .._errors import MigrationStateError
from .._model.data import DataMigration
from .._model.hybrid import HybridMigration
from .._model.metadata import MigrationMetadata, MigrationStatus
from .._model.migration import Migration
from .._model.results import HistoryRecord
from .._model.states import AttemptStatus, MigrationOperation
from .._runtime.steps import now
from .history import Attempt, HistoryLedger, MigrationState
from .session import RunnerSession

logger = logging.getLogger("brainmigrate")


@attrs.frozen
class Stamp:
    """One migration to record as applied: its metadata and checksum, and why."""

    metadata: MigrationMetadata
    checksum: str
    reason: str | None


async def write_stamps(
    ledger: HistoryLedger, session: RunnerSession, stamps: Sequence[Stamp], *, actor: str | None
) -> list[HistoryRecord]:
    """Under the runner lock: one completed ``stamp`` row per stamp, all in one transaction."""
    conn = await session.work_connection()
    when = now()
    async with conn.transaction():
        attempt_ids = [
            await ledger.insert(
                conn,
                Attempt(
                    migration_id=stamp.metadata.id,
                    name=stamp.metadata.name,
                    migration_type=stamp.metadata.migration_type,
                    version=stamp.metadata.version,
                    checksum=stamp.checksum,
                    operation=MigrationOperation.STAMP,
                    status=AttemptStatus.COMPLETED,
                    applied_after=True,
                    started_at=when,
                    finished_at=when,
                    actor=actor,
                    reason=stamp.reason,
                ),
                session.lock,
            )
            for stamp in stamps
        ]
    return [await ledger.record(conn, attempt_id) for attempt_id in attempt_ids]


def stamp_refusal(migration: Migration, status: MigrationStatus, target: str) -> MigrationStateError | None:
    """Why ``migration`` (``target`` or one of its dependencies) cannot be stamped, or None."""
    mid = migration.metadata.id
    what = f"migration {mid!r}" + ("" if mid == target else f" (a dependency of {target!r})")
    if isinstance(migration, HybridMigration):
        why = (
            "it is a hybrid migration, whose phases and steps are recorded run by run; apply it with "
            "run_pending() (or execute()) instead"
        )
    elif status in (MigrationStatus.RUNNING, MigrationStatus.CANCELLING):
        why = f"a run of it is in progress ({status.value}); let it finish, or cancel it, first"
    elif status is MigrationStatus.DIRTY:
        why = "it is dirty (a run of it was interrupted midway); resolve() it first"
    elif status is MigrationStatus.CANCELLED or (
        isinstance(migration, DataMigration) and status is MigrationStatus.FAILED
    ):
        why = (
            f"a run of it stopped midway ({status.value}), leaving part of its work done; resume "
            "it with execute(), or undo that part with rollback(), first"
        )
    else:
        return None
    return MigrationStateError(f"cannot stamp {what}: {why}. Nothing was written", migration_id=target)


def _squashes(migrations: Mapping[str, Migration]) -> list[MigrationMetadata]:
    return [m.metadata for m in migrations.values() if m.metadata.replaces]


def replaced_ids(migrations: Mapping[str, Migration]) -> frozenset[str]:
    """The ids the squash migrations among ``migrations`` replace."""
    return frozenset(replaced for meta in _squashes(migrations) for replaced in meta.replaces)


def _settled(
    migrations: Mapping[str, Migration], states: Mapping[str, MigrationState]
) -> tuple[list[MigrationMetadata], list[tuple[MigrationMetadata, list[str]]]]:
    """Squash migrations never recorded here whose replaced migrations are all applied, and those
    of which only some are (each with the missing ones)."""
    complete: list[MigrationMetadata] = []
    partial: list[tuple[MigrationMetadata, list[str]]] = []
    for meta in _squashes(migrations):
        if meta.id in states:
            continue  # recorded already (applied, rolled back or dirty): it is a migration like any
        missing = [mid for mid in meta.replaces if not (mid in states and states[mid].applied)]
        if not missing:
            complete.append(meta)
        elif len(missing) < len(meta.replaces):
            partial.append((meta, missing))
    return complete, partial


def _applied_state(meta: MigrationMetadata, checksum: str) -> MigrationState:
    return MigrationState(meta.id, AttemptStatus.COMPLETED.value, True, checksum, None, None)


def with_squashes(
    migrations: Mapping[str, Migration],
    checksums: Mapping[str, str],
    states: Mapping[str, MigrationState],
) -> dict[str, MigrationState]:
    """``states``, with each squash whose replaced migrations are all applied counted as applied
    (for reading: nothing is written)."""
    complete, _ = _settled(migrations, states)
    return {**states, **{meta.id: _applied_state(meta, checksums[meta.id]) for meta in complete}}


def _chain(meta: MigrationMetadata) -> str:
    replaced = meta.replaces
    return f"{replaced[0]}..{replaced[-1]}" if len(replaced) > 1 else replaced[0]


def partial_chain_error(meta: MigrationMetadata, missing: Sequence[str]) -> MigrationStateError:
    applied = [mid for mid in meta.replaces if mid not in missing]
    return MigrationStateError(
        f"migration {meta.id!r} squashes {', '.join(meta.replaces)}, but this database applied only "
        f"{', '.join(applied)} of them (not {', '.join(missing)}), so the squash can neither run (part "
        "of it is applied) nor be recorded as applied. Apply the rest of the chain first, with the "
        f"migration files of a release before {meta.id!r}, then run again. Nothing was changed",
        migration_id=meta.id,
    )


async def stamp_squashes(
    ledger: HistoryLedger,
    session: RunnerSession,
    migrations: Mapping[str, Migration],
    checksums: Mapping[str, str],
    states: Mapping[str, MigrationState],
    *,
    dry_run: bool,
) -> dict[str, MigrationState]:
    """Under the runner lock: record each squash whose replaced migrations are all applied with a
    ``stamp`` row (not in a dry run, which counts it as applied all the same), and return the states
    with them. A squash of which only part is applied is refused, before anything is written."""
    complete, partial = _settled(migrations, states)
    if partial:
        raise partial_chain_error(*partial[0])
    if not complete:
        return dict(states)
    if complete and not dry_run:
        stamps = [
            Stamp(meta, checksums[meta.id], f"replaces {_chain(meta)}, all applied") for meta in complete
        ]
        await write_stamps(ledger, session, stamps, actor=None)
        for stamp in stamps:
            logger.info("squash migration %s recorded as applied: it %s", stamp.metadata.id, stamp.reason)
    return {**states, **{meta.id: _applied_state(meta, checksums[meta.id]) for meta in complete}}
