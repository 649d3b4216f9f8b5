"""Benchmark 3: a data migration over N memories, adding a key to every row's JSONB metadata.

The transform is cheap on purpose (``metadata["bench"] = 1``), so the figures measure the cost of
moving rows between the server and the client and writing them back, not the transform. Every
tool runs in the same run, on its own copy of the same data:

* the ``memories`` table is generated once, server-side with ``generate_series``, in a source
  database (then ``VACUUM ANALYZE``);
* before each sample that database is copied with ``CREATE DATABASE ... TEMPLATE`` (file by file,
  then ``CHECKPOINT``, all untimed), so every tool starts from the same rows in the same pages
  with the same statistics; the copy is dropped after the sample has been checked.

Tools, timed from the call to its return (opening connections included, a few ms):

* hand-tuned asyncpg loop: one connection; keyset pages of ``BATCH`` rows
  (``WHERE id > $1 ORDER BY id LIMIT $2``) of ``id, metadata::text``; stdlib ``json`` to decode,
  add the key and encode; one ``UPDATE ... FROM unnest($1::uuid[], $2::text[])`` per page and an
  upsert of a checkpoint row (last id, rows done); one transaction per page. Each transaction
  turns off hash and merge joins (``SET LOCAL``) so that the UPDATE keeps to the primary key: the
  planner expects 100 rows from ``unnest``, and where it misjudges the table (small, or with stale
  statistics) it hash-joins them against a sequential scan of the whole table, once per page;
* naive asyncpg loop: the same pages, transactions and checkpoints, but one awaited
  ``UPDATE ... WHERE id = $1`` per row;
* single UPDATE: one server-side ``UPDATE memories SET metadata = metadata || '{"bench": 1}'``,
  the ceiling for one connection;
* 2 concurrent UPDATEs: the same statement on each half of the key space (split at the median
  id, computed with the data), each on its own connection;
* brainmigrate, in each variant :func:`run_brainmigrate` implements (see there).

Autovacuum is off for the table (``autovacuum_enabled = off``, copied with it): a vacuum that
starts during one tool's sample and not another's would cost that tool alone.

Peak memory: :func:`peak_rss` runs one tool alone in a child process (this file run as a script)
and reads its peak RSS, so that figures at different sizes (say 100k and 1M rows) can be compared.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from common import (
    DB_PREFIX,
    Row,
    Section,
    Stats,
    checkpoint,
    clone_database,
    create_database,
    drop_database,
    rotated,
)

from brainmigrate import MigrationConfig

#: Rows per page: brainmigrate's default batch size for data migrations.
BATCH = MigrationConfig().batch_size

#: This file, run as a script by :func:`peak_rss`.
SCRIPT = str(Path(__file__).resolve())

#: Rows of the small database on which each brainmigrate variant is tried before it is benchmarked.
PROBE_ROWS = 1000

HAND = "hand-tuned asyncpg loop"
NAIVE = "naive asyncpg loop (UPDATE per row)"
SINGLE_UPDATE = "single UPDATE"
TWO_UPDATES = "2 concurrent UPDATEs"

#: Row name in the report -> ``variant`` passed to :func:`run_brainmigrate`.
BRAINMIGRATE_VARIANTS = {
    "brainmigrate (checkpoints)": "checkpoints",
    "brainmigrate (before-images)": "before-images",
    "brainmigrate (parallel)": "parallel",
}

#: Tools that run on the server alone: their client's memory says nothing.
SERVER_SIDE = (SINGLE_UPDATE, TWO_UPDATES)

#: A tool transforms every row of ``memories`` in the database at the URI it is given.
Tool = Callable[[str], Awaitable[None]]

GENERATE = """
CREATE TABLE memories (
    id uuid NOT NULL,
    content text NOT NULL,
    metadata jsonb NOT NULL,
    memory_type text NOT NULL,
    importance_score real NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (autovacuum_enabled = off);
INSERT INTO memories
SELECT
    gen_random_uuid(),
    left(repeat(md5(i::text) || ' ', 8), 200),
    jsonb_build_object(
        'source', (ARRAY['chat', 'email', 'note', 'web'])[1 + i % 4],
        'session', i % 1000,
        'tags', jsonb_build_array('t' || i % 10, 't' || i % 7),
        'confidence', round(random()::numeric, 3)
    ),
    (ARRAY['episodic', 'semantic', 'procedural'])[1 + i % 3],
    random()::real,
    now() - make_interval(secs => i),
    now() - make_interval(secs => i / 2)
FROM generate_series(1, {rows}) AS i;
ALTER TABLE memories ADD PRIMARY KEY (id);
CREATE TABLE memories_split AS
    SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY id) AS median FROM memories;
"""

#: Keyset pagination; random v4 UUIDs are never the nil UUID, the first page's lower bound.
PAGE = "SELECT id, metadata::text FROM memories WHERE id > $1 ORDER BY id LIMIT $2"
START = UUID(int=0)

NO_HASH_OR_MERGE_JOINS = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
BULK_UPDATE = """
UPDATE memories AS m SET metadata = u.metadata::jsonb
FROM unnest($1::uuid[], $2::text[]) AS u(id, metadata)
WHERE m.id = u.id
"""
ROW_UPDATE = "UPDATE memories SET metadata = $2::jsonb WHERE id = $1"

CHECKPOINT_TABLE = """
CREATE TABLE IF NOT EXISTS loop_checkpoint (
    job text PRIMARY KEY,
    last_id uuid NOT NULL,
    done bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
LOAD_CHECKPOINT = "SELECT last_id, done FROM loop_checkpoint WHERE job = $1"
SAVE_CHECKPOINT = """
INSERT INTO loop_checkpoint (job, last_id, done) VALUES ($1, $2, $3)
ON CONFLICT (job) DO UPDATE SET last_id = excluded.last_id, done = excluded.done, updated_at = now()
"""

SERVER_UPDATE = """UPDATE memories SET metadata = metadata || '{"bench": 1}'"""


async def run_brainmigrate(dsn: str, variant: str) -> None:
    """Add ``"bench": 1`` to the metadata of every row of ``memories`` at ``dsn``, with brainmigrate.

    ``variant`` is ``"checkpoints"``, ``"before-images"`` or ``"parallel"`` (the values of
    ``BRAINMIGRATE_VARIANTS``). The whole call is timed, and must return only when every row is
    done: the rows are checked afterwards. A variant that raises ``NotImplementedError`` is left
    out of the report; any other error fails the benchmark.
    """
    # brainmigrate variants are added here
    raise NotImplementedError(f"brainmigrate variant {variant!r}")


def add_key(metadata: str) -> str:
    """The transform: one more key in a JSON object."""
    document = json.loads(metadata)
    document["bench"] = 1
    return json.dumps(document)


async def _loop(dsn: str, job: str, bulk: bool) -> None:
    """Keyset pages with a checkpoint row per page; resumes from that row if it is there."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CHECKPOINT_TABLE)
        saved = await conn.fetchrow(LOAD_CHECKPOINT, job)
        last, done = (saved["last_id"], saved["done"]) if saved else (START, 0)
        while True:
            async with conn.transaction():
                if bulk:
                    await conn.execute(NO_HASH_OR_MERGE_JOINS)
                page = await conn.fetch(PAGE, last, BATCH)
                if not page:
                    break
                ids = [row[0] for row in page]
                documents = [add_key(row[1]) for row in page]
                if bulk:
                    await conn.execute(BULK_UPDATE, ids, documents)
                else:
                    for id_, document in zip(ids, documents, strict=True):
                        await conn.execute(ROW_UPDATE, id_, document)
                last, done = ids[-1], done + len(ids)
                await conn.execute(SAVE_CHECKPOINT, job, last, done)
            if len(page) < BATCH:
                break
    finally:
        await conn.close()


async def hand_tuned_loop(dsn: str) -> None:
    await _loop(dsn, "hand-tuned", bulk=True)


async def naive_loop(dsn: str) -> None:
    await _loop(dsn, "naive", bulk=False)


async def single_update(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SERVER_UPDATE)
    finally:
        await conn.close()


async def two_updates(dsn: str) -> None:
    """The server-side UPDATE on each half of the key space at once, one connection each."""
    first, second = await asyncio.gather(asyncpg.connect(dsn), asyncpg.connect(dsn))
    try:
        median = await first.fetchval("SELECT median FROM memories_split")
        await asyncio.gather(
            first.execute(f"{SERVER_UPDATE} WHERE id < $1", median),
            second.execute(f"{SERVER_UPDATE} WHERE id >= $1", median),
        )
    finally:
        await asyncio.gather(first.close(), second.close())


def _brainmigrate_tool(variant: str) -> Tool:
    async def tool(dsn: str) -> None:
        await run_brainmigrate(dsn, variant)

    return tool


#: Every tool by its name in the report, brainmigrate's variants first.
TOOLS: dict[str, Tool] = {
    **{name: _brainmigrate_tool(variant) for name, variant in BRAINMIGRATE_VARIANTS.items()},
    HAND: hand_tuned_loop,
    NAIVE: naive_loop,
    SINGLE_UPDATE: single_update,
    TWO_UPDATES: two_updates,
}


async def generate(dsn: str, rows: int) -> None:
    """Fill the empty database at ``dsn`` with ``rows`` memories, then VACUUM ANALYZE."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(GENERATE.format(rows=int(rows)))
        await conn.execute("VACUUM ANALYZE memories")
    finally:
        await conn.close()


async def check_transformed(dsn: str, rows: int) -> None:
    """Fail loudly unless the table still has ``rows`` rows and every one has the new key."""
    conn = await asyncpg.connect(dsn)
    try:
        total, done = await conn.fetchrow(
            """SELECT count(*), count(*) FILTER (WHERE metadata @> '{"bench": 1}') FROM memories"""
        )
    finally:
        await conn.close()
    if (total, done) != (rows, rows):
        raise RuntimeError(f"{done} of {total} rows transformed, expected all {rows}")


class Copies:
    """Fresh copies of one source database, each dropped after use."""

    def __init__(self, admin_dsn: str, source: str, copy: str) -> None:
        self.admin_dsn = admin_dsn
        self.source = source
        self.copy = copy

    async def run(self, tool: Callable[[str], Awaitable[Any]]) -> Any:
        """``tool(dsn)`` on a new copy; returns what it returns."""
        dsn = await clone_database(self.admin_dsn, self.source, self.copy)
        await checkpoint(self.admin_dsn)
        try:
            return await tool(dsn)
        finally:
            await drop_database(self.admin_dsn, self.copy)


async def available_brainmigrate(admin_dsn: str) -> tuple[list[str], list[str]]:
    """The brainmigrate rows whose variant works on a small copy, and those not implemented yet."""
    source, copy = f"{DB_PREFIX}_data_probe", f"{DB_PREFIX}_data_probe_copy"
    await generate(await create_database(admin_dsn, source), PROBE_ROWS)
    copies = Copies(admin_dsn, source, copy)
    working: list[str] = []
    missing: list[str] = []
    try:
        for name in BRAINMIGRATE_VARIANTS:

            async def attempt(dsn: str, name: str = name) -> bool:
                try:
                    await TOOLS[name](dsn)
                except NotImplementedError:
                    return False
                await check_transformed(dsn, PROBE_ROWS)
                return True

            (working if await copies.run(attempt) else missing).append(name)
    finally:
        await drop_database(admin_dsn, source)
    return working, missing


@dataclass(frozen=True)
class Rss:
    """Memory of one tool's run in a process of its own, in KiB."""

    start_kib: int  # resident set once imports are done, before the run
    peak_kib: int  # the process's peak resident set
    seconds: float

    def describe(self) -> str:
        return f"{self.peak_kib / 1024:.1f} MiB (+{(self.peak_kib - self.start_kib) / 1024:.1f} MiB)"


async def peak_rss(dsn: str, variant: str) -> Rss:
    """Run the tool named ``variant`` (a key of ``TOOLS``) on ``dsn`` in a child process.

    The child is this file run as a script: ``python data_bench.py VARIANT DSN``. It prints one
    line of JSON, read here.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        variant,
        dsn,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"{variant!r} failed in its own process:\n{err.decode()}")
    report = json.loads(out.decode().splitlines()[-1])
    return Rss(report["start_kib"], report["peak_kib"], report["seconds"])


def _memory_kib(field: str) -> int:
    """A line of /proc/self/status (Linux), else the peak from getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def child_main(argv: list[str]) -> int:
    """The child of :func:`peak_rss`: run one tool and print its memory as JSON."""
    if len(argv) != 2 or argv[0] not in TOOLS:
        print(f"usage: data_bench.py {{{'|'.join(TOOLS)}}} DSN", file=sys.stderr)
        return 2
    variant, dsn = argv
    start_kib = _memory_kib("VmRSS")
    started = time.perf_counter()
    asyncio.run(TOOLS[variant](dsn))
    seconds = time.perf_counter() - started
    report = {"start_kib": start_kib, "peak_kib": _memory_kib("VmHWM"), "seconds": seconds}
    print(json.dumps(report))
    return 0


async def bench_data(admin_dsn: str, rows: int, rounds: int, rss: bool = False) -> Section:
    """Time every tool on fresh copies of ``rows`` memories, ``rounds`` times each."""
    working, missing = await available_brainmigrate(admin_dsn)
    tools = [*working, HAND, NAIVE, SINGLE_UPDATE, TWO_UPDATES]
    source, copy = f"{DB_PREFIX}_data_source", f"{DB_PREFIX}_data"
    await generate(await create_database(admin_dsn, source), rows)
    copies = Copies(admin_dsn, source, copy)
    samples: dict[str, list[float]] = {tool: [] for tool in tools}
    notes: list[str] = []
    try:
        for turn in range(rounds):
            for tool in rotated(tools, turn):

                async def timed(dsn: str, tool: str = tool) -> float:
                    start = time.perf_counter()
                    await TOOLS[tool](dsn)
                    elapsed = time.perf_counter() - start
                    await check_transformed(dsn, rows)
                    return elapsed

                elapsed = await copies.run(timed)
                samples[tool].append(elapsed)
                print(
                    f"  data, round {turn + 1}/{rounds}: {tool} {rows / elapsed:,.0f} rows/s",
                    file=sys.stderr,
                    flush=True,
                )
        if rss:
            notes.append("peak RSS of each client tool run alone in its own process (growth during the run):")
            for tool in tools:
                if tool in SERVER_SIDE:
                    continue

                async def measured(dsn: str, tool: str = tool) -> Rss:
                    memory = await peak_rss(dsn, tool)
                    await check_transformed(dsn, rows)
                    return memory

                notes.append(f"- {tool}: {(await copies.run(measured)).describe()}")
    finally:
        await drop_database(admin_dsn, source)
    if missing:
        notes.append(f"not measured, run_brainmigrate() does not implement them yet: {', '.join(missing)}")
    return Section(
        title=f"3. add a key to the JSONB metadata of {rows:,} memories (pages of {BATCH:,})",
        rows=[Row(tool, Stats(tuple(times))) for tool, times in samples.items()],
        baselines=(HAND, SINGLE_UPDATE),
        show_p90=False,
        items=rows,
        notes=notes,
    )


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
