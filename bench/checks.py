"""The standard checks: one walk up the stairway, against a fresh database per migration.

``run_checks`` (what ``pytest --brainmigrate-checks`` runs) checks every migration on one database:
each is dry-run when it is a data migration, applied, rolled back, fingerprinted and applied again.
The baseline is what a suite without the walk does, and what pytest-alembic users describe: for
each reversible migration a fresh database, the migrations before it applied with one
``run_pending()``, then that migration applied, rolled back and compared. Both include making their
databases (from the template); the heads and kinds checks are in the walk's figure.

Measured over the example Second Brain migrations and over a chain of generated schema
migrations (``--checks-migrations``, 200 by default), ``--checks-rounds`` rounds (tools rotating).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import asyncpg
from common import Row, Section, Stats, databases, rotated
from generate import write_brainmigrate_migrations

from brainmigrate import Migrator
from brainmigrate._catalog.loader import load_migrations
from brainmigrate.testing import DatabaseFactory, fingerprint, run_checks

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "second_brain" / "migrations"
WALK = "run_checks: one database, one walk"
FRESH = "a fresh database per migration"


async def _pool(dsn: str) -> asyncpg.Pool[Any]:
    return await asyncpg.create_pool(dsn, min_size=1, max_size=4)


async def walk(factory: DatabaseFactory, source: Path) -> None:
    """Every standard check, as ``--brainmigrate-checks`` runs them."""
    dsn = await factory.create()
    pool = await _pool(dsn)
    try:
        report = await run_checks(pool, source)
    finally:
        await pool.close()
        await factory.drop(dsn)
    report.assert_passed()


async def fresh_per_migration(factory: DatabaseFactory, source: Path) -> None:
    """The stairway the naive way: a new database for each reversible migration."""
    classes = [type(migration) for migration, _ in load_migrations(source, None)]
    order = [meta.id for meta in await _order(factory, classes)]
    by_id = {cls().metadata.id: cls for cls in classes}
    for index, migration_id in enumerate(order):
        if not by_id[migration_id]().metadata.reversible:
            continue
        dsn = await factory.create()
        pool = await _pool(dsn)
        try:
            await Migrator(pool, [by_id[mid] for mid in order[:index]]).run_pending()
            migrator = Migrator(pool, [by_id[mid] for mid in order[: index + 1]])
            async with pool.acquire() as conn:
                before = await fingerprint(conn)
            await migrator.execute(migration_id)
            await migrator.rollback(migration_id)
            async with pool.acquire() as conn:
                after = await fingerprint(conn)
            assert before.diff(after) == [], migration_id
            await migrator.execute(migration_id)
        finally:
            await pool.close()
            await factory.drop(dsn)


async def _order(factory: DatabaseFactory, classes: list[type[Any]]) -> list[Any]:
    """The run order, as a migrator on an empty database sees it."""
    dsn = await factory.create()
    pool = await _pool(dsn)
    try:
        return await Migrator(pool, classes).pending()
    finally:
        await pool.close()
        await factory.drop(dsn)


async def _section(title: str, dsn: str, source: Path, rounds: int) -> Section:
    samples: dict[str, list[float]] = {WALK: [], FRESH: []}
    tools = {WALK: walk, FRESH: fresh_per_migration}
    async with databases(dsn) as factory:
        for turn in range(rounds):
            for tool in rotated(list(tools), turn):
                started = time.perf_counter()
                await tools[tool](factory, source)
                samples[tool].append(time.perf_counter() - started)
    return Section(
        title=title,
        rows=[Row(tool, Stats(tuple(values))) for tool, values in samples.items()],
        baselines=(FRESH,),
        show_p90=False,
    )


async def bench_checks(dsn: str, workdir: Path, migrations: int, rounds: int) -> list[Section]:
    """The standard checks over the examples and over ``migrations`` generated ones."""
    generated = write_brainmigrate_migrations(workdir / "checks_migrations", migrations)
    return [
        await _section("standard checks, the 10 example migrations (pgvector)", dsn, EXAMPLES, rounds),
        await _section(f"standard checks, {migrations} generated schema migrations", dsn, generated, rounds),
    ]
