"""What a vector index costs a metadata-only memory migration, and how well the dry run predicts it.

    python bench/write_impact_bench.py                       # on a throwaway embedded PostgreSQL
    python bench/write_impact_bench.py --dsn postgresql://... --rows 20000 --rounds 3

On a memories table like a Second Brain store's (``DIMENSIONS``-d random embeddings in a pgvector
``vector`` column, a GIN index on ``metadata``), the same metadata-only memory migration as
benchmark 3 (:class:`data_bench.AddBenchKey`: ``metadata["bench"] = 1``) runs with and without an
HNSW index on the embedding. Writing ``metadata``, which the GIN index covers, prevents HOT
updates, so every changed row gets an entry in every index, the HNSW graph included.

* The table is generated once, server-side (``generate_series``, ``random()`` embeddings), then
  ``VACUUM ANALYZE``; the HNSW variant is a copy of it with the index built (untimed).
* Each sample runs on a fresh file-by-file copy (``CREATE DATABASE ... TEMPLATE``, then
  ``CHECKPOINT``, untimed), is timed from ``run_pending()`` to its return, then checked: every
  row has the new key. Variants alternate in rotating order, round after round; the figures are
  medians, and the ratio is the median of the per-round ratios.
* Each round also dry-runs the migration on another fresh copy (``dry_run_sample=DRY_RUN_SAMPLE``)
  and keeps its ``write_impact.seconds_per_row``, the cost of the batch ``UPDATE`` alone, measured
  on the sample; it is printed next to the measured seconds per row of the whole run (which also
  reads, transforms and checkpoints).

Autovacuum is off for the table, as in benchmark 3.
"""

from __future__ import annotations

import statistics
import sys
import time

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from data_bench import AddBenchKey, Copies, check_transformed

from brainmigrate import MigrationConfig, MigrationResult, MigrationStatus, Migrator, WriteImpact
from brainmigrate.testing import DatabaseFactory

#: Dimensions of the embeddings (all-MiniLM-L6-v2's).
DIMENSIONS = 384
#: Items the dry run transforms, and writes to measure the cost per row.
DRY_RUN_SAMPLE = 300

WITHOUT = "metadata-only migration, GIN on metadata"
WITH = "metadata-only migration, GIN + HNSW on embedding"

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
       left(repeat(md5(i::text) || ' ', 8), 200),
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
CREATE INDEX memories_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops);
"""


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def memory_stores(factory: DatabaseFactory, rows: int) -> dict[str, Copies]:
    """The two source databases, without and with the HNSW index, by variant."""
    without = await factory.create()
    await _execute(without, GENERATE.format(rows=int(rows), dimensions=DIMENSIONS), "VACUUM ANALYZE memories")
    with_hnsw = await factory.create(copy_of=without, file_copy=True)
    await _execute(with_hnsw, HNSW, "VACUUM ANALYZE memories")
    return {WITHOUT: Copies(factory, without), WITH: Copies(factory, with_hnsw)}


async def migrate(dsn: str, config: MigrationConfig) -> list[MigrationResult]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        return list(await Migrator(pool, [AddBenchKey]).run_pending(config=config))
    finally:
        await pool.close()


async def timed_run(dsn: str, rows: int) -> float:
    """Seconds the migration takes over every row at ``dsn``; checked afterwards."""
    start = time.perf_counter()
    results = await migrate(dsn, MigrationConfig())
    elapsed = time.perf_counter() - start
    if [r.status for r in results] != [MigrationStatus.COMPLETED]:
        raise RuntimeError(f"the migration did not complete: {results}")
    await check_transformed(dsn, rows)
    return elapsed


async def dry_run_impact(dsn: str) -> WriteImpact:
    """The dry run's write impact at ``dsn``."""
    [result] = await migrate(dsn, MigrationConfig(dry_run=True, dry_run_sample=DRY_RUN_SAMPLE))
    impact = result.write_impact
    if impact is None or impact.seconds_per_row is None:
        raise RuntimeError(f"the dry run measured no cost per row: {result}")
    return impact


def _progress(turn: int, rounds: int, what: str) -> None:
    print(f"  write impact, round {turn + 1}/{rounds}: {what}", file=sys.stderr, flush=True)


async def bench_write_impact(admin_dsn: str, rows: int, rounds: int) -> Section:
    """Time the migration with and without the HNSW index, ``rounds`` times each, and dry-run it."""
    async with databases(admin_dsn) as factory:
        stores = await memory_stores(factory, rows)
        variants = list(stores)
        samples: dict[str, list[float]] = {variant: [] for variant in variants}
        estimates: dict[str, list[float]] = {variant: [] for variant in variants}
        impacts: dict[str, WriteImpact] = {}
        try:
            for turn in range(rounds):
                for variant in rotated(variants, turn):
                    impact = await stores[variant].run(dry_run_impact)
                    impacts[variant] = impact
                    assert impact.seconds_per_row is not None
                    estimates[variant].append(impact.seconds_per_row)
                    seconds = await stores[variant].run(lambda dsn: timed_run(dsn, rows))
                    samples[variant].append(seconds)
                    _progress(
                        turn,
                        rounds,
                        f"{variant}: {rows / seconds:,.0f} rows/s, dry-run estimate "
                        f"{impact.seconds_per_row * 1000:.3f} ms per row",
                    )
        finally:
            for copies in stores.values():
                await factory.drop(copies.source)
    section = Section(
        title=f"metadata-only memory migration over {rows:,} memories ({DIMENSIONS}-d embeddings)",
        rows=[Row(variant, Stats(tuple(times))) for variant, times in samples.items()],
        baselines=(WITHOUT,),
        show_p90=False,
        items=rows,
    )
    ratio = section.ratio(WITH, WITHOUT)
    section.notes.append(
        f"- with the HNSW index: {ratio:.1f}x the time, {1 / ratio:.3f}x the rows/s "
        "(median of per-round ratios)"
    )
    for variant in variants:
        estimate = statistics.median(estimates[variant])
        measured = statistics.median(samples[variant]) / rows
        impact = impacts[variant]
        section.notes.append(
            f"- {variant}: dry-run estimate {estimate * 1000:.3f} ms per row ({1 / estimate:,.0f} rows/s, "
            f"the batch UPDATE alone, on {DRY_RUN_SAMPLE} rows), measured {measured * 1000:.3f} ms per row "
            f"(the whole run); HOT possible: {impact.hot_possible}; touched: "
            f"{', '.join(impact.touched_indexes)}; vector indexes: "
            f"{', '.join(impact.vector_indexes) or 'none'}"
        )
    warned = [w for w in impacts[WITH].warnings if "vector index" in w]
    if warned:
        section.notes.append(f"- the dry run's warning: {warned[0]}")
    return section


async def _sections(dsn: str, rows: int, rounds: int) -> list[Section]:
    return [await bench_write_impact(dsn, rows, rounds)]


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, 20_000, _sections, argv)


if __name__ == "__main__":
    sys.exit(main())
