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
* brainmigrate, in each variant :func:`run_brainmigrate` implements (see there), over the
  default source of a memory migration: ``memories`` by ``id``, reading ``content`` and
  ``metadata``.

After the tools, each round also times:

* the rollback of the before-images run, ``await migrator.rollback(id)``, on that run's copy
  right after it was timed and checked; then the whole table is checked against the source;
* brainmigrate through a simulated remote model (:class:`RemoteModel`): ``transform_batch`` of
  ``MODEL_BATCH`` memories that sleeps ``MODEL_CALL_SECONDS`` per call, ``MODEL_CONCURRENCY``
  calls in flight, over ``min(rows, MODEL_ROWS)`` memories of a database of their own; its rate
  is compared with the bound ``MODEL_IDEAL_RATE`` (every call full, never waiting for the database).

Autovacuum is off for the table (``autovacuum_enabled = off``, copied with it): a vacuum that
starts during one tool's sample and not another's would cost that tool alone.

The engine work's figures alone: ``python bench/data_bench.py --engine DSN ROWS ROUNDS``
(:func:`bench_engine`): the single UPDATE, 2 processes x 1 worker with ``json`` and with orjson and
larger pages, and the rollback in one transaction and in 2 key ranges.

Peak memory: :func:`peak_rss` runs one tool alone in a child process (this file run as a script)
and reads its peak RSS, so that figures at different sizes (say 100k and 1M rows) can be compared;
brainmigrate (checkpoints) is also measured on a tenth of the rows, and the growths compared.
"""

from __future__ import annotations

import asyncio
import functools
import json
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

import asyncpg
import attrs
from common import Row, Section, Stats, checkpoint, databases, rotated

from brainmigrate import (
    BulkMemoryItem,
    MemoryDataMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate._engine import jsoncodec
from brainmigrate.testing import DatabaseFactory

#: Rows per page: brainmigrate's default batch size for data migrations.
BATCH = MigrationConfig().batch_size

#: This file, run as a script by :func:`peak_rss`.
SCRIPT = str(Path(__file__).resolve())

#: The first argument of this file run as the second process of a parallel run.
JOIN = "--join"

#: Rows of the small database on which each brainmigrate variant is tried before it is benchmarked.
PROBE_ROWS = 1000

HAND = "hand-tuned asyncpg loop"
NAIVE = "naive asyncpg loop (UPDATE per row)"
SINGLE_UPDATE = "single UPDATE"
TWO_UPDATES = "2 concurrent UPDATEs"

#: Memories of the simulated remote model (fewer when the benchmark has fewer rows).
MODEL_ROWS = 50_000
#: The simulated model: one call takes this long whatever it is given, ...
MODEL_CALL_SECONDS = 0.05
#: ... for this many texts (``transform_batch_size``), ...
MODEL_BATCH = 64
#: ... with this many calls in flight (``MigrationConfig.concurrency``).
MODEL_CONCURRENCY = 8
#: Items per second if every call carried a full batch and calls never waited for the database.
MODEL_IDEAL_RATE = MODEL_CONCURRENCY * MODEL_BATCH / MODEL_CALL_SECONDS

CHECKPOINTS = "brainmigrate (checkpoints)"
BEFORE_IMAGES = "brainmigrate (before-images)"

#: Row name in the report -> ``variant`` passed to :func:`run_brainmigrate`.
BRAINMIGRATE_VARIANTS = {
    CHECKPOINTS: "checkpoints",
    BEFORE_IMAGES: "before-images",
    "brainmigrate (parallel, 2 workers in 1 process)": "parallel",
    "brainmigrate (parallel, 2 processes x 1 worker)": "parallel-processes",
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


#: The id of brainmigrate's migration in every variant (each sample runs on a fresh copy).
MIGRATION_ID = "bench_add_key_001"


class AddBenchKey(MemoryDataMigration):
    """The benchmark's transform as a memory migration over the default source.

    The default source is the ``memories`` table by its key ``id``, reading ``content`` and
    ``metadata`` (the JSONB arrives decoded); only ``metadata`` is written. Not reversible: no
    before-images, checkpoints only.
    """

    reversible: ClassVar[bool] = False

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=MIGRATION_ID,
            name="add a key to every memory's metadata",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_DATA,
            reversible=self.reversible,
        )

    async def transform_memory(self, memory: dict[str, Any]) -> BulkMemoryItem | None:
        metadata = memory["metadata"]
        metadata["bench"] = 1
        return BulkMemoryItem(memory_id=memory["id"], metadata=metadata)


class AddBenchKeyReversible(AddBenchKey):
    """The same, reversible: each written row's old metadata is kept as a before-image."""

    reversible: ClassVar[bool] = True


async def migrate(dsn: str, migration: type[AddBenchKey], config: MigrationConfig) -> None:
    """Run ``migration`` with ``config`` on a pool of its own, with a connection per worker.

    Raises unless the migration completed here, or is done by workers elsewhere (a process that
    joined a parallel run and ran out of chunks first returns while the other finishes).
    """
    workers = config.max_workers if config.parallel_execution else 1
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=workers + 1)
    try:
        results = await Migrator(pool, [migration]).run_pending(config=config)
    finally:
        await pool.close()
    done = (MigrationStatus.COMPLETED, MigrationStatus.RUNNING)
    bad = [r for r in results if r.status not in done]
    if bad:
        raise RuntimeError(f"brainmigrate did not complete: {bad}")


#: ``parallel``: two workers in this process, each with its own connection.
PARALLEL = MigrationConfig(parallel_execution=True, max_workers=2)
#: ``parallel-processes``: one worker in each of two processes (``max_workers`` is per process).
PARALLEL_PER_PROCESS = MigrationConfig(parallel_execution=True, max_workers=1)


async def two_processes(dsn: str, config: MigrationConfig) -> None:
    """Run :class:`AddBenchKey` here and in a second process that joins the same run.

    The second process is this file run as a script (``--join``); it starts at once, and joins the
    run as soon as it is up (its start-up is timed too). The call returns when both are done.
    """
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        JOIN,
        str(config.max_workers),
        dsn,
        str(config.batch_size),
        jsoncodec.dumps.__name__,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await migrate(dsn, AddBenchKey, config)
    finally:
        _, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the joining process failed:\n{err.decode()}")


async def run_brainmigrate(dsn: str, variant: str) -> None:
    """Add ``"bench": 1`` to the metadata of every row of ``memories`` at ``dsn``, with brainmigrate.

    ``variant`` is one of the values of ``BRAINMIGRATE_VARIANTS``. The whole call is timed, and
    must return only when every row is done: the rows are checked afterwards. A variant that raises
    ``NotImplementedError`` is left out of the report; any other error fails the benchmark.

    * ``checkpoints``: :class:`AddBenchKey` (not reversible), the default config: one worker,
      pages of 1,000, a checkpoint every 5,000 items;
    * ``before-images``: :class:`AddBenchKeyReversible`, the same config;
    * ``parallel``: :class:`AddBenchKey` with ``parallel_execution=True, max_workers=2``: two
      workers in this process. They share one interpreter, so the transform and the encoding and
      decoding of rows, which take a core, do not run on two at once;
    * ``parallel-processes``: ``parallel_execution=True, max_workers=1`` in this process and in
      a second one that joins the run (:func:`two_processes`): two workers, one per process, so
      that the client side can use two cores, as two application instances would.
    """
    if variant == "checkpoints":
        await migrate(dsn, AddBenchKey, MigrationConfig())
    elif variant == "before-images":
        await migrate(dsn, AddBenchKeyReversible, MigrationConfig())
    elif variant == "parallel":
        await migrate(dsn, AddBenchKey, PARALLEL)
    elif variant == "parallel-processes":
        await two_processes(dsn, PARALLEL_PER_PROCESS)
    else:
        raise NotImplementedError(f"brainmigrate variant {variant!r}")


async def fingerprint(dsn: str) -> tuple[int, int]:
    """The number of rows of ``memories`` and a sum of the hashes of their whole text."""
    conn = await asyncpg.connect(dsn)
    try:
        count, total = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(hashtextextended(m::text, 0)), 0) FROM memories AS m"
        )
    finally:
        await conn.close()
    return int(count), int(total)


async def rollback_seconds(
    dsn: str, expected: tuple[int, int], config: MigrationConfig | None = None
) -> float:
    """Time ``await migrator.rollback(id)`` of the before-images run just done at ``dsn``.

    The pool has the session's two connections and one more for each further key range of the
    restore (``max_workers`` ranges, 2 by default; 1 restores in one transaction). Fails unless
    the migration is reported rolled back and the table is back to ``expected`` (its
    :func:`fingerprint` before the run), every column of every row.
    """
    config = config or MigrationConfig()
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=1 + config.max_workers)
    try:
        migrator = Migrator(pool, [AddBenchKeyReversible])
        start = time.perf_counter()
        results = await migrator.rollback(MIGRATION_ID, config=config)
        elapsed = time.perf_counter() - start
    finally:
        await pool.close()
    if [r.status for r in results] != [MigrationStatus.ROLLED_BACK]:
        raise RuntimeError(f"rollback did not complete: {results}")
    if await fingerprint(dsn) != expected:
        raise RuntimeError("the rollback did not restore the table as it was")
    return elapsed


class RemoteModel(MemoryDataMigration):
    """The benchmark's transform behind a simulated remote model (see :data:`MODEL_CALL_SECONDS`)."""

    transform_batch_size: ClassVar[int] = MODEL_BATCH

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="bench_remote_model_001",
            name="add a key to every memory's metadata, through a remote model",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_DATA,
            reversible=False,
        )

    async def transform_batch(self, memories: list[dict[str, Any]]) -> list[BulkMemoryItem | None]:
        await asyncio.sleep(MODEL_CALL_SECONDS)
        return [BulkMemoryItem(memory_id=m["id"], metadata={**m["metadata"], "bench": 1}) for m in memories]


async def remote_model(dsn: str) -> None:
    """:class:`RemoteModel` over every memory at ``dsn``: one worker, the default pages of 1,000."""
    await migrate(dsn, RemoteModel, MigrationConfig(concurrency=MODEL_CONCURRENCY))


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
    """Fresh copies of one source database (made by ``factory``), each dropped after use."""

    def __init__(self, factory: DatabaseFactory, source: str) -> None:
        self.factory = factory
        self.source = source

    async def run(self, tool: Callable[[str], Awaitable[Any]]) -> Any:
        """``tool(dsn)`` on a new copy, made file by file; returns what it returns."""
        dsn = await self.factory.create(copy_of=self.source, file_copy=True)
        await checkpoint(self.factory.admin_dsn)
        try:
            return await tool(dsn)
        finally:
            await self.factory.drop(dsn)


async def memory_store(factory: DatabaseFactory, rows: int) -> Copies:
    """A new source database of ``rows`` memories, and its copies."""
    dsn = await factory.create()
    await generate(dsn, rows)
    return Copies(factory, dsn)


async def available_brainmigrate(factory: DatabaseFactory) -> tuple[list[str], list[str]]:
    """The brainmigrate rows whose variant works on a small copy, and those not implemented yet."""
    copies = await memory_store(factory, PROBE_ROWS)
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
        await factory.drop(copies.source)
    return working, missing


@dataclass(frozen=True)
class Rss:
    """Memory of one tool's run in a process of its own, in KiB."""

    start_kib: int  # resident set once imports are done, before the run
    peak_kib: int  # the process's peak resident set
    seconds: float

    @property
    def growth_kib(self) -> int:
        return self.peak_kib - self.start_kib

    def describe(self) -> str:
        return f"{self.peak_kib / 1024:.1f} MiB (+{self.growth_kib / 1024:.1f} MiB)"


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
    """The child of :func:`peak_rss`: run one tool and print its memory as JSON.

    With ``--join WORKERS DSN``, the second process of :func:`two_processes` instead.
    """
    if len(argv) == 5 and argv[0] == JOIN:
        config = attrs.evolve(PARALLEL, max_workers=int(argv[1]), batch_size=int(argv[3]))
        use_json(argv[4] == jsoncodec.orjson_dumps.__name__)
        asyncio.run(migrate(argv[2], AddBenchKey, config))
        return 0
    if argv[:1] == [ENGINE]:
        return engine_main(argv[1:])
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


#: ``--engine``: the figures of the engine work alone (see :func:`bench_engine`).
ENGINE = "--engine"


def use_json(fast: bool) -> None:
    """Make the engine encode and decode JSON with orjson (``fast``) or the standard library."""
    if fast and not jsoncodec.FAST:
        raise RuntimeError("orjson is not installed: pip install 'brainmigrate[orjson]'")
    jsoncodec.dumps = jsoncodec.orjson_dumps if fast else jsoncodec.stdlib_dumps
    jsoncodec.loads = jsoncodec.orjson_loads if fast else jsoncodec.stdlib_loads


#: ``bench_engine``'s client-side variants: (name, orjson, batch size), all 2 processes x 1 worker.
ENGINE_PARALLEL = (
    ("2 processes x 1 worker, json", False, BATCH),
    ("2 processes x 1 worker, orjson", True, BATCH),
    ("2 processes x 1 worker, orjson, pages of 2,000", True, 2000),
    ("2 processes x 1 worker, orjson, pages of 5,000", True, 5000),
)
#: ``bench_engine``'s rollbacks: (name, max_workers): key ranges on as many connections.
ENGINE_ROLLBACKS = (("rollback, one transaction", 1), ("rollback, 2 key ranges", 2))


async def bench_engine(admin_dsn: str, rows: int, rounds: int) -> str:
    """The engine work's figures, ``rounds`` rounds on copies of ``rows`` memories: the single
    UPDATE; 2 processes x 1 worker with json and with orjson, and with larger pages; and the
    rollback of a before-images run (one per round, with orjson) in one transaction and in 2 key
    ranges, each on a copy of that run. Medians, and ratios as medians of per-round quotients."""
    async with databases(admin_dsn) as factory:
        copies = await memory_store(factory, rows)
        original = await fingerprint(copies.source)
        times: dict[str, list[float]] = {SINGLE_UPDATE: [], **{name: [] for name, *_ in ENGINE_PARALLEL}}
        times.update({name: [] for name, _ in ENGINE_ROLLBACKS})
        try:
            for turn in range(rounds):
                for name in rotated([SINGLE_UPDATE, *(n for n, *_ in ENGINE_PARALLEL)], turn):

                    async def timed(dsn: str, name: str = name) -> float:
                        if name == SINGLE_UPDATE:
                            start = time.perf_counter()
                            await single_update(dsn)
                        else:
                            _, fast, batch = next(v for v in ENGINE_PARALLEL if v[0] == name)
                            use_json(fast)
                            start = time.perf_counter()
                            await two_processes(dsn, attrs.evolve(PARALLEL_PER_PROCESS, batch_size=batch))
                        elapsed = time.perf_counter() - start
                        await check_transformed(dsn, rows)
                        return elapsed

                    times[name].append(await copies.run(timed))
                    _progress(turn, rounds, f"{name} {times[name][-1]:.2f} s")
                use_json(jsoncodec.FAST)
                migrated = await factory.create(copy_of=copies.source, file_copy=True)
                try:
                    await migrate(migrated, AddBenchKeyReversible, MigrationConfig())
                    await check_transformed(migrated, rows)
                    for name, workers in rotated(list(ENGINE_ROLLBACKS), turn):
                        dsn = await factory.create(copy_of=migrated, file_copy=True)
                        await checkpoint(factory.admin_dsn)
                        try:
                            config = MigrationConfig(max_workers=workers)
                            times[name].append(await rollback_seconds(dsn, original, config))
                        finally:
                            await factory.drop(dsn)
                        _progress(turn, rounds, f"{name} {times[name][-1]:.2f} s")
                finally:
                    await factory.drop(migrated)
        finally:
            await factory.drop(copies.source)
    return _engine_report(times, rows, rounds)


def _engine_report(times: dict[str, list[float]], rows: int, rounds: int) -> str:
    single, one_transaction = times[SINGLE_UPDATE], times[ENGINE_ROLLBACKS[0][0]]
    lines = [
        f"{rows:,} memories, {rounds} rounds (median; ratio = median of per-round quotients)",
        "",
        "| measurement | median | rows/s | speed ÷ single UPDATE's | time ÷ one-transaction rollback's |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, samples in times.items():
        median = statistics.median(samples)
        speed = statistics.median(s / t for s, t in zip(single, samples, strict=True))
        versus = ""
        if name.startswith("rollback"):
            versus = f"{statistics.median(t / o for t, o in zip(samples, one_transaction, strict=True)):.2f}x"
        shown = f"{speed:.2f}x" if not name.startswith("rollback") else ""
        lines.append(f"| {name} | {median:.2f} s | {rows / median:,.0f} | {shown} | {versus} |")
    lines.append("")
    lines.append(
        "samples: " + "; ".join(f"{n}: {', '.join(f'{t:.2f}' for t in v)}" for n, v in times.items())
    )
    return "\n".join(lines)


def engine_main(argv: list[str]) -> int:
    """``data_bench.py --engine DSN ROWS ROUNDS``: print :func:`bench_engine`'s table."""
    if len(argv) != 3:
        print(f"usage: data_bench.py {ENGINE} DSN ROWS ROUNDS", file=sys.stderr)
        return 2
    print(asyncio.run(bench_engine(argv[0], int(argv[1]), int(argv[2]))))
    return 0


def _progress(turn: int, rounds: int, what: str) -> None:
    print(f"  data, round {turn + 1}/{rounds}: {what}", file=sys.stderr, flush=True)


async def bench_data(admin_dsn: str, rows: int, rounds: int, rss: bool = False) -> Section:
    """Time every tool on fresh copies of ``rows`` memories, ``rounds`` times each.

    Each round also times, after the tools: the rollback of the before-images run (on its copy,
    just after it was timed and checked), and brainmigrate through a simulated remote model over
    ``min(rows, MODEL_ROWS)`` memories. With ``rss``, the peak memory of each client tool; that of
    brainmigrate (checkpoints) at a tenth of the rows too, to see how it grows with the table.
    """
    async with databases(admin_dsn) as factory:
        return await _bench_data(factory, rows, rounds, rss)


async def _bench_data(factory: DatabaseFactory, rows: int, rounds: int, rss: bool) -> Section:
    working, missing = await available_brainmigrate(factory)
    tools = [*working, HAND, NAIVE, SINGLE_UPDATE, TWO_UPDATES]
    model_rows = min(rows, MODEL_ROWS)
    samples: dict[str, list[float]] = {tool: [] for tool in tools}
    rollbacks: list[float] = []
    model: list[float] = []
    notes: list[str] = []
    copies = await memory_store(factory, rows)
    original = await fingerprint(copies.source)
    model_copies = await memory_store(factory, model_rows)
    try:
        for turn in range(rounds):
            for tool in rotated(tools, turn):

                async def timed(dsn: str, tool: str = tool) -> float:
                    start = time.perf_counter()
                    await TOOLS[tool](dsn)
                    elapsed = time.perf_counter() - start
                    await check_transformed(dsn, rows)
                    if tool == BEFORE_IMAGES:
                        rollbacks.append(await rollback_seconds(dsn, original))
                    return elapsed

                samples[tool].append(await copies.run(timed))
                _progress(turn, rounds, f"{tool} {rows / samples[tool][-1]:,.0f} rows/s")
                if tool == BEFORE_IMAGES:
                    _progress(turn, rounds, f"rollback of {tool} {rollbacks[-1]:.2f} s")

            async def through_model(dsn: str) -> float:
                start = time.perf_counter()
                await remote_model(dsn)
                elapsed = time.perf_counter() - start
                await check_transformed(dsn, model_rows)
                return elapsed

            model.append(await model_copies.run(through_model))
            _progress(turn, rounds, f"remote model {model_rows / model[-1]:,.0f} items/s")
        if rollbacks:
            median = statistics.median(rollbacks)
            notes.append(
                f"- rollback of {BEFORE_IMAGES} (`await migrator.rollback(id)`, {rows:,} rows restored "
                f"from before-images, checked): median {median:.2f} s of {len(rollbacks)}, "
                f"{rows / median:,.0f} rows/s"
            )
        median = statistics.median(model)
        notes.append(
            f"- simulated remote model (`transform_batch` of {MODEL_BATCH} memories sleeping "
            f"{MODEL_CALL_SECONDS * 1000:.0f} ms, concurrency {MODEL_CONCURRENCY}, one worker, pages of "
            f"{BATCH:,}) over {model_rows:,} memories: median {median:.2f} s of {len(model)}, "
            f"{model_rows / median:,.0f} items/s, {model_rows / median / MODEL_IDEAL_RATE:.2f}x the "
            f"ideal {MODEL_IDEAL_RATE:,.0f} items/s (concurrency x {MODEL_BATCH} / "
            f"{MODEL_CALL_SECONDS:g} s)"
        )
        if rss:
            notes.append("- peak RSS of each client tool, run alone in its own process (growth in the run):")
            for tool in tools:
                if tool in SERVER_SIDE:
                    continue

                async def measured(dsn: str, tool: str = tool, rows: int = rows) -> Rss:
                    memory = await peak_rss(dsn, tool)
                    await check_transformed(dsn, rows)
                    return memory

                memory = await copies.run(measured)
                notes.append(f"  - {tool}: {memory.describe()}")
                if tool == CHECKPOINTS and rows >= 10:
                    tenth = await memory_store(factory, rows // 10)
                    small = await tenth.run(functools.partial(measured, tool=tool, rows=rows // 10))
                    await factory.drop(tenth.source)
                    notes.append(
                        f"  - {tool} at {rows // 10:,} rows: {small.describe()}; growth at {rows:,} rows "
                        f"÷ growth at {rows // 10:,}: {memory.growth_kib / max(small.growth_kib, 1):.2f}x"
                    )
    finally:
        await factory.drop(copies.source)
        await factory.drop(model_copies.source)
    if missing:
        notes.append(f"- not measured, run_brainmigrate() does not implement them yet: {', '.join(missing)}")
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
