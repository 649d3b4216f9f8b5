"""Migrate a Second Brain memory store, step by step, on a throwaway PostgreSQL.

Run it with ``nox -s demo``, or with ``python examples/demo.py`` where ``brainmigrate[embedded,rich]``
is installed. It starts an embedded PostgreSQL (with pgvector) and deletes it at the end. To use a
server of your own instead, name an empty database on it (the demo leaves its tables there)::

    python examples/demo.py --dsn postgresql://me@localhost/brain_demo
    BRAINMIGRATE_DEMO_DSN=postgresql://me@localhost/brain_demo python examples/demo.py

It applies the schema migrations, fills the memories table (``--memories N``, 200,000 by default),
runs the data migration that adds a sentiment to every memory with a live progress bar, then rolls
that data migration back and checks that every memory is as it was. The migrations are the package
``second_brain.migrations`` next to this file.
"""

from __future__ import annotations

import argparse
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
    MigrationConfig,
    MigrationResult,
    MigrationStatus,
    MigrationType,
    Migrator,
    Progress,
)
from brainmigrate.embedded import EmbeddedPostgres

#: Importable because Python puts this script's directory on sys.path.
MIGRATIONS = "second_brain.migrations"
SENTIMENT = "enrich_memories_with_sentiment_001"
DSN_VARIABLE = "BRAINMIGRATE_DEMO_DSN"
DEFAULT_MEMORIES = 200_000

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
            result = await run_data_migration(pool, console)
            await summarize(migrator, pool, console)
            enriched = result.status is MigrationStatus.COMPLETED

        console.print(history_table(await migrator.history()))

        again = await migrator.run_pending()
        console.print()
        console.rule("[bold]run_pending() once more")
        console.print(
            f"It returned {len(again)} results: nothing was pending, so nothing ran "
            "and no history was written."
        )

        if enriched:
            await roll_back_data_migration(migrator, pool, digest, console)
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
    table.add_column("id", no_wrap=True)
    table.add_column("version", no_wrap=True)
    table.add_column("after", no_wrap=True)
    table.add_column("dry run", overflow="fold")
    for meta in pending:
        table.add_row(
            meta.id,
            meta.version,
            "\n".join(meta.dependencies) or "-",
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


async def run_data_migration(pool: asyncpg.Pool[Any], console: Console) -> MigrationResult:
    """Run the pending memory data migrations, with a progress bar fed by ``on_progress``."""
    console.print()
    console.rule(f"[bold]run_pending(MigrationType.MEMORY_DATA): {SENTIMENT}")
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

    migrator = Migrator(pool, MIGRATIONS, on_progress=show)
    with bar:
        task = bar.add_task("Enriching memories", total=None, count="", rate="", eta="")
        started = time.perf_counter()
        results = await migrator.run_pending(MigrationType.MEMORY_DATA, config=DATA_CONFIG)
        bar.update(task, description="Enriched memories", eta="")
        seconds = time.perf_counter() - started
    [result] = [r for r in results if r.migration_id == SENTIMENT]
    if result.status is not MigrationStatus.COMPLETED:
        raise DemoError(f"{SENTIMENT} ended {result.status}: {result.error}")
    rate = result.items_processed / seconds if seconds else 0.0
    console.print(
        f"[green]applied[/] {SENTIMENT}: {result.items_processed:,} memories written, "
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


if __name__ == "__main__":
    sys.exit(main())
