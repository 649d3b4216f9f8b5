"""Issue 13 on a realistic Second Brain store: the sentiment enrichment in place against rewrite.

    python bench/run.py --only realistic --realistic-rows 5000      # a quick check of the script
    python bench/run.py --only realistic --realistic-rows 100000    # the figures

The store: the Second Brain ``memories`` table (every column of the application's, the embedding
as ``vector(384)``), generated server-side and deterministically (keys are ``md5(i)`` as uuid,
content from sentence parts, embeddings from a hash of ``i`` and the dimension), with the demo's
indexes: the primary key, ``created_at``, GIN on ``metadata``, HNSW (``vector_cosine_ops``,
m = 16, ef_construction = 64) on ``embedding`` and one partial index per memory type. No trigger
(a rewrite refuses tables with triggers). Then ``VACUUM ANALYZE``; autovacuum off for the table.

The migration is the example's :class:`EnrichMemoriesWithSentiment` (reversible, so the in-place
run keeps before-images), with ``strategy`` set. Each sample runs on a fresh file-by-file copy
and is checked row by row against the source: every memory has ``sentiment(content)`` added to
its metadata, and every other column is unchanged (an md5 of the rest of the row).
After each strategy: ``pg_relation_size``, ``pg_indexes_size``, ``pg_total_relation_size`` and
the HNSW index's size, next to a fresh build of the same migrated rows (indexes built after the
load). The rewrite (``strategy = "rewrite"``) is measured only where the engine runs it as a
hybrid (``run_pending()`` through cutover, then ``contract``); otherwise the section says so.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from data_bench import Copies

from brainmigrate import MigrationMetadata, MigrationStatus, Migrator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from second_brain.migrations import __name__ as _examples  # noqa: F401

_SENTIMENT = __import__(
    "second_brain.migrations.008_enrich_memories_with_sentiment", fromlist=["EnrichMemoriesWithSentiment"]
)
sentiment = _SENTIMENT.sentiment
EnrichMemoriesWithSentiment = _SENTIMENT.EnrichMemoriesWithSentiment

DIMENSIONS = 384
MIGRATION_ID = "bench_realistic_sentiment_001"
IN_PLACE = 'in place (strategy = "in_place")'
REWRITE = 'rewrite (strategy = "rewrite"), through cutover'

GENERATE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TYPE memory_type AS ENUM ('semantic', 'episodic', 'procedural');
CREATE TABLE memories (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    content text NOT NULL,
    embedding vector({dimensions}),
    memory_type memory_type NOT NULL DEFAULT 'semantic',
    importance_score numeric(5, 4) NOT NULL DEFAULT 0.5
        CONSTRAINT memories_importance_score_range CHECK (importance_score >= 0 AND importance_score <= 1),
    access_count integer NOT NULL DEFAULT 0,
    last_accessed timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    semantic_metadata jsonb NOT NULL DEFAULT '{{}}',
    episodic_metadata jsonb NOT NULL DEFAULT '{{}}',
    procedural_metadata jsonb NOT NULL DEFAULT '{{}}',
    consolidation_score numeric,
    last_consolidated timestamptz,
    decay_applied boolean NOT NULL DEFAULT false,
    metadata jsonb NOT NULL DEFAULT '{{}}'
) WITH (autovacuum_enabled = off);
INSERT INTO memories (id, content, embedding, memory_type, importance_score, access_count, last_accessed,
                      created_at, updated_at, consolidation_score, metadata)
SELECT md5('memory ' || i)::uuid,
       (ARRAY['The team offsite', 'My morning run', 'The code review', 'Dinner at the ramen place',
              'The flight to Lisbon', 'The birthday call', 'The database migration', 'Sprint planning',
              'The weekend hike', 'The quarterly report', 'Pairing on the parser'])[1 + i % 11]
       || ' ' || (ARRAY['was wonderful and energizing', 'went badly and left me frustrated',
              'happened on Tuesday afternoon', 'was a great success', 'was not great, honestly',
              'took about two hours', 'was boring and far too long', 'got delayed again because of a bug',
              'felt calm and relaxing', 'was exhausting but productive', 'was never boring',
              'covered the usual topics', 'ended with a nice surprise'])[1 + (i * 7) % 13]
       || '. ' || (ARRAY['Remember to follow up next week.', 'Worth doing again.', 'Tell Alex about it.',
              'Grateful for the help.', 'Ask about the missed invoice.',
              'Nothing else to add.'])[1 + (i * 5) % 6]
       || ' Notes ' || i || ': ' || left(repeat(md5(i::text) || ' ', 6), 150),
       (SELECT array_agg((abs(sin(i * 12.9898 + j * 78.233)) * 43758.5453)::numeric % 1 - 0.5)
          FROM generate_series(1, {dimensions}) AS j)::vector,
       (ARRAY['episodic', 'semantic', 'procedural'])[1 + i % 3]::memory_type,
       round(((i * 7919) % 10000) / 10000.0, 4),
       (i * 31) % 40,
       timestamptz '2025-01-01' + make_interval(mins => (i * 37) % 525600),
       timestamptz '2025-01-01' + make_interval(mins => (i * 17) % 525600),
       timestamptz '2025-01-01' + make_interval(mins => (i * 17) % 525600),
       (i % 100) / 100.0,
       jsonb_build_object('source', (ARRAY['chat', 'journal', 'email', 'meeting'])[1 + i % 4],
                          'user_id', 1 + i % 97, 'tags', jsonb_build_array('t' || i % 10, 't' || i % 7))
  FROM generate_series(1, {rows}) AS i;
"""

#: The demo's indexes, for any table name (the store's, and the fresh build's).
INDEXES = """
SET maintenance_work_mem = '512MB';
CREATE INDEX {prefix}_created_at ON {table} (created_at DESC);
CREATE INDEX {prefix}_metadata ON {table} USING gin (metadata);
CREATE INDEX {prefix}_embedding_hnsw ON {table} USING hnsw (embedding vector_cosine_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX {prefix}_importance_semantic ON {table} (importance_score DESC, last_accessed DESC)
    WHERE memory_type = 'semantic';
CREATE INDEX {prefix}_importance_episodic ON {table} (importance_score DESC, last_accessed DESC)
    WHERE memory_type = 'episodic';
CREATE INDEX {prefix}_importance_procedural ON {table} (importance_score DESC, last_accessed DESC)
    WHERE memory_type = 'procedural';
"""

#: Every row: its key, content, metadata and a digest of every other column, in key order.
ROWS = """
SELECT id, content, metadata::text AS metadata,
       md5(concat_ws('|', embedding::text, memory_type, importance_score, access_count, last_accessed,
                     created_at, updated_at, semantic_metadata, episodic_metadata, procedural_metadata,
                     consolidation_score, last_consolidated, decay_applied)) AS rest
  FROM {table} WHERE id > $1 ORDER BY id LIMIT $2
"""
PAGE = 10_000

SIZES = """
SELECT pg_relation_size('{table}'), pg_indexes_size('{table}'), pg_total_relation_size('{table}'),
       pg_relation_size('{hnsw}')
"""


def migration_class(strategy: str) -> type[Any]:
    """The example's sentiment enrichment, on its own (no dependencies), with ``strategy``."""

    class Sentiment(EnrichMemoriesWithSentiment):  # type: ignore[misc,valid-type]
        def _get_metadata(self) -> MigrationMetadata:
            import attrs

            return attrs.evolve(super()._get_metadata(), id=MIGRATION_ID, dependencies=())

    Sentiment.strategy = strategy
    Sentiment.__name__ = f"Sentiment_{strategy}"
    return Sentiment


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _pages(conn: asyncpg.Connection[Any], table: str) -> Any:
    last = "00000000-0000-0000-0000-000000000000"
    while True:
        page = await conn.fetch(ROWS.format(table=table), last, PAGE)
        if not page:
            return
        for record in page:
            yield record
        last = page[-1]["id"]


async def check_migrated(source_dsn: str, dsn: str, table: str = "memories") -> int:
    """Row by row: every memory of the source, with its sentiment added, nothing else changed."""
    source, target = await asyncpg.connect(source_dsn), await asyncpg.connect(dsn)
    wrong: list[str] = []
    count = 0
    try:
        rows = _pages(target, table)
        async for before in _pages(source, "memories"):
            after = await anext(rows, None)
            count += 1
            expected = {**json.loads(before["metadata"]), "sentiment": sentiment(before["content"])}
            if (
                after is None
                or after["id"] != before["id"]
                or after["content"] != before["content"]
                or after["rest"] != before["rest"]
                or json.loads(after["metadata"]) != expected
            ):
                wrong.append(str(before["id"]))
                if after is None or after["id"] != before["id"]:
                    break
        extra = await anext(rows, None)
    finally:
        await source.close()
        await target.close()
    if wrong or extra is not None:
        raise RuntimeError(
            f"{len(wrong)} memories wrong after the migration (first {wrong[:3]}), extra {extra}"
        )
    return count


async def sizes(dsn: str, table: str, hnsw: str) -> tuple[int, int, int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(SIZES.format(table=table, hnsw=hnsw))
        return tuple(int(v) for v in row)  # type: ignore[return-value]
    finally:
        await conn.close()


async def hnsw_name(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(
            await conn.fetchval(
                "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_am a ON a.oid = c.relam WHERE indrelid = 'memories'::regclass AND amname = 'hnsw'"
            )
        )
    finally:
        await conn.close()


def _progress(what: str) -> None:
    print(f"  realistic: {what}", file=sys.stderr, flush=True)


async def run_in_place(dsn: str) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        started = time.perf_counter()
        results = await Migrator(pool, [migration_class("in_place")]).run_pending()
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    if [r.status for r in results] != [MigrationStatus.COMPLETED]:
        raise RuntimeError(f"the in-place run did not complete: {results}")
    return elapsed


async def run_rewrite(dsn: str) -> dict[str, float] | str:
    """Seconds of the rewrite through cutover and of its contract, or why it was not measured."""
    if "rewrite" not in getattr(_SENTIMENT.MemoryDataMigration, "__dict__", {}) and not hasattr(
        EnrichMemoriesWithSentiment, "strategy"
    ):
        return "the strategy attribute does not exist"
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        migrator = Migrator(pool, [migration_class("rewrite")])
        started = time.perf_counter()
        results = await migrator.run_pending()
        elapsed = time.perf_counter() - started
        try:
            phase = await migrator.hybrid_phase(MIGRATION_ID)
        except Exception as exc:  # the engine ran it as a plain data migration
            return f'strategy = "rewrite" was not run as a rewrite ({type(exc).__name__}: {exc}); results {results}'  # noqa: E501
        if phase is None or phase.name != "READY_TO_CONTRACT":
            return f"the rewrite stopped at {phase}: {results}"
        started = time.perf_counter()
        await migrator.contract(MIGRATION_ID)
        contract = time.perf_counter() - started
    finally:
        await pool.close()
    return {"run": elapsed, "contract": contract}


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


async def bench_realistic(admin_dsn: str, rows: int, rounds: int) -> list[Section]:
    samples: dict[str, list[float]] = {IN_PLACE: [], REWRITE: []}
    notes: list[str] = []
    measured: dict[str, tuple[int, int, int, int]] = {}
    async with databases(admin_dsn) as factory:
        source = await factory.create()
        started = time.perf_counter()
        await _execute(source, GENERATE.format(rows=int(rows), dimensions=DIMENSIONS))
        await _execute(
            source, INDEXES.format(prefix="idx_memories", table="memories"), "VACUUM ANALYZE memories"
        )
        _progress(f"store of {rows:,} memories built in {time.perf_counter() - started:.1f} s")
        copies = Copies(factory, source)
        hnsw = await hnsw_name(source)
        rewrite_missing = ""
        try:
            for turn in range(rounds):
                for tool in rotated([IN_PLACE, REWRITE], turn):
                    if tool == IN_PLACE:

                        async def timed(dsn: str) -> float:
                            seconds = await run_in_place(dsn)
                            await check_migrated(source, dsn)
                            measured[IN_PLACE] = await sizes(dsn, "memories", hnsw)
                            if "fresh" not in measured:
                                await _execute(
                                    dsn,
                                    "CREATE TABLE memories_fresh (LIKE memories INCLUDING DEFAULTS "
                                    "INCLUDING CONSTRAINTS) WITH (autovacuum_enabled = off)",
                                    "INSERT INTO memories_fresh SELECT * FROM memories",
                                    "ALTER TABLE memories_fresh ADD PRIMARY KEY (id)",
                                    INDEXES.format(prefix="fresh", table="memories_fresh"),
                                )
                                measured["fresh"] = await sizes(dsn, "memories_fresh", "fresh_embedding_hnsw")
                            return seconds

                        samples[IN_PLACE].append(await copies.run(timed))
                        _progress(f"round {turn + 1}: in place {rows / samples[IN_PLACE][-1]:,.0f} rows/s")
                    elif not rewrite_missing:

                        async def rewritten(dsn: str) -> dict[str, float] | str:
                            outcome = await run_rewrite(dsn)
                            if isinstance(outcome, dict):
                                await check_migrated(source, dsn)
                                measured[REWRITE] = await sizes(dsn, "memories", hnsw)
                            return outcome

                        outcome = await copies.run(rewritten)
                        if isinstance(outcome, str):
                            rewrite_missing = outcome
                            _progress(f"rewrite NOT measured: {outcome}")
                        else:
                            samples[REWRITE].append(outcome["run"])
                            notes.append(f"- round {turn + 1}: contract {outcome['contract']:.2f} s")
        finally:
            await factory.drop(source)
    rows_out = [Row(tool, Stats(tuple(times))) for tool, times in samples.items() if times]
    if rewrite_missing:
        notes.append(f"- rewrite NOT measured: {rewrite_missing}")
    elif samples[REWRITE]:
        ratio = statistics.median(a / b for a, b in zip(samples[IN_PLACE], samples[REWRITE], strict=True))
        notes.append(f"- rewrite is {ratio:.1f}x faster than in place end to end (target: >= 10x)")
    notes.append("- sizes (table / indexes / total / HNSW index):")
    for what, (table, indexes, total, vector) in measured.items():
        label = "fresh build of the migrated rows" if what == "fresh" else f"after {what}"
        notes.append(f"  - {label}: {_mib(table)} / {_mib(indexes)} / {_mib(total)} / {_mib(vector)}")
    notes.append(
        "- not measured yet: the concurrent writer process, the writer's latency, rollback by swap back"
    )
    return [
        Section(
            title=f"sentiment enrichment over a realistic store of {rows:,} memories "
            f"({DIMENSIONS}-d embeddings, HNSW + GIN + 5 B-tree indexes)",
            rows=rows_out,
            baselines=(IN_PLACE,),
            show_p90=False,
            items=rows,
            notes=notes,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, 100_000, bench_realistic, argv)


if __name__ == "__main__":
    sys.exit(main())
