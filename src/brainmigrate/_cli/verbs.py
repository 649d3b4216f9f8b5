"""The verbs: each is a thin call of one public :class:`Migrator` method, then rendering.

A verb returns its exit code (see :mod:`brainmigrate._cli.main`); errors are raised as the library
raises them, and ``main`` turns them into a message and an exit code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import output

OK = 0
FAILED = 1
UNAVAILABLE = 3
NOT_READY = 4

_INIT_PACKAGE = '''"""Migrations, found by brainmigrate: each module defines Migration subclasses."""
'''


def init(args: argparse.Namespace) -> int:
    """Create a migrations package and point ``[tool.brainmigrate] migrations`` at it."""
    from brainmigrate import ConfigError

    directory = Path(args.directory)
    pyproject = Path("pyproject.toml")
    if directory.exists():
        raise ConfigError(f"{directory} exists already; init creates it, so it leaves it alone")
    if "migrations" in _settings():
        raise ConfigError("pyproject.toml has a [tool.brainmigrate] migrations setting already")
    text = pyproject.read_text() if pyproject.is_file() else ""
    setting = f'migrations = "{directory.as_posix()}"\n'
    if "[tool.brainmigrate]" in text:
        text = text.replace("[tool.brainmigrate]\n", "[tool.brainmigrate]\n" + setting, 1)
    else:
        text += ("\n" if text and not text.endswith("\n\n") else "") + "[tool.brainmigrate]\n" + setting
    directory.mkdir(parents=True)
    (directory / "__init__.py").write_text(_INIT_PACKAGE)
    pyproject.write_text(text)
    if args.json:
        output.print_json({"package": directory.as_posix(), "pyproject": str(pyproject)})
    else:
        output.say(f"created {directory.as_posix()}/ and set [tool.brainmigrate] migrations in {pyproject}")
    return OK


def _settings() -> dict[str, Any]:
    from .settings import pyproject_settings

    return pyproject_settings()


async def status(args: argparse.Namespace) -> int:
    """Every migration known (pending or in history) with its status, and the runs in flight."""
    from brainmigrate import MigrationNotFoundError, MigrationStatus

    from .settings import migrator

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


def _executor(args: argparse.Namespace) -> Any:
    """The executor ``--executor`` names (None: in this process), with ``--workers`` and ``--num-gpus``."""
    from brainmigrate import ConfigError

    workers, gpus = getattr(args, "workers", None), getattr(args, "num_gpus", None)
    if getattr(args, "executor", "in-process") != "ray":
        if workers is not None or gpus is not None:
            raise ConfigError("--workers and --num-gpus are for --executor ray; add it, or leave them out")
        return None
    from brainmigrate.ray import RayExecutor

    from .settings import configured_dsn

    return RayExecutor(
        workers=4 if workers is None else workers,
        num_gpus=0 if gpus is None else gpus,
        dsn=configured_dsn(args),
    )


async def upgrade(args: argparse.Namespace) -> int:
    """Apply the pending migrations (up to and including ID); ``--dry-run`` prints what would happen."""
    from brainmigrate import MigrationConfig, MigrationStateError, MigrationStatus

    from .settings import migrator

    config = MigrationConfig(dry_run=args.dry_run)
    executor = _executor(args)
    with output.Bars(enabled=not args.json and not args.dry_run and sys.stderr.isatty()) as bars:
        async with migrator(args, on_progress=bars.update) as m:
            if getattr(args, "env", None):
                await _promotion_guard(args, m)
            if args.id is None or args.dry_run:
                results = await m.run_pending(args.type, config, executor=executor)
                if args.id is not None:
                    ids = [result.migration_id for result in results]
                    if args.id not in ids:
                        await m.status(args.id)  # unknown: MigrationNotFoundError
                        results = []
                    else:
                        results = results[: ids.index(args.id) + 1]
            else:
                plan = [meta.id for meta in await m.pending(args.type)]
                if args.id not in plan:
                    if await m.status(args.id) is MigrationStatus.PENDING:  # left out by --type
                        raise MigrationStateError(
                            f"migration {args.id!r} is pending but not of type {args.type}",
                            migration_id=args.id,
                        )
                    plan = []  # applied already (or running): nothing to do
                results = []
                for migration_id in plan[: plan.index(args.id) + 1] if plan else []:
                    results.append(await m.execute(migration_id, executor=executor))
                    if results[-1].status is not MigrationStatus.COMPLETED:
                        break  # the next ones may depend on it
    _results(args, results)
    stopped = (
        MigrationStatus.FAILED,
        MigrationStatus.DIRTY,
        MigrationStatus.CANCELLING,
        MigrationStatus.CANCELLED,
    )
    return FAILED if any(result.status in stopped for result in results) else OK


async def _promotion_guard(args: argparse.Namespace, m: Any) -> None:
    """Refuse ``upgrade --env`` of migrations not completed (with the same checksum) in the
    environment that environment requires; nothing is applied then."""
    from brainmigrate import PromotionRefusedError
    from brainmigrate.environments import check_promotion

    from .settings import configured_environments, configured_schema

    plan = [meta.id for meta in await m.pending(args.type)]
    if args.id is not None and args.id in plan:
        plan = plan[: plan.index(args.id) + 1]
    try:
        await check_promotion(
            args.env, configured_environments(), plan, args.migrations or None, schema=configured_schema(args)
        )
    except PromotionRefusedError as exc:
        if args.json:  # for CI, beside the message on stderr
            output.print_json(
                {
                    "refused": True,
                    "environment": exc.environment,
                    "requires": exc.required,
                    "refusals": [{"migration_id": mid, "reason": why} for mid, why in exc.refusals],
                }
            )
        raise


async def envs(args: argparse.Namespace) -> int:
    """Each migration's status in every configured environment, side by side, read-only.

    Exit 1 when a migration is applied with different content in two environments, 3 when an
    environment could not be read (the others are still shown).
    """
    import os

    from brainmigrate import ConfigError
    from brainmigrate.environments import compare_environments

    from .settings import configured_environments, configured_schema

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


def _results(args: argparse.Namespace, results: list[Any]) -> None:
    if args.json:
        output.print_json(results)
        return
    if not results:
        output.say("nothing to do")
    for result in results:
        for line in output.result_lines(result):
            output.say(line)


async def downgrade(args: argparse.Namespace) -> int:
    """Roll back ID (with ``--cascade``, first the applied migrations depending on it)."""
    from .settings import migrator

    async with migrator(args) as m:
        results = await m.rollback(args.id, cascade=args.cascade)
    _results(args, results)
    return OK if all(result.succeeded for result in results) else FAILED


async def history(args: argparse.Namespace) -> int:
    """Every recorded attempt, oldest first."""
    from .settings import migrator

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

    from .settings import migrator

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

    from .settings import migrator

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


async def cancel(args: argparse.Namespace) -> int:
    """Ask a running data migration to stop at its next batch boundary."""
    from .settings import migrator

    async with migrator(args) as m:
        state = await m.cancel(args.id)
    if args.json:
        output.print_json({"id": args.id, "status": state})
    else:
        output.say(f"{args.id}: {state.value}")
    return OK


async def resume(args: argparse.Namespace) -> int:
    """Carry on a stopped (cancelled or failed) migration from its checkpoint."""
    from .settings import migrator

    with output.Bars(enabled=not args.json and sys.stderr.isatty()) as bars:
        async with migrator(args, on_progress=bars.update) as m:
            result = await m.execute(args.id)
    _results(args, [result])
    return OK if result.succeeded else FAILED


async def retry_failed(args: argparse.Namespace) -> int:
    """Run a data migration's transform again over the items in its error ledger."""
    from .settings import migrator

    async with migrator(args) as m:
        result = await m.retry_failed(args.id)
    _results(args, [result])
    return OK if result.succeeded else FAILED


async def contract(args: argparse.Namespace) -> int:
    """Run a hybrid migration's contract steps."""
    from .settings import migrator

    async with migrator(args) as m:
        result = await m.contract(args.id)
    _results(args, [result])
    return OK if result.succeeded else FAILED


async def abandon(args: argparse.Namespace) -> int:
    """Give up a stuck hybrid migration's run, recording the reason in history."""
    from .settings import migrator

    async with migrator(args) as m:
        record = await m.abandon(args.id, reason=args.reason, actor=args.actor)
    if args.json:
        output.print_json(record)
    else:
        output.say(f"{args.id}: abandoned (attempt {record.attempt_id})")
    return OK


async def stamp(args: argparse.Namespace) -> int:
    """Record a migration (and its dependencies not applied yet) as applied, without running it."""
    from .settings import migrator

    async with migrator(args) as m:
        records = await m.stamp(args.id, actor=args.actor, reason=args.reason)
    if args.json:
        output.print_json(records)
    else:
        for record in records:
            output.say(f"{record.migration_id}: stamped (attempt {record.attempt_id})")
    return OK


async def squash(args: argparse.Namespace) -> int:
    """Write one migration replacing the applied chain FROM..TO, next to the migrations."""
    from .settings import migrator

    async with migrator(args) as m:
        path = await m.squash(args.from_id, args.to_id, migration_id=args.squash_id)
    if args.json:
        output.print_json({"path": str(path), "from": args.from_id, "to": args.to_id})
    else:
        output.say(f"wrote {path}: it replaces {args.from_id}..{args.to_id}")
    return OK


def new(args: argparse.Namespace) -> int:
    """Write a new migration module of KIND, depending on the heads; no database needed."""
    import os

    from brainmigrate import ConfigError, write_migration
    from brainmigrate._authoring.templates import migrations_directory
    from brainmigrate._catalog.loader import configured_source

    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a package's dotted name resolves from here, as upgrade's does
    if args.directory:
        directory, source = Path(args.directory), None
    else:
        try:
            source = args.migrations or configured_source()
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or pass --migrations or --directory to new") from None
        directory = migrations_directory(source)
    path = write_migration(
        args.kind,
        args.name,
        directory=directory,
        migration_id=args.migration_id,
        version=args.migration_version,
        migrations=source,
    )
    if args.json:
        output.print_json({"path": str(path), "kind": args.kind})
    else:
        output.say(f"wrote {path}")
    return OK


async def check(args: argparse.Namespace) -> int:
    """Review the migrations and the database: exit 1 when a finding is an error."""
    from .settings import migrator

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

    from .settings import migrator

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


ADMIN_TOKEN_VARIABLE = "BRAINMIGRATE_ADMIN_TOKEN"
READ_TOKEN_VARIABLE = "BRAINMIGRATE_READ_TOKEN"


async def serve(args: argparse.Namespace) -> int:
    """Serve the HTTP API, mounted at /migrations, with uvicorn until stopped (Ctrl-C)."""
    import os

    from brainmigrate import ConfigError

    admin_token = os.environ.get(ADMIN_TOKEN_VARIABLE)
    if not admin_token:
        raise ConfigError(
            f"serve needs an admin token: set ${ADMIN_TOKEN_VARIABLE} (and ${READ_TOKEN_VARIABLE} for "
            "read-only access) to a secret of at least 16 characters, such as the output of "
            "python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Mount

        from brainmigrate.http import BearerAuth, migrations_router
    except ImportError as exc:
        raise ConfigError(
            f"serve needs uvicorn and starlette: pip install 'brainmigrate[serve]' ({exc})"
        ) from exc
    from .settings import migrator

    auth = BearerAuth(admin_token=admin_token, read_token=os.environ.get(READ_TOKEN_VARIABLE) or None)
    async with migrator(args) as m:
        router = migrations_router(m, auth=auth)
        app = Starlette(routes=[Mount("/migrations", app=router)])
        config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="off", log_level="info")
        output.say(f"serving the HTTP API at http://{args.host}:{args.port}/migrations")
        try:
            await uvicorn.Server(config).serve()
        finally:
            await router.state.runs.aclose()  # a run stopped here stays resumable
    return OK
