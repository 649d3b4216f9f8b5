"""The standard checks as plain async functions (public in :mod:`brainmigrate.testing`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .._catalog.loader import configured_source, load_migrations
from .._errors import BrainMigrateError
from .._migrator import Migrator
from .._model.types import Pool
from .kinds import kind_outcomes
from .report import Check, CheckOutcome, ChecksReport, SampleData
from .walk import Plan, walk


async def run_checks(
    pool: Pool,
    migrations: Any = None,
    *,
    schema: str = "brainmigrate",
    sample_data: SampleData | None = None,
    checks: Iterable[Check] | None = None,
    single_head: bool = False,
) -> ChecksReport:
    """Run the standard checks (all of them, or ``checks``) over ``migrations``; never raises for
    a failed check, the report holds it (:meth:`ChecksReport.assert_passed` raises).

    ``pool`` must be on an empty database, such as a :class:`DatabaseFactory`'s: the checks apply
    and roll back every migration there, walking it up the stairway once. ``migrations`` is anything
    :class:`~brainmigrate.Migrator` accepts (by default ``[tool.brainmigrate] migrations``);
    ``sample_data`` puts rows in place for the data checks (see :data:`SampleData`). Several
    heads fail the heads check only with ``single_head``; conflicts between branches always do.
    """
    wanted = set(Check) if checks is None else {Check(check) for check in checks}
    outcomes: list[CheckOutcome] = []
    if Check.KINDS in wanted:
        outcomes.extend(await _kinds(migrations))
    plan = Plan(
        heads=Check.HEADS in wanted,
        upgrade=Check.UPGRADE in wanted,
        stairway=Check.STAIRWAY in wanted,
        dry_runs=Check.DRY_RUN in wanted,
        single_head=single_head,
    )
    if wanted - {Check.KINDS}:
        migrator = Migrator(pool, migrations, schema=schema)
        outcomes.extend(await walk(pool, migrator, plan, sample_data))
    return ChecksReport(outcomes=tuple(outcomes))


async def _kinds(migrations: Any) -> list[CheckOutcome]:
    try:
        loaded = load_migrations(migrations if migrations is not None else configured_source(), None)
    except BrainMigrateError as exc:
        return [
            CheckOutcome(
                check=Check.KINDS,
                problem=f"the migrations could not be loaded, so nothing was checked: {exc}",
            )
        ]
    return await kind_outcomes([migration for migration, _ in loaded])


async def check_heads(
    pool: Pool, migrations: Any = None, *, schema: str = "brainmigrate", single_head: bool = False
) -> None:
    """Fail when two pending migrations touch one table or column and neither depends on the other
    (their order is not decided), and with ``single_head`` when the migrations have several heads:
    the findings of ``brainmigrate check`` about the graph."""
    report = await run_checks(pool, migrations, schema=schema, checks=[Check.HEADS], single_head=single_head)
    report.assert_passed()


async def check_kinds(migrations: Any = None) -> None:
    """Fail naming every migration whose class does not run the ``migration_type`` it declares, or
    whose SQL statements are of another type than declared; needs no database."""
    report = ChecksReport(outcomes=tuple(await _kinds(migrations)))
    report.assert_passed()


async def check_upgrade(pool: Pool, migrations: Any = None, *, schema: str = "brainmigrate") -> None:
    """Fail unless every migration applies, in order, on the empty database behind ``pool``."""
    report = await run_checks(pool, migrations, schema=schema, checks=[Check.UPGRADE])
    report.assert_passed()


async def check_stairway(
    pool: Pool,
    migrations: Any = None,
    *,
    schema: str = "brainmigrate",
    sample_data: SampleData | None = None,
) -> None:
    """Fail naming each reversible migration whose rollback does not restore the database.

    On the empty database behind ``pool``, for each migration in order: apply it, roll it back,
    compare fingerprints of the schema and data with before it, apply it again.
    """
    report = await run_checks(
        pool, migrations, schema=schema, sample_data=sample_data, checks=[Check.STAIRWAY]
    )
    report.assert_passed()


async def check_dry_runs(
    pool: Pool,
    migrations: Any = None,
    *,
    schema: str = "brainmigrate",
    sample_data: SampleData | None = None,
) -> None:
    """Fail naming each data, memory or structure migration whose dry run fails on the sample data.

    Each is dry-run when every migration before it is applied on the empty database behind
    ``pool``, after ``sample_data`` put its rows in place.
    """
    report = await run_checks(
        pool, migrations, schema=schema, sample_data=sample_data, checks=[Check.DRY_RUN]
    )
    report.assert_passed()
