"""brainmigrate's standard checks as pytest tests.

``pytest --brainmigrate-checks`` adds them to a run; or one line in a test module does::

    from pytest_brainmigrate import StandardChecks as TestMigrations

Every check runs in one walk over one throwaway database, made once per run; each test reports
its part of the walk: ``test_heads``, ``test_kinds[<id>]``, ``test_upgrade``,
``test_stairway[<id>]`` for each reversible migration and ``test_dry_run[<id>]`` for each data,
memory and structure migration, so a failure names its migration.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import pytest

from brainmigrate._catalog.graph import MigrationGraph
from brainmigrate._catalog.loader import configured_source, load_migrations
from brainmigrate._checks.walk import DATA_TYPES
from brainmigrate._errors import BrainMigrateError, ConfigError, MigrationCheckError
from brainmigrate._model.metadata import MigrationMetadata
from brainmigrate.testing import Check, ChecksReport, DatabaseFactory, SampleData, run_checks

MIGRATIONS_INI = "brainmigrate_migrations"
SINGLE_HEAD_INI = "brainmigrate_single_head"
_REPORTS = pytest.StashKey[dict[tuple[str, bool], ChecksReport]]()


def migrations_source(config: pytest.Config, migrations: Any = None) -> Any:
    """The migrations to check: ``migrations`` if given, else the ``brainmigrate_migrations`` ini
    setting, else ``$BRAINMIGRATE_MIGRATIONS``, else ``[tool.brainmigrate] migrations`` in the
    pyproject.toml at pytest's root. A directory is found from that root."""
    if migrations is None:
        migrations = str(config.getini(MIGRATIONS_INI))
    if not migrations:
        try:
            migrations = configured_source(config.rootpath)
        except ConfigError as exc:
            raise ConfigError(
                f"the standard checks found no migrations to check: set the {MIGRATIONS_INI} ini "
                f"setting, or [tool.brainmigrate] migrations in {config.rootpath / 'pyproject.toml'}, or "
                "$BRAINMIGRATE_MIGRATIONS, or migrations = ... on your StandardChecks class"
            ) from exc
    if isinstance(migrations, str) and not os.path.isabs(migrations):
        candidate = config.rootpath / migrations
        if candidate.exists():
            return str(candidate)
    return migrations


def _ordered(source: Any) -> list[MigrationMetadata]:
    """The migrations in run order, read without a database; [] when they cannot be loaded (the
    tests then report why)."""
    try:
        loaded = load_migrations(source, None)
        graph = MigrationGraph.build((migration.metadata, label) for migration, label in loaded)
    except (BrainMigrateError, ImportError, OSError):
        return []
    return [graph.nodes[mid] for mid in graph.order]


#: The tests run once per migration, and which migrations each one looks at.
_PER_MIGRATION: dict[str, Callable[[MigrationMetadata], bool]] = {
    "test_kinds": lambda meta: True,
    "test_stairway": lambda meta: meta.reversible,
    "test_dry_run": lambda meta: meta.migration_type in DATA_TYPES,
}


class StandardChecks:
    """The standard checks over a project's migrations; subclass it (or import it) under a name
    pytest collects, such as ``TestMigrations``.

    Set ``migrations`` on a subclass to check other migrations than the configured ones, and
    ``single_head = True`` to fail on several heads (else the ``brainmigrate_single_head`` ini
    setting decides). Sample data comes from the ``brainmigrate_sample_data`` fixture.
    """

    #: Anything :class:`~brainmigrate.Migrator` accepts; None: the configured migrations.
    migrations: ClassVar[Any] = None
    #: Whether several heads fail ``test_heads``; None: the ``brainmigrate_single_head`` ini setting.
    single_head: ClassVar[bool | None] = None

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        wanted = _PER_MIGRATION.get(metafunc.function.__name__)
        if wanted is None:
            return
        try:
            source = migrations_source(metafunc.config, type(self).migrations)
        except BrainMigrateError:
            source = None
        ids = [meta.id for meta in _ordered(source) if wanted(meta)] if source is not None else []
        # With nothing to check one item still runs: it reports a failure to load the migrations.
        metafunc.parametrize("migration_id", ids or [None], ids=ids or ["all"])

    def test_heads(self, brainmigrate_checks: ChecksReport) -> None:
        """No two pending migrations touch one table in an undecided order (nor, if asked, do
        several heads exist)."""
        _report(brainmigrate_checks, Check.HEADS, None)

    def test_kinds(self, brainmigrate_checks: ChecksReport, migration_id: str | None) -> None:
        """The migration's class runs the migration_type it declares."""
        _report(brainmigrate_checks, Check.KINDS, migration_id)

    def test_upgrade(self, brainmigrate_checks: ChecksReport) -> None:
        """Every migration applies, in order, on an empty database."""
        _report(brainmigrate_checks, Check.UPGRADE, None)

    def test_stairway(self, brainmigrate_checks: ChecksReport, migration_id: str | None) -> None:
        """Applying the migration, rolling it back and applying it again leaves no difference."""
        _report(brainmigrate_checks, Check.STAIRWAY, migration_id)

    def test_dry_run(self, brainmigrate_checks: ChecksReport, migration_id: str | None) -> None:
        """The migration's dry run succeeds on the sample data."""
        _report(brainmigrate_checks, Check.DRY_RUN, migration_id)


def _report(report: ChecksReport, check: Check, migration_id: str | None) -> None:
    """Fail the test with the check's message alone: it says which migration, what and what to do."""
    try:
        report.assert_passed(check, migration_id)
    except MigrationCheckError as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message, pytrace=False)


def _single_head(config: pytest.Config, cls: type[Any] | None) -> bool:
    chosen = getattr(cls, "single_head", None)
    return bool(config.getini(SINGLE_HEAD_INI)) if chosen is None else bool(chosen)


async def checks_report(
    databases: DatabaseFactory, source: Any, sample_data: SampleData | None, *, single_head: bool
) -> ChecksReport:
    """Run every check over ``source`` on a fresh database of ``databases``, dropped afterwards."""
    dsn = await databases.create()
    try:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            return await run_checks(pool, source, sample_data=sample_data, single_head=single_head)
        finally:
            await pool.close()
    finally:
        await databases.drop(dsn)


def cached_report(
    request: pytest.FixtureRequest,
    databases: DatabaseFactory,
    sample_data: SampleData | None,
    run: Any,
) -> ChecksReport:
    """The run's report for the requesting class's migrations, computed by its first test."""
    cls = request.cls
    source = migrations_source(request.config, getattr(cls, "migrations", None))
    single_head = _single_head(request.config, cls)
    key = (repr(source), single_head)
    reports = request.config.stash.setdefault(_REPORTS, {})
    if key not in reports:
        reports[key] = run(lambda: checks_report(databases, source, sample_data, single_head=single_head))
    return reports[key]


class TestBrainmigrateChecks(StandardChecks):
    """The tests ``--brainmigrate-checks`` adds (the configured migrations)."""


class ChecksModule(pytest.Module):
    """This module, collected under a name of its own at pytest's root: ``brainmigrate-checks``."""

    def _getobj(self) -> Any:
        import pytest_brainmigrate.checks as module

        return module


def checks_items(session: pytest.Session) -> list[pytest.Item]:
    """The items of ``--brainmigrate-checks``."""
    module = ChecksModule.from_parent(session, path=Path(session.config.rootpath) / "brainmigrate-checks")
    return [item for item in session.genitems(module) if isinstance(item, pytest.Item)]
