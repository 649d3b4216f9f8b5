"""Shared helpers: timing statistics, result tables, throwaway databases, and running one
benchmark on its own."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import asyncpg

from brainmigrate.testing import DatabaseFactory

#: Prefix of every database the benchmarks create, so they are easy to spot.
DB_PREFIX = "brainmigrate_bench"
#: The server the benchmarks use unless --dsn names one (else an embedded one).
ENV_DSN = "BRAINMIGRATE_BENCH_DSN"


@dataclass(frozen=True)
class Stats:
    """Timing samples of one measurement, in seconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        if len(self.samples) < 2:
            return self.samples[0]
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]


@dataclass(frozen=True)
class Row:
    """One tool's result in a section."""

    tool: str
    stats: Stats


@dataclass
class Section:
    """One benchmark: its rows, and the rows the others are divided by.

    Samples are taken in rounds (every tool once per round, in rotating order), so sample ``i`` of
    each row comes from the same round. A ratio is the median over rounds of the per-round ratios:
    tools measured seconds apart share the machine's state of the moment, which makes the ratio
    steadier on a noisy machine than the quotient of two medians.
    """

    title: str
    rows: list[Row] = field(default_factory=list)
    baselines: tuple[str, ...] = ()
    show_p90: bool = True
    target: str = ""
    #: Rows each sample processes; when set, the table also gives the median throughput in rows/s.
    items: int = 0
    #: Lines printed under the table.
    notes: list[str] = field(default_factory=list)

    def row(self, tool: str) -> Row:
        return next(row for row in self.rows if row.tool == tool)

    def ratio(self, tool: str, baseline: str) -> float:
        """Median over rounds of ``tool``'s time divided by ``baseline``'s."""
        pairs = zip(self.row(tool).stats.samples, self.row(baseline).stats.samples, strict=True)
        return statistics.median(a / b for a, b in pairs)


def format_ms(seconds: float) -> str:
    """Milliseconds with three significant figures (seconds from 10 s up)."""
    ms = seconds * 1000
    if ms >= 10_000:
        return f"{seconds:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def _cells(section: Section) -> tuple[list[str], list[list[str]]]:
    header = ["tool", "n", "median"]
    if section.show_p90:
        header.append("p90")
    if section.items:
        header.append("rows/s")
    header += [f"÷ {baseline}" for baseline in section.baselines]
    body: list[list[str]] = []
    for row in section.rows:
        cells = [row.tool, str(len(row.stats.samples)), format_ms(row.stats.median)]
        if section.show_p90:
            cells.append(format_ms(row.stats.p90))
        if section.items:
            cells.append(f"{section.items / row.stats.median:,.0f}")
        cells += [f"{section.ratio(row.tool, baseline):.2f}x" for baseline in section.baselines]
        body.append(cells)
    return header, body


def text_table(section: Section) -> str:
    """A compact fixed-width table for the terminal."""
    header, body = _cells(section)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    lines = [section.title, line(header), "  ".join("-" * width for width in widths)]
    lines += [line(cells) for cells in body]
    if section.target:
        lines.append(f"target: {section.target}")
    lines += section.notes
    return "\n".join(lines)


def raw_samples(section: Section) -> str:
    """Every sample of every tool, in the order taken, in milliseconds."""
    lines = [f"{section.title}: samples in ms, in the order taken"]
    for row in section.rows:
        lines.append(f"  {row.tool}: " + " ".join(f"{s * 1000:.1f}" for s in row.stats.samples))
    return "\n".join(lines)


def markdown_table(section: Section) -> str:
    """The same table as GitHub-flavoured markdown."""
    header, body = _cells(section)
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = [f"| {' | '.join(header)} |", f"| {' | '.join(align)} |"]
    lines += [f"| {' | '.join(cells)} |" for cells in body]
    if section.notes:
        lines += ["", *section.notes]
    return "\n".join(lines)


def sqlalchemy_url(dsn: str) -> str:
    """The URI for SQLAlchemy's psycopg 3 driver.

    psycopg takes libpq's ``?host=/socket/dir`` query parameter as it is, so a unix-socket URI
    only needs its scheme changed.
    """
    scheme, rest = dsn.split("://", 1)
    if scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URI, got {dsn!r}")
    return f"postgresql+psycopg://{rest}"


def transport(dsn: str) -> str:
    """How the URI reaches the server: a unix socket or TCP."""
    parts = urlsplit(dsn)
    host = parse_qs(parts.query).get("host", [parts.hostname or ""])[0]
    return "TCP" if host and not host.startswith("/") else "unix socket"


def databases(admin_dsn: str) -> DatabaseFactory:
    """A factory of throwaway databases on the server, named ``brainmigrate_bench_...``.

    Use it as ``async with databases(admin_dsn) as factory:``; leaving the block drops every
    database it created that is still there.
    """
    return DatabaseFactory(admin_dsn, prefix=DB_PREFIX)


async def checkpoint(admin_dsn: str) -> None:
    """Flush dirty buffers now rather than during the next sample (skipped without the privilege)."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.InsufficientPrivilegeError:
        pass
    finally:
        await conn.close()


def rotated(items: Sequence[str], turn: int) -> list[str]:
    """``items`` starting at ``turn``: interleaves tools so slow drift on the machine hits each alike."""
    k = turn % len(items)
    return [*items[k:], *items[:k]]


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


#: One benchmark: (admin DSN, rows, rounds) to its result sections.
Bench = Callable[[str, int, int], Awaitable[list[Section]]]


def run_alone(description: str | None, default_rows: int, bench: Bench, argv: list[str] | None = None) -> int:
    """Run one benchmark from its own script: ``--dsn`` (else $BRAINMIGRATE_BENCH_DSN, else an
    embedded server), ``--rows`` and ``--rounds``; print its tables."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn", default=os.environ.get(ENV_DSN), help=f"server to use (default: ${ENV_DSN}, else embedded)"
    )
    parser.add_argument("--rows", type=int, default=default_rows, help=f"memories (default {default_rows})")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    args = parser.parse_args(argv)
    if min(args.rows, args.rounds) < 1:
        parser.error("counts must be at least 1")
    started = time.perf_counter()
    with ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            from brainmigrate.embedded import EmbeddedPostgres

            # The embedded server's packaging warns when XDG_RUNTIME_DIR is unset; harmless here.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            dsn = stack.enter_context(EmbeddedPostgres()).dsn()
        print(f"PostgreSQL {asyncio.run(server_version(dsn))}", flush=True)
        sections = asyncio.run(bench(dsn, args.rows, args.rounds))
    print("\n\n".join(text_table(section) for section in sections))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0
