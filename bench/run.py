"""Benchmarks of brainmigrate against Alembic and hand-written asyncpg, measured in the same run.

    nox -s bench                                # on a throwaway embedded PostgreSQL
    nox -s bench -- --dsn postgresql://...      # on another server (or BRAINMIGRATE_BENCH_DSN)
    python bench/run.py --markdown out.md       # also write the tables as a markdown fragment
    python bench/run.py --only data --rows 100000 --rounds 1   # a quick look at benchmark 3 alone
    python bench/run.py --profile               # where brainmigrate's time goes, instead
    python bench/run.py --profile --only data --rows 100000   # the same for benchmark 3
    python bench/run.py --only structure --structure-rows 100000 --structure-rounds 1
    python bench/run.py --only impact --impact-rows 20000 --impact-rounds 3
    python bench/run.py --only model_throughput --model-rows 100000 --model-rounds 3
    python bench/run.py --only reembed --reembed-rows 100000 --reembed-rounds 3
    python bench/run.py --only realistic --realistic-rows 100000 --realistic-rounds 3
    python bench/run.py --only index_build --index-build-rows 100000 --index-build-rounds 3
    python bench/run.py --only mirror --mirror-rows 20000 --mirror-rounds 3
    python bench/run.py --only checks --checks-migrations 200 --checks-rounds 1

The DSN must name a maintenance database (such as ``postgres``) of a role allowed to create
databases; the benchmarks create and drop databases whose names start with ``brainmigrate_bench``.
Shared machines are noisy: read the medians and the ratios, which compare tools measured side by
side, not single samples.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from importlib.metadata import version
from pathlib import Path

import asyncpg
from apply_bench import bench_apply
from checks import bench_checks
from common import ENV_DSN, Section, markdown_table, raw_samples, server_version, text_table, transport
from data_bench import bench_data
from index_build_bench import bench_index_build
from mirror_bench import bench_mirror
from model_throughput import bench_model_throughput
from noop_bench import bench_noop
from realistic_store import bench_realistic
from reembed import bench_reembed
from structure_bench import bench_structure
from write_impact_bench import bench_write_impact


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _source_revision() -> str:
    """The git commit of the source tree benchmarked (``+changes`` when src/ has edits), if known."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}{'+changes' if changed else ''}" if commit else ""


async def _has_pgvector(dsn: str) -> bool:
    """Whether the server can create the ``vector`` extension the write-impact benchmark needs."""
    conn = await asyncpg.connect(dsn)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'"))
    finally:
        await conn.close()


def environment(dsn: str, server_version: str, embedded: bool) -> list[str]:
    """Facts about the run that matter when reading the numbers."""
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("brainmigrate", "asyncpg", "alembic", "SQLAlchemy", "psycopg")
    )
    where = "embedded" if embedded else "external"
    revision = _source_revision()
    return [
        f"PostgreSQL {server_version} ({where}, over {transport(dsn)})",
        f"{os.cpu_count()} CPUs ({_cpu_model()}), {platform.system()} {platform.release()}",
        f"Python {platform.python_version()}; {packages}",
        *([f"brainmigrate source at commit {revision}"] if revision else []),
    ]


def markdown(sections: list[Section], env: list[str], seconds: float) -> str:
    """The results as a markdown fragment."""
    parts = ["Environment:", "", *(f"- {line}" for line in env), f"- total bench time {seconds:.0f} s", ""]
    for section in sections:
        parts += [f"**{section.title}**", "", markdown_table(section), ""]
    return "\n".join(parts)


async def run_benchmarks(dsn: str, args: argparse.Namespace, workdir: Path) -> list[Section]:
    sections: list[Section] = []
    if args.only in (None, "noop"):
        sections.append(await bench_noop(dsn, workdir, args.migrations, args.latency_samples))
        print(text_table(sections[-1]), end="\n\n", flush=True)
    if args.only in (None, "apply"):
        for section in await bench_apply(dsn, workdir, args.migrations, args.apply_samples):
            sections.append(section)
            print(text_table(section), end="\n\n", flush=True)
    if args.only in (None, "data"):
        sections.append(await bench_data(dsn, args.rows, args.rounds, rss=args.rss))
        print(text_table(sections[-1]), end="\n\n", flush=True)
    if args.only in (None, "structure"):
        for section in await bench_structure(dsn, args.structure_rows, args.structure_rounds):
            sections.append(section)
            print(text_table(section), end="\n\n", flush=True)
    if args.only in (None, "impact"):
        if await _has_pgvector(dsn):
            sections.append(await bench_write_impact(dsn, args.impact_rows, args.impact_rounds))
            print(text_table(sections[-1]), end="\n\n", flush=True)
        else:
            print("write impact: skipped, the server has no pgvector (extension `vector`)", end="\n\n")
    if args.only in (None, "model_throughput"):
        if await _has_pgvector(dsn):
            for section in await bench_model_throughput(dsn, args.model_rows, args.model_rounds):
                sections.append(section)
                print(text_table(section), end="\n\n", flush=True)
        else:
            print("model throughput: skipped, the server has no pgvector (extension `vector`)", end="\n\n")
    if args.only in (None, "reembed"):
        if await _has_pgvector(dsn):
            for section in await bench_reembed(
                dsn, args.reembed_rows, args.reembed_rounds, writes=not args.reembed_migration_only
            ):
                sections.append(section)
                print(text_table(section), end="\n\n", flush=True)
        else:
            print("re-embedding: skipped, the server has no pgvector (extension `vector`)", end="\n\n")
    if args.only in (None, "realistic"):
        if await _has_pgvector(dsn):
            for section in await bench_realistic(
                dsn, args.realistic_rows, args.realistic_rounds, in_place=not args.realistic_without_in_place
            ):
                sections.append(section)
                print(text_table(section), end="\n\n", flush=True)
        else:
            print("realistic store: skipped, the server has no pgvector (extension `vector`)", end="\n\n")
    if args.only in (None, "index_build"):
        if await _has_pgvector(dsn):
            for section in await bench_index_build(dsn, args.index_build_rows, args.index_build_rounds):
                sections.append(section)
                print(text_table(section), end="\n\n", flush=True)
        else:
            print("index build: skipped, the server has no pgvector (extension `vector`)", end="\n\n")
    if args.only in (None, "mirror"):
        if await _has_pgvector(dsn):
            for section in await bench_mirror(dsn, args.mirror_rows, args.mirror_rounds):
                sections.append(section)
                print(text_table(section), end="\n\n", flush=True)
        else:
            print("instant mirror: skipped, the server has no pgvector (extension `vector`)", end="\n\n")
    if args.only in (None, "checks"):
        for section in await bench_checks(dsn, workdir, args.checks_migrations, args.checks_rounds):
            sections.append(section)
            print(text_table(section), end="\n\n", flush=True)
    if args.raw:
        for section in sections:
            print(raw_samples(section), end="\n\n")
    return sections


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dsn", default=os.environ.get(ENV_DSN), help=f"server to use (default: ${ENV_DSN}, else embedded)"
    )
    parser.add_argument("--migrations", type=int, default=200, help="migrations in the chain (default 200)")
    parser.add_argument("--latency-samples", type=int, default=40, help="samples per tool, benchmark 1")
    parser.add_argument("--apply-samples", type=int, default=9, help="samples per tool, benchmark 2")
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="memories in benchmark 3 (default 1000000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of benchmark 3 (default 3)")
    parser.add_argument(
        "--rss", action="store_true", help="benchmark 3: also the peak memory of each client tool"
    )
    parser.add_argument(
        "--structure-rows",
        type=int,
        default=1_000_000,
        help="memories of the structure benchmark (default 1000000; also run at 100000 when larger)",
    )
    parser.add_argument("--structure-rounds", type=int, default=3, help="rounds of the structure benchmark")
    parser.add_argument(
        "--impact-rows", type=int, default=20_000, help="memories of the write-impact benchmark (20000)"
    )
    parser.add_argument("--impact-rounds", type=int, default=3, help="rounds of the write-impact benchmark")
    parser.add_argument(
        "--model-rows",
        type=int,
        default=100_000,
        help="memories of the model-throughput benchmark (default 100000; also run at 10000 when larger)",
    )
    parser.add_argument(
        "--model-rounds", type=int, default=3, help="rounds of the model-throughput benchmark"
    )
    parser.add_argument(
        "--reembed-rows", type=int, default=100_000, help="memories of the re-embedding benchmark (100000)"
    )
    parser.add_argument("--reembed-rounds", type=int, default=3, help="rounds of the re-embedding benchmark")
    parser.add_argument(
        "--reembed-migration-only",
        action="store_true",
        help="the re-embedding benchmark without its raw writes (in place and side table)",
    )
    parser.add_argument(
        "--realistic-rows",
        type=int,
        default=100_000,
        help="memories of the realistic store, in place against rewrite (default 100000)",
    )
    parser.add_argument("--realistic-rounds", type=int, default=3, help="rounds of the realistic store")
    parser.add_argument(
        "--realistic-without-in-place",
        action="store_true",
        help="the realistic store's rewrites only (without the in-place run, the long one)",
    )
    parser.add_argument(
        "--index-build-rows",
        type=int,
        default=100_000,
        help="embeddings of the index build benchmark, by the rewrite's build settings (default 100000)",
    )
    parser.add_argument(
        "--index-build-rounds", type=int, default=3, help="rounds of the index build benchmark (default 3)"
    )
    parser.add_argument(
        "--mirror-rows",
        type=int,
        default=20_000,
        help="memories of the instant mirror's benchmark, statements by transaction size (default 20000)",
    )
    parser.add_argument(
        "--mirror-rounds", type=int, default=3, help="rounds of the instant mirror's benchmark"
    )
    parser.add_argument(
        "--only",
        choices=(
            "noop",
            "apply",
            "data",
            "structure",
            "impact",
            "model_throughput",
            "reembed",
            "realistic",
            "index_build",
            "mirror",
            "checks",
        ),
        help="run one benchmark only",
    )
    parser.add_argument(
        "--checks-migrations", type=int, default=200, help="generated migrations, checks benchmark (200)"
    )
    parser.add_argument("--checks-rounds", type=int, default=1, help="rounds of the checks benchmark (1)")
    parser.add_argument("--markdown", type=Path, help="also write the results to this markdown file")
    parser.add_argument("--raw", action="store_true", help="also print every sample")
    parser.add_argument("--profile", action="store_true", help="profile brainmigrate instead of benchmarking")
    args = parser.parse_args(argv)
    counts = (
        args.migrations,
        args.latency_samples,
        args.apply_samples,
        args.rows,
        args.rounds,
        args.structure_rows,
        args.structure_rounds,
        args.impact_rows,
        args.impact_rounds,
        args.model_rows,
        args.model_rounds,
        args.reembed_rows,
        args.reembed_rounds,
        args.realistic_rows,
        args.realistic_rounds,
        args.index_build_rows,
        args.index_build_rounds,
        args.mirror_rows,
        args.mirror_rounds,
        args.checks_migrations,
        args.checks_rounds,
    )
    if min(counts) < 1:
        parser.error("counts must be at least 1")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Unwind (stopping the embedded server, dropping files) when terminated, as on Ctrl-C."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.perf_counter()
    with ExitStack() as stack:
        dsn = args.dsn
        if not dsn:
            from brainmigrate.embedded import EmbeddedPostgres

            # The embedded server's packaging warns when XDG_RUNTIME_DIR is unset; harmless here.
            warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
            dsn = stack.enter_context(EmbeddedPostgres()).dsn()
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="brainmigrate-bench-")))
        env = environment(dsn, asyncio.run(server_version(dsn)), embedded=not args.dsn)
        print("\n".join(env), end="\n\n", flush=True)
        if args.profile:
            from profiling import profile, profile_data

            if args.only == "data":
                asyncio.run(profile_data(dsn, args.rows))
            else:
                asyncio.run(profile(dsn, workdir, args.migrations))
            return 0
        sections = asyncio.run(run_benchmarks(dsn, args, workdir))
    seconds = time.perf_counter() - started
    print(f"total {seconds:.0f} s")
    if args.markdown:
        args.markdown.write_text(markdown(sections, env, seconds))
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
