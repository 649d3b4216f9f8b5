"""Migrate a Second Brain memory store, step by step, on a throwaway PostgreSQL.

Run it with ``nox -s demo``, or with ``python examples/demo.py`` where ``brainmigrate[embedded,rich]``
is installed. It starts an embedded PostgreSQL (with pgvector) and deletes it at the end. To use a
server of your own instead, name an empty database on it (the demo leaves its tables there)::

    python examples/demo.py --dsn postgresql://me@localhost/brain_demo
    BRAINMIGRATE_DEMO_DSN=postgresql://me@localhost/brain_demo python examples/demo.py

The migrations are the package ``second_brain.migrations`` next to this file.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
import warnings
from typing import Any

import anyio
import asyncpg
from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.syntax import Syntax
from rich.table import Table

from brainmigrate import BrainMigrateError, MigrationConfig, MigrationResult, MigrationStatus, Migrator
from brainmigrate.embedded import EmbeddedPostgres

#: Importable because Python puts this script's directory on sys.path.
MIGRATIONS = "second_brain.migrations"
DSN_VARIABLE = "BRAINMIGRATE_DEMO_DSN"


class DemoError(Exception):
    """Something the person running the demo can fix; the message says what."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn",
        default=os.environ.get(DSN_VARIABLE) or None,
        help=f"an empty database to migrate instead of an embedded server (default: ${DSN_VARIABLE})",
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
        anyio.run(demo, dsn, console)
    except (DemoError, BrainMigrateError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    finally:
        if server is not None:
            server.stop()
    console.print(f"\n[bold green]Done[/] in {time.perf_counter() - started:.1f} s.")
    return 0


async def demo(dsn: str, console: Console) -> None:
    try:
        # min_size=2: brainmigrate holds its runner lock on one connection and migrates on another.
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
            await apply_one_by_one(migrator, [meta.id for meta in pending], console)
        else:
            console.print("Nothing pending: every migration is already applied.")

        history = await migrator.history()
        console.print(history_table(history))

        applied = [record.migration_id for record in history if record.applied_after]
        if applied:
            await show_rollback_dry_run(migrator, applied[-1], len(history), console)

        again = await migrator.run_pending()
        console.print()
        console.rule("[bold]run_pending() once more")
        console.print(
            f"It returned {len(again)} results: nothing was pending, so nothing ran "
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
        caption="* non-transactional (CREATE INDEX CONCURRENTLY): a dry run cannot try it",
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("id", no_wrap=True)
    table.add_column("version")
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
    return f"[red]{result.status}[/]: {result.error}"


async def apply_one_by_one(migrator: Migrator, ids: list[str], console: Console) -> None:
    console.print()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("Migrating", total=len(ids))
        for migration_id in ids:
            progress.update(task, description=f"Applying {migration_id}")
            result = await migrator.execute(migration_id)
            progress.console.print(
                f"  [green]applied[/] {migration_id} "
                f"[dim]({describe(result)}, {result.duration_seconds * 1000:.0f} ms)[/]"
            )
            progress.advance(task)
        progress.update(task, description="Migrated")
    console.print()


def describe(result: MigrationResult) -> str:
    """What a migration ran: its SQL statements, or Python code."""
    count = len(result.statements)
    return f"{count} statement{'' if count == 1 else 's'}" if count else "Python up()"


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
    table.add_column("operation")
    table.add_column("status")
    table.add_column("duration", justify="right")
    table.add_column("host/pid", overflow="fold")
    for record in history:
        duration = f"{record.duration_ms:.0f} ms" if record.duration_ms is not None else "-"
        colour = "green" if record.status == "completed" else "red"
        table.add_row(
            str(record.attempt_id),
            record.migration_id,
            record.operation,
            f"[{colour}]{record.status}[/]",
            duration,
            f"{record.hostname}/{record.pid}",
        )
    return table


async def show_rollback_dry_run(migrator: Migrator, migration_id: str, rows: int, console: Console) -> None:
    console.print()
    console.rule(f"[bold]Dry run: roll back {migration_id}")
    results = await migrator.rollback(migration_id, config=MigrationConfig(dry_run=True))
    for result in results:
        statements = ";\n\n".join(textwrap.dedent(s).strip() for s in result.statements) + ";"
        console.print(
            Panel(
                Group(
                    f"status: [bold]{result.status}[/] (in a transaction that was then rolled back)",
                    Syntax(statements, "sql", theme="ansi_dark", word_wrap=True),
                ),
                title=result.migration_id,
                title_align="left",
            )
        )
    status = await migrator.status(migration_id)
    after = len(await migrator.history())
    console.print(
        f"Nothing was written: {migration_id} is still [bold]{status}[/], history still has {after} rows."
    )
    if after != rows:
        raise DemoError(f"the dry run changed the history ({rows} rows before, {after} after)")


if __name__ == "__main__":
    sys.exit(main())
