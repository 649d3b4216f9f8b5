"""Run ``run_pending()`` (or ``execute(id)``) of a data-migration directory in a process of its own.

Usage::

    python data_worker.py DSN MIGRATIONS_DIR [--execute ID] [--batch-size N]
                          [--checkpoint-frequency N] [--parallel --max-workers N]
                          [--lease-seconds S] [--batch-delay S] [--application-name NAME]
                          [--ready-file PATH --start-file PATH]

``--batch-delay`` sets ``$BM_BATCH_DELAY``, which the test migrations sleep for in each batch's
transform. With ``--ready-file``/``--start-file``, the process opens its pool, creates the ready
file and waits for the start file, so that a test can release many processes at once.

One line of JSON goes to stdout: ``{"pid": ..., "results": [[id, status], ...], "details": [...],
"error": null}`` on success (exit status 0), where each detail is ``{"id", "status",
"items_processed", "note"}``; or ``"error": {"type", "module", "message"}`` with ``"results": null``
on failure (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from launch import run_migrator, worker_arguments
from reporting import results_report, run_and_report, wait_for_start

from brainmigrate import MigrationConfig, MigrationResult, Migrator, RetryPolicy

DELAY_VARIABLE = "BM_BATCH_DELAY"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = worker_arguments(__doc__, batch_size=500, application_name="data worker")
    parser.add_argument("--execute", metavar="ID")
    parser.add_argument("--checkpoint-frequency", type=int, default=500)
    parser.add_argument("--parallel", action="store_true")
    parser.add_argument("--max-workers", type=int, default=2)
    parser.add_argument("--lease-seconds", type=float, default=60.0)
    parser.add_argument("--batch-delay", type=float, default=0.0)
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--start-file", type=Path)
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, object]:
    os.environ[DELAY_VARIABLE] = str(args.batch_delay)
    config = MigrationConfig(
        batch_size=args.batch_size,
        checkpoint_frequency=args.checkpoint_frequency,
        parallel_execution=args.parallel,
        max_workers=args.max_workers,
        lease_seconds=args.lease_seconds,
        retry=RetryPolicy(attempts=5, initial_delay=0.05, max_delay=0.5, jitter=0.05),
    )

    async def run(migrator: Migrator) -> list[MigrationResult]:
        await wait_for_start(args.ready_file, args.start_file)
        if args.execute:
            return [await migrator.execute(args.execute)]
        return await migrator.run_pending()

    results = await run_migrator(args, config, run, max_size=args.max_workers + 2)
    details = [
        {
            "id": r.migration_id,
            "status": r.status.value,
            "items_processed": r.items_processed,
            "note": r.error,
        }
        for r in results
    ]
    return results_report(results, details=details)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    run_and_report(lambda: main(arguments))
