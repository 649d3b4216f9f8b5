"""Keeping the model busy: a migration through a simulated remote model, against the model's bound.

    python bench/model_throughput.py                       # on a throwaway embedded PostgreSQL
    python bench/model_throughput.py --dsn postgresql://... --rows 100000 --rounds 3

A ``MemoryDataMigration`` sends every memory through a model API, simulated: ``transform_batch``
takes ``MODEL_BATCH`` memories, sleeps ``CALL_SECONDS`` (the call's latency, whatever it is given)
and returns one result per memory. ``MigrationConfig(concurrency=CONCURRENCY)``, otherwise the
defaults: one worker, pages of 1,000, a checkpoint every 5,000 memories. Two variants:

* *embedding*: a deterministic ``DIMENSIONS``-d vector per memory (one of ``len(VECTORS)`` fixed
  vectors, picked by the memory's number in its metadata), written to a pgvector ``vector`` column
  (a re-embedding run: each vector is sent as its text, about 2.5 kB, which costs client CPU);
* *label*: a small label added to each memory's metadata (little to encode and write).

The ideal is the model's bound: every call in flight all the time and none waiting for the
database, ``memories / MODEL_BATCH x CALL_SECONDS / CONCURRENCY`` seconds. The ratio is the ideal
divided by the measured time (1.0 would be the model never idle); the client's CPU time during the
run is reported too, since the client cannot go faster than its own Python either.

* The table (``id uuid`` primary key, ``content`` of 200 characters, ``metadata`` with the memory's
  number, ``embedding vector(DIMENSIONS)`` all NULL) is generated once per size, server-side, then
  ``VACUUM ANALYZE``.
* Each sample runs on a fresh file-by-file copy (``CREATE DATABASE ... TEMPLATE``, then
  ``CHECKPOINT``, untimed), is timed from ``run_pending()`` to its return, then checked: every
  memory has what the model gave it. The variants alternate in rotating order, round after round.

It runs at ``--rows`` memories and, for a quick look, at ``QUICK_ROWS`` too (when ``--rows`` is
larger). Needs a server with pgvector (the ``vector`` extension).
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from data_bench import Copies

from brainmigrate import (
    BulkMemoryItem,
    DataSource,
    MemoryDataMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate.testing import DatabaseFactory

#: Dimensions of the embeddings (all-MiniLM-L6-v2's).
DIMENSIONS = 384
#: The simulated model: one call takes this long, ...
CALL_SECONDS = 0.05
#: ... for this many texts (``transform_batch_size``), ...
MODEL_BATCH = 64
#: ... with this many calls in flight (``MigrationConfig.concurrency``).
CONCURRENCY = 8
#: The quick run's memories.
QUICK_ROWS = 10_000

#: The vectors the model returns: memory number ``n`` gets ``VECTORS[n % len(VECTORS)]``.
VECTORS = [
    [round(((i * 7919 + j * 104729) % 2001) / 1000 - 1, 3) for j in range(DIMENSIONS)] for i in range(97)
]

GENERATE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id uuid PRIMARY KEY,
    content text NOT NULL,
    metadata jsonb NOT NULL,
    embedding vector({dimensions})
) WITH (autovacuum_enabled = off);
INSERT INTO memories
SELECT gen_random_uuid(), left(repeat(md5(i::text) || ' ', 8), 200), jsonb_build_object('n', i), NULL
  FROM generate_series(1, {rows}) AS i;
"""

#: Memories whose embedding is not the one the model gives them (0 after a run).
WRONG = """
SELECT count(*) FILTER (WHERE embedding IS NULL),
       count(*) FILTER (
           WHERE embedding::text <> ($1::text[])[1 + (metadata->>'n')::int % {vectors}]::vector::text
       )
  FROM memories
"""


class Reembed(MemoryDataMigration):
    """Every memory's embedding computed again, by the simulated model."""

    source: ClassVar[DataSource | None] = DataSource(
        table="memories", key="id", columns=("content", "metadata")
    )
    transform_batch_size: ClassVar[int] = MODEL_BATCH

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id="bench_reembed_001",
            name="compute every memory's embedding again, through a remote model",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_DATA,
            reversible=False,
        )

    async def transform_batch(self, memories: list[dict[str, Any]]) -> list[BulkMemoryItem | None]:
        await asyncio.sleep(CALL_SECONDS)
        count = len(VECTORS)
        return [
            BulkMemoryItem(memory_id=m["id"], embedding=VECTORS[m["metadata"]["n"] % count]) for m in memories
        ]


class Label(Reembed):
    """The same model giving each memory a label in its metadata instead: little to write."""

    async def transform_batch(self, memories: list[dict[str, Any]]) -> list[BulkMemoryItem | None]:
        await asyncio.sleep(CALL_SECONDS)
        return [
            BulkMemoryItem(memory_id=m["id"], metadata={**m["metadata"], "label": m["metadata"]["n"] % 7})
            for m in memories
        ]


EMBEDDING = f"embedding ({DIMENSIONS}-d vector)"
LABEL = "label in metadata"
#: The migration of each variant.
VARIANTS: dict[str, type[Reembed]] = {EMBEDDING: Reembed, LABEL: Label}


def ideal_seconds(rows: int) -> float:
    """The model's bound: every call full and ``CONCURRENCY`` of them in flight all the time."""
    return rows / MODEL_BATCH * CALL_SECONDS / CONCURRENCY


async def generate(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(GENERATE.format(rows=int(rows), dimensions=DIMENSIONS))
        await conn.execute("VACUUM ANALYZE memories")
    finally:
        await conn.close()


async def check(dsn: str, rows: int, variant: str) -> None:
    """Fail loudly unless every memory has what the model gives it (its embedding or its label)."""
    vectors = ["[" + ",".join(repr(float(x)) for x in vector) + "]" for vector in VECTORS]
    conn = await asyncpg.connect(dsn)
    try:
        total = await conn.fetchval("SELECT count(*) FROM memories")
        if variant == EMBEDDING:
            row = await conn.fetchrow(WRONG.format(vectors=len(VECTORS)), vectors)
        else:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE NOT metadata ? 'label'), "
                "count(*) FILTER (WHERE (metadata->>'label')::int <> (metadata->>'n')::int % 7) FROM memories"
            )
        assert row is not None
        missing, wrong = row
    finally:
        await conn.close()
    if (total, missing, wrong) != (rows, 0, 0):
        raise RuntimeError(
            f"of {total} memories ({rows} expected), {missing} were not written, {wrong} wrongly"
        )


@dataclass(frozen=True)
class Sample:
    seconds: float
    #: CPU time of this process during the run (the client's Python: decoding, encoding, the loop).
    cpu_seconds: float


async def timed_run(dsn: str, rows: int, variant: str) -> Sample:
    """The migration over every memory at ``dsn``, timed; checked afterwards."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    try:
        cpu, start = time.process_time(), time.perf_counter()
        results = await Migrator(pool, [VARIANTS[variant]]).run_pending(
            config=MigrationConfig(concurrency=CONCURRENCY)
        )
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        await pool.close()
    if [r.status for r in results] != [MigrationStatus.COMPLETED]:
        raise RuntimeError(f"the migration did not complete: {results}")
    await check(dsn, rows, variant)
    return Sample(elapsed, cpu)


async def _store(factory: DatabaseFactory, rows: int) -> Copies:
    dsn = await factory.create()
    await generate(dsn, rows)
    return Copies(factory, dsn)


def _section(rows: int, samples: dict[str, list[Sample]]) -> Section:
    ideal = ideal_seconds(rows)
    notes = [f"- ideal {ideal:.2f} s ({rows:,} / {MODEL_BATCH} calls x {CALL_SECONDS:g} s / {CONCURRENCY})"]
    for variant, taken in samples.items():
        seconds = [s.seconds for s in taken]
        ratios = [ideal / s for s in seconds]
        notes.append(
            f"- {variant}: measured median {statistics.median(seconds):.2f} s of {len(seconds)}, "
            f"**{statistics.median(ratios):.2f}x the ideal** (median of per-round ratios; per round "
            + ", ".join(f"{r:.2f}x" for r in ratios)
            + f"); client CPU median {statistics.median(s.cpu_seconds for s in taken):.2f} s"
        )
    return Section(
        f"a model over {rows:,} memories ({MODEL_BATCH} texts a call, {CALL_SECONDS * 1000:.0f} ms a call, "
        f"concurrency {CONCURRENCY})",
        [Row(variant, Stats(tuple(s.seconds for s in taken))) for variant, taken in samples.items()],
        show_p90=False,
        items=rows,
        notes=notes,
    )


async def bench_model_throughput(admin_dsn: str, rows: int, rounds: int) -> list[Section]:
    """Time each variant ``rounds`` times at ``rows`` memories (and at QUICK_ROWS), in rotating order."""
    sizes = [rows] + ([QUICK_ROWS] if rows > QUICK_ROWS else [])
    sections: list[Section] = []
    async with databases(admin_dsn) as factory:
        for size in sizes:
            copies = await _store(factory, size)
            samples: dict[str, list[Sample]] = {variant: [] for variant in VARIANTS}
            try:
                for turn in range(rounds):
                    for variant in rotated(list(VARIANTS), turn):
                        taken = await copies.run(functools.partial(timed_run, rows=size, variant=variant))
                        samples[variant].append(taken)
                        print(
                            f"  model throughput, {size:,} memories, {variant}, round {turn + 1}/{rounds}: "
                            f"{taken.seconds:.2f} s ({ideal_seconds(size) / taken.seconds:.2f}x the ideal, "
                            f"client CPU {taken.cpu_seconds:.2f} s)",
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                await factory.drop(copies.source)
            sections.append(_section(size, samples))
    return sections


if __name__ == "__main__":
    sys.exit(run_alone(__doc__, 100_000, bench_model_throughput))
