"""Run ``run_pending()`` (or ``contract(id)``) of a hybrid-migration directory in a process of its own.

Usage::

    python hybrid_worker.py DSN MIGRATIONS_DIR [--contract ID] [--setting NAME=VALUE ...]
                            [--batch-size N] [--batch-delay S] [--contract-mode MODE]
                            [--refuse-validation] [--application-name NAME]

``--setting`` sets a server setting on every connection of the pool (the migrations' ``bm.*_pause``
settings); ``--batch-delay`` sets ``$BM_BATCH_DELAY``, which the backfill sleeps for in each batch's
transform; ``--contract-mode`` sets ``$BM_CONTRACT_MODE``, ``--refuse-validation``
``$BM_REFUSE_VALIDATION``. One line of JSON goes to stdout:
``{"pid": ..., "results": [[id, status], ...], "error": null}`` on success (exit status 0), or with
``"error": {"type", "module", "message"}`` and ``"results": null`` on failure (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import sys

from launch import run_migrator, worker_arguments
from reporting import results_report, run_and_report

from brainmigrate import MigrationConfig, MigrationResult, Migrator

DELAY_VARIABLE = "BM_BATCH_DELAY"
MODE_VARIABLE = "BM_CONTRACT_MODE"
REFUSE_VARIABLE = "BM_REFUSE_VALIDATION"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = worker_arguments(__doc__, batch_size=250, application_name="hybrid worker")
    parser.add_argument("--contract", metavar="ID")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--batch-delay", type=float, default=0.0)
    parser.add_argument("--contract-mode", default="auto", choices=["auto", "manual"])
    parser.add_argument("--refuse-validation", action="store_true")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, object]:
    os.environ[DELAY_VARIABLE] = str(args.batch_delay)
    os.environ[MODE_VARIABLE] = args.contract_mode
    os.environ[REFUSE_VARIABLE] = "1" if args.refuse_validation else "0"
    settings = dict(item.split("=", 1) for item in args.setting)
    config = MigrationConfig(batch_size=args.batch_size, checkpoint_frequency=args.batch_size)

    async def run(migrator: Migrator) -> list[MigrationResult]:
        if args.contract:
            return [await migrator.contract(args.contract)]
        return await migrator.run_pending()

    return results_report(await run_migrator(args, config, run, settings=settings))


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    run_and_report(lambda: main(arguments))
