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
from pathlib import Path

import asyncpg
from reporting import results_report, run_and_report

from brainmigrate import MigrationConfig, Migrator

DELAY_VARIABLE = "BM_BATCH_DELAY"
MODE_VARIABLE = "BM_CONTRACT_MODE"
REFUSE_VARIABLE = "BM_REFUSE_VALIDATION"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dsn")
    parser.add_argument("migrations", type=Path)
    parser.add_argument("--contract", metavar="ID")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--batch-delay", type=float, default=0.0)
    parser.add_argument("--contract-mode", default="auto", choices=["auto", "manual"])
    parser.add_argument("--refuse-validation", action="store_true")
    parser.add_argument("--application-name", default="hybrid worker")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace) -> dict[str, object]:
    os.environ[DELAY_VARIABLE] = str(args.batch_delay)
    os.environ[MODE_VARIABLE] = args.contract_mode
    os.environ[REFUSE_VARIABLE] = "1" if args.refuse_validation else "0"
    settings = dict(item.split("=", 1) for item in args.setting)
    settings["application_name"] = args.application_name
    config = MigrationConfig(batch_size=args.batch_size, checkpoint_frequency=args.batch_size)
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=4, server_settings=settings)
    try:
        migrator = Migrator(pool, args.migrations, config=config)
        if args.contract:
            results = [await migrator.contract(args.contract)]
        else:
            results = await migrator.run_pending()
    finally:
        await pool.close()
    return results_report(results)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    run_and_report(lambda: main(arguments))
