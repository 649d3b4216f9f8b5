"""What the role workers share: the DSN and directory they are given, and a Migrator on a pool of
their own whose sessions carry the worker's application name."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path

import asyncpg

from brainmigrate import MigrationConfig, MigrationResult, Migrator


def worker_arguments(doc: str, *, batch_size: int, application_name: str) -> argparse.ArgumentParser:
    """A parser, described by the first line of the worker's ``doc``, of ``DSN MIGRATIONS_DIR
    [--batch-size N] [--application-name NAME]`` with these defaults; the worker adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("migrations", type=Path)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--application-name", default=application_name)
    return parser


async def run_migrator(
    args: argparse.Namespace,
    config: MigrationConfig,
    run: Callable[[Migrator], Awaitable[Sequence[MigrationResult]]],
    *,
    settings: Mapping[str, str] | None = None,
    max_size: int = 4,
) -> list[MigrationResult]:
    """``run`` a Migrator of ``args.migrations`` on a pool of its own, opened on ``args.dsn`` with
    the server ``settings`` and ``args.application_name``, and closed once ``run`` returns."""
    server_settings = {**(settings or {}), "application_name": args.application_name}
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=max_size, server_settings=server_settings)
    try:
        return list(await run(Migrator(pool, args.migrations, config=config)))
    finally:
        await pool.close()
