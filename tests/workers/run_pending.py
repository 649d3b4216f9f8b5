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
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import anyio
import asyncpg

from brainmigrate import MigrationConfig, Migrator

BARRIER_TIMEOUT_SECONDS = 30.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("migrations", type=Path)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--start-file", type=Path)
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--lock-wait", type=float, default=60.0)
    return parser.parse_args(argv)


async def wait_for_start(ready_file: Path | None, start_file: Path | None) -> None:
    if ready_file is not None:
        await anyio.Path(ready_file).touch()
    if start_file is None:
        return
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while not await anyio.Path(start_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{start_file} did not appear within {BARRIER_TIMEOUT_SECONDS:g} s")
        await asyncio.sleep(0.005)


async def main(args: argparse.Namespace) -> dict[str, object]:
    settings = dict(item.split("=", 1) for item in args.setting)
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=3, server_settings=settings)
    try:
        migrator = Migrator(pool, args.migrations, config=MigrationConfig(lock_wait_seconds=args.lock_wait))
        await wait_for_start(args.ready_file, args.start_file)
        results = await migrator.run_pending()
    finally:
        await pool.close()
    return {"pid": os.getpid(), "results": [[r.migration_id, r.status.value] for r in results], "error": None}


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    try:
        report = asyncio.run(main(arguments))
    except Exception as exc:
        error = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
        print(json.dumps({"pid": os.getpid(), "results": None, "error": error}), flush=True)
        sys.exit(1)
    print(json.dumps(report), flush=True)
