"""Benchmark 1: ``run_pending()`` when all migrations are applied, on a warm pool.

Three tools side by side, one database each on the same server, samples interleaved:

* brainmigrate: ``await migrator.run_pending()`` on a Migrator that has already run once;
* hand-written asyncpg: session advisory lock, read the applied ids, unlock;
* Alembic: ``command.upgrade(cfg, "head")`` in-process on a shared psycopg 3 connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from alembic import command
from alembic.config import Config
from common import Row, Section, Stats, databases, rotated, sqlalchemy_url
from generate import alembic_config, migration_id, write_alembic_project, write_brainmigrate_migrations

from brainmigrate import Migrator

BRAINMIGRATE = "brainmigrate"
HAND = "hand-written asyncpg"
ALEMBIC = "Alembic"

#: Advisory lock key of the hand-written runner (any constant would do).
HAND_LOCK_KEY = 7_362_519

WARMUP = 3


class HandWrittenRunner:
    """The smallest correct check: lock, read what is applied, compute what is pending, unlock."""

    def __init__(self, pool: asyncpg.Pool[Any], ids: list[str]) -> None:
        self.pool = pool
        self.ids = ids

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("CREATE TABLE applied (id text PRIMARY KEY, applied_at timestamptz NOT NULL)")
            await conn.executemany("INSERT INTO applied VALUES ($1, now())", [(i,) for i in self.ids])

    async def pending(self) -> list[str]:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", HAND_LOCK_KEY)
            try:
                applied = {row[0] for row in await conn.fetch("SELECT id FROM applied")}
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", HAND_LOCK_KEY)
        return [i for i in self.ids if i not in applied]


def alembic_upgrade(engine: sqlalchemy.Engine, config: Config) -> None:
    """``alembic upgrade head`` in-process, on one connection of a reused engine."""
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def bench_noop(admin_dsn: str, workdir: Path, count: int, samples: int) -> Section:
    """Measure the three no-op checks and return their section of the report."""
    async with databases(admin_dsn) as factory:
        dsns = {tool: await factory.create() for tool in (BRAINMIGRATE, HAND, ALEMBIC)}
        times = await _measure(dsns, workdir, count, samples)
    return Section(
        title=f"1. no-op run_pending(), {count} migrations applied, warm pool",
        rows=[Row(tool, Stats(tuple(times[tool]))) for tool in (BRAINMIGRATE, HAND, ALEMBIC)],
        baselines=(HAND, ALEMBIC),
        target=f"{BRAINMIGRATE} median <= 5 ms",
    )


async def _measure(dsns: dict[str, str], workdir: Path, count: int, samples: int) -> dict[str, list[float]]:
    """The samples of each tool, each on its own database (``dsns``)."""
    bm_dir = write_brainmigrate_migrations(workdir / "noop_brainmigrate", count)
    alembic_dir = write_alembic_project(workdir / "noop_alembic", count)
    bm_pool = await asyncpg.create_pool(dsns[BRAINMIGRATE], min_size=2, max_size=2)
    hand_pool = await asyncpg.create_pool(dsns[HAND], min_size=2, max_size=2)
    engine = sqlalchemy.create_engine(sqlalchemy_url(dsns[ALEMBIC]))
    try:
        migrator = Migrator(bm_pool, str(bm_dir))
        applied = await migrator.run_pending()
        if len(applied) != count:
            raise RuntimeError(f"brainmigrate applied {len(applied)} migrations, expected {count}")
        hand = HandWrittenRunner(hand_pool, [migration_id(i) for i in range(count)])
        await hand.setup()
        config = alembic_config(alembic_dir)
        alembic_upgrade(engine, config)

        async def run_brainmigrate() -> None:
            if await migrator.run_pending():
                raise RuntimeError("brainmigrate found pending migrations in the no-op benchmark")

        async def run_hand() -> None:
            if await hand.pending():
                raise RuntimeError("the hand-written check found pending migrations")

        async def run_alembic() -> None:
            alembic_upgrade(engine, config)

        runners = {BRAINMIGRATE: run_brainmigrate, HAND: run_hand, ALEMBIC: run_alembic}
        times: dict[str, list[float]] = {tool: [] for tool in runners}
        for turn in range(WARMUP + samples):
            for tool in rotated(list(runners), turn):
                elapsed = await _timed(runners[tool])
                if turn >= WARMUP:
                    times[tool].append(elapsed)
    finally:
        await bm_pool.close()
        await hand_pool.close()
        engine.dispose()
    return times
