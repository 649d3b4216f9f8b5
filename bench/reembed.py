"""Re-embedding: ``ReembedMigration`` over a Second Brain store, phase by phase, and what the old
column's HNSW index costs its backfill.

    python bench/reembed.py                       # on a throwaway embedded PostgreSQL
    python bench/reembed.py --dsn postgresql://... --rows 100000 --rounds 3

The store: ``memories`` (``id uuid`` primary key, ``content`` of about 200 characters, ``metadata``
with a GIN index, ``embedding vector(OLD_DIMENSIONS)`` of random vectors with an HNSW index,
``vector_cosine_ops``, pgvector's default options), generated once, server-side, then
``VACUUM ANALYZE``; autovacuum is off for the table. Every sample runs on a fresh file-by-file
copy (``CREATE DATABASE ... TEMPLATE``, then ``CHECKPOINT``, untimed) and is checked afterwards.

Each round, in rotating order:

* **re-embedding**: a ``ReembedMigration`` to a simulated model (``embed`` sleeps ``CALL_SECONDS``
  per call of ``MODEL_BATCH`` texts, as a remote model would, and returns a deterministic
  ``NEW_DIMENSIONS``-d vector per text) with ``MigrationConfig(concurrency=CONCURRENCY,
  batch_size=BATCH_SIZE)``: ``run_pending()`` to ``READY_TO_CONTRACT``. The phases' seconds come
  from brainmigrate's history (each step's ``started_at`` to ``finished_at``: ``/expand``,
  ``/backfill``, ``/index``, ``/cutover``). The backfill is compared with the model's bound,
  ``memories / MODEL_BATCH * CALL_SECONDS / CONCURRENCY`` (every call in flight all the time).
* **re-embedding, two workers**: the same with the calls shared by ``WORKERS`` workers
  (``parallel_execution``, ``concurrency = CONCURRENCY / WORKERS`` each, pages half as large),
  each worker leasing its own part of the keys and writing its batches on its own connection:
  the same calls in flight, the same bound, the server's writes on two backends.
* **the raw writes**, the same vectors written by one connection with no model at all, in pages of
  ``BATCH_SIZE`` (encoded beforehand, untimed), after the same two columns were added (untimed):

  - *in place, with the HNSW index*: ``UPDATE memories ... FROM unnest(...)`` per page, the
    statement the backfill ran before it sent its vectors in binary (the same rows written);
  - *in place, without it*: the same, on a copy of the store without the HNSW index;
  - *in place, HNSW, ``toast_tuple_target = 128``*: the same with the HNSW index, after the
    re-embedding's expand step has given the table this target (so that each row's new version,
    both vectors out of line, fits on its page and the update is HOT);
  - *side table*: ``INSERT`` per page into a table of key, vector and text hash, then the
    ``UPDATE memories ... FROM side`` that would still be needed to bring the vectors into the
    table (timed apart and added up).

  Each reports the share of its updates that were HOT (heap-only: no index entry written).

A ratio is the median of the per-round ratios. ``--migration-only`` times the re-embedding alone
(the raw writes do not depend on brainmigrate). Needs a server with pgvector.
"""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from data_bench import Copies

from brainmigrate import (
    EmbeddingModel,
    HybridPhase,
    MigrationConfig,
    MigrationMetadata,
    MigrationType,
    Migrator,
    ReembedMigration,
)
from brainmigrate.testing import DatabaseFactory

#: Dimensions of the old embeddings, and of the new model's.
OLD_DIMENSIONS = 384
NEW_DIMENSIONS = 384
#: The simulated model: one call takes this long, ...
CALL_SECONDS = 0.05
#: ... for this many texts (``embed_batch_size``), ...
MODEL_BATCH = 64
#: ... with this many calls in flight (``MigrationConfig.concurrency``).
CONCURRENCY = 8
#: Memories per page read and written (``MigrationConfig.batch_size``): one call per slot.
BATCH_SIZE = MODEL_BATCH * CONCURRENCY
#: The same calls in flight over two workers, each with its own connection writing its batches.
WORKERS = 2

#: The re-embedding's settings: one worker with every call, or the calls shared by ``WORKERS``
#: workers (pages of one call per slot either way, the same number of calls in flight).
ONE_WORKER = MigrationConfig(concurrency=CONCURRENCY, batch_size=BATCH_SIZE)
TWO_WORKERS = MigrationConfig(
    concurrency=CONCURRENCY // WORKERS,
    batch_size=BATCH_SIZE // WORKERS,
    parallel_execution=True,
    max_workers=WORKERS,
)

REEMBED = "bench_reembed_001"
HISTORY_SCHEMA = "brainmigrate"
PHASES = ("expand", "backfill", "index", "cutover")

#: The vectors the model returns: the memory numbered ``n`` gets ``VECTORS[n % len(VECTORS)]``.
VECTORS = [
    [round(((i * 7919 + j * 104729) % 2001) / 1000 - 1, 3) for j in range(NEW_DIMENSIONS)] for i in range(97)
]
VECTOR_TEXTS = ["[" + ",".join(repr(float(x)) for x in vector) + "]" for vector in VECTORS]

GENERATE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id uuid PRIMARY KEY,
    content text NOT NULL,
    metadata jsonb NOT NULL,
    embedding vector({dimensions})
) WITH (autovacuum_enabled = off);
INSERT INTO memories
SELECT gen_random_uuid(),
       'memory ' || i || ' ' || left(repeat(md5(i::text) || ' ', 6), 190),
       jsonb_build_object(
           'source', (ARRAY['chat', 'email', 'note', 'web'])[1 + i % 4],
           'session', i % 1000,
           'tags', jsonb_build_array('t' || i % 10, 't' || i % 7)
       ),
       (SELECT array_agg(random()::real) FROM generate_series(1, {dimensions}) WHERE i > 0)::vector
  FROM generate_series(1, {rows}) AS i;
CREATE INDEX memories_metadata_gin ON memories USING gin (metadata);
"""

HNSW = """
SET maintenance_work_mem = '512MB';
CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops);
"""

#: The two columns the re-embedding's expand adds, added before a raw write (untimed).
EXPAND = (
    f"ALTER TABLE memories ADD COLUMN embedding_next vector({NEW_DIMENSIONS}), "
    "ADD COLUMN embedding_next_md5 uuid"
)
#: The data engine's text write of one page (keys, then one array per column), which the backfill
#: ran before it sent its vectors in binary.
WRITE_IN_PLACE = (
    f"UPDATE memories AS m SET embedding_next = u.v::vector({NEW_DIMENSIONS}), embedding_next_md5 = u.h "
    "FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS u(k, v, h) WHERE m.id = u.k"
)
SIDE_TABLE = (
    f"CREATE TABLE memories_side (id uuid PRIMARY KEY, embedding vector({NEW_DIMENSIONS}) NOT NULL, "
    "md5 uuid NOT NULL)"
)
WRITE_SIDE = (
    f"INSERT INTO memories_side SELECT k, v::vector({NEW_DIMENSIONS}), h "
    "FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS u(k, v, h)"
)
BRING_IN = (
    "UPDATE memories AS m SET embedding_next = s.embedding, embedding_next_md5 = s.md5 "
    "FROM memories_side AS s WHERE m.id = s.id"
)

#: Memories without the vector the model gives them, in ``column`` (0 after a run).
WRONG = """
SELECT count(*) FILTER (WHERE {column} IS NULL)
     + count(*) FILTER (WHERE {column}::text
                        <> ($1::text[])[1 + split_part(content, ' ', 2)::int % {vectors}]::vector::text)
  FROM memories
"""

#: What the re-embedding's expand gives the table while its rows hold two vectors.
TOAST_TARGET = "ALTER TABLE memories SET (toast_tuple_target = 128)"

REEMBEDDING = "re-embedding"
REEMBEDDING_TWO = f"re-embedding, {WORKERS} workers x {CONCURRENCY // WORKERS} calls"
IN_PLACE_HNSW = "in place, HNSW on the old column"
IN_PLACE_BARE = "in place, without the HNSW index"
IN_PLACE_TOAST = "in place, HNSW, toast_tuple_target = 128"
SIDE = "side table (INSERT + UPDATE ... FROM)"
VARIANTS = (REEMBEDDING, REEMBEDDING_TWO, IN_PLACE_HNSW, IN_PLACE_BARE, IN_PLACE_TOAST, SIDE)
#: The variants of the re-embedding itself (``--migration-only``).
REEMBEDDINGS = (REEMBEDDING, REEMBEDDING_TWO)


def memory_number(text: str) -> int:
    """The number a memory's text starts with (``memory 123 ...``)."""
    return int(text.split(" ", 2)[1])


class BenchReembed(ReembedMigration):
    """memories.embedding to a simulated remote model."""

    model = EmbeddingModel(name="simulated-remote", dimensions=NEW_DIMENSIONS, provider="bench", version="1")
    current_model = EmbeddingModel(name="random", dimensions=OLD_DIMENSIONS, provider="bench")
    embed_batch_size = MODEL_BATCH

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=REEMBED,
            name="re-embed every memory through a simulated remote model",
            version="1.0.0",
            migration_type=MigrationType.HYBRID,
        )

    async def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
        await anyio.sleep(CALL_SECONDS)
        return [VECTORS[memory_number(text) % len(VECTORS)] for text in texts]


def ideal_seconds(rows: int) -> float:
    """The model's bound: every call full and ``CONCURRENCY`` of them in flight all the time."""
    return rows / MODEL_BATCH * CALL_SECONDS / CONCURRENCY


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def memory_stores(factory: DatabaseFactory, rows: int) -> tuple[Copies, Copies]:
    """The source databases without and with the HNSW index."""
    without = await factory.create()
    await _execute(
        without, GENERATE.format(rows=int(rows), dimensions=OLD_DIMENSIONS), "VACUUM ANALYZE memories"
    )
    with_hnsw = await factory.create(copy_of=without, file_copy=True)
    started = time.perf_counter()
    await _execute(with_hnsw, HNSW, "VACUUM ANALYZE memories")
    _progress(f"source store of {rows:,} memories: HNSW index built in {time.perf_counter() - started:.1f} s")
    return Copies(factory, without), Copies(factory, with_hnsw)


async def _check(conn: asyncpg.Connection[Any], column: str, rows: int) -> None:
    wrong = await conn.fetchval(WRONG.format(column=column, vectors=len(VECTORS)), VECTOR_TEXTS)
    total = await conn.fetchval("SELECT count(*) FROM memories")
    if (total, wrong) != (rows, 0):
        raise RuntimeError(f"of {total} memories ({rows} expected), {wrong} lack the new model's vector")


async def _updates(dsn: str, rows: int) -> tuple[int, int]:
    """(updates, HOT updates) of memories, once the writers' statistics have reached the server."""
    conn = await asyncpg.connect(dsn)
    try:
        for _ in range(50):
            row = await conn.fetchrow(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'memories'"
            )
            if row is not None and row[0] >= rows:
                return int(row[0]), int(row[1])
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            await asyncio.sleep(0.1)
        return (int(row[0]), int(row[1])) if row is not None else (0, 0)
    finally:
        await conn.close()


# -- the re-embedding ---------------------------------------------------------------------------


async def reembedding(dsn: str, rows: int, config: MigrationConfig) -> dict[str, float]:
    """Seconds of each phase of the re-embedding at ``dsn`` (from the history), and the wall time."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2 + 2 * config.max_workers)
    try:
        migrator = Migrator(pool, [BenchReembed], config=config)
        started = time.perf_counter()
        results = await migrator.run_pending()
        wall = time.perf_counter() - started
        phase = await migrator.hybrid_phase(REEMBED)
        if phase is not HybridPhase.READY_TO_CONTRACT:
            raise RuntimeError(f"the re-embedding stopped {phase}: {results}")
        seconds: dict[str, float] = {"wall": wall}
        for record in await migrator.history():
            step = record.migration_id.rpartition("/")[2]
            if (
                record.hybrid_id == REEMBED
                and record.migration_id != REEMBED
                and record.operation == "apply"
                and record.status == "completed"
                and record.finished_at is not None
            ):
                seconds[step] = (record.finished_at - record.started_at).total_seconds()
        async with pool.acquire() as conn:
            await _check(conn, "embedding", rows)
    finally:
        await pool.close()
    missing = [phase for phase in PHASES if phase not in seconds]
    if missing:
        raise RuntimeError(f"the history has no completed attempt of {missing}")
    updated, hot = await _updates(dsn, rows)
    seconds["hot"] = hot / updated if updated else 0.0
    return seconds


# -- the raw writes -----------------------------------------------------------------------------

Page = tuple[list[uuid.UUID], list[str], list[uuid.UUID]]


async def _pages(conn: asyncpg.Connection[Any]) -> list[Page]:
    """Every memory's new vector and text hash, in pages of BATCH_SIZE in key order, encoded."""
    records = await conn.fetch("SELECT id, content FROM memories ORDER BY id")
    pages: list[Page] = []
    for start in range(0, len(records), BATCH_SIZE):
        chunk = records[start : start + BATCH_SIZE]
        pages.append(
            (
                [r["id"] for r in chunk],
                [VECTOR_TEXTS[memory_number(r["content"]) % len(VECTORS)] for r in chunk],
                [
                    uuid.UUID(hashlib.md5(r["content"].encode(), usedforsecurity=False).hexdigest())
                    for r in chunk
                ],
            )
        )
    return pages


async def raw_write(dsn: str, rows: int, side: bool, toast: bool = False) -> dict[str, float]:
    """Seconds writing every new vector in place (or to a side table, then brought in); with
    ``toast``, after the table was given the re-embedding's ``toast_tuple_target``."""
    conn = await asyncpg.connect(dsn)
    try:
        pages = await _pages(conn)
        await conn.execute(EXPAND)
        if toast:
            await conn.execute(TOAST_TARGET)
        # As the data engine runs its batch writes: each row found through the key's index.
        await conn.execute("SET enable_hashjoin = off; SET enable_mergejoin = off")
        seconds: dict[str, float] = {}
        if side:
            await conn.execute(SIDE_TABLE)
            started = time.perf_counter()
            for page in pages:
                await conn.execute(WRITE_SIDE, *page)
            seconds["insert"] = time.perf_counter() - started
            await conn.execute("RESET enable_hashjoin; RESET enable_mergejoin; ANALYZE memories_side")
            started = time.perf_counter()
            await conn.execute(BRING_IN)
            seconds["bring in"] = time.perf_counter() - started
            seconds["total"] = seconds["insert"] + seconds["bring in"]
        else:
            started = time.perf_counter()
            for page in pages:
                await conn.execute(WRITE_IN_PLACE, *page)
            seconds["total"] = time.perf_counter() - started
        await _check(conn, "embedding_next", rows)
    finally:
        await conn.close()
    updated, hot = await _updates(dsn, rows)
    seconds["hot"] = hot / updated if updated else 0.0
    return seconds


# -- the rounds ---------------------------------------------------------------------------------


def _progress(what: str) -> None:
    print(f"  re-embedding: {what}", file=sys.stderr, flush=True)


def _pct(share: float) -> str:
    return f"{share * 100:.0f}%"


def _median(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(sample[key] for sample in samples)


async def bench_reembed(admin_dsn: str, rows: int, rounds: int, *, writes: bool = True) -> list[Section]:
    """The re-embedding and (unless not ``writes``) the three raw writes, ``rounds`` times each,
    on fresh copies."""
    variants = VARIANTS if writes else REEMBEDDINGS
    samples: dict[str, list[dict[str, float]]] = {variant: [] for variant in variants}
    async with databases(admin_dsn) as factory:
        without, with_hnsw = await memory_stores(factory, rows)
        runs: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {
            REEMBEDDING: lambda: with_hnsw.run(lambda dsn: reembedding(dsn, rows, ONE_WORKER)),
            REEMBEDDING_TWO: lambda: with_hnsw.run(lambda dsn: reembedding(dsn, rows, TWO_WORKERS)),
            IN_PLACE_HNSW: lambda: with_hnsw.run(lambda dsn: raw_write(dsn, rows, side=False)),
            IN_PLACE_BARE: lambda: without.run(lambda dsn: raw_write(dsn, rows, side=False)),
            IN_PLACE_TOAST: lambda: with_hnsw.run(lambda dsn: raw_write(dsn, rows, side=False, toast=True)),
            SIDE: lambda: with_hnsw.run(lambda dsn: raw_write(dsn, rows, side=True)),
        }
        try:
            for turn in range(rounds):
                for variant in rotated(variants, turn):
                    sample = await runs[variant]()
                    samples[variant].append(sample)
                    shown = ", ".join(f"{key} {value:.1f} s" for key, value in sample.items() if key != "hot")
                    _progress(f"round {turn + 1}/{rounds}, {variant}: {shown}, HOT {_pct(sample['hot'])}")
        finally:
            await factory.drop(without.source)
            await factory.drop(with_hnsw.source)
    phases = _phases_section(rows, {variant: samples[variant] for variant in REEMBEDDINGS})
    return [phases, _writes_section(rows, samples)] if writes else [phases]


def _phases_section(rows: int, samples: dict[str, list[dict[str, float]]]) -> Section:
    def stats(variant: str, *keys: str) -> Stats:
        return Stats(tuple(sum(sample[key] for key in keys) for sample in samples[variant]))

    ideal = ideal_seconds(rows)
    section = Section(
        f"re-embedding {rows:,} memories ({OLD_DIMENSIONS}-d with HNSW to {NEW_DIMENSIONS}-d): "
        f"a simulated model, {MODEL_BATCH} texts a call, {CALL_SECONDS * 1000:.0f} ms a call, "
        f"{CONCURRENCY} calls in flight, one call per slot a page",
        [
            Row(f"{variant}: {phase}", stats(variant, *keys))
            for variant in REEMBEDDINGS
            for phase, keys in (
                ("expand", ("expand",)),
                ("backfill", ("backfill",)),
                ("index (CREATE INDEX CONCURRENTLY, HNSW)", ("index",)),
                ("cutover", ("cutover",)),
                ("end to end (backfill + index + cutover)", ("backfill", "index", "cutover")),
                ("run_pending() wall time", ("wall",)),
            )
        ],
        show_p90=False,
    )
    for variant in REEMBEDDINGS:
        backfill = _median(samples[variant], "backfill")
        ratios = [ideal / sample["backfill"] for sample in samples[variant]]
        section.notes += [
            f"- {variant}, backfill: {rows / backfill:,.0f} memories/s; the model's bound is {ideal:.2f} s "
            f"({rows:,} / {MODEL_BATCH} calls x {CALL_SECONDS:g} s / {CONCURRENCY}, "
            f"{rows / ideal:,.0f} memories/s): {statistics.median(ratios):.3f}x the ideal "
            "(median of per-round ratios; per round " + ", ".join(f"{r:.3f}x" for r in ratios) + "); "
            f"HOT updates {_pct(_median(samples[variant], 'hot'))} (median)",
        ]
    two = [
        b["backfill"] / a["backfill"]
        for a, b in zip(samples[REEMBEDDING], samples[REEMBEDDING_TWO], strict=True)
    ]
    section.notes.append(
        f"- backfill, {REEMBEDDING_TWO} ÷ one worker: {statistics.median(two):.2f}x the time "
        "(median of per-round quotients)"
    )
    return section


def _writes_section(rows: int, samples: dict[str, list[dict[str, float]]]) -> Section:
    def stats(variant: str, key: str) -> Stats:
        return Stats(tuple(sample[key] for sample in samples[variant]))

    section = Section(
        f"writing {rows:,} new {NEW_DIMENSIONS}-d vectors into memories, pages of {BATCH_SIZE}, no model",
        [
            Row(IN_PLACE_HNSW, stats(IN_PLACE_HNSW, "total")),
            Row(IN_PLACE_BARE, stats(IN_PLACE_BARE, "total")),
            Row(IN_PLACE_TOAST, stats(IN_PLACE_TOAST, "total")),
            Row("side table: INSERT", stats(SIDE, "insert")),
            Row("side table: UPDATE ... FROM side", stats(SIDE, "bring in")),
            Row(SIDE, stats(SIDE, "total")),
            Row("the re-embedding's backfill (model included)", stats(REEMBEDDING, "backfill")),
            Row(f"the backfill, {REEMBEDDING_TWO}", stats(REEMBEDDING_TWO, "backfill")),
        ],
        baselines=(IN_PLACE_HNSW, IN_PLACE_BARE),
        show_p90=False,
        items=rows,
    )
    hnsw_cost = [
        a["total"] - b["total"] for a, b in zip(samples[IN_PLACE_HNSW], samples[IN_PLACE_BARE], strict=True)
    ]
    section.notes += [
        f"- the old column's HNSW index costs the in-place write {statistics.median(hnsw_cost):.1f} s "
        f"({section.ratio(IN_PLACE_HNSW, IN_PLACE_BARE):.1f}x the write without it)",
        f"- in place with toast_tuple_target = 128 ÷ in place (HNSW on the old column): "
        f"{section.ratio(IN_PLACE_TOAST, IN_PLACE_HNSW):.3f}x",
        f"- side table ÷ in place (HNSW on the old column): {section.ratio(SIDE, IN_PLACE_HNSW):.2f}x",
        "- HOT updates (median): "
        + ", ".join(f"{variant} {_pct(_median(samples[variant], 'hot'))}" for variant in VARIANTS[2:]),
    ]
    return section


def main(argv: list[str] | None = None) -> int:
    """``run_alone``'s options, and ``--migration-only``: the re-embedding alone, no raw writes."""
    args = list(sys.argv[1:] if argv is None else argv)
    writes = "--migration-only" not in args
    args = [arg for arg in args if arg != "--migration-only"]

    async def bench(dsn: str, rows: int, rounds: int) -> list[Section]:
        return await bench_reembed(dsn, rows, rounds, writes=writes)

    return run_alone(__doc__ + "\n--migration-only: time the re-embedding alone.", 100_000, bench, args)


if __name__ == "__main__":
    sys.exit(main())
