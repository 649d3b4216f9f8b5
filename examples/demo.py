"""Migrate a Second Brain memory store, step by step, on a throwaway PostgreSQL.

Run it with ``nox -s demo``, or with ``python examples/demo.py`` where ``brainmigrate[embedded,rich]``
is installed. It starts an embedded PostgreSQL (with pgvector) and deletes it at the end. To use a
server of your own instead, name an empty database on it (the demo leaves its tables there)::

    python examples/demo.py --dsn postgresql://me@localhost/brain_demo
    BRAINMIGRATE_DEMO_DSN=postgresql://me@localhost/brain_demo python examples/demo.py

It applies the schema migrations, fills the memories table (``--memories N``, 50,000 by default),
runs the data migration that adds a sentiment to every memory with a live progress bar, then the
structure migration that reshapes every memory's metadata on the server (nesting that sentiment
under ``analysis``), with ``describe_structure()`` before and after and a dry run's diff, then
re-embeds every memory with a new embedding model, with live progress through every phase and the
cutover. At the end it rolls the data and structure migrations back, newest first, and checks that
every memory is as it was before each. The
migrations are the package ``second_brain.migrations`` next to this file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings
from typing import Any

import anyio
import asyncpg
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as ProgressBar
from rich.table import Table

from brainmigrate import (
    BrainMigrateError,
    HybridPhase,
    MigrationConfig,
    MigrationResult,
    MigrationStatus,
    MigrationType,
    Migrator,
    Progress,
    StructureDescription,
)
from brainmigrate import structure as s
from brainmigrate.embedded import EmbeddedPostgres

#: Importable because Python puts this script's directory on sys.path.
MIGRATIONS = "second_brain.migrations"
SENTIMENT = "enrich_memories_with_sentiment_001"
STRUCTURE = "nest_memory_metadata_001"
REEMBED = "reembed_memories_hashed_words_001"
#: The re-embedding's settings: eight model calls in flight, a checkpoint every 4,096 memories.
REEMBED_CONFIG = MigrationConfig(concurrency=8, batch_size=512, checkpoint_frequency=4_096)
#: The phases of a re-embedding as the demo shows them, with the step that ends each.
REEMBED_PHASES = (
    ("expand", "add embedding_next vector(64)"),
    ("backfill", "embed every memory"),
    ("validate", "check every vector"),
    ("index", "CREATE INDEX CONCURRENTLY (HNSW)"),
    ("cutover", "switch the names"),
)
DSN_VARIABLE = "BRAINMIGRATE_DEMO_DSN"
DEFAULT_MEMORIES = 50_000

#: The data migration's settings: two workers, each with its own connection, splitting the key
#: space; a checkpoint (and a progress report) every 2,000 memories.
DATA_CONFIG = MigrationConfig(parallel_execution=True, max_workers=2, checkpoint_frequency=2_000)

#: Memories made up on the server, so that seeding takes seconds: content built from sentence
#: parts, and metadata as an application might write it. $1 is the number of memories to add.
SEED = """
INSERT INTO memories (content, memory_type, importance_score, access_count, last_accessed,
                      created_at, updated_at, metadata)
SELECT p.subject || ' ' || p.happening || '. ' || p.coda,
       (ARRAY['episodic', 'semantic', 'procedural'])[1 + i % 3]::memory_type,
       round(((i * 7919) % 10000) / 10000.0, 4),
       (i * 31) % 40,
       p.at + make_interval(days => i % 30),
       p.at,
       p.at,
       jsonb_build_object(
           'source', (ARRAY['chat', 'journal', 'email', 'meeting', 'voice_note'])[1 + i % 5],
           'user_id', 1 + i % 97,
           'tags', jsonb_build_array(
               (ARRAY['work', 'health', 'family', 'learning', 'travel', 'food'])[1 + i % 6],
               (ARRAY['idea', 'todo', 'reflection', 'fact'])[1 + (i / 7) % 4]),
           'language', 'en')
  FROM generate_series(1, $1) AS i,
       LATERAL (SELECT
           (ARRAY['The team offsite', 'My morning run', 'The code review with Priya',
                  'Dinner at the new ramen place', 'The flight to Lisbon', 'Grandma''s birthday call',
                  'The database migration', 'Reading about pgvector', 'The dentist appointment',
                  'Sprint planning', 'The weekend hike', 'Learning to bake sourdough',
                  'The quarterly report', 'A chat with the landlord', 'Pairing with Sam on the parser'
                 ])[1 + (i * 7) % 15] AS subject,
           (ARRAY['was wonderful and energizing', 'went badly and left me frustrated',
                  'happened on Tuesday afternoon', 'was a great success',
                  'made me anxious about the deadline', 'was not great, honestly',
                  'took about two hours', 'was fun, and I am proud of the progress',
                  'was boring and far too long', 'got delayed again because of a bug',
                  'felt calm and relaxing', 'is scheduled for next month', 'was never boring',
                  'ended with a nice surprise', 'was exhausting but productive',
                  'covered the usual topics'
                 ])[1 + (i * 11) % 16] AS happening,
           (ARRAY['Remember to follow up next week.', 'Worth doing again.',
                  'Notes are in the shared folder.', 'I should not take on extra work like this.',
                  'Tell Alex about it.', 'Nothing else to add.', 'Grateful for the help.',
                  'Ask about the missed invoice.', 'Good reminder to sleep more.'
                 ])[1 + (i * 13) % 9] AS coda,
           now() - make_interval(mins => (i * 37) % 525600) AS at) AS p
"""

#: One digest over every memory's id and metadata: equal digests, identical metadata.
METADATA_DIGEST = "SELECT md5(string_agg(md5(id::text || metadata::text), '' ORDER BY id)) FROM memories"

#: Per label: how many memories, their mean score, and the memory that scored furthest from zero.
SENTIMENTS = """
WITH scored AS (
    SELECT metadata->'sentiment'->>'label' AS label,
           (metadata->'sentiment'->>'score')::float8 AS score, content
      FROM memories)
SELECT label, count(*) AS memories, avg(score) AS score,
       (array_agg(content ORDER BY abs(score) DESC, content))[1] AS example
  FROM scored GROUP BY label ORDER BY score DESC NULLS LAST
"""


class DemoError(Exception):
    """Something the person running the demo can fix; the message says what."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_VARIABLE) or None,
        help=f"an empty database to migrate instead of an embedded server (default: ${DSN_VARIABLE})",
    )
    parser.add_argument(
        "--memories",
        type=memory_count,
        default=DEFAULT_MEMORIES,
        metavar="N",
        help=f"how many memories the data migration enriches (default: {DEFAULT_MEMORIES:,})",
    )
    args = parser.parse_args(argv)
    console = Console(highlight=False)
    # The embedded server's files go to a temporary directory; this warning is only noise here.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    started = time.perf_counter()
    server: EmbeddedPostgres | None = None
    try:
        dsn = args.dsn
        if dsn is None:
            with console.status("Starting an embedded PostgreSQL..."):
                server = EmbeddedPostgres().start()
            dsn = server.dsn()
        anyio.run(demo, dsn, args.memories, console)
    except (DemoError, BrainMigrateError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        if args.dsn is not None:
            console.print("Run the demo again with this --dsn: the data migration resumes where it stopped.")
        return 130
    finally:
        if server is not None:
            server.stop()
    console.print(f"\n[bold green]Done[/] in {time.perf_counter() - started:.1f} s.")
    return 0


def memory_count(text: str) -> int:
    try:
        count = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= count <= 50_000_000:
        raise argparse.ArgumentTypeError("give a number of memories from 0 to 50,000,000")
    return count


async def demo(dsn: str, memories: int, console: Console) -> None:
    try:
        # brainmigrate holds its runner lock on one connection (only while it changes state) and
        # works on others: here one for the schema, two workers for the data migration.
        pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
    except (OSError, asyncpg.PostgresError) as exc:
        raise DemoError(f"could not connect to the database: {exc}") from exc
    try:
        await describe_server(pool, console)
        migrator = Migrator(pool, migrations=MIGRATIONS)

        pending = await migrator.pending()
        if pending:
            rehearsal = await migrator.run_pending(config=MigrationConfig(dry_run=True))
            console.print(pending_table(pending, rehearsal))
        else:
            console.print("Nothing pending: every migration is already applied.")
        schema = [meta.id for meta in pending if meta.migration_type is MigrationType.DATABASE_SCHEMA]
        if schema:
            await apply_one_by_one(migrator, schema, console)

        enriched, digest = False, None
        if await migrator.pending(MigrationType.MEMORY_DATA):
            digest = await seed(pool, memories, console)
            earlier = await migrator.progress(SENTIMENT)
            if earlier is not None and earlier.status != "rolled_back":
                # An interrupted run resumes below; the memories are no longer as they were before it,
                # so there is nothing to compare the rollback with.
                console.print(f"An earlier run of {SENTIMENT} stopped midway; it resumes from there.")
                digest = None
            await show_sample(migrator, pool, console)
            result = await run_with_progress(pool, console, MigrationType.MEMORY_DATA, SENTIMENT)
            await summarize(migrator, pool, console)
            enriched = result.status is MigrationStatus.COMPLETED

        reshaped, shape = False, None
        if await migrator.pending(MigrationType.MEMORY_STRUCTURE):
            shape = await reshape(migrator, pool, console)
            reshaped = shape is not None

        # Newest first: the sentiment migration cannot be rolled back while the structure
        # migration, which depends on it, is applied.
        if reshaped and shape is not None:
            await roll_back_structure_migration(migrator, pool, shape, console)
        if enriched:
            await roll_back_data_migration(migrator, pool, digest, console)

        if await migrator.pending(MigrationType.HYBRID):
            await reembed(pool, console)

        console.print(history_table(await migrator.history()))

        again = await migrator.run_pending(MigrationType.HYBRID)
        console.print()
        console.rule("[bold]run_pending(MigrationType.HYBRID) once more")
        console.print(
            f"It returned {len(again)} results: the re-embedding is applied, so nothing ran "
            "and no history was written."
        )
    finally:
        await pool.close()


async def describe_server(pool: asyncpg.Pool[Any], console: Console) -> None:
    async with pool.acquire() as conn:
        version = await conn.fetchval("SHOW server_version")
        database = await conn.fetchval("SELECT current_database()")
        pgvector = await conn.fetchval(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        )
    if pgvector is None:
        raise DemoError(
            f"PostgreSQL {version} has no pgvector, which the memories table needs: install it "
            "(e.g. the postgresql-NN-pgvector package) or run the demo without --dsn"
        )
    console.print(f"PostgreSQL [bold]{version}[/] with pgvector {pgvector}, database [bold]{database}[/]\n")


def pending_table(pending: list[Any], rehearsal: list[MigrationResult]) -> Table:
    """The plan, with what a dry run (one transaction, rolled back) said about each step."""
    rehearsed = {result.migration_id: result for result in rehearsal}
    table = Table(
        title="[bold]Pending migrations[/], in the order they will run",
        caption=(
            "* non-transactional (CREATE INDEX CONCURRENTLY): a dry run cannot try it"
            if any(result.status is MigrationStatus.SKIPPED for result in rehearsal)
            else None
        ),
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    # A dependency in the plan is shown by its number; one applied already, by its id.
    number = {meta.id: str(position) for position, meta in enumerate(pending, 1)}
    table.add_column("#", justify="right")
    table.add_column("id", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("after #", overflow="fold")
    table.add_column("dry run", overflow="fold")
    for meta in pending:
        table.add_row(
            number[meta.id],
            meta.id,
            meta.version,
            ", ".join(number.get(dependency, dependency) for dependency in meta.dependencies) or "-",
            rehearsal_note(rehearsed.get(meta.id)),
        )
    return table


def rehearsal_note(result: MigrationResult | None) -> str:
    if result is None:
        return "[dim]not reached[/]"
    if result.status is MigrationStatus.COMPLETED:
        return f"[green]ok[/], {describe(result)}"
    if result.status is MigrationStatus.SKIPPED:
        return "[yellow]skipped[/] *"
    return f"[red]{result.status}[/]: {escape(result.error or '')}"


def describe(result: MigrationResult) -> str:
    """What a migration ran: its SQL statements, Python code, or a transform over memories."""
    if result.migration_type is MigrationType.MEMORY_DATA:
        return "data"
    if result.migration_type is MigrationType.MEMORY_STRUCTURE:
        return "structure"
    count = len(result.statements)
    return f"{count} statement{'' if count == 1 else 's'}" if count else "Python up()"


async def apply_one_by_one(migrator: Migrator, ids: list[str], console: Console) -> None:
    console.print()
    bar = ProgressBar(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    with bar:
        task = bar.add_task("Migrating the schema", total=len(ids))
        for migration_id in ids:
            bar.update(task, description=f"Applying {migration_id}")
            result = await migrator.execute(migration_id)
            bar.console.print(
                f"  [green]applied[/] {migration_id} "
                f"[dim]({describe(result)}, {result.duration_seconds * 1000:.0f} ms)[/]"
            )
            bar.advance(task)
        bar.update(task, description="Schema migrated")
    console.print()


async def seed(pool: asyncpg.Pool[Any], memories: int, console: Console) -> str | None:
    """Fill the memories table up to ``memories`` rows; return the digest of their metadata."""
    async with pool.acquire() as conn:
        present = await conn.fetchval("SELECT count(*) FROM memories")
        missing = max(0, memories - present)
        started = time.perf_counter()
        with console.status(f"Writing {missing:,} memories on the server (generate_series)..."):
            await conn.execute(SEED, missing)
            await conn.execute("ANALYZE memories")
        seconds = time.perf_counter() - started
        digest: str | None = await conn.fetchval(METADATA_DIGEST)
    console.rule("[bold]A memories table to migrate")
    console.print(
        f"Added {missing:,} memories in {seconds:.1f} s; the table holds {present + missing:,}. "
        "Each has content and metadata (source, user, tags) but no sentiment yet."
    )
    return digest


async def show_sample(migrator: Migrator, pool: asyncpg.Pool[Any], console: Console) -> None:
    """A dry run of the data migration: its transform over a sample, nothing written."""
    sample = await migrator.execute(SENTIMENT, config=MigrationConfig(dry_run=True, dry_run_sample=50))
    console.print()
    console.rule(f"[bold]Dry run: {SENTIMENT}")
    keys = [change.key for change in sample.changes]
    async with pool.acquire() as conn:
        contents = dict(await conn.fetch("SELECT id, content FROM memories WHERE id = ANY($1)", keys))
    table = Table(
        title=(
            f"The transform ran on a sample of {sample.items_processed + sample.items_skipped} memories "
            "and wrote nothing; a few of the changes it would make:"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("memory", no_wrap=True)
    table.add_column("content")
    table.add_column("metadata.sentiment", no_wrap=True)
    for change in sample.changes[:5]:
        feeling = change.after["sentiment"]
        colour = {"positive": "green", "negative": "red"}.get(feeling["label"], "yellow")
        table.add_row(
            str(change.key)[:8],
            escape(contents.get(change.key, "")),
            f"[{colour}]{feeling['label']}[/] {feeling['score']:+.2f}",
        )
    console.print(table)


async def run_with_progress(
    pool: asyncpg.Pool[Any], console: Console, kind: MigrationType, migration_id: str
) -> MigrationResult:
    """Run the pending migrations of ``kind`` (data or structure), with a progress bar fed by
    ``on_progress``; ``migration_id`` is the one to report on."""
    console.print()
    console.rule(f"[bold]run_pending(MigrationType.{kind.name}): {migration_id}")
    bar = ProgressBar(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        TimeElapsedColumn(),
        console=console,
    )

    def show(progress: Progress) -> None:
        # Called after each checkpoint: what this process's workers did, on top of what the run had
        # done before they started (an interrupted run resumes).
        total = progress.total or 0
        failed = f", {progress.failed:,} failed" if progress.failed else ""
        eta = progress.eta_seconds
        bar.update(
            task,
            completed=progress.done,
            total=total or None,
            count=f"{progress.done:,}/{total:,}{failed}",
            rate=f"{progress.rate:,.0f} memories/s" if progress.rate else "",
            eta=f"ETA {eta:.0f} s" if eta is not None else "",
        )

    doing, done = (
        ("Reshaping", "Reshaped") if kind is MigrationType.MEMORY_STRUCTURE else ("Enriching", "Enriched")
    )
    migrator = Migrator(pool, MIGRATIONS, on_progress=show)
    with bar:
        task = bar.add_task(f"{doing} memories", total=None, count="", rate="", eta="")
        started = time.perf_counter()
        results = await migrator.run_pending(kind, config=DATA_CONFIG)
        bar.update(task, description=f"{done} memories", eta="")
        seconds = time.perf_counter() - started
    [result] = [r for r in results if r.migration_id == migration_id]
    if result.status is not MigrationStatus.COMPLETED:
        raise DemoError(f"{migration_id} ended {result.status}: {result.error}")
    rate = result.items_processed / seconds if seconds else 0.0
    console.print(
        f"[green]applied[/] {migration_id}: {result.items_processed:,} memories written, "
        f"{result.items_skipped:,} skipped, {result.items_failed:,} failed, in {seconds:.1f} s "
        f"([bold]{rate:,.0f} memories/s[/], {DATA_CONFIG.max_workers} workers, "
        f"batches of {DATA_CONFIG.batch_size:,}, a checkpoint every {DATA_CONFIG.checkpoint_frequency:,})"
    )
    return result


async def summarize(migrator: Migrator, pool: asyncpg.Pool[Any], console: Console) -> None:
    """What the run left in the database: its persisted progress, and the sentiments it wrote."""
    progress = await migrator.progress(SENTIMENT)
    assert progress is not None
    console.print(
        f"migrator.progress() reads the run's state from the database, so any process can ask: "
        f"{progress.status}, {progress.processed:,} processed, {progress.failed:,} failed, "
        f"{progress.skipped:,} skipped, {progress.batch_number:,} batches."
    )
    async with pool.acquire() as conn:
        rows = await conn.fetch(SENTIMENTS)
    if not rows:
        return
    table = Table(
        title="[bold]Sentiment[/] of the memories, as now stored in metadata",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("label")
    table.add_column("memories", justify="right")
    table.add_column("mean score", justify="right")
    table.add_column("for example")
    for row in rows:
        table.add_row(
            row["label"] or "[dim]none[/]",
            f"{row['memories']:,}",
            f"{row['score']:+.2f}" if row["score"] is not None else "-",
            escape(row["example"]),
        )
    console.print()
    console.print(table)
    console.print()


async def reshape(
    migrator: Migrator, pool: asyncpg.Pool[Any], console: Console
) -> tuple[StructureDescription, str | None] | None:
    """The structure migration: the column's shape, a dry run's diff, the run, the new shape.

    Returns the shape and the digest of the metadata from before the run (for the rollback to be
    compared with), or None when it cannot run yet."""
    if await migrator.status(SENTIMENT) is not MigrationStatus.COMPLETED:
        console.print(f"{STRUCTURE} waits for {SENTIMENT}, which it depends on: it does not run.")
        return None
    console.print()
    console.rule(f"[bold]A memory structure migration: {STRUCTURE}")
    operations = ", ".join(str(op) for op in structure_operations())
    console.print(f"It reshapes every memory's metadata on the server: {escape(operations)}.")
    before = await migrator.describe_structure(table="memories", column="metadata")
    console.print("\nmigrator.describe_structure(table='memories', column='metadata') lists its key paths:")
    console.print(structure_table(before, "Before"))
    async with pool.acquire() as conn:
        digest: str | None = await conn.fetchval(METADATA_DIGEST)

    dry = await migrator.execute(STRUCTURE, config=MigrationConfig(dry_run=True))
    show_structure_dry_run(dry, console)
    if dry.status is not MigrationStatus.COMPLETED:
        raise DemoError(f"the dry run of {STRUCTURE} ended {dry.status}: {dry.error}")

    await run_with_progress(pool, console, MigrationType.MEMORY_STRUCTURE, STRUCTURE)
    after = await migrator.describe_structure(table="memories", column="metadata")
    console.print()
    console.print(structure_table(after, "After", compared_with=before))
    console.print()
    return before, digest


def structure_operations() -> list[s.Operation]:
    """The operations of the structure migration, from its module (whose name starts with a digit)."""
    module = importlib.import_module(f"{MIGRATIONS}.009_nest_memory_metadata")
    operations: list[s.Operation] = module.NestMemoryMetadata().operations()
    return operations


def structure_table(
    description: StructureDescription, title: str, compared_with: StructureDescription | None = None
) -> Table:
    """A column's key paths, as describe_structure() found them; new ones marked, gone ones listed."""
    sampled = " (a sample of them)" if description.sampled else ""
    earlier = {stats.path for stats in compared_with.paths} if compared_with is not None else None
    now = {stats.path for stats in description.paths}
    gone = sorted(".".join(path) for path in (earlier or set()) - now)
    table = Table(
        title=f"[bold]{escape(title)}[/]: {description.memories:,} memories{sampled}",
        caption=f"[red]gone[/]: {', '.join(gone)}" if gone else None,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("key path", no_wrap=True)
    table.add_column("memories", justify="right")
    table.add_column("JSON types")
    for stats in description.paths:
        new = earlier is not None and stats.path not in earlier
        types = ", ".join(f"{kind} {count:,}" for kind, count in sorted(stats.types.items()))
        table.add_row(
            f"[green]{escape(stats.dotted)}[/] [dim](new)[/]" if new else escape(stats.dotted),
            f"{stats.memories:,}",
            types,
        )
    return table


def show_structure_dry_run(dry: MigrationResult, console: Console) -> None:
    """What a dry run of the structure migration found: counts, violations, a diff, the write impact."""
    console.print()
    console.rule(f"[bold]Dry run: {STRUCTURE}")
    total = dry.items_processed + dry.items_skipped
    console.print(
        f"Computed on the server in {dry.duration_seconds:.1f} s and rolled back, nothing written: "
        f"of {total:,} memories, "
        f"[bold]{dry.items_processed:,}[/] would change and {dry.items_skipped:,} stay as they are."
    )
    if dry.violations:
        console.print("[red]Memories breaking a condition[/] (the run would be refused):")
        for violation in dry.violations:
            console.print(f"  {escape(str(violation))}")
    else:
        console.print(
            "Violations: none. Every memory meets the conditions the inverse operations need, so a "
            "rollback restores it exactly; and each would have the expected shape."
        )
    diff = Table.grid(padding=(0, 1))
    diff.add_column(no_wrap=True)
    diff.add_column(no_wrap=True)
    diff.add_column(overflow="fold")
    for change in dry.changes[:2]:
        diff.add_row(str(change.key)[:8], "[red]-[/]", f"[red]{escape(json.dumps(change.before))}[/]")
        diff.add_row("", "[green]+[/]", f"[green]{escape(json.dumps(change.after))}[/]")
    if dry.changes:
        console.print("\nBefore and after, for two of them:")
        console.print(diff)
    impact = dry.write_impact
    if impact is None:
        return
    hot = (
        "HOT updates possible"
        if impact.hot_possible
        else f"no HOT updates (an index reads {', '.join(impact.written_columns)})"
    )
    cost = ""
    if impact.seconds_per_row is not None:
        cost = (
            f"; measured {impact.seconds_per_row * 1000:.2f} ms per memory, "
            f"about {impact.seconds_per_row * dry.items_processed:.0f} s for all"
        )
    console.print(
        f"\nWrite impact: {', '.join(impact.written_columns)} of {dry.items_processed:,} memories; {hot}, "
        f"so each write touches {len(impact.touched_indexes)} indexes, {len(impact.vector_indexes)} of them "
        f"vector{cost}."
    )
    for warning in impact.warnings:
        console.print(f"[dim]warning: {escape(warning.split(': ')[0])}[/]")


async def reembed(pool: asyncpg.Pool[Any], console: Console) -> None:
    """The re-embedding: each phase with its progress, the cutover, a search, then contract."""
    console.print()
    console.rule(f"[bold]Changing the embedding model: {REEMBED}")
    bar = ProgressBar(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[count]}"),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[str, Any] = {}

    def show(progress: Progress) -> None:  # the backfill's checkpoints
        if progress.migration_id.endswith("/backfill"):
            total = progress.total or None
            bar.update(
                tasks["backfill"],
                completed=progress.done,
                total=total,
                count=f"{progress.done:,}/{progress.total or 0:,}",
                rate=f"{progress.rate:,.0f} memories/s" if progress.rate else "",
            )

    migrator = Migrator(pool, MIGRATIONS, on_progress=show)
    before = await migrator.embedding_model(table="memories", column="embedding")
    console.print(
        "migrator.embedding_model() before: "
        + (escape(str(before)) if before else "[dim]none recorded[/] (the column holds vector(1536))")
    )
    results: list[MigrationResult] = []
    started = time.perf_counter()
    with bar:
        for name, what in REEMBED_PHASES:
            tasks[name] = bar.add_task(f"{name:<9} {what}", total=None, start=False, count="", rate="")

        async def run() -> None:
            results.extend(await migrator.run_pending(MigrationType.HYBRID, config=REEMBED_CONFIG))

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            while not results:
                await follow_phases(migrator, bar, tasks)
                await anyio.sleep(0.2)
        await follow_phases(migrator, bar, tasks)
    seconds = time.perf_counter() - started
    [result] = [r for r in results if r.migration_id == REEMBED]
    status = await migrator.hybrid_status(REEMBED)
    if status.phase is not HybridPhase.READY_TO_CONTRACT:
        raise DemoError(f"{REEMBED} stopped {status}: {result.error}")
    model = await migrator.embedding_model(table="memories", column="embedding")
    async with pool.acquire() as conn:
        columns = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute "
            "WHERE attrelid = 'memories'::regclass AND attname LIKE 'embedding%' AND NOT attisdropped "
            "ORDER BY attname"
        )
    console.print(
        f"Cut over in {seconds:.1f} s: the memories now read [bold]{escape(str(model))}[/] vectors; "
        + ", ".join(f"{row['attname']} {row['type']}" for row in columns)
        + ". The run waits here (READY_TO_CONTRACT) so the previous column can be kept for a soak "
        "period; rollback() would switch back at once."
    )
    await nearest_memories(pool, console)
    await migrator.contract(REEMBED)
    generations = await migrator.embedding_generations(table="memories", column="embedding")
    console.print(
        "contract() dropped embedding_previous and its index; the column's generations: "
        + ", ".join(f"{escape(g.model.name)} [bold]{g.status}[/]" for g in generations)
        + "."
    )


async def follow_phases(migrator: Migrator, bar: ProgressBar, tasks: dict[str, Any]) -> None:
    """Mark the phases done so far, and show the index build's progress (read from the database)."""
    status = await migrator.hybrid_status(REEMBED)
    done = {step.rsplit("/", 1)[1] for step in status.steps_done}
    phase = status.phase
    if phase is not None and phase not in (HybridPhase.EXPANDING, HybridPhase.BACKFILLING):
        done.add("validate")
    current = status.current_step.rsplit("/", 1)[1] if status.current_step else None
    if phase is HybridPhase.VALIDATING:
        current = "validate"
    for name, task in tasks.items():
        if name in done:
            bar.start_task(task)
            total = bar.tasks[task].total or 1
            bar.update(task, completed=total, total=total)
        elif name == current:
            bar.start_task(task)
    if current == "index" and "index" not in done:
        [generation] = [
            g
            for g in await migrator.embedding_generations(table="memories", column="embedding")
            if g.migration_id == REEMBED
        ]
        if generation.index_total:
            bar.update(
                tasks["index"],
                completed=generation.index_done or 0,
                total=generation.index_total,
                count=f"{generation.index_phase or ''}",
            )


async def nearest_memories(pool: asyncpg.Pool[Any], console: Console) -> None:
    """One search with the new model's vectors, through the new HNSW index."""
    module = importlib.import_module(f"{MIGRATIONS}.010_reembed_memories")
    query = "the weekend hike was relaxing"
    vector = "[" + ",".join(map(repr, module.hashed_words(query, 64))) + "]"
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT content, embedding <=> $1::vector AS distance FROM memories "
            "ORDER BY embedding <=> $1::vector LIMIT 200",
            vector,
        )
    nearest = list({row["content"]: row["distance"] for row in reversed(rows)}.items())
    nearest.sort(key=lambda item: item[1])
    console.print(f"\nThe 3 memories nearest to [italic]{query!r}[/] with the new model (HNSW):")
    for content, distance in nearest[:3]:
        console.print(f"  {distance:.3f}  {escape(content)}")
    console.print()


def history_table(history: list[Any]) -> Table:
    table = Table(
        title="[bold]History[/]: one row per attempt, never overwritten",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("#", justify="right")
    table.add_column("id", no_wrap=True)
    table.add_column("attempt", no_wrap=True)
    table.add_column("took", justify="right", no_wrap=True)
    table.add_column("host/pid", overflow="fold")
    for record in history:
        colour = "green" if record.status == "completed" else "red"
        table.add_row(
            str(record.attempt_id),
            record.migration_id,
            f"{record.operation} [{colour}]{record.status}[/]",
            took(record.duration_ms),
            f"{record.hostname}/{record.pid}",
        )
    return table


def took(milliseconds: float | None) -> str:
    if milliseconds is None:
        return "-"
    return f"{milliseconds:.0f} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.1f} s"


async def roll_back_data_migration(
    migrator: Migrator, pool: asyncpg.Pool[Any], digest: str | None, console: Console
) -> None:
    """Roll the data migration back: first as a dry run, then for real, from its before-images."""
    console.print()
    console.rule(f"[bold]Roll back {SENTIMENT}")
    rows = len(await migrator.history())
    [dry] = await migrator.rollback(SENTIMENT, config=MigrationConfig(dry_run=True))
    after = len(await migrator.history())
    if after != rows:
        raise DemoError(f"the dry run changed the history ({rows} rows before, {after} after)")
    if dry.status is not MigrationStatus.ROLLED_BACK:
        raise DemoError(f"a dry run of the rollback ended {dry.status}: {dry.error}")
    console.print(
        "Dry run: the rollback can run, because the before-images of the memories it changed are "
        f"kept. Nothing was written: {SENTIMENT} is still [bold]{await migrator.status(SENTIMENT)}[/]."
    )

    [result] = await migrator.rollback(SENTIMENT)
    console.print(
        f"Rollback: restored the metadata of {result.items_processed:,} memories in "
        f"{result.duration_seconds:.1f} s, in one transaction."
    )
    if digest is not None:
        async with pool.acquire() as conn:
            restored: str | None = await conn.fetchval(METADATA_DIGEST)
        if restored != digest:
            raise DemoError("after the rollback, the memories' metadata differs from before the migration")
        console.print(f"Every memory's metadata is identical to before the migration (digest {digest[:12]}).")
    console.print(
        f"{SENTIMENT} is now [bold]{await migrator.status(SENTIMENT)}[/] and pending again: "
        "run_pending(MigrationType.MEMORY_DATA) would apply it anew."
    )


async def roll_back_structure_migration(
    migrator: Migrator,
    pool: asyncpg.Pool[Any],
    shape: tuple[StructureDescription, str | None],
    console: Console,
) -> None:
    """Roll the structure migration back by its inverse operations, and show the shape is back."""
    before, digest = shape
    console.print()
    console.rule(f"[bold]Roll back {STRUCTURE}")
    inverse = ", ".join(str(op) for op in s.inverse_of(structure_operations()))
    [result] = await migrator.rollback(STRUCTURE)
    console.print(
        f"Rollback: applied the inverse operations ({escape(inverse)}) to {result.items_processed:,} "
        f"memories in {result.duration_seconds:.1f} s. They are exact here, so no before-images were kept."
    )
    after = await migrator.describe_structure(table="memories", column="metadata")
    console.print()
    console.print(structure_table(after, "After the rollback", compared_with=before))
    if key_paths(after, exact=not before.sampled) != key_paths(before, exact=not before.sampled):
        raise DemoError(
            "after the rollback, the metadata's key paths differ from before the structure migration"
        )
    console.print(
        "The structure is back: the same key paths, with the same types"
        + (" and counts" if not before.sampled else "")
        + ", as before the structure migration."
    )
    if digest is not None:
        async with pool.acquire() as conn:
            restored: str | None = await conn.fetchval(METADATA_DIGEST)
        if restored != digest:
            raise DemoError(f"after the rollback, the memories' metadata differs from before {STRUCTURE}")
        console.print(f"Every memory's metadata is identical to before it (digest {digest[:12]}).")
    console.print(
        f"{STRUCTURE} is left [bold]{await migrator.status(STRUCTURE)}[/], not applied again, so that "
        f"{SENTIMENT}, which it depends on, can be rolled back next; run_pending() would apply both anew."
    )


def key_paths(description: StructureDescription, *, exact: bool) -> dict[tuple[str, ...], Any]:
    """The key paths of a description with their types: with their counts if ``exact`` (a sample's
    counts vary from one read to the next once rows have moved)."""
    return {stats.path: dict(stats.types) if exact else sorted(stats.types) for stats in description.paths}


if __name__ == "__main__":
    sys.exit(main())
