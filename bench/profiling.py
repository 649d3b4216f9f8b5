"""Where brainmigrate's time goes: the statements it sends (round trips) and its Python.

Run with ``python bench/run.py --profile``. For applying the chain to a fresh database and for a
no-op ``run_pending()``, prints the statements each tool sends (how often, and how long each took
as seen by the client), wall and client CPU time, then a cProfile summary of brainmigrate.

``python bench/run.py --profile --only data --rows 100000`` does the same for benchmark 3: the
single-worker memory migration (``brainmigrate (checkpoints)``) against the hand-tuned asyncpg loop.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import re
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy
from apply_bench import hand_written_apply
from common import checkpoint, databases, sqlalchemy_url
from data_bench import HAND, AddBenchKey, check_transformed, hand_tuned_loop, memory_store
from generate import alembic_config, migration_id, write_alembic_project, write_brainmigrate_migrations
from noop_bench import HandWrittenRunner, alembic_upgrade

from brainmigrate import Migrator
from brainmigrate.testing import DatabaseFactory

NOOP_CALLS = 200
TOP_FUNCTIONS = 20
_NUMBER = re.compile(r"(?<![$\d])\d+")


class QueryLog:
    """Collects every statement sent on the pool's connections."""

    def __init__(self) -> None:
        self.enabled = False
        self.queries: list[tuple[str, float]] = []

    async def attach(self, conn: asyncpg.Connection[Any]) -> None:
        """Pool ``init`` hook: log this connection's statements."""
        conn.add_query_logger(self._log)

    def _log(self, record: Any) -> None:
        if self.enabled:
            self.queries.append((_shorten(record.query), record.elapsed))

    def report(self, title: str) -> str:
        count: Counter[str] = Counter()
        seconds: defaultdict[str, float] = defaultdict(float)
        for query, elapsed in self.queries:
            count[query] += 1
            seconds[query] += elapsed
        lines = [f"{title}: {len(self.queries)} statements, {sum(seconds.values()) * 1000:.1f} ms in them"]
        for query, n in count.most_common():
            lines.append(f"  {n:7d} x {seconds[query] * 1000 / n:7.3f} ms  {query}")
        return "\n".join(lines)


def _shorten(query: str, width: int = 90) -> str:
    """One line; numbers (``t_0042``, but not ``$1``) become ``N`` so alike statements group together."""
    text = _NUMBER.sub("N", " ".join(query.split()))
    return text if len(text) <= width else text[: width - 3] + "..."


def _top_functions(profiler: cProfile.Profile, calls: int) -> str:
    """The functions with the most time of their own, then brainmigrate's by cumulative time."""
    out = io.StringIO()
    out.write(f"(times are totals over {calls} call(s))\n")
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(TOP_FUNCTIONS)
    stats.sort_stats("cumulative").print_stats(r"brainmigrate[/\\]_", TOP_FUNCTIONS)
    return out.getvalue()


async def _profiled(fn: Callable[[], Awaitable[object]], calls: int) -> tuple[float, cProfile.Profile]:
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    for _ in range(calls):
        await fn()
    profiler.disable()
    return (time.perf_counter() - start) / calls, profiler


async def _clock(fn: Callable[[], Awaitable[object]], calls: int) -> tuple[float, float]:
    """Wall time and this process's CPU time (the client's Python; the server is another process)."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await fn()
    return (time.perf_counter() - start) / calls, (time.process_time() - cpu) / calls


def _alembic_apply(dsn: str, script_location: Path) -> str:
    """Apply the chain with Alembic (transaction per migration); wall, CPU and statements sent."""
    engine = sqlalchemy.create_engine(sqlalchemy_url(dsn))
    sent: Counter[str] = Counter()

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent[_shorten(statement)] += 1

    sqlalchemy.event.listen(engine, "before_cursor_execute", count)
    sqlalchemy.event.listen(engine, "begin", lambda conn: sent.update(["BEGIN"]))
    sqlalchemy.event.listen(engine, "commit", lambda conn: sent.update(["COMMIT"]))
    try:
        with engine.connect():
            pass
        config = alembic_config(script_location, transaction_per_migration=True)
        start, cpu = time.perf_counter(), time.process_time()
        alembic_upgrade(engine, config)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        engine.dispose()
    lines = [
        f"Alembic, transaction per migration: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms client CPU, "
        f"{sum(sent.values())} statements"
    ]
    lines += [f"  {n:7d} x  {query}" for query, n in sent.most_common()]
    return "\n".join(lines)


class _Scratch:
    """A fresh database (its URI in ``dsn``) with a logged pool, dropped on exit."""

    def __init__(self, factory: DatabaseFactory, log: QueryLog | None = None) -> None:
        self.factory = factory
        self.log = log
        self.dsn = ""

    async def __aenter__(self) -> asyncpg.Pool[Any]:
        self.dsn = await self.factory.create()
        await checkpoint(self.factory.admin_dsn)
        init = self.log.attach if self.log else None
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=2, init=init)
        return self.pool

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()
        await self.factory.drop(self.dsn)


async def _logged(log: QueryLog, title: str, fn: Callable[[], Awaitable[object]]) -> str:
    """One call of ``fn`` with its statements logged; the report names its wall and CPU time."""
    log.queries.clear()
    log.enabled = True
    try:
        wall, cpu = await _clock(fn, 1)
    finally:
        log.enabled = False
    return log.report(f"{title}: {wall * 1000:.1f} ms wall, {cpu * 1000:.1f} ms client CPU")


async def profile(admin_dsn: str, workdir: Path, count: int) -> None:
    """Print statement logs and cProfile summaries of brainmigrate and the hand-written runner."""
    async with databases(admin_dsn) as factory:
        await _profile(factory, workdir, count)


async def _profile(factory: DatabaseFactory, workdir: Path, count: int) -> None:
    source = str(write_brainmigrate_migrations(workdir / "profile_brainmigrate", count))
    alembic_dir = write_alembic_project(workdir / "profile_alembic", count)
    ids = [migration_id(i) for i in range(count)]
    log = QueryLog()

    async with _Scratch(factory) as pool:  # imports the migration modules, as in the benchmark
        await Migrator(pool, source).run_pending()

    print(f"== applying {count} migrations to a fresh database\n")
    async with _Scratch(factory, log) as pool:
        print(await _logged(log, "brainmigrate", Migrator(pool, source).run_pending), end="\n\n")
    async with _Scratch(factory, log) as pool:
        print(await _logged(log, "hand-written asyncpg", lambda: hand_written_apply(pool, count)), end="\n\n")
    scratch = _Scratch(factory)
    async with scratch:
        print(_alembic_apply(scratch.dsn, alembic_dir), end="\n\n")
    async with _Scratch(factory) as pool:
        per_call, profiler = await _profiled(Migrator(pool, source).run_pending, 1)
        print(f"brainmigrate under cProfile: {per_call * 1000:.0f} ms")
        print(_top_functions(profiler, 1))

    print(f"== no-op run_pending() with {count} migrations applied\n")
    async with _Scratch(factory, log) as pool:
        migrator = Migrator(pool, source)
        await migrator.run_pending()
        await migrator.run_pending()
        hand = HandWrittenRunner(pool, ids)
        await hand.setup()
        await hand.pending()
        print(await _logged(log, "brainmigrate, one call", migrator.run_pending), end="\n\n")
        print(await _logged(log, "hand-written asyncpg, one call", hand.pending), end="\n\n")
        for _ in range(3):  # alternate, so both see the same machine
            bm_wall, bm_cpu = await _clock(migrator.run_pending, NOOP_CALLS)
            hw_wall, hw_cpu = await _clock(hand.pending, NOOP_CALLS)
            print(
                f"mean of {NOOP_CALLS} calls: "
                f"brainmigrate {bm_wall * 1e3:.2f} ms wall, {bm_cpu * 1e3:.2f} ms CPU; "
                f"hand-written {hw_wall * 1e3:.2f} ms wall, {hw_cpu * 1e3:.2f} ms CPU"
            )
        per_call, profiler = await _profiled(migrator.run_pending, NOOP_CALLS)
        print(f"\nbrainmigrate under cProfile: {per_call * 1000:.2f} ms per call")
        print(_top_functions(profiler, NOOP_CALLS))


async def profile_data(admin_dsn: str, rows: int) -> None:
    """Benchmark 3's single worker: statements, wall and CPU against the hand-tuned loop, cProfile."""
    async with databases(admin_dsn) as factory:
        await _profile_data(factory, rows)


async def _profile_data(factory: DatabaseFactory, rows: int) -> None:
    copies = await memory_store(factory, rows)
    log = QueryLog()

    async def brainmigrate(dsn: str, init: Callable[[Any], Awaitable[None]] | None = None) -> None:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2, init=init)
        try:
            await Migrator(pool, [AddBenchKey]).run_pending()
        finally:
            await pool.close()

    async def logged(dsn: str) -> str:
        log.queries.clear()
        log.enabled = True
        try:
            wall, cpu = await _clock(lambda: brainmigrate(dsn, log.attach), 1)
        finally:
            log.enabled = False
        await check_transformed(dsn, rows)
        return log.report(f"brainmigrate (checkpoints): {wall:.2f} s wall, {cpu:.2f} s client CPU")

    async def clocked(dsn: str) -> str:
        wall, cpu = await _clock(lambda: hand_tuned_loop(dsn), 1)
        await check_transformed(dsn, rows)
        return f"{HAND}: {wall:.2f} s wall, {cpu:.2f} s client CPU"

    async def profiled(dsn: str) -> str:
        per_call, profiler = await _profiled(lambda: brainmigrate(dsn), 1)
        await check_transformed(dsn, rows)
        return f"brainmigrate under cProfile: {per_call:.2f} s\n{_top_functions(profiler, 1)}"

    try:
        print(f"== a memory migration over {rows:,} memories, one worker\n")
        for _ in range(2):  # alternate, so both see the same machine
            print(await copies.run(clocked))
            print(await copies.run(logged), end="\n\n")
        print(await copies.run(profiled))
    finally:
        await factory.drop(copies.source)
