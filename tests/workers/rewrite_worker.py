"""Run ``run_pending()`` (or ``rollback(id)``, ``contract(id)``) of a rewrite directory in its own process.

Usage::

    python rewrite_worker.py DSN MIGRATIONS_DIR [--rollback ID | --contract ID] [--batch-size N]
                             [--concurrency N] [--lock-timeout-ms MS] [--transform-delay S]
                             [--application-name NAME]

``--transform-delay`` sets ``$BM_REWRITE_DELAY``, which the rewrite's transform honours before
each batch (see ``rewrite_toy/migrations.py``); ``--lock-timeout-ms`` is the
``statement_lock_timeout_ms`` of its steps (a minute by default: a test holding a lock catches the
runner waiting for it; the swap waits as long as it decides itself). Every session of the process carries the
application name, so that a test finds them on the server. One line of JSON goes to stdout:
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

#: ``rewrite_toy_instant`` imports ``rewrite_toy``'s migration as ``workers.rewrite_toy.migrations``,
#: from the tests' directory.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DELAY_VARIABLE = "BM_REWRITE_DELAY"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = worker_arguments(__doc__, batch_size=50, application_name="rewrite worker")
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--rollback", metavar="ID")
    runs.add_argument("--contract", metavar="ID")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--lock-timeout-ms", type=int, default=60_000)
    parser.add_argument("--transform-delay", type=float, default=0.0)
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, object]:
    os.environ[DELAY_VARIABLE] = str(args.transform_delay)
    config = MigrationConfig(
        batch_size=args.batch_size,
        checkpoint_frequency=args.batch_size,
        concurrency=args.concurrency,
        statement_lock_timeout_ms=args.lock_timeout_ms,
    )

    async def run(migrator: Migrator) -> list[MigrationResult]:
        if args.rollback:
            return await migrator.rollback(args.rollback)
        if args.contract:
            return [await migrator.contract(args.contract)]
        return await migrator.run_pending()

    return results_report(await run_migrator(args, config, run))


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    run_and_report(lambda: main(arguments))
