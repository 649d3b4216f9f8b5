"""Helpers for testing migrations: throwaway databases, fingerprints and the up/down/up check.

::

    from brainmigrate.testing import DatabaseFactory, assert_reversible, fingerprint

    async with DatabaseFactory(admin_dsn) as databases:
        dsn = await databases.create()  # a fresh, empty database
        ...
    await assert_reversible(pool, [CreateMemories, AddEmbeddingIndex])

:func:`assert_reversible` and :func:`fingerprint` work with any asyncpg pool or connection, and
:class:`DatabaseFactory` with any server whose user may create databases; none of them needs
pytest. The pytest plugin's ``brainmigrate_database`` fixture is a :class:`DatabaseFactory`'s.

The standard checks (:func:`run_checks`, or one at a time: :func:`check_heads`,
:func:`check_kinds`, :func:`check_upgrade`, :func:`check_stairway`, :func:`check_dry_runs`) run
over a project's migrations on an empty database; ``pytest --brainmigrate-checks`` runs them as
tests. A failure raises :class:`MigrationCheckError` (an AssertionError) saying which migration,
what differed and what to do.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from ._checks.fingerprint import Fingerprint, fingerprint
from ._checks.fingerprint import snapshot as _snapshot
from ._checks.report import Check, CheckOutcome, ChecksReport, SampleData, SampleLoader
from ._checks.suite import (
    check_dry_runs,
    check_heads,
    check_kinds,
    check_stairway,
    check_upgrade,
    run_checks,
)
from ._databases import DatabaseFactory
from ._errors import BrainMigrateError, MigrationCheckError
from ._migrator import Migrator

__all__ = [
    "Check",
    "CheckOutcome",
    "ChecksReport",
    "DatabaseFactory",
    "Fingerprint",
    "MigrationCheckError",
    "SampleData",
    "SampleLoader",
    "assert_reversible",
    "check_dry_runs",
    "check_heads",
    "check_kinds",
    "check_stairway",
    "check_upgrade",
    "fingerprint",
    "run_checks",
]


async def assert_reversible(
    pool: asyncpg.Pool[Any], migrations: Any, *, schema: str = "brainmigrate"
) -> None:
    """Check that every pending migration's rollback undoes it: the "stairway" test.

    For each pending migration, in the order it would run: fingerprint the database, apply the
    migration, roll it back, fingerprint again and compare, then apply it once more so the next
    migration starts from it. Raises :class:`AssertionError` naming the migration, with a diff of
    what its rollback left different (``+`` present only after the rollback, ``-`` only before it),
    or when its rollback (or applying it again) fails. A failure to apply a migration the first
    time is raised as it is.

    A migration declared irreversible (``reversible=False``) is applied without being rolled
    back, so it is not checked itself; the migrations after it are checked from there on.
    ``migrations`` is anything :class:`~brainmigrate.Migrator` accepts; ``schema`` is its history
    schema, left out of the comparison. All pending migrations end up applied, except that a hybrid
    migration with ``contract_mode = "manual"`` waits before its contract, as it does in a real run
    (checked as it stands there; call ``contract(id)`` yourself to go on).
    """
    migrator = Migrator(pool, migrations, schema=schema)
    for meta in await migrator.pending():
        if not meta.reversible:
            await migrator.execute(meta.id)
            continue
        before = await _snapshot(pool, schema)
        await migrator.execute(meta.id)
        try:
            await migrator.rollback(meta.id)
        except BrainMigrateError as exc:
            raise AssertionError(
                f"migration {meta.id!r} is not reversible: its rollback failed: {exc}"
            ) from exc
        after = await _snapshot(pool, schema)
        changes = before.diff(after)
        if changes:
            raise AssertionError(
                f"migration {meta.id!r} is not reversible: after rollback the database differs from "
                "before it (+ only after the rollback, - only before it):\n"
                + "\n".join(f"  {line}" for line in changes)
            )
        try:
            await migrator.execute(meta.id)
        except BrainMigrateError as exc:
            raise AssertionError(
                f"migration {meta.id!r} cannot be applied again after its rollback: {exc}"
            ) from exc
