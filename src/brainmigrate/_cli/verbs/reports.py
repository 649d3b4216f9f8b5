"""The verbs that read and report: ``status``, ``history``, ``show``, ``progress``, ``check``, the
environments side by side (``envs``) and the ``timeline`` page; none changes a database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .. import output
from ..exit_codes import FAILED, NOT_READY, OK, UNAVAILABLE


async def status(args: argparse.Namespace) -> int:
    """Every migration known (pending or in history) with its status, and the runs in flight."""
    from brainmigrate import MigrationNotFoundError, MigrationStatus

    from ..settings import migrator

    async with migrator(args) as m:
        pending = [meta.id for meta in await m.pending()]
        ids = list(dict.fromkeys([*(record.migration_id for record in await m.history()), *pending]))
        statuses: dict[str, str] = {}
        for migration_id in ids:
            try:
                statuses[migration_id] = (await m.status(migration_id)).value
            except MigrationNotFoundError:
                statuses[migration_id] = "unknown"  # in history, no longer among the migrations
        running = await m.running()
        statistics = await m.statistics(since=_since(args))
    dirty = [mid for mid, value in statuses.items() if value == MigrationStatus.DIRTY.value]
    if args.json:
        output.print_json(
            {
                "migrations": [{"id": mid, "status": value} for mid, value in statuses.items()],
                "pending": pending,
                "dirty": dirty,
                "running": running,
                "statistics": statistics,
            }
        )
    else:
        output.table("Migrations", ["id", "status"], list(statuses.items()))
        output.say(f"{len(pending)} pending, {len(dirty)} dirty, {len(running)} running")
        for progress in running:
            output.say(output.progress_line(progress))
        output.say(_statistics_line(statistics))
    if args.check and (pending or dirty):
        return NOT_READY
    return OK


def _since(args: argparse.Namespace) -> Any:
    from brainmigrate._model.statistics import parse_window

    return parse_window(args.since) if getattr(args, "since", None) else None


def _statistics_line(statistics: Any) -> str:
    """The history's figures for people: success rate, and average rollback time."""
    window = f" since {output.text(statistics.since)}" if statistics.since is not None else ""
    if statistics.success_rate is None:
        rate = f"no finished attempts{window}"
    else:
        rate = (
            f"success rate {statistics.success_rate:.1%} of {statistics.attempts} attempts{window} "
            f"({statistics.completed} completed, {statistics.failed} failed, {statistics.dirty} dirty)"
        )
    if statistics.average_rollback_seconds is None:
        return f"{rate}; no completed rollbacks"
    return (
        f"{rate}; average rollback {statistics.average_rollback_seconds:.2f} s over "
        f"{statistics.rollbacks} rollbacks"
    )


async def envs(args: argparse.Namespace) -> int:
    """Each migration's status in every configured environment, side by side, read-only.

    Exit 1 when a migration is applied with different content in two environments, 3 when an
    environment could not be read (the others are still shown).
    """
    import os

    from brainmigrate import ConfigError
    from brainmigrate.environments import compare_environments

    from ..settings import configured_environments, configured_schema

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a package's dotted name resolves from here, as upgrade's does
    environments = configured_environments()
    if not environments:
        raise ConfigError(
            "no environments: name them in pyproject.toml under [tool.brainmigrate.envs], such as "
            'staging = { dsn_env = "STAGING_DATABASE_URL" }'
        )
    report = await compare_environments(environments, args.migrations or None, schema=configured_schema(args))
    if args.json:
        output.print_json(
            {
                "ok": report.ok,
                "environments": report.environments,
                "migrations": report.migrations,
                "mismatches": [row.migration_id for row in report.mismatches],
            }
        )
    else:
        _envs_table(report)
    if report.mismatches:
        return FAILED
    return UNAVAILABLE if report.unreachable else OK


def _envs_table(report: Any) -> None:
    """The environments side by side for people: a row per migration, flags last."""
    names = [reading.name for reading in report.environments]
    rows = []
    for row in report.migrations:
        cells = [_env_cell(row, reading) for reading in report.environments]
        flags = []
        if row.checksum_mismatch:
            flags.append("CHECKSUM MISMATCH between environments")
        if row.drifted:
            flags.append(f"changed since applied in {', '.join(row.drifted)}")
        if row.checksum is None:
            flags.append("not among the migrations")
        rows.append([row.migration_id, *cells, "; ".join(flags)])
    output.table("Environments", ["id", *names, "flags"], rows)
    for reading in report.environments:
        where = f" ({reading.server})" if reading.server else ""
        error = f": {reading.error}" if reading.error else ""
        output.say(f"{reading.name}{where}: {reading.state.value.replace('_', ' ')}{error}")
    for row in report.mismatches:
        applied = ", ".join(f"{name} {value[:12]}" for name, value in row.applied_checksums.items())
        output.error(
            f"{row.migration_id} is applied with different content in different environments "
            f"({applied}); find out which is right before promoting anything further"
        )


def _env_cell(row: Any, reading: Any) -> str:
    if not reading.readable:
        return str(reading.state.value)
    status = row.statuses.get(reading.name)
    return "" if status is None else str(status.value)


async def history(args: argparse.Namespace) -> int:
    """Every recorded attempt, oldest first."""
    from ..settings import migrator

    async with migrator(args) as m:
        records = await m.history()
    if args.json:
        output.print_json(records)
    else:
        output.table(
            "History",
            ["attempt", "migration", "operation", "status", "started", "ms", "error"],
            [
                (r.attempt_id, r.migration_id, r.operation, r.status, r.started_at, r.duration_ms, r.error)
                for r in records
            ],
        )
    return OK


async def show(args: argparse.Namespace) -> int:
    """One migration: its status, its attempts, and its progress or phase when it has one."""
    from brainmigrate import MigrationStateError

    from ..settings import migrator

    async with migrator(args) as m:
        state = await m.status(args.id)
        attempts = [record for record in await m.history() if record.migration_id == args.id]
        try:
            progress = await m.progress(args.id)
        except MigrationStateError:  # not a data migration
            progress = None
        try:
            hybrid = await m.hybrid_status(args.id)
        except MigrationStateError:  # not a hybrid migration
            hybrid = None
    if args.json:
        output.print_json(
            {"id": args.id, "status": state, "attempts": attempts, "progress": progress, "hybrid": hybrid}
        )
        return OK
    output.say(f"{args.id}: {state.value}")
    if progress is not None:
        output.say(output.progress_line(progress))
    if hybrid is not None:
        output.say(str(hybrid))
    output.table(
        "Attempts",
        ["attempt", "operation", "status", "started", "ms", "error"],
        [(r.attempt_id, r.operation, r.status, r.started_at, r.duration_ms, r.error) for r in attempts],
    )
    return OK


async def progress(args: argparse.Namespace) -> int:
    """How far a data migration's latest run got, from any process; ``--watch`` follows it live."""
    import anyio

    from brainmigrate import RunStatus

    from ..settings import migrator

    active = (RunStatus.RUNNING, RunStatus.CANCELLING)
    async with migrator(args) as m:
        current = await m.progress(args.id)
        if args.watch and current is not None and current.status in active:
            with output.Bars(enabled=not args.json) as bars:
                while current is not None and current.status in active:
                    bars.update(current)
                    await anyio.sleep(args.interval)
                    current = await m.progress(args.id)
                if current is not None:
                    bars.update(current)
    if args.json:
        output.print_json(current)
    elif current is None:
        output.say(f"{args.id} never ran")
    else:
        output.say(output.progress_line(current))
    return OK


async def check(args: argparse.Namespace) -> int:
    """Review the migrations and the database: exit 1 when a finding is an error."""
    from ..settings import migrator

    async with migrator(args) as m:
        report = await m.check()
    if args.json:
        output.print_json({"ok": report.ok, "findings": report.findings})
    else:
        for finding in report.findings:
            output.say(str(finding))
            if finding.statement:
                output.say(f"  SQL: {' '.join(finding.statement.split())}")
        output.say(f"{len(report.errors)} errors, {len(report.warnings)} warnings")
    return OK if report.ok else FAILED


async def timeline(args: argparse.Namespace) -> int:
    """Write the timeline page, with a snapshot of history and the runs in flight embedded."""
    from brainmigrate._timeline import timeline_page, timeline_snapshot

    from ..settings import migrator

    path = _timeline_output(args.output)
    async with migrator(args) as m:
        snapshot = await timeline_snapshot(m)
    _write_timeline(path, timeline_page(data_url=None, snapshot=snapshot))
    attempts, migrations = snapshot["attempt_count"], len(snapshot["migrations"])
    if args.json:
        output.print_json({"path": str(path), "attempts": attempts, "migrations": migrations})
    else:
        output.say(f"wrote {path}: {attempts} attempts of {migrations} migrations")
    return OK


def _timeline_output(name: str) -> Path:
    """Where ``timeline`` writes, refused before the database is read when it cannot be written."""
    from brainmigrate import ConfigError

    path = Path(name)
    if path.is_dir() or not path.parent.is_dir():
        problem = "it is a directory" if path.is_dir() else f"there is no directory {path.parent}"
        raise ConfigError(
            f"cannot write the timeline to {path}: {problem}; give --output a file in a directory that exists"
        )
    return path


def _write_timeline(path: Path, page: str) -> None:
    from brainmigrate import ConfigError

    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot write the timeline to {path}: {exc.strerror or exc}; give --output a file you may write"
        ) from exc
