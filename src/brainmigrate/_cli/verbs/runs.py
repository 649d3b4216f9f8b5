"""The verbs that apply, reverse or record migrations: ``upgrade`` (guarded by ``--env``'s promotion
rule), ``downgrade``, ``resume``, ``cancel``, ``retry-failed``, a hybrid's ``contract`` and
``abandon``, and ``stamp``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import output
from ..exit_codes import FAILED, OK


def _executor(args: argparse.Namespace) -> Any:
    """The executor ``--executor`` names (None: in this process), with ``--workers`` and ``--num-gpus``."""
    from brainmigrate import ConfigError

    workers, gpus = getattr(args, "workers", None), getattr(args, "num_gpus", None)
    if getattr(args, "executor", "in-process") != "ray":
        if workers is not None or gpus is not None:
            raise ConfigError("--workers and --num-gpus are for --executor ray; add it, or leave them out")
        return None
    from brainmigrate.ray import RayExecutor

    from ..settings import configured_dsn

    return RayExecutor(
        workers=4 if workers is None else workers,
        num_gpus=0 if gpus is None else gpus,
        dsn=configured_dsn(args),
    )


async def upgrade(args: argparse.Namespace) -> int:
    """Apply the pending migrations (up to and including ID); ``--dry-run`` prints what would happen."""
    from brainmigrate import MigrationConfig, MigrationStateError, MigrationStatus

    from ..settings import migrator

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

    from ..settings import configured_environments, configured_schema

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
    from ..settings import migrator

    async with migrator(args) as m:
        results = await m.rollback(args.id, cascade=args.cascade)
    _results(args, results)
    return OK if all(result.succeeded for result in results) else FAILED


async def resume(args: argparse.Namespace) -> int:
    """Carry on a stopped (cancelled or failed) migration from its checkpoint."""
    from ..settings import migrator

    with output.Bars(enabled=not args.json and sys.stderr.isatty()) as bars:
        async with migrator(args, on_progress=bars.update) as m:
            result = await m.execute(args.id)
    _results(args, [result])
    return OK if result.succeeded else FAILED


async def cancel(args: argparse.Namespace) -> int:
    """Ask a running data migration to stop at its next batch boundary."""
    from ..settings import migrator

    async with migrator(args) as m:
        state = await m.cancel(args.id)
    if args.json:
        output.print_json({"id": args.id, "status": state})
    else:
        output.say(f"{args.id}: {state.value}")
    return OK


async def retry_failed(args: argparse.Namespace) -> int:
    """Run a data migration's transform again over the items in its error ledger."""
    from ..settings import migrator

    async with migrator(args) as m:
        result = await m.retry_failed(args.id)
    _results(args, [result])
    return OK if result.succeeded else FAILED


async def contract(args: argparse.Namespace) -> int:
    """Run a hybrid migration's contract steps."""
    from ..settings import migrator

    async with migrator(args) as m:
        result = await m.contract(args.id)
    _results(args, [result])
    return OK if result.succeeded else FAILED


async def abandon(args: argparse.Namespace) -> int:
    """Give up a stuck hybrid migration's run, recording the reason in history."""
    from ..settings import migrator

    async with migrator(args) as m:
        record = await m.abandon(args.id, reason=args.reason, actor=args.actor)
    if args.json:
        output.print_json(record)
    else:
        output.say(f"{args.id}: abandoned (attempt {record.attempt_id})")
    return OK


async def stamp(args: argparse.Namespace) -> int:
    """Record a migration (and its dependencies not applied yet) as applied, without running it."""
    from ..settings import migrator

    async with migrator(args) as m:
        records = await m.stamp(args.id, actor=args.actor, reason=args.reason)
    if args.json:
        output.print_json(records)
    else:
        for record in records:
            output.say(f"{record.migration_id}: stamped (attempt {record.attempt_id})")
    return OK
