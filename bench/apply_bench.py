"""Benchmark 2: applying a chain of small schema migrations to a fresh database.

Each migration creates one table and records itself, in its own transaction (except for Alembic's
default mode, one transaction for all). Every sample gets a new database; creating it, connecting
and dropping it are not timed. Samples of the tools are interleaved.

Most of the wall time is PostgreSQL creating 200 tables, and on a busy machine that part varies a
lot from one sample to the next. So each run also adds up the time spent inside the migrations'
own ``CREATE TABLE`` statements; wall time minus that is what the tool itself adds (its other
statements, their round trips and its Python), a much steadier figure.
"""

from __future__ import annotations

import compileall
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from common import Row, Section, Stats, checkpoint, databases, rotated, sqlalchemy_url
from generate import (
    alembic_config,
    forward_sql,
    migration_id,
    table,
    write_alembic_project,
    write_brainmigrate_migrations,
)
from noop_bench import HAND_LOCK_KEY, alembic_upgrade

from brainmigrate import Migrator

BRAINMIGRATE = "brainmigrate"
ALEMBIC_ONE = "Alembic, one transaction"
ALEMBIC_EACH = "Alembic, transaction per migration"
HAND = "hand-written asyncpg"

WARMUP = 1


class DdlTimer:
    """Adds up the time spent inside the migrations' own ``CREATE TABLE`` statements."""

    PREFIX = "CREATE TABLE t_"

    def __init__(self) -> None:
        self.seconds = 0.0

    async def attach(self, conn: asyncpg.Connection[Any]) -> None:
        """asyncpg pool ``init`` hook."""
        conn.add_query_logger(self._logged)

    def _logged(self, record: Any) -> None:
        if record.query.startswith(self.PREFIX):
            self.seconds += record.elapsed

    def listen(self, engine: sqlalchemy.Engine) -> None:
        """Time the statements SQLAlchemy sends on ``engine``."""

        def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            conn.info["ddl_started"] = time.perf_counter() if statement.startswith(self.PREFIX) else None

        def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            started = conn.info.pop("ddl_started", None)
            if started is not None:
                self.seconds += time.perf_counter() - started

        sqlalchemy.event.listen(engine, "before_cursor_execute", before)
        sqlalchemy.event.listen(engine, "after_cursor_execute", after)


#: A sample's wall time and the part of it spent in the migrations' CREATE TABLE statements.
Sample = tuple[float, float]
Runner = Callable[[str, int], Awaitable[Sample]]


async def hand_written_apply(pool: asyncpg.Pool[Any], count: int) -> None:
    """The smallest correct runner: lock; per migration BEGIN, DDL, history row, COMMIT; unlock."""
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", HAND_LOCK_KEY)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS applied (id text PRIMARY KEY, applied_at timestamptz NOT NULL)"
            )
            applied = {row[0] for row in await conn.fetch("SELECT id FROM applied")}
            for i in range(count):
                if migration_id(i) in applied:
                    continue
                async with conn.transaction():
                    await conn.execute(forward_sql(i))
                    await conn.execute("INSERT INTO applied VALUES ($1, now())", migration_id(i))
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", HAND_LOCK_KEY)


async def _check_applied(dsn: str, count: int, query: str, expected: object) -> None:
    """Fail loudly unless the last table exists and ``query`` (the tool's history) gives ``expected``."""
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table(count - 1)):
            raise RuntimeError(f"{table(count - 1)} missing after the run")
        found = await conn.fetchval(query)
    finally:
        await conn.close()
    if found != expected:
        raise RuntimeError(f"{query!r} gave {found!r}, expected {expected!r}")


class ApplyBench:
    """Runs each tool against a fresh database per sample."""

    def __init__(self, workdir: Path, count: int) -> None:
        self.workdir = workdir
        self.count = count
        self.bm_dir = write_brainmigrate_migrations(workdir / "apply_brainmigrate", count)
        self.alembic_dir = write_alembic_project(workdir / "apply_alembic", count)
        # Both tools import their migration files; give both compiled bytecode to start from.
        compileall.compile_dir(self.bm_dir, quiet=1)
        compileall.compile_dir(self.alembic_dir, quiet=1)

    async def brainmigrate(self, dsn: str, turn: int) -> Sample:
        """A fresh Migrator and ``run_pending()``: loading, validating, checksumming are all timed.

        Python caches imported modules, so the migration files are first copied (with their
        bytecode) to a new directory: each sample imports its 200 modules, as a new process would,
        and as Alembic does on every command.
        """
        source = self.workdir / f"apply_brainmigrate_{turn}"
        shutil.copytree(self.bm_dir, source)
        ddl = DdlTimer()
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2, init=ddl.attach)
        try:
            start = time.perf_counter()
            results = await Migrator(pool, str(source)).run_pending()
            elapsed = time.perf_counter() - start
        finally:
            await pool.close()
        if len(results) != self.count or any(r.status != "completed" for r in results):
            raise RuntimeError("brainmigrate did not apply every migration")
        await _check_applied(
            dsn, self.count, "SELECT count(*) FROM brainmigrate.migration_history", self.count
        )
        return elapsed, ddl.seconds

    async def alembic_one(self, dsn: str, turn: int) -> Sample:
        return await self._alembic(dsn, transaction_per_migration=False)

    async def alembic_each(self, dsn: str, turn: int) -> Sample:
        return await self._alembic(dsn, transaction_per_migration=True)

    async def _alembic(self, dsn: str, *, transaction_per_migration: bool) -> Sample:
        """``upgrade head`` in-process on a reused engine whose connection is already open."""
        engine = sqlalchemy.create_engine(sqlalchemy_url(dsn))
        ddl = DdlTimer()
        ddl.listen(engine)
        try:
            with engine.connect():  # open the pool's connection outside the timing
                pass
            config = alembic_config(self.alembic_dir, transaction_per_migration=transaction_per_migration)
            start = time.perf_counter()
            alembic_upgrade(engine, config)
            elapsed = time.perf_counter() - start
        finally:
            engine.dispose()
        head = migration_id(self.count - 1)
        await _check_applied(
            dsn, self.count, "SELECT string_agg(version_num, ',') FROM alembic_version", head
        )
        return elapsed, ddl.seconds

    async def hand(self, dsn: str, turn: int) -> Sample:
        ddl = DdlTimer()
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2, init=ddl.attach)
        try:
            start = time.perf_counter()
            await hand_written_apply(pool, self.count)
            elapsed = time.perf_counter() - start
        finally:
            await pool.close()
        await _check_applied(dsn, self.count, "SELECT count(*) FROM applied", self.count)
        return elapsed, ddl.seconds


async def bench_apply(admin_dsn: str, workdir: Path, count: int, samples: int) -> list[Section]:
    """Measure the four ways of applying the chain: wall time, and time outside the DDL."""
    bench = ApplyBench(workdir, count)
    runners: dict[str, Runner] = {
        BRAINMIGRATE: bench.brainmigrate,
        ALEMBIC_ONE: bench.alembic_one,
        ALEMBIC_EACH: bench.alembic_each,
        HAND: bench.hand,
    }
    wall: dict[str, list[float]] = {tool: [] for tool in runners}
    outside: dict[str, list[float]] = {tool: [] for tool in runners}
    async with databases(admin_dsn) as factory:
        for turn in range(WARMUP + samples):
            for tool in rotated(list(runners), turn):
                dsn = await factory.create()
                await checkpoint(admin_dsn)
                try:
                    elapsed, in_ddl = await runners[tool](dsn, turn)
                finally:
                    await factory.drop(dsn)
                if turn >= WARMUP:
                    wall[tool].append(elapsed)
                    outside[tool].append(elapsed - in_ddl)
    target = f"{BRAINMIGRATE} faster than {ALEMBIC_EACH}"
    return [
        Section(
            title=f"2a. apply {count} small schema migrations to a fresh database: wall time",
            rows=[Row(tool, Stats(tuple(times))) for tool, times in wall.items()],
            baselines=(HAND, ALEMBIC_EACH),
            show_p90=False,
            target=target,
        ),
        Section(
            title=f"2b. the same runs: wall time minus the time inside the {count} CREATE TABLE statements",
            rows=[Row(tool, Stats(tuple(times))) for tool, times in outside.items()],
            baselines=(HAND, ALEMBIC_EACH),
            show_p90=False,
            target=target,
        ),
    ]
