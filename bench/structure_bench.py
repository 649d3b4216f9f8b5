"""A MEMORY_STRUCTURE migration (a rename, an add and a move) against one hand-written UPDATE.

    python bench/structure_bench.py                       # on a throwaway embedded PostgreSQL
    python bench/structure_bench.py --dsn postgresql://... --rows 1000000 --rounds 3

On a ``memories`` table like a Second Brain store's (``metadata`` jsonb with ``topic`` on three
memories in four, ``sentiment``, ``kind`` and a few more keys; no embedding, no index but the
primary key), the migration :class:`Reshape` runs three operations, which compile to one jsonb
expression (``brainmigrate.structure``)::

    s.rename("topic", "topics"), s.add("schema_version", 2), s.move("sentiment", "analysis.sentiment")

Every memory changes (the ``add``). Per round, each on a fresh copy of the same data:

* the baseline, ``single UPDATE``: one hand-written server-side statement,
  ``UPDATE memories AS m SET metadata = <expr> WHERE m.metadata IS DISTINCT FROM <expr>``, where
  ``<expr>`` is the very text the library compiles for the migration (``Reshape.new_value()``),
  so the two differ only in what the engine adds: key ranges, checkpoints, the check of the
  operations' conditions before the first range, the ledger;
* brainmigrate, in each configuration of :data:`VARIANTS`: ``Migrator(pool, [Reshape])
  .run_pending(config=...)``, timed from the call to its return, then checked (the table must be
  what the baseline makes of it, every column of every row);
* right after each brainmigrate sample, on the same copy: ``await migrator.rollback(id)``, which
  runs the inverted operations over key ranges of the whole table; then the table is checked
  against the source.

The order of the tools rotates from round to round; the figures are medians, the ratios medians of
per-round ratios. The table is generated once, server-side (``generate_series``), then ``VACUUM
ANALYZE``; copies are made file by file (``CREATE DATABASE ... TEMPLATE``, then ``CHECKPOINT``,
untimed). Autovacuum is off for the table, as in benchmark 3.
"""

from __future__ import annotations

import statistics
import sys
import time

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from data_bench import Copies, fingerprint

from brainmigrate import (
    MemoryStructureMigration,
    MigrationConfig,
    MigrationMetadata,
    MigrationStatus,
    MigrationType,
    Migrator,
)
from brainmigrate import structure as s
from brainmigrate._engine.reshape import declared
from brainmigrate.testing import DatabaseFactory

MIGRATION_ID = "bench_reshape_001"

#: The size the seed's duration is stated for: also measured when the benchmark is larger.
SMALL_ROWS = 100_000

SINGLE_UPDATE = "single UPDATE (same expression)"

#: Row name in the report -> the configuration of ``run_pending()`` and ``rollback()``.
VARIANTS: dict[str, MigrationConfig] = {
    "brainmigrate (default: ranges of 1,000, checkpoint every 5,000)": MigrationConfig(),
    "brainmigrate (ranges of 10,000, checkpoint every 50,000)": MigrationConfig(
        batch_size=10_000, checkpoint_frequency=50_000
    ),
}

GENERATE = """
CREATE TABLE memories (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    content text NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{{}}',
    memory_type text NOT NULL,
    importance_score real NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
) WITH (autovacuum_enabled = off);
INSERT INTO memories
SELECT
    gen_random_uuid(),
    left(repeat(md5(i::text) || ' ', 8), 200),
    jsonb_strip_nulls(jsonb_build_object(
        'topic',
        CASE WHEN i % 4 <> 0 THEN (ARRAY['work', 'health', 'family', 'travel', 'ideas'])[1 + i % 5] END,
        'sentiment', round((i % 7) / 7.0, 3),
        'kind', (ARRAY['note', 'event'])[1 + i % 2],
        'source', (ARRAY['chat', 'email', 'note', 'web'])[1 + i % 4],
        'session', i % 1000,
        'tags', jsonb_build_array('t' || i % 10, 't' || i % 7)
    )),
    (ARRAY['episodic', 'semantic', 'procedural'])[1 + i % 3],
    random()::real,
    now() - make_interval(secs => i),
    now() - make_interval(secs => i / 2)
FROM generate_series(1, {rows}) AS i;
ALTER TABLE memories ADD PRIMARY KEY (id);
"""


class Reshape(MemoryStructureMigration):
    """The benchmark's reshaping: a rename, an add and a move, over ``memories.metadata``."""

    def _get_metadata(self) -> MigrationMetadata:
        return MigrationMetadata(
            id=MIGRATION_ID,
            name="rename topic, add schema_version, nest sentiment",
            version="1.0.0",
            migration_type=MigrationType.MEMORY_STRUCTURE,
        )

    def operations(self) -> list[s.Operation]:
        return [
            s.rename("topic", "topics"),
            s.add("schema_version", 2),
            s.move("sentiment", "analysis.sentiment"),
        ]


#: The expression the library compiles for :class:`Reshape` (the column is ``m."metadata"``).
EXPRESSION = declared(Reshape()).new_value()
BASELINE = f"UPDATE memories AS m SET metadata = {EXPRESSION} WHERE m.metadata IS DISTINCT FROM {EXPRESSION}"

#: Memories not yet reshaped: every memory gets ``schema_version``.
NOT_RESHAPED = "SELECT count(*) FROM memories WHERE NOT metadata ? 'schema_version' OR metadata ? 'sentiment'"


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def generate(dsn: str, rows: int) -> None:
    """Fill the empty database at ``dsn`` with ``rows`` memories, then VACUUM ANALYZE."""
    await _execute(dsn, GENERATE.format(rows=int(rows)), "VACUUM ANALYZE memories")


async def single_update(dsn: str) -> None:
    """The baseline: the compiled expression in one hand-written UPDATE, on one connection."""
    await _execute(dsn, BASELINE)


async def migrate(dsn: str, config: MigrationConfig) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=3)
    try:
        results = await Migrator(pool, [Reshape]).run_pending(config=config)
    finally:
        await pool.close()
    if [r.status for r in results] != [MigrationStatus.COMPLETED]:
        raise RuntimeError(f"the structure migration did not complete: {results}")


async def rollback(dsn: str, config: MigrationConfig) -> float:
    """Seconds ``await migrator.rollback(id)`` takes on the migrated table at ``dsn``."""
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=3)
    try:
        migrator = Migrator(pool, [Reshape])
        start = time.perf_counter()
        results = await migrator.rollback(MIGRATION_ID, config=config)
        elapsed = time.perf_counter() - start
    finally:
        await pool.close()
    if [r.status for r in results] != [MigrationStatus.ROLLED_BACK]:
        raise RuntimeError(f"the rollback did not complete: {results}")
    return elapsed


async def not_reshaped(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(NOT_RESHAPED))
    finally:
        await conn.close()


def _progress(rows: int, turn: int, rounds: int, what: str) -> None:
    print(f"  structure ({rows:,}), round {turn + 1}/{rounds}: {what}", file=sys.stderr, flush=True)


async def _bench(factory: DatabaseFactory, rows: int, rounds: int) -> Section:
    source = await factory.create()
    await generate(source, rows)
    copies = Copies(factory, source)
    original = await fingerprint(source)
    tools = [SINGLE_UPDATE, *VARIANTS]
    samples: dict[str, list[float]] = {tool: [] for tool in tools}
    rollbacks: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    reshaped: tuple[int, int] | None = None
    try:
        for turn in range(rounds):
            for tool in rotated(tools, turn):

                async def timed(dsn: str, tool: str = tool) -> float:
                    nonlocal reshaped
                    config = VARIANTS.get(tool)
                    start = time.perf_counter()
                    await (single_update(dsn) if config is None else migrate(dsn, config))
                    elapsed = time.perf_counter() - start
                    left = await not_reshaped(dsn)
                    if left:
                        raise RuntimeError(f"{tool}: {left} of {rows} memories not reshaped")
                    after = await fingerprint(dsn)
                    if reshaped is None:
                        reshaped = after
                    elif after != reshaped:
                        raise RuntimeError(f"{tool} left the table unlike the other tools")
                    if config is not None:
                        rollbacks[tool].append(await rollback(dsn, config))
                        if await fingerprint(dsn) != original:
                            raise RuntimeError(f"the rollback of {tool} did not restore the table")
                    return elapsed

                samples[tool].append(await copies.run(timed))
                line = f"{tool} {samples[tool][-1]:.2f} s, {rows / samples[tool][-1]:,.0f} rows/s"
                if tool in rollbacks:
                    line += f"; rollback {rollbacks[tool][-1]:.2f} s"
                _progress(rows, turn, rounds, line)
    finally:
        await factory.drop(source)
    section = Section(
        title=f"MEMORY_STRUCTURE migration (rename + add + move) over {rows:,} memories",
        rows=[Row(tool, Stats(tuple(times))) for tool, times in samples.items()],
        baselines=(SINGLE_UPDATE,),
        show_p90=False,
        items=rows,
        target="speed ≥ 0.7x the single UPDATE (time ≤ 1.43x); rollback ≤ 1.2x the forward time",
    )
    for variant in VARIANTS:
        pairs = zip(samples[variant], samples[SINGLE_UPDATE], strict=True)
        speed = statistics.median(baseline / forward for forward, baseline in pairs)
        back = statistics.median(r / f for r, f in zip(rollbacks[variant], samples[variant], strict=True))
        median = statistics.median(rollbacks[variant])
        section.notes.append(
            f"- {variant}: {speed:.2f}x the speed of the single UPDATE; rollback (`migrator.rollback(id)`, "
            f"checked) median {median:.2f} s, {rows / median:,.0f} rows/s, {back:.2f}x the forward time"
        )
    return section


async def bench_structure(admin_dsn: str, rows: int, rounds: int) -> list[Section]:
    """The benchmark at ``rows`` memories, and at :data:`SMALL_ROWS` too when ``rows`` is larger."""
    sizes = [rows, SMALL_ROWS] if rows > SMALL_ROWS else [rows]
    async with databases(admin_dsn) as factory:
        return [await _bench(factory, size, rounds) for size in sizes]


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, 1_000_000, bench_structure, argv)


if __name__ == "__main__":
    sys.exit(main())
