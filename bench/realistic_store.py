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

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
from common import Row, Section, Stats, databases, rotated, run_alone
from concurrent_writes import State, expected, latency, read_log, writer
from data_bench import Copies

from brainmigrate import AttemptStatus, MigrationMetadata, MigrationOperation, MigrationStatus, Migrator

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
REWRITE_WRITER = "the same rewrite while a process writes"
REWRITE_WRITER_INSTANT = 'the same, rewrite_swap_back = "instant"'
#: The writer's statements per second, and seconds it writes alone before the run and after it.
WRITER_RATE, WRITER_ALONE, WRITER_AFTER = 50.0, 5.0, 3.0

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

#: The migrated rows loaded into a new table, its indexes built after the load: the sizes to compare.
FRESH_BUILD = (
    "CREATE TABLE memories_fresh (LIKE memories INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
    "WITH (autovacuum_enabled = off)",
    "INSERT INTO memories_fresh SELECT * FROM memories",
    "ALTER TABLE memories_fresh ADD PRIMARY KEY (id)",
    INDEXES.format(prefix="fresh", table="memories_fresh"),
)

SIZES = """
SELECT pg_relation_size('{table}'), pg_indexes_size('{table}'), pg_total_relation_size('{table}'),
       pg_relation_size('{hnsw}')
"""


def migration_class(strategy: str, swap_back: str = "replay") -> type[Any]:
    """The example's sentiment enrichment, on its own (no dependencies), with ``strategy`` (and,
    for a rewrite, ``rewrite_swap_back``)."""

    class Sentiment(EnrichMemoriesWithSentiment):  # type: ignore[misc,valid-type]
        def _get_metadata(self) -> MigrationMetadata:
            import attrs

            return attrs.evolve(super()._get_metadata(), id=MIGRATION_ID, dependencies=())

    Sentiment.strategy = strategy
    Sentiment.rewrite_swap_back = swap_back
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


#: Each memory of a table by key: content, metadata and a digest of its other columns.
Rows = dict[str, tuple[str, dict[str, Any], str]]


def with_sentiment(content: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """The metadata the enrichment writes (it reads only memories without a sentiment)."""
    return metadata if "sentiment" in metadata else {**metadata, "sentiment": sentiment(content)}


async def load_rows(dsn: str, table: str = "memories") -> Rows:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            str(row["id"]): (row["content"], json.loads(row["metadata"]), row["rest"])
            async for row in _pages(conn, table)
        }
    finally:
        await conn.close()


async def check_rows(
    source: Rows, dsn: str, *, transformed: bool = True, touched: Mapping[str, State] | None = None
) -> int:
    """Row by row: each memory of ``source`` (enriched when ``transformed``) and nothing else,
    except the rows in ``touched``, which must hold what it says (absent for None)."""
    touched = touched or {}
    conn = await asyncpg.connect(dsn)
    wrong: list[str] = []
    seen: set[str] = set()
    try:
        async for row in _pages(conn, "memories"):
            key = str(row["id"])
            seen.add(key)
            metadata = json.loads(row["metadata"])
            if key in touched:
                ok = touched[key] == (row["content"], metadata)
            elif key in source:
                content, before, rest = source[key]
                want = with_sentiment(content, before) if transformed else before
                ok = (row["content"], metadata, row["rest"]) == (content, want, rest)
            else:
                ok = False
            if not ok:
                wrong.append(key)
    finally:
        await conn.close()
    missing = [key for key in source if key not in seen and key not in touched]
    missing += [key for key, state in touched.items() if state is not None and key not in seen]
    if wrong or missing:
        raise RuntimeError(
            f"{len(wrong)} memories wrong (first {wrong[:3]}), {len(missing)} missing (first {missing[:3]})"
        )
    return len(seen)


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


async def run_rewrite(source: Rows, dsn: str) -> dict[str, float]:
    """Seconds of the rewrite through cutover and of each of its steps; then of a swap back with
    nothing written since the swap (the original checked row by row again), of the same rewrite
    run again, and of its contract."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        migrator = Migrator(pool, [migration_class("rewrite")])
        started = time.perf_counter()
        results = await migrator.run_pending()
        elapsed = time.perf_counter() - started
        await _ready_to_contract(migrator, results)
        steps = await step_seconds(migrator)
        await check_rows(source, dsn)
        started = time.perf_counter()
        await migrator.rollback(MIGRATION_ID)
        swap_back = time.perf_counter() - started
        await check_rows(source, dsn, transformed=False)
        started = time.perf_counter()
        results = await migrator.run_pending()
        again = time.perf_counter() - started
        await _ready_to_contract(migrator, results)
        started = time.perf_counter()
        await migrator.contract(MIGRATION_ID)
        contract = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "run": elapsed,
        "swap back, nothing written since the swap": swap_back,
        "run again after the swap back": again,
        "contract": contract,
        **steps,
    }


async def _ready_to_contract(migrator: Migrator, results: Any) -> None:
    phase = await migrator.hybrid_phase(MIGRATION_ID)
    if phase is None or phase.name != "READY_TO_CONTRACT":
        raise RuntimeError(f"the rewrite stopped at {phase}: {results}")


async def run_rewrite_under_writes(
    source: Rows, dsn: str, rows: int, rate: float, log: Path, swap_back: str = "replay"
) -> tuple[dict[str, float], list[str]]:
    """The rewrite (with ``rewrite_swap_back = swap_back``) while ``writer.py`` writes, each row
    checked after the swap, then the swap back timed and checked: seconds of the run and of the
    swap back, and lines on the writer."""
    conn = await asyncpg.connect(dsn)
    try:
        original_oid = int(await conn.fetchval("SELECT 'memories'::regclass::oid"))
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        migrator = Migrator(pool, [migration_class("rewrite", swap_back)])
        with writer(dsn, log, rows=rows, rate=rate):
            await asyncio.sleep(WRITER_ALONE)  # the writer's latency before the migration starts
            run_from = time.time()
            started = time.perf_counter()
            results = await migrator.run_pending()
            elapsed = time.perf_counter() - started
            run_to = time.time()
            await asyncio.sleep(WRITER_AFTER)  # writes to the table swapped in
        await _ready_to_contract(migrator, results)
        entries = read_log(log)
        states = {key: (content, metadata) for key, (content, metadata, _) in source.items()}
        wanted = expected(entries, states, original_oid, with_sentiment)
        if not wanted.writes_after_swap:
            raise RuntimeError("the writer wrote nothing after the swap: make WRITER_AFTER longer")
        await check_rows(source, dsn, touched=wanted.after_swap)
        started = time.perf_counter()
        await migrator.rollback(MIGRATION_ID)
        swap_back = time.perf_counter() - started
        undone = await step_seconds(migrator, operation=MigrationOperation.ROLLBACK)
        await check_rows(source, dsn, transformed=False, touched=wanted.after_swap_back)
    finally:
        await pool.close()
    lines = [
        f"writes before the swap {wanted.writes_before_swap:,}, after it {wanted.writes_after_swap:,}, "
        f"failed {wanted.failed}; rows written by the writer checked: {len(wanted.after_swap):,}",
        "alone: " + latency([e for e in entries if e["at"] < run_from]),
        "during the rewrite: " + latency([e for e in entries if run_from <= e["at"] <= run_to]),
        "after the swap: " + latency([e for e in entries if e["at"] > run_to]),
    ]
    return {"run": elapsed, "swap back": swap_back, **undone}, lines


async def step_seconds(
    migrator: Migrator, operation: MigrationOperation = MigrationOperation.APPLY
) -> dict[str, float]:
    """Seconds of each step's last ``operation`` in the rewrite, from the history (``step <name>``,
    or ``swap back: step <name>`` for a rollback), its steps in the order they ran."""
    label = "step" if operation is MigrationOperation.APPLY else "swap back: step"
    seconds: dict[str, float] = {}
    for record in sorted(await migrator.history(), key=lambda r: r.attempt_id):
        if (
            record.hybrid_id == MIGRATION_ID
            and record.migration_id != MIGRATION_ID
            and record.operation is operation
            and record.status is AttemptStatus.COMPLETED
        ):
            seconds[f"{label} {record.migration_id.rsplit('/', 1)[1]}"] = (record.duration_ms or 0.0) / 1000
    return seconds


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


async def bench_realistic(admin_dsn: str, rows: int, rounds: int, *, in_place: bool = True) -> list[Section]:
    """The section; without ``in_place``, the two rewrites only (the in-place run is the long one)."""
    samples: dict[str, list[float]] = {
        IN_PLACE: [],
        REWRITE: [],
        REWRITE_WRITER: [],
        REWRITE_WRITER_INSTANT: [],
    }
    if not in_place:
        del samples[IN_PLACE]
    details: dict[str, list[float]] = {}
    notes: list[str] = []
    measured: dict[str, tuple[int, int, int, int]] = {}
    async with databases(admin_dsn) as factory:
        source_dsn = await factory.create()
        started = time.perf_counter()
        await _execute(source_dsn, GENERATE.format(rows=int(rows), dimensions=DIMENSIONS))
        await _execute(
            source_dsn, INDEXES.format(prefix="idx_memories", table="memories"), "VACUUM ANALYZE memories"
        )
        _progress(f"store of {rows:,} memories built in {time.perf_counter() - started:.1f} s")
        source = await load_rows(source_dsn)
        copies = Copies(factory, source_dsn)
        hnsw = await hnsw_name(source_dsn)

        async def checked(dsn: str, what: str) -> None:
            """Each row checked, the sizes taken, and once a fresh build of the migrated rows."""
            await check_rows(source, dsn)
            measured[what] = await sizes(dsn, "memories", hnsw)
            if "fresh" not in measured:
                await _execute(dsn, *FRESH_BUILD)
                measured["fresh"] = await sizes(dsn, "memories_fresh", "fresh_embedding_hnsw")

        async def measure_in_place(dsn: str) -> float:
            seconds = await run_in_place(dsn)
            await checked(dsn, IN_PLACE)
            return seconds

        async def rewrite(dsn: str) -> float:
            outcome = await run_rewrite(source, dsn)
            await checked(dsn, REWRITE)
            for what, seconds in outcome.items():
                details.setdefault(what, []).append(seconds)
            return outcome["run"]

        async def rewrite_under_writes(dsn: str, turn: int, swap_back: str) -> float:
            with tempfile.TemporaryDirectory() as scratch:
                outcome, lines = await run_rewrite_under_writes(
                    source, dsn, rows, WRITER_RATE, Path(scratch) / "writer.jsonl", swap_back
                )
            details.setdefault(f"swap back (rollback), {swap_back}", []).append(outcome["swap back"])
            for what, seconds in outcome.items():
                if what.startswith("swap back: "):
                    details.setdefault(f"{swap_back}: {what}", []).append(seconds)
            notes.extend(
                f"- round {turn + 1}, {swap_back} swap back, writer at {WRITER_RATE:.0f} statements/s: {x}"
                for x in lines
            )
            return outcome["run"]

        try:
            for turn in range(rounds):
                for tool in rotated(list(samples), turn):
                    if tool == IN_PLACE:
                        samples[tool].append(await copies.run(measure_in_place))
                    elif tool == REWRITE:
                        samples[tool].append(await copies.run(rewrite))
                    else:
                        swap_back = "instant" if tool == REWRITE_WRITER_INSTANT else "replay"
                        run = partial(rewrite_under_writes, turn=turn, swap_back=swap_back)
                        samples[tool].append(await copies.run(run))
                    _progress(f"round {turn + 1}: {tool} {samples[tool][-1]:.1f} s, checked row by row")
        finally:
            await factory.drop(source_dsn)
    if in_place:
        ratio = statistics.median(a / b for a, b in zip(samples[IN_PLACE], samples[REWRITE], strict=True))
        notes.insert(0, f"- rewrite is {ratio:.1f}x faster than in place end to end (target: >= 10x)")
    for what, seconds in details.items():
        notes.append(f"- {what}: median {statistics.median(seconds):.2f} s")
    notes.append("- sizes (table / indexes / total / HNSW index):")
    for what, (table, indexes, total, vector) in measured.items():
        label = "fresh build of the migrated rows" if what == "fresh" else f"after {what}"
        notes.append(f"  - {label}: {_mib(table)} / {_mib(indexes)} / {_mib(total)} / {_mib(vector)}")
    return [
        Section(
            title=f"sentiment enrichment over a realistic store of {rows:,} memories "
            f"({DIMENSIONS}-d embeddings, HNSW + GIN + 5 B-tree indexes)",
            rows=[Row(tool, Stats(tuple(times))) for tool, times in samples.items()],
            baselines=(IN_PLACE,) if in_place else (REWRITE,),
            show_p90=False,
            items=rows,
            notes=notes,
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return run_alone(__doc__, 100_000, bench_realistic, argv)


if __name__ == "__main__":
    sys.exit(main())
