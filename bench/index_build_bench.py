"""What a rewrite's index build costs with each ``rewrite_maintenance_work_mem`` and
``rewrite_parallel_workers``: the HNSW build of the realistic store's embeddings.

    python bench/run.py --only index_build --index-build-rows 100000 --index-build-rounds 3
    python bench/index_build_bench.py --rows 20000 --rounds 1       # a quick check of the script

The store is the realistic one (``bench/realistic_store.py``: 384-d embeddings, populated),
without its HNSW index. Each round builds ``USING hnsw (embedding vector_cosine_ops) WITH (m = 16,
ef_construction = 64)``, as the store's own index, once per setting, in rotating order, each in a
transaction of its own with ``SET LOCAL`` (as a rewrite does), dropped again after it. The
baseline is the rewrite's default: 512 MB, and the server's parallel maintenance workers (2 on a
server with PostgreSQL's defaults). The graph's size is reported beside the figures: a build
whose graph does not fit in ``maintenance_work_mem`` goes on on disk, much slower.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from realistic_store import DIMENSIONS, GENERATE

#: (maintenance_work_mem, max_parallel_maintenance_workers or None for the server's), by label.
SETTINGS: dict[str, tuple[str, int | None]] = {
    "512MB, the server's workers (the default)": ("512MB", None),
    "512MB, no parallel workers": ("512MB", 0),
    "64MB, the server's workers": ("64MB", None),
    "1GB, 1 parallel worker": ("1GB", 1),
}
DEFAULT = next(iter(SETTINGS))
BUILD = (
    "CREATE INDEX bench_embedding_hnsw ON memories USING hnsw (embedding vector_cosine_ops) "
    "WITH (m = 16, ef_construction = 64)"
)


async def build_seconds(conn: asyncpg.Connection[Any], memory: str, workers: int | None) -> float:
    """One HNSW build's seconds under ``memory`` and ``workers``; the index dropped after it."""
    async with conn.transaction():
        await conn.execute("SELECT set_config('maintenance_work_mem', $1, true)", memory)
        if workers is not None:
            await conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', $1, true)", str(workers)
            )
        started = time.perf_counter()
        await conn.execute(BUILD)
        seconds = time.perf_counter() - started
    await conn.execute("DROP INDEX bench_embedding_hnsw")
    return seconds


async def bench_index_build(admin_dsn: str, rows: int, rounds: int) -> list[Section]:
    samples: dict[str, list[float]] = {label: [] for label in SETTINGS}
    notes: list[str] = []
    async with databases(admin_dsn) as factory:
        dsn = await factory.create()
        try:
            conn = await asyncpg.connect(dsn)
            try:
                for statement in GENERATE.format(rows=int(rows), dimensions=DIMENSIONS).split(";\n"):
                    if statement.strip():
                        await conn.execute(statement)
                await conn.execute("VACUUM ANALYZE memories")
                server_workers = await conn.fetchval("SHOW max_parallel_maintenance_workers")
                for turn in range(rounds):
                    for label in rotated(list(SETTINGS), turn):
                        memory, workers = SETTINGS[label]
                        samples[label].append(await build_seconds(conn, memory, workers))
                        print(f"round {turn + 1}: {label} {samples[label][-1]:.1f} s", flush=True)
                await conn.execute(BUILD)
                size = await conn.fetchval("SELECT pg_relation_size('bench_embedding_hnsw')")
            finally:
                await conn.close()
        finally:
            await factory.drop(dsn)
    notes.append(f"- the server's max_parallel_maintenance_workers: {server_workers}")
    notes.append(f"- the HNSW index built: {size / 2**20:,.1f} MiB")
    for label in SETTINGS:
        if label != DEFAULT:
            ratio = statistics.median(a / b for a, b in zip(samples[label], samples[DEFAULT], strict=True))
            notes.append(f"- {label}: {ratio:.2f}x the default's time")
    return [
        Section(
            title=f"HNSW build of {rows:,} {DIMENSIONS}-d embeddings, by the rewrite's build settings",
            rows=[Row(label, Stats(tuple(times))) for label, times in samples.items()],
            baselines=(DEFAULT,),
            show_p90=False,
            items=rows,
            notes=notes,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, 100_000, bench_index_build, argv)


if __name__ == "__main__":
    sys.exit(main())
