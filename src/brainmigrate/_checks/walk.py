"""One walk up the stairway on one database runs the checks that need one.

For each pending migration, in the order it would run: the sample data due before it is loaded; a
data, memory or structure migration is dry-run; the migration is applied (the upgrade check); a
reversible one is rolled back, the database fingerprinted and compared with before it, and applied
again. Every migration is applied once for the upgrade and once more after its rollback; no
database is made per migration.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .._errors import BrainMigrateError, ConfigError
from .._migrator import Migrator
from .._model.metadata import MigrationMetadata, MigrationType
from .._model.results import MigrationResult
from .._model.states import HybridPhase
from .._model.types import Pool
from .._review.report import FindingCode
from .fingerprint import Fingerprint, snapshot
from .report import Check, CheckOutcome, SampleData, SampleLoader

#: The migration types whose dry run is checked on the sample data.
DATA_TYPES = frozenset(
    {MigrationType.DATABASE_DATA, MigrationType.MEMORY_DATA, MigrationType.MEMORY_STRUCTURE}
)
#: What to do about a failed dry run.
_DRY_RUN_REMEDY = (
    "Fix the migration (its transform, batch statement or operations) for data like this, or the "
    "sample data if it is not data the migration will meet."
)
#: Violations quoted in a failed dry run's message; the rest are counted.
_SHOWN = 5


@attrs.frozen(kw_only=True)
class Plan:
    """Which of the database checks one walk runs."""

    heads: bool = True
    upgrade: bool = True
    stairway: bool = True
    dry_runs: bool = True
    #: Whether several heads fail the heads check (else only conflicts between branches do).
    single_head: bool = False


async def walk(
    pool: Pool, migrator: Migrator, plan: Plan, sample_data: SampleData | None = None
) -> list[CheckOutcome]:
    """Run ``plan``'s checks on the empty database behind ``pool``; every outcome, in order.

    A migration that fails to apply is an upgrade failure; the walk stops there and the migrations
    after it are reported as not checked.
    """
    try:
        pending = await migrator.pending()
    except BrainMigrateError as exc:
        return _not_loaded(plan, exc)
    loaders = _loaders(sample_data, pending)
    outcomes: list[CheckOutcome] = []
    if plan.heads:
        outcomes.append(await _heads(migrator, single_head=plan.single_head))
    stopped: str | None = None
    for meta in pending:
        if stopped is not None:
            outcomes.extend(_not_reached(plan, meta, stopped))
            continue
        dry_run: str | None = await _load_sample(pool, loaders.get(meta.id), meta)
        if dry_run is None and plan.dry_runs and meta.migration_type in DATA_TYPES:
            dry_run = await _dry_run(migrator, meta)
            if dry_run is not None:
                dry_run = f"{dry_run}\n{_DRY_RUN_REMEDY}"
        stairway = plan.stairway and meta.reversible
        before = await snapshot(pool, migrator.schema) if stairway else None
        try:
            await migrator.execute(meta.id)
        except BrainMigrateError as exc:
            outcomes.extend(_apply_failed(plan, meta, exc, dry_run))
            stopped = meta.id
            continue
        if dry_run is not None or (plan.dry_runs and meta.migration_type in DATA_TYPES):
            outcomes.append(CheckOutcome(check=Check.DRY_RUN, migration_id=meta.id, problem=dry_run))
        if plan.upgrade:
            outcomes.append(CheckOutcome(check=Check.UPGRADE, migration_id=meta.id))
        if before is not None:
            problem = await _stairway_step(pool, migrator, meta, before)
            outcomes.append(CheckOutcome(check=Check.STAIRWAY, migration_id=meta.id, problem=problem))
            if problem is not None and not await _applied(migrator, meta.id):
                stopped = meta.id
    if plan.upgrade and stopped is None:
        outcomes.append(await _nothing_left(migrator))
    return outcomes


def _apply_failed(
    plan: Plan, meta: MigrationMetadata, exc: BrainMigrateError, dry_run: str | None
) -> list[CheckOutcome]:
    """The outcomes of a migration that failed to apply: an upgrade failure, its dry run (with the
    apply's error, which names the item and the cause) and its stairway step not checked."""
    outcomes: list[CheckOutcome] = []
    if dry_run is not None:
        dry_run = f"{dry_run}\nApplying it failed too: {exc}"
        outcomes.append(CheckOutcome(check=Check.DRY_RUN, migration_id=meta.id, problem=dry_run))
    elif plan.dry_runs and meta.migration_type in DATA_TYPES:
        outcomes.append(CheckOutcome(check=Check.DRY_RUN, migration_id=meta.id))
    upgrade = (
        f"migration {meta.id!r} failed to apply on a database holding every migration before it: "
        f"{exc}\nFix it and run the checks again; the migrations after it were not checked."
    )
    outcomes.append(CheckOutcome(check=Check.UPGRADE, migration_id=meta.id, problem=upgrade))
    if plan.stairway and meta.reversible:
        stairway = f"migration {meta.id!r} was not checked: it failed to apply (see the upgrade check)."
        outcomes.append(CheckOutcome(check=Check.STAIRWAY, migration_id=meta.id, problem=stairway))
    return outcomes


def _not_loaded(plan: Plan, exc: BrainMigrateError) -> list[CheckOutcome]:
    problem = f"the migrations could not be loaded, so nothing was checked: {exc}"
    checks = [
        (plan.heads, Check.HEADS),
        (plan.upgrade, Check.UPGRADE),
        (plan.stairway, Check.STAIRWAY),
        (plan.dry_runs, Check.DRY_RUN),
    ]
    return [CheckOutcome(check=check, problem=problem) for wanted, check in checks if wanted]


def _loaders(sample_data: SampleData | None, pending: list[MigrationMetadata]) -> dict[str, SampleLoader]:
    """Which loader runs before which migration: a single loader before the first data, memory or
    structure migration; a mapping's loaders before the migrations it names."""
    if sample_data is None:
        return {}
    ids = [meta.id for meta in pending]
    if isinstance(sample_data, Mapping):
        unknown = [key for key in sample_data if key not in ids]
        if unknown:
            raise ConfigError(
                f"the sample data names {', '.join(map(repr, unknown))}, which "
                f"{'is not a pending migration' if len(unknown) == 1 else 'are not pending migrations'}"
                f"; name the migration each loader runs before (one of {', '.join(map(repr, ids))})"
            )
        return dict(sample_data)
    if not callable(sample_data):
        raise ConfigError(
            f"the sample data must be an async callable taking a connection, or a mapping of migration "
            f"ids to such callables; got {sample_data!r}"
        )
    first = next((meta.id for meta in pending if meta.migration_type in DATA_TYPES), None)
    return {} if first is None else {first: sample_data}


async def _load_sample(pool: Pool, loader: SampleLoader | None, meta: MigrationMetadata) -> str | None:
    if loader is None:
        return None
    try:
        async with pool.acquire() as conn, conn.transaction():
            await loader(conn)
    except Exception as exc:
        return (
            f"the sample data could not be loaded before migration {meta.id!r}: "
            f"{type(exc).__name__}: {exc}\nNothing of it was kept. Fix the loader "
            "(the brainmigrate_sample_data fixture, or sample_data=): it runs when every migration "
            f"before {meta.id!r} is applied."
        )
    return None


async def _heads(migrator: Migrator, *, single_head: bool) -> CheckOutcome:
    """The findings of ``Migrator.check()`` about the graph (not the DDL lint, not drift)."""
    codes = {FindingCode.CONFLICT, *([FindingCode.SEVERAL_HEADS] if single_head else [])}
    report = await migrator.check()
    found = [finding for finding in report.findings if finding.code in codes]
    if not found:
        return CheckOutcome(check=Check.HEADS)
    lines = "\n".join(f"  {finding}" for finding in found)
    return CheckOutcome(
        check=Check.HEADS,
        problem=(f"the order of the migrations is not decided (as `brainmigrate check` reports):\n{lines}"),
    )


async def _dry_run(migrator: Migrator, meta: MigrationMetadata) -> str | None:
    config = attrs.evolve(migrator.config, dry_run=True)
    what = f"the dry run of migration {meta.id!r} on the sample data"
    try:
        result = await migrator.execute(meta.id, config=config)
    except BrainMigrateError as exc:
        return f"{what} failed: {exc}"
    problem = _dry_run_problem(result)
    return None if problem is None else f"{what} {problem}"


def _dry_run_problem(result: MigrationResult) -> str | None:
    if result.error is not None or not result.succeeded:
        return f"failed: {result.error or result.status.value}"
    if result.items_failed:
        return f"failed on {result.items_failed} of the items it sampled"
    if result.violations:
        shown = "\n".join(f"  {violation}" for violation in result.violations[:_SHOWN])
        more = len(result.violations) - _SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return f"found memories breaking a condition of its operations:\n{shown}{tail}"
    return None


async def _stairway_step(
    pool: Pool, migrator: Migrator, meta: MigrationMetadata, before: Fingerprint
) -> str | None:
    try:
        await migrator.rollback(meta.id)
    except BrainMigrateError as exc:
        return (
            f"migration {meta.id!r} is declared reversible, but its rollback failed: {exc}\n"
            "Fix its rollback (get_rollback_statements() or down()), or declare it reversible=False "
            "if it cannot be undone."
        )
    after = await snapshot(pool, migrator.schema)
    changes = before.diff(after)
    problem: str | None = None
    if changes:
        problem = (
            f"migration {meta.id!r} is not reversible: after its rollback the database differs from "
            "before it (+ only after the rollback, - only before it):\n"
            + "\n".join(f"  {line}" for line in changes)
            + "\nMake its rollback undo exactly what it applies, or declare it reversible=False."
        )
    try:
        await migrator.execute(meta.id)
    except BrainMigrateError as exc:
        again = (
            f"migration {meta.id!r} cannot be applied again after its rollback: {exc}\n"
            "Its rollback leaves behind something that applying it again trips on; make the rollback "
            "undo everything it applies."
        )
        return again if problem is None else f"{problem}\n{again}"
    return problem


async def _applied(migrator: Migrator, migration_id: str) -> bool:
    return migration_id not in {meta.id for meta in await migrator.pending()}


def _not_checked(check: Check, migration_id: str, stopped: str) -> CheckOutcome:
    return CheckOutcome(
        check=check,
        migration_id=migration_id,
        problem=(
            f"migration {migration_id!r} was not checked: the walk stopped at migration {stopped!r}, "
            "which failed (see its failure); fix that one first."
        ),
    )


def _not_reached(plan: Plan, meta: MigrationMetadata, stopped: str) -> list[CheckOutcome]:
    wanted: list[tuple[bool, Check]] = [
        (plan.dry_runs and meta.migration_type in DATA_TYPES, Check.DRY_RUN),
        (plan.upgrade, Check.UPGRADE),
        (plan.stairway and meta.reversible, Check.STAIRWAY),
    ]
    return [_not_checked(check, meta.id, stopped) for yes, check in wanted if yes]


async def _nothing_left(migrator: Migrator) -> CheckOutcome:
    """After the walk nothing may be pending but a hybrid migration waiting for its manual contract."""
    left = [
        meta.id
        for meta in await migrator.pending()
        if not (
            meta.migration_type is MigrationType.HYBRID
            and await migrator.hybrid_phase(meta.id) is HybridPhase.READY_TO_CONTRACT
        )
    ]
    if not left:
        return CheckOutcome(check=Check.UPGRADE)
    return CheckOutcome(
        check=Check.UPGRADE,
        problem=(
            f"after applying every migration, {', '.join(map(repr, left))} "
            f"{'is' if len(left) == 1 else 'are'} still pending: a migration's dependencies are not "
            "among the migrations, or a run completed without recording it; `brainmigrate status` "
            "shows where each one stands."
        ),
    )
