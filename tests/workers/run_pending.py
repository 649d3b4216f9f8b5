"""Run ``Migrator(pool, <directory>).run_pending()`` in a process of its own and report as JSON.

Usage::

    python run_pending.py DSN MIGRATIONS_DIR [--ready-file PATH --start-file PATH]
                          [--setting NAME=VALUE ...] [--lock-wait SECONDS]

The pool is opened first; then, with ``--ready-file``/``--start-file``, the process creates the
ready file and waits for the start file, so that a test can release many processes at once. One
line of JSON goes to stdout: ``{"pid": ..., "results": [[id, status], ...], "error": null}`` on
success (exit status 0), or with ``"error": {"type": ..., "module": ..., "message": ...}`` and
``"results": null`` on failure (exit status 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import asyncpg
from reporting import results_report, run_and_report, wait_for_start

from brainmigrate import MigrationConfig, Migrator


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("migrations", type=Path)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--start-file", type=Path)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--lock-wait", type=float, default=60.0)
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, object]:
    settings = dict(item.split("=", 1) for item in args.setting)
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=3, server_settings=settings)
    try:
        migrator = Migrator(pool, args.migrations, config=MigrationConfig(lock_wait_seconds=args.lock_wait))
        await wait_for_start(args.ready_file, args.start_file)
        results = await migrator.run_pending()
    finally:
        await pool.close()
    return results_report(results)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    run_and_report(lambda: main(arguments))
