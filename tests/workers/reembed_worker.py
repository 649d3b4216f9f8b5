"""Run ``run_pending()`` (or ``contract(id)``) of a re-embedding directory in a process of its own.

Usage::

    python reembed_worker.py DSN MIGRATIONS_DIR [--contract ID] [--batch-size N] [--concurrency N]
                             [--parallel] [--max-workers N] [--lease-seconds S]
                             [--lock-timeout-ms MS] [--embed-delay S] [--embed-log PATH]
                             [--application-name NAME]

``--embed-delay`` and ``--embed-log`` set ``$BM_EMBED_DELAY`` and ``$BM_EMBED_LOG``, which the
re-embedding's ``embed`` honours (see ``reembed_toy/migrations.py``); ``--lock-timeout-ms`` is the
``statement_lock_timeout_ms`` of its steps. One line of JSON goes to stdout:
``{"pid": ..., "results": [[id, status], ...], "error": null}`` on success (exit status 0), or with
``"error": {"type", "module", "message"}`` and ``"results": null`` on failure (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from launch import run_migrator, worker_arguments
from reporting import results_report, run_and_report

from brainmigrate import MigrationConfig, MigrationResult, Migrator

#: The migrations import ``reembed_support`` from the tests' directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DELAY_VARIABLE = "BM_EMBED_DELAY"
LOG_VARIABLE = "BM_EMBED_LOG"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = worker_arguments(__doc__, batch_size=50, application_name="reembed worker")
    parser.add_argument("--contract", metavar="ID")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--max-workers", type=int, default=1)
    parser.add_argument("--lease-seconds", type=float, default=60.0)
    parser.add_argument("--lock-timeout-ms", type=int, default=500)
    parser.add_argument("--embed-delay", type=float, default=0.0)
    parser.add_argument("--embed-log", default="")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, object]:
    os.environ[DELAY_VARIABLE] = str(args.embed_delay)
    os.environ[LOG_VARIABLE] = args.embed_log
    config = MigrationConfig(
        batch_size=args.batch_size,
        checkpoint_frequency=args.batch_size,
        concurrency=args.concurrency,
        parallel_execution=args.parallel,
        max_workers=args.max_workers,
        lease_seconds=args.lease_seconds,
        statement_lock_timeout_ms=args.lock_timeout_ms,
    )

    async def run(migrator: Migrator) -> list[MigrationResult]:
        if args.contract:
            return [await migrator.contract(args.contract)]
        return await migrator.run_pending()

    return results_report(await run_migrator(args, config, run))


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    run_and_report(lambda: main(arguments))
