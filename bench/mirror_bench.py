"""What the instant swap back costs the application: its statements on a rewritten table, by the
size of their transaction, with the mirror against the replay's log and against no rewrite at all.

    python bench/run.py --only mirror --mirror-rows 20000 --mirror-rounds 3
    python bench/mirror_bench.py --rows 20000 --rounds 3          # the same, on its own

The store is the realistic one (``bench/realistic_store.py``: every column of the application's
``memories``, 384-d embeddings with their HNSW index, GIN on ``metadata``, the demo's B-tree
indexes) at ``rows`` memories. Each round, in rotating order, each on a fresh copy:

* **no rewrite**: the table as the application has it;
* **replay**: the sentiment enrichment rewritten through the swap with ``rewrite_swap_back =
  "replay"`` (the default): each statement on the new table also logs its keys;
* **instant**: the same with ``"instant"``: each statement is also mirrored into the kept
  original, in a subtransaction of the application's transaction.

Then one connection runs ``WARM_UP`` statements untimed, then transactions of 1, 10 and 100
statements, each statement an ``UPDATE`` of one memory's content (keys drawn at random, the same in
every variant), about ``STATEMENTS`` statements per size; the figure is the time per statement
(each transaction's time, commit included, divided by its statements). Meanwhile a second
connection reads one memory by key in a loop, as a search would: its median and p99. PostgreSQL
keeps 64 subtransactions per backend in shared memory; a transaction with more (an instant mirror's
100 statements) overflows it, and every snapshot other sessions take meanwhile looks the rest up in
``pg_subtrans``: the reader's figures during the transactions of 100 show what that costs.

After the writes, a rewritten variant is swapped back (``rollback``) and each memory written is
checked to hold, in the original, what the application last wrote into the new table.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from data_bench import Copies
from realistic_store import (
    DIMENSIONS,
    GENERATE,
    INDEXES,
    MIGRATION_ID,
    _execute,
    _ready_to_contract,
    migration_class,
)

from brainmigrate import Migrator

NO_REWRITE = "no rewrite"
REPLAY = 'rewrite_swap_back = "replay"'
INSTANT = 'rewrite_swap_back = "instant"'
VARIANTS = (NO_REWRITE, REPLAY, INSTANT)
#: Statements per transaction, and about how many statements of each size are timed.
SIZES = (1, 10, 100)
STATEMENTS = 400
#: Statements run first, untimed, in every variant: the rewritten variants' caches are warm from
#: the rewrite, the other's would be cold.
WARM_UP = 300

WRITE = "UPDATE memories SET content = $2, updated_at = now() WHERE id = $1"
READ = "SELECT content FROM memories WHERE id = $1"


def _progress(what: str) -> None:
    print(f"  instant mirror: {what}", file=sys.stderr, flush=True)


async def _rewritten(dsn: str, swap_back: str) -> None:
    """The sentiment enrichment rewritten through the swap, with ``swap_back``."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        migrator = Migrator(pool, [migration_class("rewrite", swap_back)])
        await _ready_to_contract(migrator, await migrator.run_pending())
    finally:
        await pool.close()


async def _swapped_back(dsn: str, swap_back: str, written: dict[str, str]) -> None:
    """Swap back, then check that the original holds every memory as last written."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        await Migrator(pool, [migration_class("rewrite", swap_back)]).rollback(MIGRATION_ID)
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id::text, content FROM memories WHERE id = ANY($1::uuid[])", list(written)
            )
    finally:
        await pool.close()
    found = {row["id"]: row["content"] for row in rows}
    wrong = [key for key, content in written.items() if found.get(key) != content]
    if wrong:
        raise RuntimeError(
            f"after the swap back, {len(wrong)} memories lack what was written (first {wrong[:3]})"
        )


async def _reader(dsn: str, keys: list[str], stop: asyncio.Event, seconds: list[float]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rng = random.Random(7)
        while not stop.is_set():
            started = time.perf_counter()
            await conn.fetchval(READ, rng.choice(keys))
            seconds.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)
    finally:
        await conn.close()


async def statements(dsn: str, keys: list[str]) -> tuple[dict[str, float], dict[str, str]]:
    """Per size: the median seconds a statement, and the reader's median and p99; what was written."""
    conn = await asyncpg.connect(dsn)
    figures: dict[str, float] = {}
    written: dict[str, str] = {}
    rng = random.Random(13)
    try:
        for i in range(WARM_UP):
            key = rng.choice(keys)
            await conn.execute(WRITE, key, f"warm-up {i}")
            written[key] = f"warm-up {i}"
        for size in SIZES:
            reads: list[float] = []
            stop = asyncio.Event()
            reader = asyncio.create_task(_reader(dsn, keys, stop, reads))
            per_statement: list[float] = []
            try:
                for transaction in range(max(1, STATEMENTS // size)):
                    batch = [(rng.choice(keys), f"rewritten {size}/{transaction}/{i}") for i in range(size)]
                    started = time.perf_counter()
                    async with conn.transaction():
                        for key, content in batch:
                            await conn.execute(WRITE, key, content)
                    per_statement.append((time.perf_counter() - started) / size)
                    written.update(batch)
            finally:
                stop.set()
                await reader
            figures[f"statement, transactions of {size}"] = statistics.median(per_statement)
            figures[f"read, median, beside transactions of {size}"] = statistics.median(reads)
            figures[f"read, p99, beside transactions of {size}"] = statistics.quantiles(
                reads, n=100, method="inclusive"
            )[98]
    finally:
        await conn.close()
    return figures, written


async def bench_mirror(admin_dsn: str, rows: int, rounds: int) -> list[Section]:
    """The section: each variant's statements by transaction size, ``rounds`` rounds on copies."""
    samples: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    async with databases(admin_dsn) as factory:
        source = await factory.create()
        started = time.perf_counter()
        await _execute(
            source,
            GENERATE.format(rows=int(rows), dimensions=DIMENSIONS),
            INDEXES.format(prefix="memories", table="memories"),
            "VACUUM ANALYZE memories",
        )
        _progress(f"store of {rows:,} memories built in {time.perf_counter() - started:.1f} s")
        conn = await asyncpg.connect(source)
        try:
            keys = [str(key) for key in await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM memories")]
        finally:
            await conn.close()
        copies = Copies(factory, source)

        async def measure(dsn: str, variant: str) -> dict[str, float]:
            swap_back = {REPLAY: "replay", INSTANT: "instant"}.get(variant)
            if swap_back is not None:
                await _rewritten(dsn, swap_back)
            figures, written = await statements(dsn, keys)
            if swap_back is not None:
                await _swapped_back(dsn, swap_back, written)
            return figures

        try:
            for turn in range(rounds):
                for variant in rotated(list(VARIANTS), turn):
                    sample = await copies.run(lambda dsn, variant=variant: measure(dsn, variant))
                    samples[variant].append(sample)
                    shown = ", ".join(f"{key} {value * 1000:.1f} ms" for key, value in sample.items())
                    _progress(f"round {turn + 1}/{rounds}, {variant}: {shown}")
        finally:
            await factory.drop(source)
    return [_section(rows, samples)]


def _section(rows: int, samples: dict[str, list[dict[str, float]]]) -> Section:
    keys = list(samples[NO_REWRITE][0])
    section = Section(
        f"the application's statements on a rewritten table of {rows:,} memories, by transaction size "
        f"(an UPDATE of one memory's content; seconds per statement, and a reader's point SELECT)",
        [
            Row(f"{variant}: {key}", Stats(tuple(sample[key] for sample in samples[variant])))
            for key in keys
            for variant in VARIANTS
        ],
        show_p90=False,
    )
    for size in SIZES:
        key = f"statement, transactions of {size}"
        for variant in (REPLAY, INSTANT):
            quotients = [a[key] / b[key] for a, b in zip(samples[variant], samples[NO_REWRITE], strict=True)]
            section.notes.append(
                f"- transactions of {size}: a statement with {variant} takes "
                f"{statistics.median(quotients):.2f}x its time without a rewrite "
                "(median of per-round quotients)"
            )
    return section


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, 20_000, bench_mirror, argv)


if __name__ == "__main__":
    sys.exit(main())
