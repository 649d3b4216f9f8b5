"""The timeline's data: every attempt from history, grouped by migration, with the runs in flight.

Everything here is read through the :class:`Migrator`'s public reads (``history``, ``pending``,
``status``, ``running``, ``progress``, ``hybrid_status``): it takes no lock and writes nothing. The
result is plain JSON (strings, numbers, lists, dicts, None), timestamps ISO-8601 in UTC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from typing import Any

import asyncpg.exceptions

from .._errors import BrainMigrateError, MigrationStateError
from .._migrator import Migrator
from .._model.hybrid import HybridStatus
from .._model.items import Progress
from .._model.metadata import MigrationType
from .._model.results import HistoryRecord

#: The version of the snapshot's layout; the page reads it, to refuse a layout it does not know.
SNAPSHOT_FORMAT = 1

#: How each migration type is drawn: its kind on the timeline.
KINDS: dict[MigrationType, str] = {
    MigrationType.DATABASE_SCHEMA: "schema",
    MigrationType.DATABASE_DATA: "data",
    MigrationType.MEMORY_DATA: "data",
    MigrationType.MEMORY_STRUCTURE: "structure",
    MigrationType.HYBRID: "hybrid",
}

#: Types whose runs report progress (``Migrator.progress``).
_PROGRESS_TYPES = (MigrationType.DATABASE_DATA, MigrationType.MEMORY_DATA, MigrationType.MEMORY_STRUCTURE)

#: ``ClassName: message``, as brainmigrate records an exception (``[sqlstate] message`` has no class).
_ERROR_CLASS = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*): (.*)\Z", re.DOTALL)


def iso(moment: datetime | None) -> str | None:
    """``moment`` as ISO-8601 in UTC (``2026-12-02T05:31:02.123456Z``); None stays None."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def split_error(error: str | None, sqlstate: str | None = None) -> tuple[str | None, str | None]:
    """A recorded error as (class, message): ``"ValueError: bad"`` is ``("ValueError", "bad")``.

    An error recorded without a class name is named after its SQLSTATE, as the driver names it
    (``22012`` is ``DivisionByZeroError``); with neither, its class is None.
    """
    if error is None:
        return None, None
    match = _ERROR_CLASS.match(error)
    if match is not None:
        return match.group(1), match.group(2)
    return _sqlstate_classes().get(sqlstate or ""), error


@cache
def _sqlstate_classes() -> dict[str, str]:
    """The driver's error class name of each SQLSTATE (``22012``: ``DivisionByZeroError``)."""
    names: dict[str, str] = {}
    for name in asyncpg.exceptions.__all__:
        found = getattr(asyncpg.exceptions, name)
        code = getattr(found, "sqlstate", None)
        if isinstance(found, type) and isinstance(code, str) and code not in names:
            names[code] = found.__name__
    return names


def attempt_json(record: HistoryRecord) -> dict[str, Any]:
    """One attempt from history, as the timeline draws it."""
    error_class, error_message = split_error(record.error, record.sqlstate)
    reached: str | None = None
    if record.statement_index is not None:
        of = f" of {record.statement_count}" if record.statement_count is not None else ""
        reached = f"statement {record.statement_index + 1}{of}"
    return {
        "id": record.attempt_id,
        "migration_id": record.migration_id,
        "name": record.name,
        "kind": KINDS[record.migration_type],
        "migration_type": record.migration_type.value,
        "version": record.version,
        "operation": record.operation.value,
        "status": record.status.value,
        "applied_after": record.applied_after,
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "duration_ms": record.duration_ms,
        "actor": record.actor,
        "ran_by": record.actor or f"{record.db_user}@{record.hostname} (pid {record.pid})",
        "db_user": record.db_user,
        "hostname": record.hostname,
        "pid": record.pid,
        "reason": record.reason,
        "error": record.error,
        "error_class": error_class,
        "error_message": error_message,
        "sqlstate": record.sqlstate,
        "statement_index": record.statement_index,
        "statement_count": record.statement_count,
        "statement_reached": reached,
        "hybrid_id": record.hybrid_id,
        "hybrid_phase": record.hybrid_phase,
    }


def progress_json(progress: Progress) -> dict[str, Any]:
    """A data run's progress, with what the page shows: share done, rate and seconds left."""
    return {
        "migration_id": progress.migration_id,
        "status": progress.status.value,
        "processed": progress.processed,
        "skipped": progress.skipped,
        "failed": progress.failed,
        "done": progress.done,
        "total": progress.total,
        "fraction": progress.fraction,
        "batch_number": progress.batch_number,
        "rate": _finite(progress.rate),
        "eta_seconds": _finite(progress.eta_seconds),
        "workers": progress.workers,
        "started_at": iso(progress.started_at),
        "updated_at": iso(progress.updated_at),
        "error": progress.error,
    }


def _finite(value: float | None) -> float | None:
    """A figure JSON can hold: None for none, or for an infinite or undefined one."""
    return value if value is not None and math.isfinite(value) else None


def hybrid_json(status: HybridStatus) -> dict[str, Any]:
    """A hybrid migration's phase and steps."""
    return {
        "phase": status.phase.value if status.phase is not None else None,
        "contract_mode": status.contract_mode,
        "steps": list(status.steps),
        "steps_done": list(status.steps_done),
        "current_step": status.current_step,
        "error": status.error,
        "started_at": iso(status.started_at),
        "updated_at": iso(status.updated_at),
    }


async def timeline_snapshot(migrator: Migrator) -> dict[str, Any]:
    """What the timeline shows, read now from ``migrator``'s database: JSON-serialisable.

    ``migrations`` holds one group per migration (a hybrid's steps' attempts are in the hybrid's
    group), in the order of their first attempt, then the pending ones; each with its attempts,
    oldest first, its status, its latest data run's progress and a hybrid's phases. ``running``
    lists the data runs in flight. Reads only: no lock, no writes.
    """
    records = await migrator.history()
    pending = await migrator.pending()
    running = await migrator.running()
    groups: dict[str, dict[str, Any]] = {}
    for record in records:
        group_id = record.hybrid_id or record.migration_id
        group = groups.get(group_id)
        if group is None:
            group = groups[group_id] = _group(
                group_id,
                record.name if record.migration_id == group_id else group_id,
                MigrationType.HYBRID if record.hybrid_id is not None else record.migration_type,
            )
        if record.migration_id == group_id:
            group["name"] = record.name  # the latest name recorded
        group["attempts"].append(attempt_json(record))
        if record.migration_id != group_id and record.migration_id not in group["steps"]:
            group["steps"].append(record.migration_id)
    for meta in pending:
        if meta.id not in groups:
            groups[meta.id] = _group(meta.id, meta.name, meta.migration_type)
        group = groups[meta.id]
        group["pending"] = True
        group["name"] = meta.name  # a hybrid's steps ran, but it has no row of its own yet
    for group in groups.values():
        await _describe(migrator, group, running)
    return {
        "format": SNAPSHOT_FORMAT,
        "generated_at": iso(datetime.now(UTC)),
        "schema": migrator.schema,
        "attempt_count": len(records),
        "migrations": list(groups.values()),
        "running": [progress_json(progress) for progress in running],
    }


def _group(migration_id: str, name: str, migration_type: MigrationType) -> dict[str, Any]:
    return {
        "id": migration_id,
        "name": name,
        "kind": KINDS[migration_type],
        "migration_type": migration_type.value,
        "status": None,
        "pending": False,
        "attempts": [],
        "steps": [],
        "progress": None,
        "running": [],
        "hybrid": None,
    }


async def _describe(migrator: Migrator, group: dict[str, Any], running: Iterable[Progress]) -> None:
    """Fill in a group's status, progress and phases (left None for a migration no longer known)."""
    mid = group["id"]
    try:
        group["status"] = (await migrator.status(mid)).value
    except BrainMigrateError:  # in history, no longer among the migrations
        group["status"] = "unknown"
        return
    members = {mid, *group["steps"]}
    if MigrationType(group["migration_type"]) in _PROGRESS_TYPES:
        try:
            progress = await migrator.progress(mid)
        except MigrationStateError:  # a plain Migration declaring a data type: no progress kept
            progress = None
        group["progress"] = progress_json(progress) if progress is not None else None
    elif group["migration_type"] == MigrationType.HYBRID.value:
        hybrid = await migrator.hybrid_status(mid)
        group["hybrid"] = hybrid_json(hybrid)
        members.update(hybrid.steps)  # a backfill step runs before its first attempt is recorded
    group["running"] = [progress_json(p) for p in running if p.migration_id in members]
